#!/usr/bin/env python
"""Run or resume a detune study on this node or a Ray cluster (thin: parse, call ``detune.tuning.tune``).

    python scripts/tune.py --config configs/lr_search.yaml --address auto num_samples=32 train.epochs=50
    python scripts/tune.py --config configs/lr_search.yaml --resume

For a live trial table use ``detune tune`` (the same study, the same library call).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from typing import Any

INTERRUPTED, TERMINATED = 130, 143  # 128 + SIGINT / SIGTERM, as shells report them


class _Terminated(KeyboardInterrupt):
    """SIGTERM raised as Ctrl-C, so the study's Ray is shut down with its workers before the exit."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="study YAML (see configs/quick.yaml)")
    parser.add_argument("--address", default=None, help="join a Ray cluster: auto or ray://host:10001")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted study")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="study overrides, e.g. num_samples=8")
    args = parser.parse_args(argv)

    from detune._progress import tune_summary
    from detune.errors import DetuneError
    from detune.study import load_study, parse_study_overrides
    from detune.tuning import tune

    resume_cmd = shlex.join([sys.argv[0], "--config", args.config, *args.overrides, "--resume"])
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.time()
    try:
        study = load_study(args.config, **parse_study_overrides(args.overrides))
        result = tune(study, resume=args.resume, address=args.address)
    except KeyboardInterrupt as e:
        if args.debug:
            raise
        print(f"interrupted: resume the study with: {resume_cmd}", file=sys.stderr)
        return TERMINATED if isinstance(e, _Terminated) else INTERRUPTED
    except (DetuneError, ValueError, FileNotFoundError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    interrupted = any(t["status"] == "interrupted" for t in result.trials)
    _, lines = tune_summary(result, study, report=result.report, log=None, elapsed=time.time() - started,
                            interrupted=interrupted)
    print("\n".join(lines))
    if interrupted:
        print(f"interrupted: resume the study with: {resume_cmd}", file=sys.stderr)
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
