"""Benchmark: which LR finder suggestion method (steepest, valley, min_div_10) to make the default.

No grid is trained here (benchmark 4, ``lr_finder.py``, already did that and recorded the best grid lr0 per
dataset and optimizer in ``results/lr_finder.json``). This runs the finder only, with benchmark 4's
settings (yolo11n from scratch, batch 16 = nbs, imgsz 96, min_lr = grid low / 10, max_lr 10, now the
default 100 steps) for several seeds, records every curve, and scores each method by

- its distance to benchmark 4's best grid lr0 (|log10(suggestion / best)|, goal: within a factor of 3), and
- its spread over seeds (largest / smallest suggestion for the same data and optimizer): a method whose
  answer moves with the batch order is not reliable, whatever its average.

It also replays the no-signal rule on each curve. ``--quick`` runs one seed on shapes only.

    .venv/bin/python benchmarks/lr_finder_methods.py           # 12 sweeps, about 6 min on 2 CPU cores
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import _common

GRID_LOW = {"SGD": 1e-3, "AdamW": 1e-4}  # benchmark 4's grids start here; the sweep starts 10x lower
SETTINGS = {"imgsz": 96, "batch": 16, "max_lr": 10.0, "seeds": [0, 1, 2], "device": "cpu"}
QUICK = {"imgsz": 32, "batch": 8, "max_lr": 10.0, "seeds": [0], "device": "cpu"}
METHODS = ("steepest", "valley", "min_div_10")


def sweep(data: Path, optimizer: str, seed: int, settings: dict[str, Any]) -> dict[str, Any]:
    from detune.lr_finder import lr_find

    start = time.monotonic()
    result = lr_find("yolo11n.yaml", str(data), optimizer=optimizer, batch=settings["batch"],
                     imgsz=settings["imgsz"], min_lr=GRID_LOW[optimizer] / 10, max_lr=settings["max_lr"],
                     device=settings["device"], threads=1, seed=seed)
    found = {m: result.suggest(m) for m in METHODS}
    return {"optimizer": optimizer, "seed": seed, "seconds": round(time.monotonic() - start, 1),
            "points": len(result.lrs), "stop_reason": result.stop_reason,
            "suggestions": {m: f.lr for m, f in found.items()}, "reason": found["valley"].reason,
            "lrs": result.lrs, "losses": [v if math.isfinite(v) else None for v in result.losses]}


def best_grid() -> dict[tuple[str, str], dict[str, Any]]:
    """Benchmark 4's best grid lr0 (and the criterion) per (dataset, optimizer)."""
    recorded = json.loads((_common.RESULTS / "lr_finder.json").read_text())
    return {(r["dataset"], r["optimizer"]): {"lr0": r["best"]["lr0"], "criterion": r["criterion"],
                                              "at_suggestion": r["at_suggestion"]} for r in recorded["results"]}


def score(runs: list[dict[str, Any]], best: float) -> dict[str, dict[str, float]]:
    out = {}
    for m in METHODS:
        values = [r["suggestions"][m] for r in runs if r["suggestions"][m] is not None]
        if not values:
            out[m] = {"n": 0, "median": math.nan, "log10_error": math.nan, "spread": math.nan}
            continue
        median = statistics.median(values)
        errors = [abs(math.log10(v / best)) for v in values]
        out[m] = {"n": len(values), "median": median, "log10_error": statistics.mean(errors),
                  "within_3x": sum(e <= math.log10(3) for e in errors), "spread": max(values) / min(values)}
    return out


def markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    lines = ["## 4b. LR finder: which suggestion method", "",
             f"Finder only (benchmark 4's settings: yolo11n from scratch, batch {settings['batch']} = nbs, imgsz "
             f"{settings['imgsz']}, min_lr = grid low / 10, max_lr {settings['max_lr']:g}, the default 100 steps), "
             f"seeds {settings['seeds']}; each method's suggestions against benchmark 4's best grid lr0. error: mean "
             "|log10(suggestion / best)| over seeds (0.48 = a factor of 3); spread: largest / smallest suggestion "
             "over seeds.", "",
             "| dataset | optimizer | best grid lr0 (by) | steepest: median, error, spread | "
             "valley: median, error, spread | min_div_10: median, error, spread |", "|---|---|---|---|---|---|"]
    for row in rows:
        cells = []
        for m in METHODS:
            s = row["scores"][m]
            cells.append(f"{s['median']:.3g}, {s['log10_error']:.2f}, x{s['spread']:.1f}" if s["n"] else "none")
        by = "mAP" if row["criterion"].startswith("best") else "val loss"
        lines.append(f"| {row['dataset']} | {row['optimizer']} | {row['best']:g} ({by}) | " + " | ".join(cells) + " |")
    lines.append("\nEvery curve (lrs, batch losses) and suggestion is in `results/lr_finder_methods.json`.")
    return "\n".join(lines)


def main() -> int:
    p = _common.parser(__doc__)
    p.add_argument("--datasets", nargs="+", default=["shapes", "coco128"], choices=["shapes", "coco128"])
    args = p.parse_args()
    settings = QUICK if args.quick else SETTINGS
    datasets = ["shapes"] if args.quick else args.datasets
    head = _common.start("lr_finder_methods")
    grid = best_grid()
    rows = []
    import tempfile

    with tempfile.TemporaryDirectory(prefix="detune-lrm-") as tmp:
        for name in datasets:
            data = _common.shapes(imgsz=settings["imgsz"]) if name == "shapes" else _common.coco128(Path(tmp))
            if data is None:
                continue
            for optimizer in GRID_LOW:
                runs = [sweep(data, optimizer, seed, settings) for seed in settings["seeds"]]
                for r in runs:
                    print(f"{name} {optimizer} seed {r['seed']}: {r['points']} points in {r['seconds']} s; "
                          f"{r['suggestions']}; {r['reason'] or 'signal'}", flush=True)
                best = grid[(name, optimizer)]
                rows.append({"dataset": name, "optimizer": optimizer, "best": best["lr0"],
                             "criterion": best["criterion"], "scores": score(runs, best["lr0"]), "runs": runs})
    _common.save(args.out, head, {"settings": settings, "results": rows}, markdown(rows, settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
