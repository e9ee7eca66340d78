"""Benchmark: the LR finder's suggestion against the best lr0 of a small log-spaced grid search.

For each dataset (the generated shapes dataset, and ../shared COCO128 when present) and optimizer (SGD,
AdamW) it runs one LR range test, then trains yolo11n from scratch once per grid lr0 and once at the
suggested lr0, all for the same number of epochs with the same recipe (batch 16 = nbs, 1 warmup epoch,
linear decay, mosaic off, seed 0). The best grid lr0 is the one with the highest best-epoch mAP50-95; when no
run reaches mAP50-95 0.01 (too close to zero to rank: short from-scratch trainings), the lowest validation
loss (box + cls + dfl) decides. Goal: the suggestion within a factor of 3 of the best grid lr0.

    .venv/bin/python benchmarks/lr_finder.py            # about 20 min on 2 CPU cores
    .venv/bin/python benchmarks/lr_finder.py --quick    # a smoke version (about 3 minutes)
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import _common

GOAL = 3.0  # suggestion / best grid lr0 within [1/3, 3]
MAP_FLOOR = 0.01  # below this best mAP50-95, rank the grid by validation loss
GRIDS = {"SGD": (1e-3, 1.0, 5), "AdamW": (1e-4, 1e-1, 5)}  # log-spaced, 3 decades around each one's usual lr0
# COCO128 trains fewer epochs: validating 128 images with an untrained 80-class head costs up to ~18 s
CPU = {"imgsz": 96, "batch": 16, "epochs": {"shapes": 8, "coco128": 4}, "finder_iters": 80, "max_lr": 10.0,
       "fraction": {"shapes": 1.0, "coco128": 1.0}, "device": "cpu"}
GPU = {"imgsz": 320, "batch": 32, "epochs": {"shapes": 20, "coco128": 20}, "finder_iters": 200, "max_lr": 10.0,
       "fraction": {"shapes": 1.0, "coco128": 1.0}, "device": "0"}
QUICK = {"imgsz": 32, "batch": 8, "epochs": {"shapes": 1, "coco128": 1}, "finder_iters": 12, "max_lr": 10.0,
         "fraction": {"shapes": 1.0, "coco128": 0.25}, "device": "cpu"}


def grid_values(lo: float, hi: float, n: int) -> list[float]:
    return [float(f"{lo * (hi / lo) ** (i / (n - 1)):.3g}") for i in range(n)]


def val_loss(record: dict[str, float]) -> float:
    return sum(record.get(f"val/{k}_loss", math.nan) for k in ("box", "cls", "dfl"))


def train_once(data: Path, lr0: float, recipe: dict[str, Any], project: Path, name: str) -> dict[str, Any]:
    """One training of the shared recipe at ``lr0``; a run that did not finish every epoch scores NaN."""
    import detune

    start = time.monotonic()
    epochs = recipe["epochs"]
    result = detune.train(model="yolo11n.yaml", data=str(data), lr0=lr0, epochs=epochs, batch=recipe["batch"],
                          nbs=recipe["batch"], imgsz=recipe["imgsz"], optimizer=recipe["optimizer"],
                          warmup_epochs=min(1.0, epochs - 1.0), mosaic=0.0, close_mosaic=0,
                          fraction=recipe["fraction"], device=recipe["device"], threads=1, seed=0,
                          plots=False, project=str(project), name=name, exist_ok=True)
    finished = result.status == "completed" and len(result.history) == epochs
    maps = [h["metrics/mAP50-95"] for h in result.history
            if math.isfinite(h.get("metrics/mAP50-95", math.nan))]
    # a val loss of exactly 0 is Ultralytics' placeholder when the losses were not finite: not a real value
    losses = [v for v in (val_loss(h) for h in result.history) if math.isfinite(v) and v > 0]
    return {"lr0": lr0, "status": result.status, "reason": result.reason, "epochs_run": len(result.history),
            "best_map": max(maps) if finished and maps else math.nan,
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


def bench(name: str, optimizer: str, data: Path, settings: dict[str, Any], workdir: Path,
          plots: Path) -> dict[str, Any]:
    """The finder, the grid and a training at the suggestion, for one dataset and optimizer."""
    from detune.lr_finder import DEFAULT_METHOD, lr_find

    recipe = {"epochs": settings["epochs"][name], "batch": settings["batch"], "imgsz": settings["imgsz"],
              "fraction": settings["fraction"][name], "optimizer": optimizer, "device": settings["device"]}
    lo, hi, n = GRIDS[optimizer]
    n = settings.get("grid_points", n)
    print(f"\n== {name}, {optimizer}: recipe {recipe}", flush=True)
    start = time.monotonic()
    finder = lr_find("yolo11n.yaml", str(data), optimizer=optimizer, batch=recipe["batch"], imgsz=recipe["imgsz"],
                     num_iters=settings["finder_iters"], min_lr=lo / 10, max_lr=settings["max_lr"],
                     device=recipe["device"], threads=1, seed=0, fraction=recipe["fraction"])
    finder_seconds = round(time.monotonic() - start, 1)
    plot = finder.plot(plots / f"lr_finder_{name}_{optimizer}.png")
    found = finder.suggestions()
    print(f"finder: {len(finder.lrs)}/{finder.num_iters} steps in {finder_seconds} s; stop: "
          f"{finder.stop_reason}; suggestions: {fmt(found)}", flush=True)
    runs = []
    for lr0 in grid_values(lo, hi, n):
        runs.append(train_once(data, lr0, recipe, workdir / name / optimizer, f"grid_{lr0:g}"))
        print(format_run(runs[-1]), flush=True)
    best, criterion = best_of(runs)
    suggestion = found[DEFAULT_METHOD]
    at_suggestion = None
    if suggestion is not None:
        at_suggestion = train_once(data, float(f"{suggestion:.3g}"), recipe, workdir / name / optimizer, "suggested")
        print("at the suggestion:", format_run(at_suggestion), flush=True)
    ratio = suggestion / best["lr0"] if suggestion else math.nan
    within = math.isfinite(ratio) and 1 / GOAL <= ratio <= GOAL
    print(f"best grid lr0 {best['lr0']:g} by {criterion}; suggestion {suggestion or math.nan:.3g}; "
          f"ratio {ratio:.2f} -> {'within' if within else 'NOT within'} a factor of {GOAL:g}", flush=True)
    return {"dataset": name, "optimizer": optimizer, "recipe": recipe, "plot": plot.name,
            "finder": {"seconds": finder_seconds, "steps": len(finder.lrs), "num_iters": finder.num_iters,
                       "stop_reason": finder.stop_reason, "suggestions": found, "method": DEFAULT_METHOD,
                       "lrs": finder.lrs, "losses": [v if math.isfinite(v) else None for v in finder.losses]},
            "grid": runs, "best": best, "criterion": criterion, "at_suggestion": at_suggestion,
            "ratio": ratio, "within_goal": within, "seconds": round(time.monotonic() - start, 1)}


def fmt(found: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {v:.3g}" if v is not None else f"{k} None" for k, v in found.items())


def format_run(r: dict[str, Any]) -> str:
    return (f"  lr0={r['lr0']:<8g} {r['status']:<9} epochs={r['epochs_run']:<3} "
            f"best mAP50-95={r['best_map']:.4f} best val loss={r['best_val_loss']:.3f} ({r['seconds']} s)")


def markdown(results: list[dict[str, Any]], settings: dict[str, Any], skipped: list[str]) -> str:
    lines = ["## 4. LR finder accuracy: suggestion vs the best lr0 of a grid", "",
             f"yolo11n.yaml from scratch, batch {settings['batch']} (= nbs: one optimizer step per batch), imgsz "
             f"{settings['imgsz']}, 1 warmup epoch, linear decay, mosaic off, seed 0; epochs per training: "
             + ", ".join(f"{k} {v}" for k, v in settings["epochs"].items()) + ". Finder: "
             f"`lr_find(num_iters={settings['finder_iters']}, min_lr=grid_low/10, max_lr={settings['max_lr']:g})`, "
             "suggestion `valley` (`steepest` before 2026-12-03). Grid: 5 log-spaced lr0 over 3 decades (SGD "
             "1e-3..1, AdamW 1e-4..0.1), plus "
             f"one training at the suggestion. Best grid lr0: highest best-epoch mAP50-95, or the lowest val loss "
             f"when no run reaches mAP50-95 {MAP_FLOOR}. Goal: suggestion / best within a factor of {GOAL:g}.", "",
             "| dataset | optimizer | suggestion (steepest / valley) | best grid lr0 (by) | ratio | goal | "
             "mAP50-95 at best grid lr0 / at suggestion |", "|---|---|---|---|---|---|---|"]
    for r in results:
        f = r["finder"]["suggestions"]
        at = r["at_suggestion"] or {}
        by = "mAP" if r["criterion"].startswith("best") else "val loss"
        gap = max(r["ratio"], 1 / r["ratio"]) if r["ratio"] > 0 else math.inf
        goal = "met" if r["within_goal"] else f"MISSED (a factor of {gap:.1f})"
        lines.append(f"| {r['dataset']} | {r['optimizer']} | {f['steepest'] or math.nan:.3g} / "
                     f"{f['valley'] or math.nan:.3g} | {r['best']['lr0']:g} ({by}) | {r['ratio']:.2f} | {goal} | "
                     f"{r['best']['best_map']:.4f} / {at.get('best_map', math.nan):.4f} |")
    lines += [f"\n{name}: skipped, {_common.COCO128} is absent." for name in skipped]
    lines.append("\nEvery grid run (lr0, status, best mAP50-95, best val loss, seconds) is in "
                 "`results/lr_finder.json`; "
                 "the finder curves: " + ", ".join(f"[{r['dataset']} {r['optimizer']}]({r['plot']})" for r in results)
                 + ".")
    return "\n".join(lines)


def main() -> int:
    p = _common.parser(__doc__)
    p.add_argument("--datasets", nargs="+", default=["shapes", "coco128"], choices=["shapes", "coco128"])
    p.add_argument("--optimizers", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    args = p.parse_args()
    settings = QUICK if args.quick else GPU if args.gpu else CPU
    if args.quick:
        settings = {**settings, "grid_points": 2}
    head = _common.start("lr_finder")
    results, skipped = [], []
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="detune-lrf-") as tmp:
        for name in args.datasets:
            data = (_common.shapes(imgsz=settings["imgsz"]) if name == "shapes" else _common.coco128(Path(tmp)))
            if data is None:
                skipped.append(name)
                continue
            for optimizer in args.optimizers:
                results.append(bench(name, optimizer, data, settings, Path(tmp), args.out))
    _common.save(args.out, head, {"settings": settings, "results": results}, markdown(results, settings, skipped))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
