"""Benchmark: the LR finder's suggestion against the best lr0 of a small log-spaced grid search.

For each dataset (the generated shapes dataset, and ../shared COCO128 when present) it runs one LR range
test, then trains yolo11n from scratch once per grid lr0 and once at the suggested lr0, all for the same
number of epochs with the same recipe (SGD, batch 16 = nbs, 1 warmup epoch, linear decay, mosaic off).
The best grid lr0 is the one with the highest best-epoch mAP50-95; when no run reaches mAP50-95 0.01 (too
close to zero to rank: short from-scratch trainings), the lowest validation loss (box + cls + dfl) decides.
Goal: the suggestion within a factor of 3 of the best grid lr0. Results: benchmarks/LR_FINDER.md.

    .venv/bin/python scripts/bench_lr_finder.py            # the full benchmark (<= 20 min on 2 CPU cores)
    .venv/bin/python scripts/bench_lr_finder.py --quick    # a smoke version (about 2 minutes)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
COCO128 = REPO.parent / "shared" / "datasets" / "coco128.yaml"
GOAL = 3.0  # suggestion / best grid lr0 within [1/3, 3]
MAP_FLOOR = 0.01  # below this best mAP50-95, rank the grid by validation loss

# COCO128 trains 5 epochs, not 10: validating 128 images with an untrained 80-class head costs up to ~18 s
# (NMS over many low-confidence boxes), which would break the 20-minute budget on 2 cores.
FULL = {"imgsz": 128, "batch": 16, "epochs": {"shapes": 10, "coco128": 5}, "grid": (1e-3, 1.0, 5),
        "finder_iters": 100, "min_lr": 1e-4, "max_lr": 10.0, "coco_fraction": 1.0}
# smoke: shapes with 32 images at 64 px, a quarter of COCO128
QUICK = {"imgsz": 64, "batch": 8, "epochs": {"shapes": 1, "coco128": 1}, "grid": (1e-2, 1e-1, 2),
         "finder_iters": 12, "min_lr": 1e-4, "max_lr": 10.0, "coco_fraction": 0.25}


def grid_values(lo: float, hi: float, n: int) -> list[float]:
    return [float(f"{lo * (hi / lo) ** (i / (n - 1)):.3g}") for i in range(n)]


def machine_facts(threads: int | None) -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {name: metadata.version(name) for name in ("detune", "torch", "ultralytics")}
    return {"cpu": cpu, "cores": cores, "threads": threads or cores, "python": platform.python_version(),
            **versions, "load_average": [round(v, 2) for v in os.getloadavg()]}


def val_loss(record: dict[str, float]) -> float:
    return sum(record.get(f"val/{k}_loss", math.nan) for k in ("box", "cls", "dfl"))


def train_once(data: Path, lr0: float, recipe: dict[str, Any], project: Path, name: str) -> dict[str, Any]:
    """One training of the shared recipe at ``lr0``; a run that did not finish every epoch scores NaN."""
    import detune

    start = time.monotonic()
    epochs = recipe["epochs"]
    result = detune.train(model="yolo11n.yaml", data=str(data), lr0=lr0, epochs=epochs, batch=recipe["batch"],
                          nbs=recipe["batch"], imgsz=recipe["imgsz"], optimizer="SGD",
                          warmup_epochs=min(1.0, epochs - 1.0), mosaic=0.0, close_mosaic=0,
                          fraction=recipe["fraction"], device="cpu", threads=recipe["threads"], seed=0,
                          plots=False, project=str(project), name=name, exist_ok=True)
    finished = result.status == "completed" and len(result.history) == epochs
    maps = [h["metrics/mAP50-95"] for h in result.history
            if math.isfinite(h.get("metrics/mAP50-95", math.nan))]
    losses = [v for v in (val_loss(h) for h in result.history) if math.isfinite(v)]
    return {"lr0": lr0, "status": result.status, "reason": result.reason, "epochs_run": len(result.history),
            "best_map": max(maps) if finished and maps else math.nan,
            "final_map": maps[-1] if finished and maps else math.nan,
            "best_val_loss": min(losses) if finished and losses else math.nan,
            "seconds": round(time.monotonic() - start, 1)}


def best_of(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The best grid run and the criterion that chose it (runs that did not finish rank last)."""
    scored = [r for r in runs if math.isfinite(r["best_map"])]
    if scored and max(r["best_map"] for r in scored) >= MAP_FLOOR:
        return max(scored, key=lambda r: r["best_map"]), "best-epoch mAP50-95"
    scored = [r for r in runs if math.isfinite(r["best_val_loss"])]
    if not scored:
        raise RuntimeError("no grid run finished; nothing to compare with")
    criterion = f"lowest val loss (no run reached mAP50-95 {MAP_FLOOR})"
    return min(scored, key=lambda r: r["best_val_loss"]), criterion


def bench_dataset(name: str, data: Path, settings: dict[str, Any], workdir: Path, threads: int | None,
                  plots: Path | None) -> dict[str, Any]:
    """The finder, the grid and a training at the suggestion, on one dataset."""
    from detune.lr_finder import lr_find

    recipe = {"epochs": settings["epochs"][name], "batch": settings["batch"], "imgsz": settings["imgsz"],
              "fraction": settings["coco_fraction"] if name == "coco128" else 1.0, "threads": threads}
    print(f"\n== {name}: {data}; recipe {recipe}", flush=True)
    start = time.monotonic()
    finder = lr_find("yolo11n.yaml", str(data), optimizer="SGD", batch=recipe["batch"], imgsz=recipe["imgsz"],
                     num_iters=settings["finder_iters"], min_lr=settings["min_lr"], max_lr=settings["max_lr"],
                     device="cpu", threads=threads, seed=0, fraction=recipe["fraction"])
    finder_seconds = round(time.monotonic() - start, 1)
    if plots is not None:
        print("plot:", finder.plot(plots / f"{name}_lr_finder.png"))
    found = finder.suggestions()
    print(f"finder: {len(finder.lrs)}/{finder.num_iters} steps in {finder_seconds} s; stop: "
          f"{finder.stop_reason}; suggestions: {fmt(found)}", flush=True)
    runs = []
    for lr0 in grid_values(*settings["grid"]):
        runs.append(train_once(data, lr0, recipe, workdir / name, f"grid_{lr0:g}"))
        print(format_run(runs[-1]), flush=True)
    best, criterion = best_of(runs)
    suggestion = found["steepest"]
    at_suggestion = None
    if suggestion is not None:
        at_suggestion = train_once(data, float(f"{suggestion:.3g}"), recipe, workdir / name, "suggested")
        print("at the suggestion:", format_run(at_suggestion), flush=True)
    ratio = suggestion / best["lr0"] if suggestion else math.nan
    within = math.isfinite(ratio) and 1 / GOAL <= ratio <= GOAL
    print(f"best grid lr0 {best['lr0']:g} by {criterion}; suggestion {suggestion or math.nan:.3g}; "
          f"ratio {ratio:.2f} -> {'within' if within else 'NOT within'} a factor of {GOAL:g}", flush=True)
    return {"dataset": name, "data": str(data), "recipe": recipe,
            "finder": {"seconds": finder_seconds, "steps": len(finder.lrs), "num_iters": finder.num_iters,
                       "stop_reason": finder.stop_reason, "suggestions": found},
            "grid": runs, "best": best, "criterion": criterion, "at_suggestion": at_suggestion,
            "ratio": ratio, "within_goal": within, "seconds": round(time.monotonic() - start, 1)}


def fmt(found: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {v:.3g}" if v is not None else f"{k} None" for k, v in found.items())


def format_run(r: dict[str, Any]) -> str:
    return (f"  lr0={r['lr0']:<8g} {r['status']:<9} epochs={r['epochs_run']:<3} "
            f"best mAP50-95={r['best_map']:.4f} best val loss={r['best_val_loss']:.3f} ({r['seconds']} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke version: tiny data, 1 epoch, 2 lr0s")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: every core)")
    parser.add_argument("--datasets", nargs="+", default=["shapes", "coco128"], choices=["shapes", "coco128"])
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--plots", type=Path, default=None, help="write the finder plots to this folder")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    os.environ.setdefault("DETUNE_HOME", str(Path(tempfile.gettempdir()) / "detune-bench-home"))

    from detune.datasets import check_dataset, make_shapes
    from detune.training import resolve_data

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print("date:", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    facts = machine_facts(args.threads)
    print("machine:", json.dumps(facts))
    print("settings:", json.dumps({**settings, "grid_values": grid_values(*settings["grid"])}))
    results = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="detune-bench-") as tmp:
        work = Path(tmp)
        for name in args.datasets:
            if name == "shapes":
                data = (make_shapes(work / "shapes", n_train=32, n_val=16, imgsz=64) if args.quick
                        else resolve_data("shapes"))
            elif not COCO128.is_file():
                print(f"\n== coco128: skipped, {COCO128} is absent")
                continue
            else:  # Ultralytics resolves a relative `path:` against the CWD: hand it absolute paths
                data = check_dataset(COCO128).write_yaml(work / "coco128.yaml")
            results.append(bench_dataset(name, data, settings, work, args.threads, args.plots))
    facts["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    print("\n== summary (load average at end:", facts["load_average_end"], ")")
    for r in results:
        print(f"{r['dataset']:<8} finder ({fmt(r['finder']['suggestions'])}) vs best grid lr0 "
              f"{r['best']['lr0']:g} "
              f"[{r['criterion']}]: ratio {r['ratio']:.2f}, {'within' if r['within_goal'] else 'MISSED'} "
              f"factor {GOAL:g}; {r['seconds']} s")
    print(f"total: {round(time.monotonic() - started, 1)} s")
    if args.json:
        report = {"machine": facts, "settings": settings, "results": results}
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
