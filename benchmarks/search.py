"""Benchmark: search efficiency of detune's studies against Ultralytics' own tuners.

Four strategies search the same knobs (lr0, lrf, momentum) for the same model, data, epochs per trial and
training seed: detune's default study (Optuna TPE + ASHA on a log-uniform lr0), detune random search with
FIFO (every trial runs to the end), Ultralytics' genetic ``model.tune()`` and ``model.tune(use_ray=True)``
(Optuna + its ASHA, its Ray Tune callback on so it can stop trials per epoch). Both detune studies try the
baseline (Ultralytics' defaults) first, as the genetic tuner does. Each strategy runs in a fresh
process. A trial's fitness is Ultralytics' own: its best epoch's mAP50-95. The reference best is the best
fitness any trial of any strategy reached in this run; a strategy "reaches" it when a trial gets within 1%.
The cost is trial-epochs: epochs trained, summed over trials in the order they finished. Goal: detune's
default study needs <= 1/3 of the genetic tuner's trial-epochs and <= 1/2 of Ultralytics + Ray's.

    .venv/bin/python benchmarks/search.py                       # shapes, then COCO128 if ../shared has it
    .venv/bin/python benchmarks/search.py --datasets shapes     # one dataset
    .venv/bin/python benchmarks/search.py --gpu                 # GPU node: one GPU per trial
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common

STRATEGIES = ("detune_default", "detune_random_fifo", "ultralytics_ga", "ultralytics_ray")
LABELS = {"detune_default": "detune default (TPE + ASHA, log lr0)", "detune_random_fifo": "detune random + FIFO",
          "ultralytics_ga": "Ultralytics model.tune() (genetic)",
          "ultralytics_ray": "Ultralytics model.tune(use_ray=True)"}
GOALS = {"ultralytics_ga": 1 / 3, "ultralytics_ray": 1 / 2}
METRIC = "metrics/mAP50-95"
SPACE = {"lr0": (1e-4, 1e-1), "lrf": (0.01, 1.0), "momentum": (0.6, 0.98)}
CPU = {"shapes": {"trials": 12, "epochs": 6, "imgsz": 64, "batch": 8, "n_train": 256},
       "coco128": {"trials": 4, "epochs": 3, "imgsz": 64, "batch": 16}}
GPU = {"shapes": {"trials": 16, "epochs": 10, "imgsz": 256, "batch": 32, "n_train": 1024},
       "coco128": {"trials": 16, "epochs": 10, "imgsz": 320, "batch": 16}}
QUICK = {"shapes": {"trials": 2, "epochs": 2, "imgsz": 32, "batch": 8, "n_train": 16},
         "coco128": {"trials": 2, "epochs": 1, "imgsz": 32, "batch": 16}}


def train_settings(s: dict[str, Any], data: Path, gpu: bool) -> dict[str, Any]:
    return {"model": s.get("model", "yolo11n.yaml"), "data": str(data), "epochs": s["epochs"], "imgsz": s["imgsz"],
            "batch": s["batch"], "nbs": s["batch"], "optimizer": "SGD", "mosaic": 0.0, "close_mosaic": 0,
            "warmup_epochs": min(1.0, s["epochs"] - 1.0),  # 1, or none in a 1-epoch smoke run
            "workers": 0 if not gpu else 4, "plots": False, "seed": 0, "device": "0" if gpu else "cpu"}


# ---- one strategy, in a child process ------------------------------------------------------------------

def run_detune(strategy: str, s: dict[str, Any], data: Path, work: Path, gpu: bool) -> list[dict[str, Any]]:
    import detune

    default = strategy == "detune_default"
    lo, hi = SPACE["lr0"]
    study = {"name": strategy, "train": train_settings(s, data, gpu),
             "search_space": {"lr0": {"loguniform": [lo, hi]} if default else {"uniform": [lo, hi]},
                              "lrf": {"uniform": list(SPACE["lrf"])},
                              "momentum": {"uniform": list(SPACE["momentum"])}},
             "search": "optuna" if default else "random", "trial_scheduler": "asha" if default else "fifo",
             "confirm": False,
             "trial_scheduler_params": {"grace_period": 2, "reduction_factor": 2} if default else {},
             "num_samples": s["trials"], "max_concurrent_trials": None if gpu else 2,
             "resources_per_trial": {"cpu": 1, "gpu": 1 if gpu else 0}, "metric": METRIC, "mode": "max",
             "output_dir": str(work / strategy), "storage_path": str(work / strategy / "ray"), "tracking": False,
             "seed": s.get("seed", 0)}
    result = detune.tune(study)
    return [_events(r, METRIC, r.metrics.get("detune_trial_id") or Path(r.path).name) for r in result.result_grid]


def run_ultralytics(strategy: str, s: dict[str, Any], data: Path, work: Path, gpu: bool) -> list[dict[str, Any]]:
    from ultralytics import YOLO

    train = train_settings(s, data, gpu)
    train.update(project=str(work / strategy), name="tune", verbose=False)
    model = YOLO(train.pop("model"))
    if strategy == "ultralytics_ga":
        t0 = time.time()
        model.tune(iterations=s["trials"], space=dict(SPACE), **train)
        rows = [json.loads(line) for line in (work / strategy / "tune" / "tune_results.ndjson").open()]
        # sequential: iteration i finishes after i * epochs trial-epochs (no early stopping)
        return [{"trial": f"iteration{r['iteration']}", "params": r.get("hyperparameters", {}), "epochs": [
            {"t": t0 + r["iteration"], "epoch": s["epochs"], "fitness": float(r["fitness"])}]} for r in rows]
    from ray import tune

    space = {k: tune.uniform(*v) for k, v in SPACE.items()}  # Ultralytics' own space style: uniform
    grid = model.tune(use_ray=True, iterations=s["trials"], space=space, grace_period=2,
                      gpu_per_trial=1 if gpu else None, **train)
    return [_events(r, "metrics/mAP50-95(B)", Path(r.path).name) for r in grid]


def _events(result: Any, metric: str, trial: str) -> dict[str, Any]:
    """A trial's per-epoch reports (epoch, wall timestamp, best-so-far fitness), one per finished epoch."""
    df = result.metrics_dataframe
    seen: dict[int, dict[str, Any]] = {}
    best = 0.0
    if df is not None and "epoch" in df and metric in df:
        for _, row in df.sort_values("timestamp").iterrows():
            epoch, value = row["epoch"], float(row[metric])
            if not math.isfinite(epoch) or int(epoch) in seen or not math.isfinite(value):
                continue
            best = max(best, value)
            seen[int(epoch)] = {"t": float(row["timestamp"]), "epoch": int(epoch), "fitness": best}
    params = {k: v for k, v in (result.config or {}).items() if k in SPACE}
    return {"trial": trial, "params": params, "epochs": sorted(seen.values(), key=lambda e: e["epoch"])}


def child(strategy: str, dataset: str, s: dict[str, Any], data: Path, work: Path, gpu: bool) -> dict[str, Any]:
    from detune import _runtime

    _runtime.prepare()  # offline, quiet Ultralytics settings in a private config dir, for every strategy
    if strategy == "ultralytics_ray":  # its per-epoch Ray reports come from its own raytune callback
        settings = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics" / "settings.json"
        own = work / "yolo-config-raytune" / "Ultralytics"
        own.mkdir(parents=True, exist_ok=True)
        (own / "settings.json").write_text(json.dumps({**json.loads(settings.read_text()), "raytune": True}))
        os.environ["YOLO_CONFIG_DIR"] = str(own.parent)
    start = time.monotonic()
    run = run_detune if strategy.startswith("detune") else run_ultralytics
    trials = run(strategy, s, data, work, gpu)
    return {"strategy": strategy, "dataset": dataset, "seconds": time.monotonic() - start, "trials": trials}


# ---- the comparison ------------------------------------------------------------------------------------

def curve(run: dict[str, Any], epochs_per_trial: int) -> list[tuple[int, float]]:
    """Best fitness so far against cumulative trial-epochs, epochs taken in the order they finished."""
    if run["strategy"] == "ultralytics_ga":  # one point per iteration, each a full training
        points, best = [], 0.0
        for i, trial in enumerate(run["trials"], 1):
            best = max(best, trial["epochs"][0]["fitness"])
            points.append((i * epochs_per_trial, best))
        return points
    events = sorted((e["t"], e["epoch"], e["fitness"]) for t in run["trials"] for e in t["epochs"])
    points, best = [], 0.0
    for n, (_, _, fitness) in enumerate(events, 1):
        best = max(best, fitness)
        points.append((n, best))
    return points


def to_reach(points: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, best in points if best >= target), None)


def compare(dataset: str, runs: dict[str, dict[str, Any]], s: dict[str, Any], plot: Path) -> tuple[dict, str]:
    curves = {k: curve(r, s["epochs"]) for k, r in runs.items()}
    reference = max((p[-1][1] for p in curves.values() if p), default=0.0)
    target = 0.99 * reference
    reach = {k: to_reach(p, target) for k, p in curves.items()}
    spent = {k: (p[-1][0] if p else 0) for k, p in curves.items()}
    who = [k for k, p in curves.items() if p and p[-1][1] == reference]
    lines = [f"### {dataset}: {s['trials']} trials x {s['epochs']} epochs per strategy, imgsz {s['imgsz']}, "
             f"batch {s['batch']}" + (f", {s['n_train']} generated train images" if "n_train" in s else ""),
             "", f"Reference best fitness (mAP50-95 of a trial's best epoch): **{reference:.4f}**, the best of all "
             f"{sum(len(r['trials']) for r in runs.values())} trials of the four strategies in this run (reached "
             f"by {', '.join(LABELS[k] for k in who)}). Target (within 1%): {target:.4f}.", "",
             "| strategy | best fitness | trial-epochs to reach the target | trial-epochs spent | wall time |",
             "|---|---|---|---|---|"]
    for k, p in curves.items():
        lines.append(f"| {LABELS[k]} | {p[-1][1] if p else math.nan:.4f} | "
                     f"{reach[k] if reach[k] is not None else 'not reached'} | {spent[k]} | "
                     f"{runs[k]['seconds']:.0f} s |")
    figures: dict[str, Any] = {"reference": reference, "target": target, "reach": reach, "spent": spent,
                               "curves": curves, "ratios": {}}
    lines.append("")
    mine = reach["detune_default"]
    for other, goal in GOALS.items():
        theirs = reach[other]
        if reference <= 0:
            text = "no trial of any strategy got above 0: nothing to compare at this budget"
            ratio = None
        elif mine is None:
            text = f"detune's default study did not reach the target ({spent['detune_default']} trial-epochs spent)"
            ratio = None
        elif theirs is None:  # they did not get there within their budget: the ratio is at most this
            ratio = mine / spent[other]
            text = (f"<= {ratio:.3f} ({mine} vs more than {spent[other]}: {LABELS[other]} did not reach the target "
                    f"in its budget); goal <= {goal:.3g}: {'met' if ratio <= goal else 'not shown'}")
        else:
            ratio = mine / theirs
            text = (f"{ratio:.3f} ({mine} / {theirs}); goal <= {goal:.3g}: "
                    f"{'met' if ratio <= goal else f'MISSED by a factor of {ratio / goal:.2f}'}")
        figures["ratios"][other] = ratio
        lines.append(f"- detune default / {LABELS[other]}: **{text}**")
    _plot(curves, target, dataset, plot)
    figures["plot"] = plot.name
    lines.append(f"\n![best fitness vs trial-epochs, {dataset}]({plot.name})")
    return figures, "\n".join(lines)


def _plot(curves: dict[str, list[tuple[int, float]]], target: float, dataset: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k, p in curves.items():
        if p:
            ax.step([0] + [n for n, _ in p], [0.0] + [b for _, b in p], where="post", label=LABELS[k])
    ax.axhline(target, color="grey", ls="--", lw=1, label="target: 99% of the reference best")
    ax.set(xlabel="cumulative trial-epochs", ylabel="best fitness so far (mAP50-95)",
           title=f"Search efficiency on {dataset}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        a = json.loads(sys.argv[2])
        print(json.dumps(child(a["strategy"], a["dataset"], a["s"], Path(a["data"]), Path(a["work"]), a["gpu"])))
        return 0
    p = _common.parser(__doc__)
    p.add_argument("--datasets", nargs="+", default=["shapes", "coco128"], choices=["shapes", "coco128"])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    args = p.parse_args()
    sizes = QUICK if args.quick else GPU if args.gpu else CPU
    head = _common.start("search")
    figures: dict[str, Any] = {"sizes": sizes, "space": SPACE, "datasets": {}}
    sections = []
    with tempfile.TemporaryDirectory(prefix="detune-search-") as tmp:
        for dataset in args.datasets:
            s = sizes[dataset]
            data = (_common.shapes(imgsz=s["imgsz"], n_train=s["n_train"]) if dataset == "shapes"
                    else _common.coco128(Path(tmp)))
            if data is None:
                sections.append(f"### coco128\n\nSkipped: {_common.COCO128} is absent.")
                continue
            runs = {}
            for strategy in args.strategies:
                print(f"== {dataset}: {LABELS[strategy]}", flush=True)
                spec = {"strategy": strategy, "dataset": dataset, "s": s, "data": str(data), "gpu": args.gpu,
                        "work": str(Path(tmp) / dataset)}
                out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                     text=True, check=False)
                if out.returncode != 0:
                    raise SystemExit(f"{strategy} on {dataset} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
                runs[strategy] = json.loads(out.stdout.strip().splitlines()[-1])
                c = curve(runs[strategy], s["epochs"])
                print(f"   {len(runs[strategy]['trials'])} trials, {c[-1][0] if c else 0} trial-epochs, best "
                      f"{c[-1][1] if c else math.nan:.4f}, {runs[strategy]['seconds']:.0f} s", flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            fig, md = compare(dataset, runs, s, args.out / f"search_{dataset}.png")
            figures["datasets"][dataset] = {**fig, "runs": runs}
            sections.append(md)
    md = f"""## 2. Search efficiency: detune studies vs Ultralytics' tuners

Same search space for every strategy: lr0 in [{SPACE['lr0'][0]:g}, {SPACE['lr0'][1]:g}] (log-uniform in detune's
default study, uniform elsewhere: Ultralytics' tuners have no log scale), lrf in [0.01, 1], momentum in
[0.6, 0.98]; yolo11n.yaml from scratch, SGD, 1 warmup epoch, mosaic off, training seed 0, 2 trials at a time
on 1 CPU each (the genetic tuner runs one at a time). detune's studies run the baseline (lr0 0.01, lrf 0.01,
momentum 0.937: Ultralytics' defaults) first, as the genetic tuner does. detune's default study: Optuna TPE
(random for its first 3 trials) + ASHA (grace 2, reduction factor 2); Ultralytics + Ray: its Optuna search
and ASHA (grace 2, reduction factor 3). Fitness is Ultralytics' own: mAP50-95 of a trial's best epoch.
Trial-epochs are counted in the order epochs finished. The searchers' own random seeds cannot be set
through Ultralytics' API (its genetic mutation draws from an unseeded generator), so each figure is one
draw: rerun to see the spread.

{chr(10).join(s + chr(10) for s in sections)}"""
    _common.save(args.out, head, figures, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
