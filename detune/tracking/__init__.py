"""MLflow tracking for detune: explicit tracking URIs and run ids, buffered logging that never stops training.

This package is the only place that imports ``mlflow`` (lazily, inside functions). Its modules, by job:
``_store`` (client, store probe, experiment creation), ``_sender`` (params, tags, the buffered retrying
sender), ``_runs`` (one run: ``RunLogger``), ``_study`` (study and trial runs, reads for reports and links).
Reading a store sets MLflow's environment only; it never touches Ultralytics' settings. Everything goes through
``MlflowClient(tracking_uri=...)`` with explicit run ids: the caller's global MLflow state (active run,
``set_tracking_uri``, ``set_experiment``, autolog) is never read or changed, so a Ray trial, a notebook
and detune can log to different stores from one process.

Step numbering: per-epoch metrics are logged at ``step = epoch`` counted from 1 (as ``history``'s
``epoch`` and Ultralytics' results.csv); ``lr_step/pg{i}`` is logged at ``step =`` the global optimizer
step counted from 0 (as ``TrainResult.steps``).

Which store and run (``TrackingConfig``, ``resolve_tracking``) lives in ``detune.tracking_config``.

Example:
    >>> sanitize_key("metrics/mAP50-95(B)")
    'metrics/mAP50-95_B_'
"""

from __future__ import annotations

from detune.tracking._runs import RunLogger, advice_tags, flush_unlogged, open_training_run, write_config
from detune.tracking._sender import _open_run as _open_run  # noqa: F401 - tests open runs directly
from detune.tracking._sender import default_tags, flatten_params, training_params
from detune.tracking._store import (
    PROBE_TIMEOUT,
    UNLOGGED_FILE,
    check_reachable,
    prepare_store,
    sanitize_key,
)
from detune.tracking._store import _client as _client  # noqa: F401 - tests open stores directly
from detune.tracking._study import (
    close_stopped_trial,
    find_experiment_id,
    find_trial_run,
    finish_run,
    list_experiments,
    read_study_runs,
    start_study_run,
    sync_trial_runs,
)
from detune.tracking_config import TrackingConfig, clip, local_path, redact

__all__ = [
    "PROBE_TIMEOUT", "RunLogger", "TrackingConfig", "UNLOGGED_FILE", "advice_tags", "check_reachable", "clip",
    "close_stopped_trial", "default_tags", "find_experiment_id", "find_trial_run", "finish_run", "flatten_params",
    "flush_unlogged", "list_experiments", "local_path", "open_training_run", "prepare_store", "read_study_runs",
    "redact", "sanitize_key", "start_study_run", "sync_trial_runs", "training_params", "write_config",
]
