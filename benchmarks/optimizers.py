"""Benchmark 6: optimizers at equal epochs (issue 16 section 1), on the fine-tuning target and from-scratch shapes.

Every row trains the target's model (``finetune.py``'s sizes: the pretrained checkpoint on ``target``,
yolo11n.yaml on ``shapes``) for the same epochs, images and batch, with ``--seeds`` training seeds:

- ``SGD`` and ``AdamW`` at detune's tuned best: the best trial of that optimizer family over the repeats of
  detune's default study in ``results/finetune.json`` (its lr0, lrf, momentum, warmup and schedule); the
  settings cost that study's trial-epochs (confirmation included);
- ``AdamWScheduleFree`` and ``SGDScheduleFree`` at their recommended settings (detune's default lr0 for
  them, constant schedule, their own warmup), and ``Prodigy`` at lr0 1 (it estimates its step size);
- ``Adagrad``, ``Adadelta`` and ``RMSProp`` at the LR finder's suggestion (``lr0: auto``: one range test,
  counted as a trial, then the training).

Reported per row: the last epoch's and the best epoch's val mAP50-95 (mean +- sd over the seeds), the test
split's mAP50-95 of best.pt where the target has one, and what choosing the settings cost. Trainings run in
child processes, two at a time (one CPU thread each).

    DETUNE_BENCH_CACHE=/work/bench-cache .venv/bin/python benchmarks/optimizers.py     # ~30 min on 2 cores
    .venv/bin/python benchmarks/optimizers.py --quick                                  # smoke
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _common
import _targets
import finetune
import pretrain
import search

from detune.config import default_lr0

TUNED = ("SGD", "AdamW")
RECOMMENDED = ("AdamWScheduleFree", "SGDScheduleFree", "Prodigy")
FINDER = ("Adagrad", "Adadelta", "RMSProp")
TRAIN_KEYS = ("optimizer", "lr0", "lrf", "momentum", "warmup_epochs", "scheduler")


def tuned_settings(results: dict[str, Any], target: str, family: str) -> tuple[dict[str, Any], str] | None:
    """The params of the best ``family`` trial of detune's default study on ``target`` (over its repeats),
    and where they come from; None when finetune.json has no such trial."""
    t = results.get("targets", {}).get(target, {})
    runs = t.get("runs", {}).get(finetune.DEFAULT, [])
    best, where = None, ""
    for n, run_ in enumerate(runs):
        for trial in run_.get("trials", []):
            params = trial.get("params", {})
            score = max((e["fitness"] for e in trial.get("epochs", [])), default=-1.0)
            if params.get("optimizer") == family and (best is None or score > best[0]):
                best, where = (score, params), f"repeat {n + 1}, trial {trial['trial']} ({score:.4f} in the study)"
    if best is None:
        return None
    spent = statistics.median(finetune.spent(r, t["settings"]["epochs"])[1] for r in runs)
    return {k: best[1][k] for k in TRAIN_KEYS if k in best[1]}, f"{where}; the study spent {spent:g} trial-epochs"


def rows(results: dict[str, Any], target: str) -> list[tuple[str, dict[str, Any], str]]:
    """(label, train settings, how they were chosen) of every optimizer row."""
    out = []
    for family in TUNED:
        found = tuned_settings(results, target, family)
        if found is not None:
            out.append((f"{family}, detune's tuned best", *found))
    out += [(name, {"optimizer": name, "lr0": default_lr0(name), "scheduler": "constant"},
             "recommended settings (1 training)") for name in RECOMMENDED]
    out += [(name, {"optimizer": name, "lr0": "auto"}, "LR finder suggestion (1 range test + 1 training)")
            for name in FINDER]
    return out


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One training in a fresh process: its history, best.pt's test scores and the lr0 it trained with."""
    import detune

    result = detune.train({**spec["train"], **spec["settings"], "seed": spec["seed"], "project": spec["work"],
                           "name": "run", "exist_ok": True, "tracking": False, "score_test": spec["test"],
                           "threads": 1})
    return {"status": result.status, "reason": result.reason, "lr0": result.config.get("lr0"),
            "final": (result.history[-1] if result.history else {}).get(search.METRIC, math.nan),
            "best": result.best.get(search.METRIC, math.nan),
            "test": result.info.get("test", {}).get("test/mAP50-95")}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        return {"status": "failed", "reason": out.stderr.strip().splitlines()[-1][:300] if out.stderr else "?"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cell(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if len(values) < 2:
        return f"{values[0]:.4f}" if values else "-"
    return f"{statistics.fmean(values):.4f} +- {statistics.stdev(values):.4f}"


def section(measured: dict[str, Any]) -> str:
    lines = ["## 6. Optimizers at equal epochs (issue 16)", "",
             "Each row trains the same model on the same data for the same epochs (see benchmarks/optimizers.py); "
             "mean +- sd over the training seeds."]
    for target, t in measured["targets"].items():
        s = t["settings"]
        lines += ["", f"### {target}: {s['epochs']} epochs, imgsz {s['imgsz']}, batch {s['batch']}, "
                      f"{'from scratch' if target == 'shapes' else 'fine-tuning the pretrained checkpoint'}", "",
                  "| optimizer | lr0 trained with | val mAP50-95, last epoch | best epoch | test mAP50-95 | "
                  "settings chosen by |", "|---|---|---|---|---|---|"]
        for row in t["rows"]:
            runs = row["runs"]
            failed = [r for r in runs if r["status"] != "completed"]
            lr0 = sorted({f"{r['lr0']:.3g}" for r in runs if isinstance(r.get("lr0"), (int, float))})
            note = (f" ({len(failed)} of {len(runs)} {failed[0]['status']}: {failed[0].get('reason')})"
                    if failed else "")
            lines.append(f"| {row['label']} | {', '.join(lr0) or '-'} | {_cell([r.get('final') for r in runs])} | "
                         f"{_cell([r.get('best') for r in runs])} | {_cell([r.get('test') for r in runs])} | "
                         f"{row['how']}{note} |")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2])), default=str))
        return 0
    p = _common.parser(__doc__)
    p.add_argument("--targets", nargs="+", default=["target", "shapes"], choices=["target", "shapes"])
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args()
    mode = _targets.mode(args.gpu, args.quick)
    head = _common.start("optimizers")
    ckpt = pretrain.pretrained_checkpoint(args.gpu, args.quick)
    tuned = json.loads((args.out / "finetune.json").read_text()) if (args.out / "finetune.json").is_file() else {}
    measured: dict[str, Any] = {"checkpoint": str(ckpt), "targets": {}}
    with tempfile.TemporaryDirectory(prefix="detune-optimizers-") as tmp:
        for target in args.targets:
            s = {**finetune.SIZES[mode][target], "model": "yolo11n.yaml" if target == "shapes" else str(ckpt)}
            data = finetune.target_data(target, mode, s, Path(tmp))
            train = search.train_settings(s, data, args.gpu)
            test = finetune._has_test(data)
            jobs = [(label, settings, how, seed) for label, settings, how in rows(tuned, target)
                    for seed in range(args.seeds)]
            specs = [{"train": train, "settings": settings, "seed": seed, "test": test,
                      "work": str(Path(tmp) / target / f"row{n}-seed{seed}")}  # labels hold ", '": not in paths
                     for n, (_, settings, _, seed) in enumerate(jobs)]
            with concurrent.futures.ThreadPoolExecutor(max_workers=1 if args.gpu else 2) as pool:
                done = list(pool.map(run, specs))
            table: dict[str, dict[str, Any]] = {}
            for (label, settings, how, _), result in zip(jobs, done, strict=True):
                table.setdefault(label, {"label": label, "settings": settings, "how": how, "runs": []})["runs"].append(
                    result)
                print(f"{target} {label}: {result}", flush=True)
            measured["targets"][target] = {"settings": s, "rows": list(table.values())}
            _common.save(args.out, head, measured, section(measured))  # nothing lost if stopped
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
