"""Measure how well yolo11n (built from yolo11n.yaml) learns the generated shapes dataset, per lr0.

Trains one run per lr0, one at a time, with plain Ultralytics in detune's offline/quiet environment,
and prints a table of final mAP50 / mAP50-95 and wall time. Results: datasets/SHAPES-MEASUREMENT.md.

    .venv/bin/python scripts/measure_shapes.py --lr0 0.001 0.01 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detune.datasets import make_shapes_from_spec, shapes_spec  # noqa: E402

# The recommended training settings for the shapes dataset (see datasets/SHAPES-MEASUREMENT.md).
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 20,
    "imgsz": 128,
    "batch": 16,
    "nbs": 16,  # = batch: every batch is one optimizer step (Ultralytics' nbs=64 accumulates 4 batches)
    "optimizer": "SGD",  # "auto" ignores lr0
    "momentum": 0.937,
    "warmup_epochs": 1.0,
    "mosaic": 0.0,  # mosaic at 128 px halves every object (all measured runs had it off)
    "close_mosaic": 0,
    "workers": 0,
    "cache": "ram",
    "amp": False,
    "plots": False,
    "save": False,
    "val": True,
    "seed": 0,
    "deterministic": True,
    "device": "cpu",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lr0", type=float, nargs="+", default=[0.001, 0.01, 0.1], help="lr0 values, one run each"
    )
    parser.add_argument(
        "--spec", type=Path, default=REPO / "datasets" / "shapes.yaml", help="shapes spec YAML"
    )
    parser.add_argument("--root", type=Path, default=REPO / "datasets" / "shapes", help="dataset folder")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (Ultralytics pins 1 on 2 cores)"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override a training setting, e.g. --set epochs=10 mosaic=1.0",
    )
    parser.add_argument(
        "--spec-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override a dataset spec field, e.g. --spec-set n_train=128",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    return parser.parse_args(argv)


def _parse_pairs(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def train_once(
    data: Path, lr0: float, settings: dict[str, Any], threads: int, project: Path
) -> dict[str, Any]:
    """One training run; returns final metrics, per-epoch mAP50 and timings."""
    import torch
    from ultralytics import YOLO

    per_epoch: list[float] = []
    epoch_times: list[float] = []
    clock = {"t": time.perf_counter()}

    def on_train_start(trainer: Any) -> None:
        torch.set_num_threads(threads)  # Ultralytics sets min(8, cpu_count - 1) = 1 thread on 2 cores
        clock["t"] = time.perf_counter()

    def on_fit_epoch_end(trainer: Any) -> None:
        if trainer.epoch >= trainer.epochs:  # final_eval fires this hook once more; skip it
            return
        now = time.perf_counter()
        epoch_times.append(now - clock["t"])
        clock["t"] = now
        per_epoch.append(float(trainer.metrics.get("metrics/mAP50(B)", 0.0)))

    model = YOLO("yolo11n.yaml")
    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_fit_epoch_end", on_fit_epoch_end)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.train(data=str(data), lr0=lr0, project=str(project), name=f"lr0_{lr0:g}", exist_ok=True, **settings)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    metrics = model.trainer.metrics
    return {
        "lr0": lr0,
        "mAP50": float(metrics["metrics/mAP50(B)"]),
        "mAP50-95": float(metrics["metrics/mAP50-95(B)"]),
        "best_mAP50": max(per_epoch, default=0.0),
        "wall_s": wall,
        "cpu_s": cpu,  # CPU seconds of all threads: less sensitive than wall time to other jobs on the box
        "s_per_epoch": sum(epoch_times) / max(len(epoch_times), 1),
        "mAP50_per_epoch": per_epoch,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("DETUNE_HOME", str(Path(tempfile.gettempdir()) / "detune-measure"))
    from detune._runtime import prepare

    prepare()  # offline, quiet, private Ultralytics settings: must run before ultralytics is imported
    spec = shapes_spec(args.spec, **_parse_pairs(args.spec_set))
    data = make_shapes_from_spec(args.root, spec)
    settings = {**TRAIN_DEFAULTS, **_parse_pairs(args.set)}
    print(f"data: {data}\nspec: {spec}\nsettings: {settings}\nthreads: {args.threads}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="detune-measure-runs-") as project:
        for lr0 in args.lr0:
            result = train_once(data, lr0, settings, args.threads, Path(project))
            results.append(result)
            curve = " ".join(f"{v:.2f}" for v in result["mAP50_per_epoch"])
            print(
                f"lr0={lr0:<8g} mAP50={result['mAP50']:.3f} mAP50-95={result['mAP50-95']:.3f} "
                f"best_mAP50={result['best_mAP50']:.3f} wall={result['wall_s']:.0f}s "
                f"({result['s_per_epoch']:.1f} s/epoch, {result['cpu_s']:.0f} CPU s)\n"
                f"  mAP50 per epoch: {curve}",
                flush=True,
            )
    print(
        "\n| lr0 | mAP50 | mAP50-95 | best mAP50 | wall s | s/epoch | CPU s |\n|---|---|---|---|---|---|---|"
    )
    for r in results:
        print(
            f"| {r['lr0']:g} | {r['mAP50']:.3f} | {r['mAP50-95']:.3f} | {r['best_mAP50']:.3f} "
            f"| {r['wall_s']:.0f} | {r['s_per_epoch']:.1f} | {r['cpu_s']:.0f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"spec": str(spec), "settings": settings, "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
