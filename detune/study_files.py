"""A finished study as data and files: ``StudyResult``, ``trials.csv`` and ``best.yaml`` (atomic writes)."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from detune._paths import atomic_write
from detune.errors import ConfigError, TuneError
from detune.refine import ROUND_KEY
from detune.search_space import apply_params
from detune.study import StudyConfig

__all__ = ["INTERRUPTED", "LOCK_FILE", "StudyResult", "TRIAL_COLUMNS", "TRIAL_STATUSES", "check_folders",
           "clear_unstarted", "open_study", "restorable", "study_lock", "summarize", "trial_rows", "trials_reported",
           "write_atomic", "write_trials_csv"]

TRIAL_STATUSES = ("completed", "stopped", "diverged", "failed", "interrupted")  # how a trial ended
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
    report: Path | None = None  # the report.md ``tune`` wrote (None when it could not be written: a warning said why)
    confirm: dict[str, Any] | None = None  # the confirmation stage's summary (confirm.json), when it ran


INTERRUPTED = "the study was interrupted before this trial ended; resume the study with --resume"


def trial_rows(study: StudyConfig, grid: Any, interrupted: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """One row per trial from a Ray ``ResultGrid`` (no Ray import needed: duck-typed). Trials whose id is in
    ``interrupted`` (still running when the study stopped) get status ``interrupted``."""
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
        trial_id = metrics.get("detune_trial_id") or Path(result.path).name
        if result.error is not None:
            status, reason = "failed", str(result.error).strip().splitlines()[-1][:500]
        elif trial_id in interrupted:
            status, reason = "interrupted", INTERRUPTED
        elif metrics.get("detune_status") == "diverged":
            status, reason = "diverged", metrics.get("detune_reason", "")
        elif epochs_run < study.train.epochs:
            status, reason = "stopped", f"stopped by {study.trial_scheduler} after {epochs_run} epochs"
        else:
            status, reason = "completed", ""
        params = {k: v for k, v in (result.config or {}).items()}
        if ROUND_KEY in params:  # a refined study's round (detune.refine)
            params["round"] = params.pop(ROUND_KEY)
        if "cv/std" in best:  # a cross-validated trial: the spread between its folds at its best epoch
            params["cv/std"] = best["cv/std"]
        rows.append({"trial_id": trial_id, "status": status,
                     "best_metric": best.get(study.metric, math.nan), "best_epoch": best.get("epoch", math.nan),
                     "epochs_run": epochs_run, "reason": reason, **params, "_best": best})
    return rows


def summarize(study: StudyConfig, grid: Any, *, parent_run_id: str | None,
              interrupted: frozenset[str] = frozenset()) -> StudyResult:
    """Build the ``StudyResult`` and write ``trials.csv`` and ``best.yaml`` into ``study.output_dir``."""
    rows = trial_rows(study, grid, interrupted)
    sign = 1 if study.mode == "max" else -1
    ranked = [r for r in rows if r["status"] in ("completed", "stopped", "interrupted")
              and math.isfinite(r["best_metric"])]
    best = max(ranked, key=lambda r: sign * r["best_metric"]) if ranked else None
    params = {k: best[k] for k in study.search_space if k in best} if best else {}
    best_config = None
    if best is not None:
        best_config = apply_params(study.train.to_dict(), params)
    trials = [{k: v for k, v in r.items() if k != "_best"} for r in rows]
    out = study.output_dir
    trials_csv = write_trials_csv(study, trials)
    best_yaml = None
    if best_config is not None:
        header = (f"# best trial {best['trial_id']} of study {study.name}: {study.metric} = {best['best_metric']:.6g}"
                  f" at epoch {best['best_epoch']}\n# re-run with: detune train {out / 'best.yaml'}\n")
        best_yaml = write_atomic(out / "best.yaml", header + yaml.safe_dump(best_config, sort_keys=False))
    return StudyResult(name=study.name, metric=study.metric, mode=study.mode, best_config=best_config,
                       best_params=params, best_metrics=dict(best["_best"]) if best else {}, trials=trials,
                       output_dir=out, best_yaml=best_yaml, trials_csv=trials_csv, parent_run_id=parent_run_id,
                       result_grid=grid)


def write_trials_csv(study: StudyConfig, trials: list[dict[str, Any]], extra: Sequence[str] = ()) -> Path:
    """Write ``trials.csv``: the trial columns, the searched params, the settings derived keys stand for and
    ``extra`` columns (the confirmation stage's ``confirm/mean``, ``test/mAP50-95``, ...)."""
    rounds = ["round"] if study.refine is not None else []
    spread = ["cv/std"] if study.cv is not None else []
    columns = [*rounds, *study.search_space, *_trained(study, trials), *spread, *extra]
    return write_atomic(study.output_dir / "trials.csv", _csv(trials, columns))


def _trained(study: StudyConfig, trials: list[dict[str, Any]]) -> list[str]:
    """Settings a derived search key stands for (lr0 for lr0_scale, momentum for one_minus_momentum, see
    detune._derived): added to each row as the value the trial trained with, and returned as extra columns."""
    shown = [name for key, name in (("lr0_scale", "lr0"), ("one_minus_momentum", "momentum"))
             if key in study.search_space and name not in study.search_space]
    for row in trials if shown else []:
        try:
            trained = apply_params(study.train.to_dict(), {k: row[k] for k in study.search_space if k in row})
        except ConfigError:
            continue
        row.update({name: trained.get(name) for name in shown})
    return shown


def _csv(rows: list[dict[str, Any]], param_keys: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*TRIAL_COLUMNS, *param_keys], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_atomic(path: Path, text: str) -> Path:
    """Write via a temp file and rename, so a full disk never leaves a partial file behind."""
    try:
        atomic_write(path, text)
    except OSError as e:
        raise TuneError(f"could not write {path}: {e.strerror or e}; free disk space or choose another "
                        "output_dir (the Ray results in storage_path are kept)") from e
    return path


# ---- the study's folders: checked before anything is written, locked while the study runs ----------------
LOCK_FILE = ".detune.lock"
_HELD: dict[Path, tuple[int, int]] = {}  # lock path -> (fd, depth): the CLI and tune() nest in one process


def check_folders(study: StudyConfig) -> None:
    """Raise ``TuneError`` naming the path when ``output_dir`` or ``storage_path`` cannot be created or
    written (a file on the way, no permission); creates nothing, so it runs before any log or Ray start."""
    for field, path in (("output_dir", study.output_dir), ("storage_path", study.storage_path)):
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        problem = None
        if not existing.is_dir():
            problem = f"{existing} is a file, not a folder"
        else:
            try:  # a real write (a temp folder, removed at once): os.access trusts root on read-only mounts
                tempfile.TemporaryDirectory(prefix=".detune-probe-", dir=existing).cleanup()
            except OSError as e:
                problem = f"{existing} is not writable ({e.strerror or e})"
        if problem:
            raise TuneError(f"{field} ({path}) cannot be created: {problem}; choose a writable folder with "
                            f"{field}=...")


@contextlib.contextmanager
def study_lock(study: StudyConfig) -> Iterator[Path]:
    """Hold an exclusive lock on the study's ``output_dir`` (``flock`` on ``.detune.lock``: the kernel
    releases it when the process dies, so a killed study never blocks the next run). A second study on the
    same folder fails at once with ``TuneError``, before it writes anything. Re-entrant in one process."""
    import fcntl

    path = study.output_dir / LOCK_FILE
    if path in _HELD:
        fd, depth = _HELD[path]
        _HELD[path] = (fd, depth + 1)
    else:
        try:
            study.output_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise TuneError(f"output_dir ({study.output_dir}) cannot be created: {e.strerror or e}; choose a "
                            "writable folder with output_dir=...") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise TuneError(f"study {study.name!r} is already running in {study.output_dir} (pid {holder}); "
                            "wait for it to end (then --resume it if it was interrupted), or choose another "
                            "output_dir / name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD[path] = (fd, 1)
    try:
        yield path
    finally:
        fd, depth = _HELD[path]
        if depth > 1:
            _HELD[path] = (fd, depth - 1)
        else:
            del _HELD[path]
            os.close(fd)  # releases the flock


def trials_reported(experiment: Path) -> bool:
    """Whether any trial of a Ray experiment folder reported a result (an epoch): only then is there
    something to resume."""
    return any(f.stat().st_size > 0 for f in experiment.glob("*/result.json"))


def clear_unstarted(study: StudyConfig, experiment: Path) -> None:
    """Before a new (not resumed) study: an experiment folder left by a start that failed before any trial
    reported is removed (nothing in it to keep); one with results blocks with the fix."""
    if not experiment.exists():
        return
    if trials_reported(experiment):
        raise TuneError(f"study {study.name!r} already exists in {experiment}; pass --resume to continue it, or "
                        "choose another name / delete that folder")
    shutil.rmtree(experiment)


def restorable(experiment: Path) -> bool:
    """Whether Ray can resume the experiment folder (it holds ``tuner.pkl``: ``Tuner.can_restore``'s test)."""
    return (experiment / "tuner.pkl").is_file()


@contextlib.contextmanager
def open_study(study: StudyConfig, *, resume: bool) -> Iterator[Path]:
    """What a study checks and holds before it writes anything (the CLI enters it before opening
    detune.log, ``tune`` again inside): usable folders, something to resume for ``resume`` (checked before
    any folder is created), the lock on ``output_dir``, and for a new study no earlier results in the way.
    Yields the Ray experiment folder."""
    check_folders(study)
    experiment = study.storage_path / study.name
    if resume and not restorable(experiment):
        raise TuneError(f"nothing to resume in {experiment}; run the study without --resume first")
    with study_lock(study):
        if not resume:
            clear_unstarted(study, experiment)
        yield experiment
