"""Benchmark: the overhead of detune.train over a bare YOLO.train with the same settings.

Runs the two alternately (detune, yolo, yolo, detune, ...), each in a fresh Python process so neither
profits from the other's imports or caches, and compares the median wall time per epoch of the ``train``
call and the median peak resident memory of the process. Goal: time ratio <= 1.02.

    .venv/bin/python benchmarks/overhead.py            # 5 pairs, 4 epochs each (about 4 min on 2 cores)
    .venv/bin/python benchmarks/overhead.py --gpu      # on a GPU node: device 0, bigger images
"""

from __future__ import annotations

import csv
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common

GOAL = 1.02
CPU = {"pairs": 5, "epochs": 4, "imgsz": 64, "batch": 16, "n_train": 128, "device": "cpu"}
GPU = {"pairs": 5, "epochs": 4, "imgsz": 320, "batch": 32, "n_train": 512, "device": "0"}
QUICK = {"pairs": 1, "epochs": 2, "imgsz": 32, "batch": 8, "n_train": 16, "device": "cpu"}


def settings(s: dict[str, Any], data: Path, project: Path, name: str) -> dict[str, Any]:
    """The training both sides run: SGD, lr0 0.01, linear decay per epoch, no plots. No warmup: Ultralytics' warmup also
    ramps gradient accumulation, detune's does not, so the two would train different models whose validation
    (NMS over their boxes) costs differ; without it both train the same model, which the final train loss shows."""
    return {"model": "yolo11n.yaml", "data": str(data), "epochs": s["epochs"], "imgsz": s["imgsz"],
            "batch": s["batch"], "device": s["device"], "optimizer": "SGD", "lr0": 0.01, "warmup_epochs": 0.0,
            "workers": 0, "plots": False, "seed": 0, "project": str(project), "name": name, "exist_ok": True}


def child(side: str, args: dict[str, Any]) -> dict[str, Any]:
    """One training in this process; the clock covers the train call only, not the imports."""
    from detune import _runtime

    _runtime.prepare()  # the same offline, quiet Ultralytics settings for both sides
    import ultralytics  # noqa: F401 - imported before the clock on both sides

    start = time.perf_counter()
    if side == "detune":
        import detune

        # 1 thread: Ultralytics' own CPU choice here (min(8, cores - 1)); lr updated per epoch as YOLO does,
        # so both sides train exactly the same model (the final losses show it)
        result = detune.train(threads=1, scheduler_interval="epoch", **args)
        save_dir = result.save_dir
    else:
        from ultralytics import YOLO

        model = YOLO(args.pop("model"))
        model.train(verbose=False, **args)
        save_dir = model.trainer.save_dir
    wall = time.perf_counter() - start
    with open(Path(save_dir) / "results.csv") as f:
        rows = list(csv.DictReader(f))
    elapsed = [float(row["time"]) for row in rows]
    return {"side": side, "wall": wall, "epochs": len(elapsed),
            "epoch_times": [b - a for a, b in zip([0.0, *elapsed[:-1]], elapsed, strict=True)],
            "final_loss": sum(float(rows[-1][f"train/{k}_loss"]) for k in ("box", "cls", "dfl")),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(side: str, args: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", side, json.dumps(args)], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{side} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], json.loads(sys.argv[3]))))
        return 0
    args = _common.parser(__doc__).parse_args()
    s = QUICK if args.quick else GPU if args.gpu else CPU
    head = _common.start("overhead")
    data = _common.shapes(imgsz=s["imgsz"], n_train=s["n_train"])
    runs: dict[str, list[dict[str, Any]]] = {"detune": [], "yolo": []}
    with tempfile.TemporaryDirectory(prefix="detune-overhead-") as tmp:
        for i in range(s["pairs"]):
            for side in (("detune", "yolo") if i % 2 == 0 else ("yolo", "detune")):
                r = run_child(side, settings(s, data, Path(tmp), f"{side}{i}"))
                runs[side].append(r)
                print(f"pair {i + 1}/{s['pairs']} {side:<6} wall {r['wall']:6.1f} s  per epoch "
                      f"{r['wall'] / r['epochs']:5.2f} s  peak RSS {r['max_rss_mb']:.0f} MB  "
                      f"final train loss {r['final_loss']:.4f}", flush=True)

    def med(side: str, f: Any) -> float:
        return statistics.median(f(r) for r in runs[side])

    per_epoch = {side: med(side, lambda r: r["wall"] / r["epochs"]) for side in runs}
    steady = {side: med(side, lambda r: statistics.median(r["epoch_times"][1:] or r["epoch_times"])) for side in runs}
    rss = {side: med(side, lambda r: r["max_rss_mb"]) for side in runs}
    pair_ratios = [d["wall"] / y["wall"] for d, y in zip(runs["detune"], runs["yolo"], strict=True)]
    figures = {"settings": s, "runs": runs, "per_epoch_s": per_epoch, "steady_epoch_s": steady, "peak_rss_mb": rss,
               "time_ratio": per_epoch["detune"] / per_epoch["yolo"], "pair_ratios": pair_ratios,
               "steady_ratio": steady["detune"] / steady["yolo"], "rss_ratio": rss["detune"] / rss["yolo"]}
    d, y = "detune", "yolo"
    ratios = ", ".join(f"{r:.3f}" for r in pair_ratios)
    losses = ", ".join(f"{a['final_loss']:.4f}/{b['final_loss']:.4f}" for a, b in zip(runs[d], runs[y], strict=True))
    md = f"""## 1. Overhead: `detune.train` vs bare `YOLO.train`

Same settings on both sides (yolo11n.yaml from scratch, shapes {s['n_train']} train images at {s['imgsz']} px,
{s['epochs']} epochs, batch {s['batch']}, SGD lr0 0.01, linear decay per epoch, no warmup, plots off, device
{s['device']}, 1 torch thread = Ultralytics' own CPU choice here), {s['pairs']} pairs run alternately, each
run in a fresh process; the clock covers the `train` call only.

| | detune.train | YOLO.train | ratio |
|---|---|---|---|
| median wall time per epoch (whole call / epochs) | {per_epoch[d]:.2f} s | {per_epoch[y]:.2f} s | \
**{_common.ratio_text(figures['time_ratio'], GOAL)}** |
| median epoch time after the first (results.csv) | {steady[d]:.2f} s | {steady[y]:.2f} s | \
{figures['steady_ratio']:.3f} |
| median peak RSS of the process | {rss[d]:.0f} MB | {rss[y]:.0f} MB | {figures['rss_ratio']:.3f} |

Per-pair wall time ratios: {ratios}. Final train loss (box + cls + dfl), detune / YOLO: {losses}
(equal: both sides trained the same model). No warmup on either side: Ultralytics' warmup also ramps gradient
accumulation, detune's does not, so with warmup they train different models whose validation costs differ.
"""
    _common.save(args.out, head, figures, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
