#!/usr/bin/env python
"""Run or resume a detune study on this node or a Ray cluster (thin: parse, call ``detune.tuning.tune``).

    python scripts/tune.py --config configs/lr_search.yaml --address auto num_samples=32 train.epochs=50
    python scripts/tune.py --config configs/lr_search.yaml --resume
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="study YAML (see configs/quick.yaml)")
    parser.add_argument("--address", default=None, help="join a Ray cluster: auto or ray://host:10001")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted study")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="study overrides, e.g. num_samples=8")
    args = parser.parse_args(argv)

    from detune.cli import run_tune, sigterm_as_ctrl_c

    with sigterm_as_ctrl_c():  # SIGTERM stops the study like Ctrl-C: its Ray shut down, exit code 143
        return run_tune(args.config, args.overrides, resume=args.resume, address=args.address, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
