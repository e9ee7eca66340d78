"""Benchmark 5: searches that fine-tune a pretrained model (issue 15), repeated, with held-out test scores.

Every strategy fine-tunes the same pretrained yolo11n (``pretrain.py``'s checkpoint, built here once) on the
same data with the same epochs per trial and training seed, and runs ``--repeats`` times (its search seed
changes; Ultralytics' genetic tuner has no seed, so its repeats show its spread). Strategies:

- ``detune_default``: the default study before issue 15 (Optuna TPE + ASHA, log-uniform lr0 in [1e-4, 1e-1],
  lrf, momentum);
- ``detune_tpe``: the issue-15 design, detune's default (``detune.prior`` space around the config's lr0 with
  the optimizer family, warmup and schedule; Optuna's TPE sampler; the ``detection`` rung rules;
  confirmation of the top 2 with 2 seeds, its retrainings counted in the trial-epochs);
- ``detune_prior``, ``detune_cmaes``, ``detune_local``: the same design with another Optuna sampler (issue
  15's sampler comparison): GP (the default until that comparison), CMA-ES started at the baseline (x0), and
  detune's local search around the best trial so far (``search_params.sampler: local``, the genetic tuner's
  idea);
- ``detune_refine``: the default design with zoom-in rounds (``refine: {rounds: 2, factor: 3}``, issue 16);
- ``ultralytics_ga`` and ``ultralytics_ray``: ``model.tune()`` and ``model.tune(use_ray=True)`` on lr0, lrf,
  momentum (the bounds of ``search.SPACE``).

Reference points, once per target: the baseline (Ultralytics' SGD defaults, ``detune.train``) and plain
``YOLO.train`` with Ultralytics' real defaults (``optimizer=auto``). The best trial of each strategy run,
the references and the confirmed best are scored on the target's held-out test split when it has one.
Every trial's parameters are kept in ``results/finetune.json``.

    DETUNE_BENCH_CACHE=/work/bench-cache .venv/bin/python benchmarks/finetune.py            # hours on 2 cores
    .venv/bin/python benchmarks/finetune.py --quick --repeats 1                             # smoke
    .venv/bin/python benchmarks/finetune.py --targets target --strategies detune_tpe ultralytics_ga
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import _targets
import pretrain
import search

from detune.rungs import NOISE_FLOOR
from detune.study_files import TRIAL_COLUMNS

DEFAULT = "detune_tpe"  # the strategy that is detune's default study
VARIANTS = {  # the default design and the variants compared with it: the study settings they change
    DEFAULT: {}, "detune_prior": {"search_params": {"sampler": "gp"}},
    "detune_cmaes": {"search_params": {"sampler": "cmaes"}}, "detune_local": {"search_params": {"sampler": "local"}},
    "detune_refine": {"refine": {"rounds": 2, "factor": 3}}}
STRATEGIES = (*VARIANTS, "detune_default", "ultralytics_ga", "ultralytics_ray")
LABELS = {**search.LABELS, "detune_default": "detune's old default (TPE + ASHA, log lr0)",
          "detune_tpe": "detune default (prior + TPE + detection rungs + confirm)",
          "detune_prior": "detune design, GP sampler (the default before the comparison)",
          "detune_cmaes": "detune design, CMA-ES from the baseline",
          "detune_local": "detune design, local search (sampler: local)",
          "detune_refine": "detune default + zoom-in (refine: 2 rounds, factor 3)"}
SIZES = {
    "cpu": {"target": {"trials": 12, "epochs": 6, "imgsz": 64, "batch": 16},
            "coco128": {"trials": 8, "epochs": 4, "imgsz": 128, "batch": 16}},
    "gpu": {"target": {"trials": 16, "epochs": 15, "imgsz": 256, "batch": 32},
            "coco128": {"trials": 16, "epochs": 10, "imgsz": 320, "batch": 16}},
    "quick": {"target": {"trials": 2, "epochs": 2, "imgsz": 32, "batch": 8},
              "coco128": {"trials": 2, "epochs": 1, "imgsz": 32, "batch": 16}},
}
for _mode, _sizes in (("cpu", search.CPU), ("gpu", search.GPU), ("quick", search.QUICK)):
    SIZES[_mode]["shapes"] = _sizes["shapes"]  # from scratch, as search.py (section 2) runs it
TARGETS = ("target", "coco128", "shapes")
CONFIRM = {"top_k": 2, "seeds": 2}


def prior_study(s: dict[str, Any], data: Path, work: Path, gpu: bool, seed: int,
                variant: dict[str, Any] | None = None) -> dict[str, Any]:
    """The default design: no search_space (detune.prior's), Optuna's TPE sampler, detection rungs,
    confirmation; ``variant`` changes some of it (``VARIANTS``)."""
    return {"name": "detune_prior", "train": search.train_settings(s, data, gpu),
            "search": "optuna", "search_params": {"sampler": "tpe"}, "trial_scheduler": "detection",
            "num_samples": s["trials"], "max_concurrent_trials": None if gpu else 2, "seed": seed,
            "confirm": CONFIRM if s["trials"] > 2 else {"top_k": 1, "seeds": 1},
            "resources_per_trial": {"cpu": 1, "gpu": 1 if gpu else 0}, "metric": search.METRIC, "mode": "max",
            "output_dir": str(work / "detune_prior"), "storage_path": str(work / "detune_prior" / "ray"),
            "tracking": False,
            # the smoke sizes (--quick) have too few trials for rounds of 2 or more
            **{k: v for k, v in (variant or {}).items() if k != "refine" or s["trials"] >= 4}}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One strategy run (or one reference training) in a fresh process."""
    s, data, work, gpu = spec["s"], Path(spec["data"]), Path(spec["work"]), spec["gpu"]
    strategy = spec["strategy"]
    if strategy in ("detune_default", "ultralytics_ga", "ultralytics_ray"):  # as search.py runs them
        return search.child(strategy, spec["target"], {**s, "seed": spec["seed"]}, data, work, gpu)
    from detune import _runtime

    _runtime.prepare()
    start = time.monotonic()
    if strategy in ("baseline", "yolo_auto"):
        return {"strategy": strategy, **reference(strategy, s, data, work, gpu),
                "seconds": time.monotonic() - start}
    import detune

    result = detune.tune(prior_study(s, data, work, gpu, spec["seed"], VARIANTS[strategy]))
    rows = {str(t["trial_id"]): t for t in result.trials}
    trials = []
    for r in result.result_grid:
        trial = search._events(r, search.METRIC, r.metrics.get("detune_trial_id") or Path(r.path).name)
        row = rows.get(str(trial["trial"]), {})
        trial["params"] = {k: v for k, v in row.items() if k not in TRIAL_COLUMNS and "/" not in k}
        trials.append(trial)
    confirm = result.confirm or {}
    confirm_epochs = len(confirm.get("trials", [])) * len(confirm.get("seeds", [])) * s["epochs"]
    return {"strategy": strategy, "trials": trials, "confirm": confirm, "confirm_epochs": confirm_epochs,
            "best_params": result.best_params, "seconds": time.monotonic() - start}


def reference(name: str, s: dict[str, Any], data: Path, work: Path, gpu: bool) -> dict[str, Any]:
    """The baseline (detune.train at Ultralytics' SGD defaults) or plain YOLO.train(optimizer=auto)."""
    train = search.train_settings(s, data, gpu)
    if name == "baseline":
        import detune

        result = detune.train({**train, "project": str(work), "name": name, "exist_ok": True, "tracking": False,
                               "score_test": _has_test(data)})
        return {"fitness": result.best.get(search.METRIC, math.nan), "test": result.info.get("test", {}),
                "epochs": len(result.history)}
    from ultralytics import YOLO

    model = YOLO(train.pop("model"))
    train.pop("optimizer")  # Ultralytics' own choice: optimizer=auto picks AdamW and its lr for short runs
    model.train(**train, project=str(work), name=name, exist_ok=True, verbose=False)
    metrics = model.trainer.metrics or {}  # the final validation of best.pt
    out = {"fitness": float(metrics.get("metrics/mAP50-95(B)", math.nan)), "epochs": s["epochs"], "test": {}}
    if _has_test(data):
        scores = pretrain.score(Path(model.trainer.best), data, "test", train, work)
        out["test"] = {f"test/{k.split('/')[-1]}": v for k, v in scores.items()}
    return out


def _has_test(data: Path) -> bool:
    from detune.datasets import has_test_split

    return has_test_split(data)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"{spec['strategy']} on {spec['target']} failed (exit {out.returncode}):\n"
                         f"{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def spent(run_: dict[str, Any], epochs: int) -> tuple[list[tuple[int, float]], int]:
    """Best-so-far curve against trial-epochs, and all trial-epochs spent (confirmation included)."""
    points = search.curve(run_, epochs)
    return points, (points[-1][0] if points else 0) + int(run_.get("confirm_epochs", 0))


def summary_lines(target: str, s: dict[str, Any], runs: dict[str, list[dict[str, Any]]],
                  refs: dict[str, dict[str, Any]]) -> list[str]:
    """The table of one target: median and min-max over repeats per strategy, and the reference points."""
    lines = [f"### {target}: {s['trials']} trials x {s['epochs']} epochs, imgsz {s['imgsz']}, batch {s['batch']}",
             "", "| strategy | repeats | best fitness, median (min-max) | trial-epochs spent, median (min-max) | "
             "its confirmed pick: val mean over new seeds, median (min-max) | test mAP50-95 of the pick, median |",
             "|---|---:|---|---|---|---:|"]
    for strategy, repeats in runs.items():
        best = [_best(r, s) for r in repeats]
        cost = [spent(r, s["epochs"])[1] for r in repeats]
        picks = [m for r in repeats if (m := _confirmed_mean(r)) is not None]
        tests = [t["mean"] for r in repeats if (t := _confirmed_test(r)) is not None]
        lines.append(f"| {LABELS[strategy]} | {len(repeats)} | {_spread(best, '.4f')} | {_spread(cost, 'g')} | "
                     f"{_spread(picks, '.4f') if picks else '-'} | "
                     f"{f'{statistics.median(tests):.4f}' if tests else '-'} |")
    for name, ref in refs.items():
        test = ref.get("test", {}).get("test/mAP50-95")
        lines.append(f"| reference: {name} | 1 | {ref['fitness']:.4f} | {ref['epochs']} | - | "
                     f"{'-' if test is None else f'{test:.4f}'} |")
    return lines


def _best(run_: dict[str, Any], s: dict[str, Any]) -> float:
    points = spent(run_, s["epochs"])[0]
    return points[-1][1] if points else 0.0


def _best_at(repeats: list[dict[str, Any]], s: dict[str, Any], budget: float) -> float:
    """Median over repeats of the best fitness found within ``budget`` trial-epochs of the search."""
    return statistics.median(max((b for n, b in spent(r, s["epochs"])[0] if n <= budget), default=0.0)
                             for r in repeats)


def _spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def _confirmed_mean(run_: dict[str, Any]) -> float | None:
    """The validation mean over the confirmation's new seeds of the trial a confirmed study picked."""
    confirm = run_.get("confirm") or {}
    pick = (confirm.get("best") or {}).get("trial_id")
    return (confirm.get("confirmed") or {}).get(pick, {}).get("mean")


def _confirmed_test(run_: dict[str, Any], trial: str | None = None) -> dict[str, float] | None:
    """Held-out scores (mean, std, n over the confirmation seeds) of the trial a confirmed study picked (or of
    ``trial``, e.g. its baseline); None without confirmation or test split."""
    confirm = run_.get("confirm") or {}
    trial = trial or (confirm.get("best") or {}).get("trial_id")
    scores = (confirm.get("test") or {}).get("test/mAP50-95", {}).get(trial, {})
    return scores if scores.get("n") else None


def goal_lines(s: dict[str, Any], runs: dict[str, list[dict[str, Any]]],
               refs: dict[str, dict[str, Any]]) -> list[str]:
    """Issue 15's goals on one target, for each detune strategy: met or missed, and by how much."""
    top = max((_best(r, s) for repeats in runs.values() for r in repeats), default=0.0)
    if top < NOISE_FLOOR:
        return [f"- not comparable: no trial of any strategy reached mAP50-95 {NOISE_FLOOR} (detune.rungs' noise "
                f"floor; best {top:.4f}) at this budget"]
    lines = []
    ga = runs.get("ultralytics_ga", [])
    if ga:
        goal = statistics.median(_best(r, s) for r in ga)
        shares = {"ultralytics_ga": 3, "ultralytics_ray": 2}  # at most 1/3 of GA's, 1/2 of Ray's trial-epochs
        budgets = {k: statistics.median(spent(r, s["epochs"])[1] for r in runs[k]) for k in shares if runs.get(k)}
        for mine in (k for k in runs if k.startswith("detune")):
            reach = [search.to_reach(spent(r, s["epochs"])[0], goal) for r in runs[mine]]
            reached = sorted(n for n in reach if n is not None)
            if len(reached) * 2 <= len(reach):
                lines.append(f"- {LABELS[mine]}: reached the genetic tuner's median best ({goal:.4f}) in "
                             f"{len(reached)} of {len(reach)} repeats: goal **MISSED**")
                continue
            median = statistics.median([n if n is not None else math.inf for n in reach])
            extra = statistics.median(int(r.get("confirm_epochs", 0)) for r in runs[mine])
            parts = [f"{k.split('_')[1]} {median:g} / {budget:g} = {median / budget:.2f} (goal <= 1/{shares[k]}: "
                     f"{'met' if median * shares[k] <= budget else 'MISSED'})" for k, budget in budgets.items()
                     if budget]
            found = statistics.median(search.to_reach(spent(r, s["epochs"])[0], _best(r, s)) for r in ga)
            parts.append(f"strict reading, against the {found:g} trial-epochs the genetic tuner took to find its own "
                         f"best: {median / found:.2f} ({'met' if median * 3 <= found else 'MISSED'})")
            lines.append(f"- {LABELS[mine]}: reached the genetic tuner's median best ({goal:.4f}) after a median "
                         f"{median:g} trial-epochs (per repeat {reach}); against the budgets spent: "
                         + "; ".join(parts) + (f"; its confirmation then spent {extra:g} more" if extra else ""))
    for mine in (k for k in runs if k.startswith("detune") and ga):
        budget = min(statistics.median(spent(r, s["epochs"])[1] for r in runs[mine]),
                     statistics.median(spent(r, s["epochs"])[1] for r in ga))
        ours, theirs = _best_at(runs[mine], s, budget), _best_at(ga, s, budget)
        lines.append(f"- {LABELS[mine]} at equal trial-epochs ({budget:g}, its confirmation counted): best fitness "
                     f"{ours:.4f} against the genetic tuner's {theirs:.4f} (medians over repeats): "
                     + ("at least as good" if ours >= theirs else f"**worse by {theirs - ours:.4f}**"))
    for mine in (k for k in runs if k.startswith("detune")):
        picks = [(t, _confirmed_test(r, (r.get("confirm") or {}).get("baseline"))) for r in runs[mine]
                 if (t := _confirmed_test(r)) is not None]
        auto = refs.get("yolo_auto", {}).get("test", {}).get("test/mAP50-95")
        if not picks or auto is None:
            continue
        verdicts = []
        for pick, base in picks:
            margin_base = pick["mean"] - base["mean"] if base else math.nan
            spread = max(pick["std"], base["std"] if base else 0.0)
            verdicts.append(f"{pick['mean']:.4f} +- {pick['std']:.4f} vs baseline {margin_base:+.4f}, vs YOLO.train "
                            f"{pick['mean'] - auto:+.4f} (seed sd {spread:.4f}): "
                            + ("met" if min(margin_base, pick["mean"] - auto) > spread else "MISSED"))
        lines.append(f"- {LABELS[mine]}, test mAP50-95 of the confirmed pick (mean over its seeds) against the "
                     f"baseline trial retrained with the same seeds and plain YOLO.train ({auto:.4f}), per repeat: "
                     + "; ".join(verdicts))
    return lines


def plot(target: str, s: dict[str, Any], runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Median best-so-far fitness against trial-epochs per strategy (band: min-max over repeats); a dotted
    segment is the trial-epochs a confirmation spent after the search."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for strategy, repeats in runs.items():
        curves = [spent(r, s["epochs"]) for r in repeats]
        end = max((c[0][-1][0] for c in curves if c[0]), default=0)
        if not end:
            continue
        xs = list(range(0, end + 1))
        ys = [[next((b for n, b in reversed(c[0]) if n <= x), 0.0) for x in xs] for c in curves]
        cols = list(zip(*ys, strict=True))
        med = [statistics.median(col) for col in cols]
        line, = ax.step(xs, med, where="post", label=f"{LABELS[strategy]} ({len(repeats)})")
        ax.fill_between(xs, [min(col) for col in cols], [max(col) for col in cols], step="post",
                        alpha=0.15, color=line.get_color())
        total = statistics.median(c[1] for c in curves)
        if total > end:
            ax.plot([end, total], [med[-1], med[-1]], ls=":", color=line.get_color())
    ax.set(xlabel="cumulative trial-epochs", ylabel="best fitness so far (mAP50-95)",
           title=f"{'From-scratch' if target == 'shapes' else 'Fine-tuning'} searches on {target}: median over "
                 "repeats, band min-max")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def target_data(target: str, mode: str, s: dict[str, Any], tmp: Path) -> Path | None:
    """The data YAML of a target (None: COCO128 is absent)."""
    if target == "target":
        return _targets.make_scenes(_targets.TARGET[mode])
    if target == "coco128":
        return _common.coco128(tmp)
    return _common.shapes(imgsz=s["imgsz"], n_train=s["n_train"])


def _recorded_shapes(t: dict[str, Any], out: Path) -> dict[str, list[dict[str, Any]]]:
    """search.py's recorded shapes runs (section 2) of the strategies not run here, when its sizes match."""
    path = out / "search.json"
    if not path.is_file():
        return {}
    recorded = json.loads(path.read_text())
    sizes = {k: v for k, v in t["settings"].items() if k != "model"}
    if recorded.get("sizes", {}).get("shapes") != sizes:
        return {}
    runs = recorded["datasets"]["shapes"]["runs"]
    return {k: [runs[k]] for k in ("ultralytics_ga", "ultralytics_ray", "detune_default") if k in runs}


def _measured(t: dict[str, Any]) -> list[dict[str, Any]]:
    """When and how a target's runs were measured: one entry per benchmark run that added strategies."""
    m = t.get("measured", [])
    return [m] if isinstance(m, dict) else list(m)


def render(results: dict[str, Any], out: Path) -> str:
    """The RESULTS.md section of every target in ``results`` (plots written beside it)."""
    sections = []
    for target, t in results["targets"].items():
        if "skipped" in t:
            sections.append(f"### {target}\n\n{t['skipped']}")
            continue
        recorded = _recorded_shapes(t, out) if target == "shapes" else {}
        runs = {**t["runs"], **{k: v + t["runs"].get(k, []) for k, v in recorded.items()}}
        t = {**t, "runs": {k: runs[k] for k in sorted(runs, key=lambda k: STRATEGIES.index(k))}}  # default first
        lines = summary_lines(target, t["settings"], t["runs"], t["references"])
        if recorded:
            lines.append(f"\nFrom scratch (yolo11n.yaml). Rows {', '.join(LABELS[k] for k in recorded)}: their first "
                         "repeat is search.py's recorded run (section 2) at the same sizes, data and training seed "
                         "(search seed 0); the others were run here with search seeds 1, 2, ...")
        goals = goal_lines(t["settings"], t["runs"], t["references"])
        results["targets"][target]["goals"] = goals  # run_all's summary reads them
        if goals:
            lines += ["", "Goals of issue 15:", *goals]
        name = f"finetune_{target}.png"
        plot(target, t["settings"], t["runs"], out / name)
        lines.append(f"\n![best fitness vs trial-epochs, {target}]({name})")
        for m in _measured(t):
            lines.append(f"\n- {target} measured {m['date']}, took {m['seconds'] / 60:.1f} min: `{m['command']}`")
        sections.append("\n".join(lines))
    return ("## 5. Fine-tuning searches (issue 15)\n\nEach strategy fine-tunes the pretrained checkpoint of "
            "section 'Pretrained checkpoint'; see benchmarks/finetune.py for the strategies.\n\n"
            + "\n\n".join(sections))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2])), default=str))
        return 0
    p = _common.parser(__doc__)
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--first-repeat", type=int, default=0,
                   help="add repeats first..first+repeats-1 (their search seeds) to the ones already recorded")
    p.add_argument("--render", action="store_true", help="only re-render the section from the saved results")
    args = p.parse_args()
    saved = args.out / "finetune.json"
    if args.render:
        results = json.loads(saved.read_text())
        head = {k: results.pop(k) for k in ("benchmark", "command", "date", "machine", "seconds")}
        markdown = render(results, args.out)
        _common.save(args.out, {**head, "started": time.monotonic() - head["seconds"]}, results, markdown)
        return 0
    mode = _targets.mode(args.gpu, args.quick)
    head = _common.start("finetune")
    ckpt = pretrain.pretrained_checkpoint(args.gpu, args.quick)
    results: dict[str, Any] = {"checkpoint": str(ckpt), "pretraining": pretrain.record(args.gpu, args.quick),
                               "sizes": SIZES[mode], "targets": {}}
    if saved.is_file() and not args.quick:  # keep what was measured before with this checkpoint
        before = json.loads(saved.read_text())
        if before.get("checkpoint") == str(ckpt):
            results["targets"] = before.get("targets", {})
    with tempfile.TemporaryDirectory(prefix="detune-finetune-") as tmp:
        for target in args.targets:
            began = time.monotonic()
            s = {**SIZES[mode][target], "model": "yolo11n.yaml" if target == "shapes" else str(ckpt)}
            data = target_data(target, mode, s, Path(tmp))
            if data is None:
                results["targets"][target] = {"skipped": f"Skipped: {_common.COCO128} is absent."}
                continue
            base = {"target": target, "s": s, "data": str(data), "gpu": args.gpu}
            # the strategies not run now stay when they were measured at the same sizes (and their references)
            t = results["targets"].get(target, {})
            if t.get("settings") != s:
                t = {}
            refs = t.get("references") or {
                name: run({**base, "strategy": name, "seed": 0, "work": str(Path(tmp) / target / name)})
                for name in ("baseline", "yolo_auto")}
            runs = {k: v for k, v in t.get("runs", {}).items() if k not in args.strategies or args.first_repeat}
            measured = _measured(t)
            for strategy in args.strategies:
                for repeat in range(args.first_repeat, args.first_repeat + args.repeats):
                    print(f"== {target}: {LABELS[strategy]}, repeat {repeat + 1}", flush=True)
                    work = Path(tmp) / target / f"{strategy}-{repeat}"
                    runs.setdefault(strategy, []).append({**run({**base, "strategy": strategy, "seed": repeat,
                                                                 "work": str(work)}), "repeat": repeat})
                now = {"date": head["date"], "command": head["command"], "seconds": round(time.monotonic() - began)}
                results["targets"][target] = {"settings": s, "references": refs, "runs": runs,
                                              "measured": [*measured, now]}
                _common.save(args.out, head, results, render(results, args.out))  # nothing lost if stopped
    _common.save(args.out, head, results, render(results, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
