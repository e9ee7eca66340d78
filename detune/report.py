"""Study reports: PNG figures and a markdown summary of a study, from its output_dir or its MLflow experiment.

``build_report`` reads what a study left behind without importing Ray: ``trials.csv`` and ``best.yaml`` in
``output_dir``, and Ray's per-trial ``result.json`` (one JSON line per reported epoch) and ``params.json``
under ``output_dir/ray/<name>/``; Ultralytics' ``results.csv`` in ``output_dir/trials/<trial_id>/`` is the
fallback for per-epoch curves, and ``advice.json`` there the trial's training-health advice. An MLflow
experiment is read through its study run (``detune.kind=study``) and the child run of every trial
(per-epoch metrics, ``lr_step/pg0`` per optimizer step, the advice in tags ``detune.advice`` and
``mlflow.note.content``).

Example:
    >>> from detune.report import build_report
    >>> folder = build_report("runs/detune/quick")  # doctest: +SKIP
    >>> sorted(p.name for p in folder.iterdir())  # doctest: +SKIP
    ['lr_curves.png', 'metric_curves.png', 'metric_vs_lr0.png', 'parallel_coordinates.png', 'report.md']
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detune._checks import is_number
from detune._paths import atomic_write
from detune.errors import ConfigError
from detune.refine import ROUND_KEY
from detune.study_files import TRIAL_COLUMNS, TRIAL_STATUSES

__all__ = ["BASELINE", "FIGURES", "StudyData", "TrialData", "build_report", "load_experiment",
           "load_study_dir", "write_report"]

BASELINE = {"lr0": 0.01, "scheduler": "linear"}  # Ultralytics' defaults (SGD lr0 0.01, linear decay)
FIGURES = ("metric_vs_lr0.png", "parallel_coordinates.png", "metric_curves.png", "lr_curves.png")


@dataclasses.dataclass
class TrialData:
    """One trial as the report sees it.

    ``history`` has one record per epoch (``epoch`` from 1, the study metric, ``lr/pg0``); ``lr_curve`` is
    ``(x, lr)`` with x in optimizer steps when ``lr_unit == "step"`` (MLflow ``lr_step/pg0``), else epochs.
    ``config`` holds the trial's effective lr0 and scheduler (for the baseline check); ``seconds`` the
    trial's wall time when known; ``advice`` its training-health advice (``rule`` and ``message`` dicts).
    """

    trial_id: str
    status: str
    params: dict[str, Any]
    best_metric: float
    epochs_run: int
    reason: str = ""
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    lr_curve: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    lr_unit: str = "epoch"
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float | None = None
    advice: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class StudyData:
    """Everything a report needs, whatever the source."""

    name: str
    metric: str
    mode: str
    trials: list[TrialData]
    source: str
    epochs: int | None = None  # planned epochs per trial
    best_config: dict[str, Any] | None = None
    best_yaml: Path | None = None
    confirm: dict[str, Any] | None = None  # confirm.json of the confirmation stage

    def ranked(self) -> list[TrialData]:
        """Trials with a finite metric, best first."""
        sign = -1 if self.mode == "max" else 1
        scored = [t for t in self.trials if is_number(t.best_metric)]
        return sorted(scored, key=lambda t: sign * t.best_metric)


def build_report(source: str | os.PathLike[str], *, tracking_uri: str | None = None,
                 run_id: str | None = None, out_dir: str | os.PathLike[str] | None = None,
                 metric: str | None = None, mode: str | None = None, top: int = 5) -> Path:
    """Write the report of a study (figures + ``report.md``) and return its folder.

    Args:
        source: a study ``output_dir`` (holding ``trials.csv``), or the name of an MLflow experiment when
            ``tracking_uri`` is given (or ``source`` is not a folder: then the default store is used).
        tracking_uri: MLflow store to read ``source`` from as an experiment name.
        run_id: the study (parent) run to report on; default: the newest study run of the experiment.
        out_dir: where to write; default ``<output_dir>/report`` or ``./report-<experiment>``.
        metric, mode: the study's metric and "max"/"min"; default: read from the study (``study.json``,
            ``best.yaml``'s header or the MLflow study run), else ``metrics/mAP50-95`` and a guess from
            the metric's name (``min`` for losses).
        top: how many of the best trials get per-epoch metric and LR curves, >= 1.

    Returns:
        The report folder: ``report.md`` plus ``metric_vs_lr0.png``, ``parallel_coordinates.png``,
        ``metric_curves.png``, ``lr_curves.png`` (a figure that cannot be drawn is named in report.md).

    Raises:
        ConfigError: the source is neither a study folder nor a known experiment, or a bad argument.
        TrackingError: the MLflow store cannot be read.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ConfigError(f"top ({top!r}) must be an integer >= 1; use e.g. top: 5")
    if mode is not None and mode not in ("max", "min"):
        raise ConfigError(f"mode ({mode!r}) must be max or min")
    path = Path(source).expanduser()
    if tracking_uri is None and path.is_dir():
        data = load_study_dir(path, metric=metric, mode=mode)
        default_out = path / "report"
    else:
        if tracking_uri is None and (path.suffix or os.sep in str(source)):
            raise ConfigError(f"study folder {str(source)!r} does not exist; pass a study output_dir (with "
                              "trials.csv) or an MLflow experiment name with --tracking-uri")
        data = load_experiment(str(source), tracking_uri=tracking_uri, run_id=run_id, metric=metric,
                               mode=mode)
        default_out = Path(f"report-{data.name}")
    return write_report(data, Path(out_dir) if out_dir is not None else default_out, top=top)


# ---------------------------------------------------------------------------------------------------------
# Reading a study folder
# ---------------------------------------------------------------------------------------------------------
def load_study_dir(path: str | os.PathLike[str], *, metric: str | None = None, mode: str | None = None,
                   ray_dir: str | os.PathLike[str] | None = None) -> StudyData:
    """Read a study ``output_dir``: trials.csv (required), best.yaml, study.json and the Ray trial results
    (``ray_dir``, default the only experiment under ``<output_dir>/ray``).

    Raises:
        ConfigError: when the folder holds no trials.csv.
    """
    out = Path(path)
    csv_path = out / "trials.csv"
    if not csv_path.is_file():
        raise ConfigError(f"{out} holds no trials.csv, so it is not a study output_dir; pass the output_dir "
                          "of a study (default runs/detune/<name>)")
    state = _read_json(out / "study.json") or {}
    best_yaml = out / "best.yaml" if (out / "best.yaml").is_file() else None
    best_config, header_metric = _read_best_yaml(best_yaml)
    metric = metric or state.get("metric") or header_metric or "metrics/mAP50-95"
    mode = mode or state.get("mode") or ("min" if "loss" in metric else "max")
    ray_results = _ray_results(Path(ray_dir) if ray_dir else out / "ray", state.get("name"))
    trials = []
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            trials.append(_trial_from_row(row, out, ray_results, metric, best_config or {}))
    epochs = best_config.get("epochs") if best_config else None
    return StudyData(name=str(state.get("name") or out.name), metric=metric, mode=mode, trials=trials,
                     source=str(out), epochs=epochs if isinstance(epochs, int) else None,
                     best_config=best_config, best_yaml=best_yaml, confirm=_read_json(out / "confirm.json"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_best_yaml(path: Path | None) -> tuple[dict[str, Any] | None, str | None]:
    if path is None:
        return None, None
    from detune.config import safe_load

    text = path.read_text()
    found = re.search(r"^# best trial \S+ of study \S+: (\S+) = ", text, re.MULTILINE)
    loaded = safe_load(text)
    return (loaded if isinstance(loaded, dict) else None), (found.group(1) if found else None)


def _ray_results(root: Path, name: str | None) -> dict[str, tuple[Path, list[dict[str, Any]]]]:
    """trial_id -> (trial folder, result rows) for every Ray trial folder under ``root/<name>``."""
    experiments = [root / name] if name and (root / name).is_dir() else \
        [p for p in sorted(root.glob("*")) if p.is_dir()] if root.is_dir() else []
    out: dict[str, tuple[Path, list[dict[str, Any]]]] = {}
    for experiment in experiments:
        for folder in sorted(p for p in experiment.iterdir() if p.is_dir()):
            rows = _result_rows(folder / "result.json")
            trial_id = next((r.get("trial_id") for r in rows if r.get("trial_id")), None)
            if trial_id is None:
                found = re.match(r"^.*?_([0-9a-f]{5}_\d{5})_", folder.name)
                trial_id = found.group(1) if found else None
            if trial_id is not None:
                out[str(trial_id)] = (folder, rows)
    return out


def _result_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))  # Python's json reads Ray's NaN / Infinity
        except ValueError:
            continue  # a line cut short by a killed driver
    return rows


def _trial_from_row(row: Mapping[str, str], out: Path, ray_results: Mapping[str, tuple[Path, list[dict]]],
                    metric: str, base: Mapping[str, Any]) -> TrialData:
    from detune.config import safe_load

    trial_id = row["trial_id"]
    folder, rows = ray_results.get(trial_id, (None, []))
    params = _read_json(folder / "params.json") if folder is not None else None
    if not isinstance(params, dict):
        params = {k: safe_load(v) if v else None for k, v in row.items()
                  if isinstance(k, str) and k not in TRIAL_COLUMNS and "/" not in k}  # not confirm/..., test/...
    if ROUND_KEY in params:  # a refined study's round (detune.refine), as trials.csv names it
        params = {"round": params.pop(ROUND_KEY), **params}
    history = _history_from_ray(rows, metric) or _history_from_results_csv(out / "trials" / trial_id, metric)
    times = [r.get("time_total_s") for r in rows if isinstance(r.get("time_total_s"), (int, float))]
    return TrialData(trial_id=trial_id, status=row.get("status") or "unknown", params=dict(params),
                     best_metric=_float(row.get("best_metric")),
                     epochs_run=int(v) if is_number(v := _float(row.get("epochs_run"))) else 0,
                     reason=row.get("reason") or "", history=history,
                     lr_curve=[(h["epoch"], h["lr/pg0"]) for h in history if is_number(h.get("lr/pg0"))],
                     config=_effective(base, {k: v for k, v in params.items() if k != "round"}),
                     seconds=max(times) if times else None,
                     advice=_read_advice(out / "trials" / trial_id / "advice.json"))


def _read_advice(path: Path) -> list[dict[str, Any]]:
    """A trial's advice.json (written by ``detune.training.diagnose``); [] when absent or unreadable."""
    found = _read_json(path)
    return [a for a in found if isinstance(a, dict) and "rule" in a and "message" in a] \
        if isinstance(found, list) else []


def _history_from_ray(rows: Sequence[Mapping[str, Any]], metric: str) -> list[dict[str, float]]:
    by_epoch: dict[int, dict[str, float]] = {}
    for r in rows:
        if r.get("detune_status") == "diverged" or not isinstance(r.get("epoch"), (int, float)):
            continue  # the closing row of a diverged trial repeats the epoch with the worst metric
        by_epoch[int(r["epoch"])] = {"epoch": int(r["epoch"]), metric: _float(r.get(metric)),
                                     "lr/pg0": _float(r.get("lr/pg0"))}  # a restored trial's rerun wins
    return [by_epoch[e] for e in sorted(by_epoch)]


def _history_from_results_csv(folder: Path, metric: str) -> list[dict[str, float]]:
    path = folder / "results.csv"
    if not path.is_file():
        return []
    out = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            clean = {k.strip().replace("(B)", ""): v for k, v in row.items() if k}
            if clean.get("epoch"):
                out.append({"epoch": int(_float(clean["epoch"])), metric: _float(clean.get(metric)),
                            "lr/pg0": _float(clean.get("lr/pg0"))})
    return out


def _effective(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's lr0 and schedule name: its params over the study's base config."""
    from detune.config import resolve_schedule_name
    from detune.search_space import apply_params

    merged = apply_params(dict(base), {k: v for k, v in params.items() if isinstance(k, str)})
    scheduler = resolve_schedule_name(merged.get("scheduler"), str(merged.get("cos_lr")).lower() == "true",
                                      merged.get("optimizer"))
    return {"lr0": _float(merged.get("lr0", 0.01)), "scheduler": scheduler}


# ---------------------------------------------------------------------------------------------------------
# Reading an MLflow experiment
# ---------------------------------------------------------------------------------------------------------
def load_experiment(experiment: str, *, tracking_uri: str | None = None, run_id: str | None = None,
                    metric: str | None = None, mode: str | None = None) -> StudyData:
    """Read a study from MLflow: its study run and the child run of every trial.

    Raises:
        ConfigError: no such store, experiment or study run. TrackingError: the store cannot be read.
    """
    from detune import tracking
    from detune.tracking_config import absolute_uri, default_uri, local_path, redact

    uri = absolute_uri(tracking_uri) if tracking_uri else default_uri()
    if uri.startswith("sqlite:///") and not local_path(uri).is_file():
        raise ConfigError(f"no study folder {experiment!r} and no MLflow store at {uri}; pass a study "
                          "output_dir (with trials.csv), or an experiment name with --tracking-uri")
    runs = tracking.read_study_runs(uri, experiment, run_id=run_id, metric=metric)
    parent = runs["parent"]
    metric = metric or parent["params"].get("metric") or "metrics/mAP50-95"
    mode = mode or parent["params"].get("mode") or ("min" if "loss" in metric else "max")
    keys = [k[len("search_space."):] for k in parent["params"] if k.startswith("search_space.")]
    trials = [_trial_from_run(run, metric, mode, keys) for run in runs["children"]]
    epochs = _float(parent["params"].get("train.epochs"))
    return StudyData(name=parent["name"] or experiment, metric=metric, mode=mode,
                     trials=sorted(trials, key=lambda t: t.trial_id),
                     source=f"{redact(uri)} experiment {experiment!r}, run {parent['run_id']}",
                     epochs=int(epochs) if is_number(epochs) else None)


def _trial_from_run(run: Mapping[str, Any], metric: str, mode: str, keys: Sequence[str]) -> TrialData:
    from detune.config import safe_load

    params, tags, history_of = run["params"], run["tags"], run["history"]
    lr_epoch = dict(history_of.get("lr/pg0", []))
    history = [{"epoch": step, metric: value, "lr/pg0": lr_epoch.get(step, math.nan)}
               for step, value in sorted(history_of.get(metric, []))]
    steps = sorted(history_of.get("lr_step/pg0", []))
    values = [h[metric] for h in history if is_number(h[metric])]
    status = tags.get("detune.status") or ("running" if run["status"] == "RUNNING" else run["status"].lower())
    reason = tags.get("detune.reason", "")
    if status == "failed" and reason.startswith("SystemExit"):
        # A trial stopped by the scheduler exits its worker mid-epoch: its run records the SystemExit.
        status, reason = "stopped", "stopped by the trial scheduler"
    return TrialData(
        trial_id=tags.get("detune.trial_id") or run["name"] or run["run_id"], status=status,
        params={k: safe_load(params[k]) for k in keys if k in params},
        best_metric=(max(values) if mode == "max" else min(values)) if values else math.nan,
        epochs_run=max((int(h["epoch"]) for h in history), default=0), reason=reason, history=history,
        lr_curve=[(float(step), value) for step, value in steps]
        or [(h["epoch"], h["lr/pg0"]) for h in history if is_number(h["lr/pg0"])],
        lr_unit="step" if steps else "epoch", seconds=run["seconds"],
        config={"lr0": _float(params.get("lr0")), "scheduler": params.get("scheduler", "linear")},
        advice=_advice_from_tags(tags))


def _advice_from_tags(tags: Mapping[str, str]) -> list[dict[str, Any]]:
    """The advice a trial's run was tagged with (``detune.tracking.advice_tags``): rule names from
    ``detune.advice``, messages from the note's ``- `` lines, in the same order."""
    rules = [r for r in tags.get("detune.advice", "").split(",") if r]
    messages = [line[2:] for line in tags.get("mlflow.note.content", "").splitlines() if line.startswith("- ")]
    return [{"rule": r, "message": messages[i] if i < len(messages) else r} for i, r in enumerate(rules)]


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------
def write_report(data: StudyData, out_dir: str | os.PathLike[str], *, top: int = 5) -> Path:
    """Draw the figures and write ``report.md`` into ``out_dir``; return ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    problems = []
    leaders = data.ranked()[:top]
    for name, draw in (("metric_vs_lr0.png", lambda ax: _metric_vs_lr0(data, ax)),
                       ("parallel_coordinates.png", lambda ax: _parallel_coordinates(data, ax)),
                       ("metric_curves.png", lambda ax: _curves(data, leaders, ax, lr=False)),
                       ("lr_curves.png", lambda ax: _curves(data, leaders, ax, lr=True))):
        try:
            _figure(out / name, draw)
        except Exception as e:  # noqa: BLE001 - one figure failing never loses the report
            (out / name).unlink(missing_ok=True)
            problems.append(f"{name}: {type(e).__name__}: {e}")
    text = markdown(data, top=top, problems=problems)
    atomic_write(out / "report.md", text)
    return out


def _figure(path: Path, draw: Any) -> None:
    """One PNG from ``draw(ax)`` (``detune._plotting``: no pyplot state)."""
    from detune import _plotting

    fig = _plotting.new_figure("study report figures", figsize=(8, 4.8), layout="constrained")
    draw(fig.add_subplot())
    _plotting.save(fig, path)


def _colors(data: StudyData) -> dict[str, Any]:
    """trial_id -> colour by metric (viridis, best brightest); grey without a finite metric."""
    from detune._plotting import colormap

    ranked = data.ranked()
    cmap = colormap("viridis")
    n = max(len(ranked) - 1, 1)
    out: dict[str, Any] = {t.trial_id: "0.6" for t in data.trials}
    out.update({t.trial_id: cmap(1 - i / n if len(ranked) > 1 else 0.8) for i, t in enumerate(ranked)})
    return out


def _metric_vs_lr0(data: StudyData, ax: Any) -> None:
    colors = _colors(data)
    finite = [t.best_metric for t in data.ranked()]
    low = min(finite, default=0.0) - 0.05 * (max(finite, default=1.0) - min(finite, default=0.0) or 1.0)
    markers = {"completed": "o", "stopped": "v", "diverged": "X", "failed": "X"}
    base = baseline_trial(data)
    for status in dict.fromkeys(t.status for t in data.trials):
        group = [t for t in data.trials
                 if t.status == status and is_number(t.config.get("lr0")) and t.config["lr0"] > 0]
        ax.scatter([t.config["lr0"] for t in group],
                   [t.best_metric if is_number(t.best_metric) else low for t in group],
                   c=[colors[t.trial_id] for t in group], marker=markers.get(status, "s"), s=60,
                   edgecolors="k", linewidths=0.5, label=f"{status} ({len(group)})")
    if base is not None and is_number(base.config.get("lr0")):
        ax.scatter([base.config["lr0"]], [base.best_metric if is_number(base.best_metric) else low], marker="*",
                   s=260, facecolors="none", edgecolors="C3", linewidths=1.5, label="Ultralytics defaults")
    ax.set_xscale("log")
    ax.set_xlabel("lr0 (log scale)")
    ax.set_ylabel(f"best {data.metric}")
    ax.set_title(f"{data.name}: best {data.metric} per trial (no finite metric: bottom row)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _axis(values: list[Any], *, log_ok: bool = True) -> tuple[list[float], list[tuple[float, str]], str]:
    """Positions in [0, 1] for one parallel axis, tick labels, and a suffix naming a log scale."""
    present = [v for v in values if v is not None]
    if present and all(is_number(v) for v in present):
        log = log_ok and min(present) > 0 and max(present) / min(present) >= 20
        scaled = [math.log10(v) if log else float(v) for v in present]
        lo, hi = min(scaled), max(scaled)
        pos = [math.nan if v is None else ((math.log10(v) if log else v) - lo) / (hi - lo) if hi > lo else 0.5
               for v in values]
        ticks = [(0.0 if hi > lo else 0.5, f"{min(present):.3g}")]
        ticks += [(1.0, f"{max(present):.3g}")] if hi > lo else []
        return pos, ticks, " (log)" if log else ""
    cats = sorted({str(v) for v in values})
    step = 1 / (len(cats) - 1) if len(cats) > 1 else 0.0
    index = {c: (i * step if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
    return [index[str(v)] for v in values], [(index[c], c) for c in cats], ""


def _parallel_coordinates(data: StudyData, ax: Any) -> None:
    keys = list(dict.fromkeys(k for t in data.trials for k in t.params))
    columns = [[t.params.get(k) for t in data.trials] for k in keys]
    columns.append([t.best_metric if is_number(t.best_metric) else None for t in data.trials])
    names = [*keys, data.metric]
    colors = _colors(data)
    axes = [_axis(c, log_ok=i < len(keys)) for i, c in enumerate(columns)]
    for i, t in enumerate(data.trials):
        ys = [-0.08 if math.isnan(a[0][i]) else a[0][i] for a in axes]
        ax.plot(range(len(axes)), ys, color=colors[t.trial_id], lw=1.6, alpha=0.85,
                linestyle="-" if t.status in ("completed", "stopped") else "--")
    for x, (_, ticks, suffix) in enumerate(axes):
        ax.axvline(x, color="0.3", lw=0.8)
        for y, label in ticks:
            ax.text(x + 0.02, y, label, fontsize=7, va="center", bbox={"fc": "white", "ec": "none", "pad": 1})
        names[x] += suffix
    ax.set_xticks(range(len(axes)), names, fontsize=8, rotation=15)
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.08)
    ax.set_xlim(-0.1, len(axes) - 0.6)
    ax.set_title(f"{data.name}: trials across the searched settings (dashed: diverged/failed; colour: "
                 "metric)", fontsize=10)


def _curves(data: StudyData, leaders: Sequence[TrialData], ax: Any, *, lr: bool) -> None:
    for i, t in enumerate(leaders):
        points = t.lr_curve if lr else [(h["epoch"], h[data.metric]) for h in t.history
                                        if is_number(h.get(data.metric))]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], color=f"C{i % 10}",
                    marker=None if lr and t.lr_unit == "step" else "o", ms=4, lw=1.5,
                    label=f"{t.trial_id} ({_params(t.params)})"[:70])
    if not any(t.lr_curve if lr else t.history for t in leaders):
        ax.text(0.5, 0.5, "no per-epoch data for the top trials", ha="center", transform=ax.transAxes)
    unit = "optimizer step" if lr and any(t.lr_unit == "step" for t in leaders) else "epoch"
    ax.set_xlabel(unit)
    ax.set_ylabel("lr (param group 0)" if lr else data.metric)
    what = "learning rate" if lr else data.metric
    ax.set_title(f"{data.name}: {what} of the top {len(leaders)} trials", fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


def baseline_trial(data: StudyData) -> TrialData | None:
    """The trial that ran Ultralytics' defaults (lr0 0.01, linear schedule), best one if several."""
    hits = [t for t in data.trials if t.config.get("scheduler") == BASELINE["scheduler"]
            and math.isclose(t.config.get("lr0", math.nan), BASELINE["lr0"], rel_tol=1e-6)]
    ranked = [t for t in data.ranked() if t in hits]
    return ranked[0] if ranked else (hits[0] if hits else None)


def markdown(data: StudyData, *, top: int = 5, problems: Sequence[str] = ()) -> str:
    """The summary: best trial and config, baseline comparison, status counts, compute, figures."""
    ranked = data.ranked()
    best = ranked[0] if ranked else None
    counts = {s: sum(t.status == s for t in data.trials) for s in TRIAL_STATUSES}
    shown = ", ".join(f"{n} {s}" for s, n in counts.items() if n or s != "interrupted")
    other = len(data.trials) - sum(counts.values())
    lines = [f"# Study report: {data.name}", "",
             f"- source: {data.source}", f"- metric: `{data.metric}` ({data.mode})",
             f"- trials: {len(data.trials)} ({shown}" + (f", {other} other" if other else "") + ")", "",
             "## Best trial", ""]
    if best is None:
        lines += ["No trial produced a finite metric; see the trials below and trials.csv.", ""]
    else:
        with_params = _params(best.params) or "the base config"
        lines += [f"Trial `{best.trial_id}` ({best.status}): **{data.metric} = {best.best_metric:.4f}** "
                  f"after {best.epochs_run} epochs, with {with_params}.", ""]
        if data.best_yaml is not None:
            lines += [f"Config: `{data.best_yaml}` (re-run it with `detune train {data.best_yaml}`).", ""]
        if data.best_config:
            import yaml

            lines += ["```yaml", yaml.safe_dump(data.best_config, sort_keys=False).rstrip(), "```", ""]
    lines += ["## Baseline (Ultralytics defaults: lr0=0.01, linear schedule)", "",
              _baseline_text(data, best), ""]
    if isinstance(data.confirm, dict):
        lines += _confirm_lines(data.confirm, data.metric)
    lines += _compute_lines(data)
    lines += _advice_lines(data, best)
    lines += ["## Trials", "", "| rank | trial | status | " + data.metric + " | epochs | params | note |",
              "|---:|---|---|---:|---:|---|---|"]
    order = ranked + [t for t in data.trials if t not in ranked]
    for i, t in enumerate(order, 1):
        value = f"{t.best_metric:.4f}" if is_number(t.best_metric) else "-"
        note = t.reason.replace("|", "/")[:120]
        rank = i if t in ranked else "-"
        lines.append(f"| {rank} | `{t.trial_id}` | {t.status} | {value} | {t.epochs_run} | "
                     f"{_params(t.params)} | {note} |")
    lines += ["", "## Figures", ""]
    titles = {"metric_vs_lr0.png": f"{data.metric} vs lr0",
              "parallel_coordinates.png": "parallel coordinates of the trials",
              "metric_curves.png": f"{data.metric} per epoch, top {top}",
              "lr_curves.png": f"lr of param group 0, top {top}"}
    failed = {p.split(":")[0] for p in problems}
    lines += [f"![{title}]({name})" for name, title in titles.items() if name not in failed]
    lines += [f"- not drawn: {p}" for p in problems]
    return "\n".join(lines) + "\n"


def _baseline_text(data: StudyData, best: TrialData | None) -> str:
    base = baseline_trial(data)
    if base is None:
        return ("No trial ran the defaults, so there is nothing to compare with; add them to the search "
                "space (e.g. `lr0: {grid: [0.01, ...]}` with `scheduler: linear`) to measure the gain.")
    if not is_number(base.best_metric):
        return f"Trial `{base.trial_id}` ran the defaults and ended {base.status} without a finite metric."
    text = (f"Trial `{base.trial_id}` ran the defaults: {data.metric} = {base.best_metric:.4f} "
            f"({base.status}).")
    if best is None or best is base:
        return text + " It is the best trial of the study."
    diff = best.best_metric - base.best_metric
    if diff == 0:
        return text + f" The best trial (`{best.trial_id}`) ties with it."
    rel = f" ({diff / abs(base.best_metric):+.1%})" if base.best_metric else ""
    word = "better" if (diff > 0) == (data.mode == "max") else "worse"
    return text + f" The best trial is {abs(diff):.4f}{rel} {word} ({diff:+.4f})."


def _confirm_lines(confirm: Mapping[str, Any], metric: str) -> list[str]:
    """The confirmation stage: each retrained trial's mean and spread over new seeds (and its held-out test
    scores), and which one best.yaml went to."""
    seeds, best, base = confirm.get("seeds") or [], confirm.get("best") or {}, confirm.get("baseline")
    tested = confirm.get("test") or {}
    lines = ["## Confirmation", "", f"The top trials and the baseline retrained with seeds {seeds} "
             f"({metric}: mean +- sd, min-max over seeds)" + ("; held-out test split scored" if tested else "")
             + ":", "", "| trial | mean | sd | min-max |" + "".join(f" {key} |" for key in tested),
             "|---|---:|---:|---:|" + "---:|" * len(tested)]
    for trial, c in (confirm.get("confirmed") or {}).items():
        name = f"`{trial}`" + (" (baseline)" if trial == base else "") + (" **best.yaml**" if trial ==
                                                                           best.get("trial_id") else "")
        cells = [f"{c['mean']:.4f}", f"{c['std']:.4f}", f"{c['min']:.4f}-{c['max']:.4f}"] if c.get("n") else \
            ["-", "-", "every retraining failed"]
        cells += [f"{t[trial]['mean']:.4f}" if t.get(trial, {}).get("n") else "-" for t in tested.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if best.get("beats_baseline") is not None:
        verdict = (f"beats the baseline by {best['margin']:.4f}, "
                   + ("more than" if best["beyond_spread"] else "within") + " the spread between seeds"
                   if best["beats_baseline"] else "no trial beat the baseline's confirmed mean: best.yaml is the "
                   "baseline")
        lines += ["", f"best.yaml: trial `{best.get('trial_id')}`, {verdict}."]
    return [*lines, ""]


def _advice_lines(data: StudyData, best: TrialData | None) -> list[str]:
    """The training-health advice: every message of the best trial and the baseline, the rule names of the
    others (their messages are in each trial's advice.json and MLflow run note)."""
    if not any(t.advice for t in data.trials):
        return []
    lines = ["## Advice", ""]
    base = baseline_trial(data)
    shown = [(t, label) for t, label in ((best, "best trial"), (base, "baseline")) if t is not None and t.advice]
    for t, label in shown if best is not base else shown[:1]:
        lines += [f"{label.capitalize()} `{t.trial_id}` ({t.status}):", ""]
        lines += [f"- {a['message']}" for a in t.advice] + [""]
    ranked = data.ranked()
    others = [t for t in ranked + [t for t in data.trials if t not in ranked] if t.advice and t not in (best, base)]
    if others:
        lines += ["Other trials:", ""]
        lines += [f"- `{t.trial_id}` ({t.status}): " + ", ".join(map(_rule_text, t.advice)) for t in others]
        lines.append("")
    return lines


def _rule_text(advice: Mapping[str, Any]) -> str:
    """``slow_progress (lr0 0.001)``: a rule with its suggested change, when advice.json has one."""
    change = advice.get("change")
    settings = ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in change.items()) \
        if isinstance(change, dict) else ""
    return f"{advice['rule']} ({settings})" if settings else str(advice["rule"])


def _compute_lines(data: StudyData) -> list[str]:
    used = sum(t.epochs_run for t in data.trials)
    lines = ["## Compute", "", f"- trial-epochs used: {used}"]
    if data.epochs:
        planned = len(data.trials) * data.epochs
        saved = f" (trials ended early saved {planned - used}, {(planned - used) / planned:.0%})"
        lines.append(f"- trial-epochs if every trial had run all {data.epochs} epochs: {planned}"
                     + (saved if planned > used else ""))
    seconds = [t.seconds for t in data.trials if t.seconds is not None]
    if seconds:
        lines.append(f"- trial time: {sum(seconds):.0f} s in total ({len(seconds)} trials timed)")
    return [*lines, ""]


def _params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
