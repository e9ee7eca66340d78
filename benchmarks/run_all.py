"""Run every benchmark in turn and assemble RESULTS.md from their sections.

    .venv/bin/python benchmarks/run_all.py            # the whole set: hours on 2 CPU cores (finetune.py: most)
    .venv/bin/python benchmarks/run_all.py --gpu      # on a GPU node
    .venv/bin/python benchmarks/run_all.py --quick    # smoke version of each (a few minutes)
    .venv/bin/python benchmarks/run_all.py --render   # only rebuild RESULTS.md from results/
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common

HERE = Path(__file__).resolve().parent
ORDER = ("overhead", "ray_overhead", "search", "lr_finder", "lr_finder_methods", "pretrain", "finetune", "optimizers")
SECTIONS = ("overhead", "search", "ray_overhead", "lr_finder", "lr_finder_methods", "pretrain", "finetune",
            "optimizers")


def summary(out: Path) -> list[str]:
    """One line per goal, read from results/<name>.json."""
    def load(name: str) -> dict[str, Any] | None:
        path = out / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    rows = ["| benchmark | goal | measured |", "|---|---|---|"]
    if o := load("overhead"):
        rows.append(f"| 1. overhead, wall time per epoch | detune / YOLO <= 1.02 | "
                    f"{_common.ratio_text(o['time_ratio'], 1.02)}; peak memory ratio {o['rss_ratio']:.3f} |")
    for dataset, d in ((load("search") or {}).get("datasets") or {}).items():
        for other, goal in (("ultralytics_ga", 1 / 3), ("ultralytics_ray", 1 / 2)):
            rows.append(f"| 2. search, {dataset}: detune default's trial-epochs / {other}'s | <= {goal:.3g} | "
                        f"{search_verdict(d, other, goal)} |")
    if r := load("ray_overhead"):
        rows.append(f"| 3. Ray overhead per trial beyond model build | <= 1.5 s | "
                    f"{_common.ratio_text(r['median_overhead_s'], 1.5)} s; "
                    f"cluster start {r['cluster_start_s']:.1f} s |")
    for x in (load("lr_finder") or {}).get("results", []):
        rows.append(f"| 4. LR finder, {x['dataset']} {x['optimizer']}: suggestion / best grid lr0 | within 3x | "
                    f"{x['ratio']:.2f} ({'met' if x['within_goal'] else 'MISSED'}) |")
    for target, t in ((load("finetune") or {}).get("targets") or {}).items():
        rows += [f"| 5. searches of issue 15, {target} | issue 15 | {line.removeprefix('- ')} |"
                 for line in t.get("goals", [])]
    return rows


def search_verdict(d: dict[str, Any], other: str, goal: float) -> str:
    theirs, ratio = d["reach"][other], d["ratios"].get(other)
    if d["reference"] <= 0:
        return "not comparable: no trial of any strategy left mAP50-95 0 at this budget"
    if ratio is not None:
        return _common.ratio_text(ratio, goal) + ("" if theirs is not None else f" ({other} never reached it)")
    best = d["curves"]["detune_default"][-1][1]
    them = f"{other} reached it in {theirs}" if theirs is not None else f"{other} did not reach it either"
    return (f"MISSED: detune default never reached the target {d['target']:.3f} (best {best:.3f} in "
            f"{d['spent']['detune_default']} trial-epochs); {them}")


def render(out: Path) -> Path:
    sections = [(out / f"{name}.md").read_text() for name in SECTIONS if (out / f"{name}.md").is_file()]
    path = HERE / "RESULTS.md" if out == _common.RESULTS else out / "RESULTS.md"
    folder = os.path.relpath(out, path.parent)
    sections = [re.sub(r"\]\(([\w.-]+\.png)\)", rf"]({folder}/\1)", s) for s in sections]  # figures beside the JSON
    text = "\n".join([
        "# Benchmarks: latest results", "",
        "Written by `benchmarks/run_all.py` from `benchmarks/results/` (each section has its own date, machine and "
        "command; the JSON files beside them hold every figure). Protocols: the docstring of each script. Where a "
        "goal is missed, the section says by how much; `benchmarks/README.md` discusses why.", "",
        "## Summary", "", *summary(out), "", *sections])
    path.write_text(text)
    return path


def main() -> int:
    p = _common.parser(__doc__)
    p.add_argument("--render", action="store_true", help="only rebuild RESULTS.md from the results folder")
    p.add_argument("--only", nargs="+", choices=ORDER, default=list(ORDER))
    args = p.parse_args()
    if not args.render:
        flags = [*(["--gpu"] if args.gpu else []), *(["--quick"] if args.quick else []),
                 *(["--out", str(args.out)] if args.out != _common.RESULTS else [])]
        for name in args.only:
            start = time.monotonic()
            print(f"\n######## {name}", flush=True)
            code = subprocess.call([sys.executable, str(HERE / f"{name}.py"), *flags])
            print(f"######## {name}: exit {code}, {time.monotonic() - start:.0f} s", flush=True)
            if code != 0:
                return code
    print("wrote", render(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
