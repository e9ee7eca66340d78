"""Benchmark: what a Ray Tune trial costs beyond building its model, and how long a local cluster takes to start.

Starts a local Ray (timed: the cluster start), then runs a detune study of N one-epoch trials one at a time
whose trainer only builds yolo11n from its YAML and reports its one epoch with a real checkpoint (the
weights, as a real trial does). Each trial stamps when its trainer starts and how long the model build took;
a trial's cycle is the time from one trial's trainer start to the next one's, and its overhead is the cycle
minus the model build: Ray's scheduling and process reuse, detune's trial wrapper, the report and the
checkpoint copy. The first trial also pays the worker start and imports; it is reported on its own.
Goal: overhead <= 1.5 s per trial.

    .venv/bin/python benchmarks/ray_overhead.py          # 8 trials (about 1 minute on 2 cores)
    .venv/bin/python benchmarks/ray_overhead.py --gpu    # one GPU per trial
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _common

GOAL = 1.5


def build_only_fit(cfg: Any, data_yaml: Path, *, observer: Any = None, resume_from: Path | None = None) -> Any:
    """A trainer with the adapter's ``fit`` signature that builds the model and reports one epoch."""
    import json

    import torch
    from ultralytics import YOLO

    from detune.adapters.base import STATE_FILE, RunOutcome

    entered = time.time()
    model = YOLO(cfg.model)
    build = time.time() - entered
    weights = Path(cfg.project).resolve() / cfg.name / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.model.state_dict()}, weights / "last.pt")
    (weights / STATE_FILE).write_text(json.dumps({"step": 1, "epoch": 0}))
    record = {"epoch": 1, "metrics/mAP50-95": 0.0, "fitness": 0.0, "bench_entered": entered, "bench_build": build}
    if observer is not None:
        observer.on_epoch(dict(record), weights)
    return RunOutcome("completed", [record], weights.parent, {"last": weights / "last.pt"}, [], {})


def main() -> int:
    p = _common.parser(__doc__)
    p.add_argument("--trials", type=int, default=8)
    args = p.parse_args()
    trials = 3 if args.quick else args.trials
    head = _common.start("ray_overhead")
    import ray

    import detune

    data = _common.shapes(imgsz=32, n_train=16, n_val=8)
    start = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    cluster_start = time.perf_counter() - start
    resources = ray.cluster_resources()
    print(f"cluster start: {cluster_start:.2f} s; resources {resources}", flush=True)
    with tempfile.TemporaryDirectory(prefix="detune-rayoh-") as tmp:
        train = {"model": "yolo11n.yaml", "data": str(data), "epochs": 1, "imgsz": 32, "warmup_epochs": 0.0,
                 "device": "0" if args.gpu else "cpu"}
        study = {"name": "overhead", "train": train,
                 "search_space": {"lr0": {"loguniform": [1e-3, 1e-1]}}, "search": "random",
                 "trial_scheduler": "fifo", "num_samples": trials, "max_concurrent_trials": 1,
                 "resources_per_trial": {"cpu": 1, "gpu": 1 if args.gpu else 0}, "tracking": False,
                 "output_dir": tmp, "storage_path": str(Path(tmp) / "ray")}
        called, t0 = time.time(), time.perf_counter()
        result = detune.tune(study, fit=build_only_fit)
        study_seconds = time.perf_counter() - t0
    start = time.perf_counter()
    ray.shutdown()
    shutdown = time.perf_counter() - start
    rows = sorted((r.metrics["bench_entered"], r.metrics["bench_build"]) for r in result.result_grid)
    cycles = [(b[0] - a[0], a[1]) for a, b in zip(rows, rows[1:], strict=False)]
    overheads = [cycle - build for cycle, build in cycles]
    first_wait = rows[0][0] - called  # from the tune() call to the first trial's trainer start
    median = statistics.median(overheads)
    figures = {"trials": trials, "cluster_start_s": cluster_start, "shutdown_s": shutdown, "resources": resources,
               "study_seconds": study_seconds, "builds_s": [b for _, b in rows], "cycles_s": [c for c, _ in cycles],
               "overheads_s": overheads, "median_overhead_s": median, "first_trial_start_s": first_wait}
    for i, (cycle, build) in enumerate(cycles, 1):
        print(f"trial {i}: cycle {cycle:.2f} s, model build {build:.2f} s, overhead {cycle - build:.2f} s")
    md = f"""## 3. Ray overhead per trial and cluster start

A local Ray cluster (`ray.init()` on this machine: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g}
GPUs) and a detune study of {trials} one-epoch trials run one at a time, whose trainer only builds yolo11n from
its YAML and reports its epoch with a real checkpoint. Overhead per trial = time from one trial's trainer
start to the next one's, minus the model build.

| | seconds |
|---|---|
| cluster start (`ray.init`) | {cluster_start:.2f} |
| cluster shutdown | {shutdown:.2f} |
| first trial: from `detune.tune()` to its trainer start (worker start + imports + study setup) | {first_wait:.2f} |
| model build (median) | {statistics.median(figures['builds_s']):.2f} |
| **overhead per trial beyond the model build (median of {len(overheads)})** | **{_common.ratio_text(median, GOAL)}** |
| overhead per trial, min / max | {min(overheads):.2f} / {max(overheads):.2f} |
"""
    _common.save(args.out, head, figures, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
