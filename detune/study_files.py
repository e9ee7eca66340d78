"""A finished study as data and files: ``StudyResult``, ``trials.csv`` and ``best.yaml`` (atomic writes)."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from pathlib import Path
from typing import Any

import yaml

from detune.errors import TuneError
from detune.search_space import apply_params
from detune.study import StudyConfig

TRIAL_COLUMNS = ("trial_id", "status", "best_metric", "best_epoch", "epochs_run", "reason")


@dataclasses.dataclass
class StudyResult:
    """What a study produced. ``trials`` has one row per trial: its params, ``status`` (completed, stopped,
    diverged, failed), ``best_metric`` (over its epochs), ``best_epoch``, ``epochs_run`` and ``reason``."""

    name: str
    metric: str
    mode: str
    best_config: dict[str, Any] | None
    best_params: dict[str, Any]
    best_metrics: dict[str, Any]
    trials: list[dict[str, Any]]
    output_dir: Path
    best_yaml: Path | None
    trials_csv: Path | None
    parent_run_id: str | None = None
    result_grid: Any = None


def trial_rows(study: StudyConfig, grid: Any) -> list[dict[str, Any]]:
    """One row per trial from a Ray ``ResultGrid`` (no Ray import needed: duck-typed)."""
    rows = []
    sign = 1 if study.mode == "max" else -1
    for result in grid:
        history = []
        frame = result.metrics_dataframe
        if frame is not None and study.metric in frame:
            history = [r for r in frame.to_dict("records") if r.get("detune_status") != "diverged"]
        metrics = result.metrics or {}
        scored = [r for r in history if isinstance(r.get(study.metric), (int, float))
                  and math.isfinite(r[study.metric])]
        best = max(scored, key=lambda r: sign * r[study.metric]) if scored else {}
        epochs_run = int(max((r.get("epoch", 0) for r in history), default=0))
        if result.error is not None:
            status, reason = "failed", str(result.error).strip().splitlines()[-1][:500]
        elif metrics.get("detune_status") == "diverged":
            status, reason = "diverged", metrics.get("detune_reason", "")
        elif epochs_run < study.train.epochs:
            status, reason = "stopped", f"stopped by {study.trial_scheduler} after {epochs_run} epochs"
        else:
            status, reason = "completed", ""
        params = {k: v for k, v in (result.config or {}).items()}
        rows.append({"trial_id": metrics.get("detune_trial_id") or Path(result.path).name, "status": status,
                     "best_metric": best.get(study.metric, math.nan), "best_epoch": best.get("epoch", math.nan),
                     "epochs_run": epochs_run, "reason": reason, **params, "_best": best})
    return rows


def summarize(study: StudyConfig, grid: Any, *, parent_run_id: str | None) -> StudyResult:
    """Build the ``StudyResult`` and write ``trials.csv`` and ``best.yaml`` into ``study.output_dir``."""
    rows = trial_rows(study, grid)
    sign = 1 if study.mode == "max" else -1
    ranked = [r for r in rows if r["status"] in ("completed", "stopped") and math.isfinite(r["best_metric"])]
    best = max(ranked, key=lambda r: sign * r["best_metric"]) if ranked else None
    params = {k: best[k] for k in study.search_space if k in best} if best else {}
    best_config = None
    if best is not None:
        best_config = apply_params(study.train.to_dict(), params)
    trials = [{k: v for k, v in r.items() if k != "_best"} for r in rows]
    out = study.output_dir
    trials_csv = write_atomic(out / "trials.csv", _csv(trials, list(study.search_space)))
    best_yaml = None
    if best_config is not None:
        header = (f"# best trial {best['trial_id']} of study {study.name}: {study.metric} = {best['best_metric']:.6g}"
                  f" at epoch {best['best_epoch']}\n# re-run with: detune train {out / 'best.yaml'}\n")
        best_yaml = write_atomic(out / "best.yaml", header + yaml.safe_dump(best_config, sort_keys=False))
    return StudyResult(name=study.name, metric=study.metric, mode=study.mode, best_config=best_config,
                       best_params=params, best_metrics=dict(best["_best"]) if best else {}, trials=trials,
                       output_dir=out, best_yaml=best_yaml, trials_csv=trials_csv, parent_run_id=parent_run_id,
                       result_grid=grid)


def _csv(rows: list[dict[str, Any]], param_keys: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*TRIAL_COLUMNS, *param_keys], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_atomic(path: Path, text: str) -> Path:
    """Write via a temp file and rename, so a full disk never leaves a partial file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise TuneError(f"could not write {path}: {e.strerror or e}; free disk space or choose another "
                        "output_dir (the Ray results in storage_path are kept)") from e
    return path
