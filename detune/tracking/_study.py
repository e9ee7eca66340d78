"""MLflow study runs (the parent, nested trial runs, stopped trials) and the reads of reports and links."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detune.errors import ConfigError, TrackingError
from detune.tracking._sender import _clean_tags, _log_params, _mlflow_status, _open_run, _Sender, flatten_params
from detune.tracking._store import (
    _MAX_TAG_VALUE,
    PROBE_TIMEOUT,
    _as_tracking_error,
    _client,
    _quick_http,
    _short,
    check_reachable,
    prepare_store,
)
from detune.tracking_config import TrackingConfig, clip, redact

if TYPE_CHECKING:

    pass

log = logging.getLogger(__name__)


# ---- studies (nested runs) -----------------------------------------------------------------------------
def start_study_run(cfg: TrackingConfig, *, name: str, params: Mapping[str, Any],
                    tags: Mapping[str, Any] | None = None) -> str:
    """Create the parent run of a study (or reopen ``cfg.run_id`` on resume) and return its id.

    Trials nest under it with ``cfg.replace(parent_run_id=..., tags={"detune.trial_id": ...})``.

    Raises:
        TrackingError: when the store is unreachable or the run cannot be created.
    """
    check_reachable(cfg)
    prepare_store(cfg)
    return _open_run(cfg.replace(run_name=cfg.run_name or name), flatten_params(params),
                     {"detune.kind": "study", **(tags or {})})


def find_trial_run(cfg: TrackingConfig, *, parent_run_id: str, trial_id: str) -> str | None:
    """The oldest child run of ``parent_run_id`` tagged ``detune.trial_id=trial_id``, or None."""
    for value in (parent_run_id, trial_id):
        if "'" in value:
            raise ValueError(f"run and trial ids cannot contain quotes: {value!r}")
    with _as_tracking_error(cfg, "cannot search trial runs"):
        client = _client(cfg.uri)
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            return None
        runs = client.search_runs([exp.experiment_id], max_results=1, order_by=["attributes.start_time ASC"],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' "
                                                f"AND tags.`detune.trial_id` = '{trial_id}'")
    return str(runs[0].info.run_id) if runs else None


def close_stopped_trial(cfg: TrackingConfig, *, parent_run_id: str, trial_id: str,
                        status: str = "stopped") -> str | None:
    """Close the child run of a trial the scheduler stopped (its process was killed before ``finish``).

    A child run still RUNNING is set FINISHED with tag ``detune.status=<status>``; a run the trial closed
    itself is left alone. Returns the id of the run it closed, else None. Meant for a Ray callback: store
    errors are logged as warnings, never raised.
    """
    try:
        run_id = find_trial_run(cfg, parent_run_id=parent_run_id, trial_id=trial_id)
        if run_id is None:
            return None
        with _as_tracking_error(cfg, f"cannot close the run of trial {trial_id}"):
            client = _client(cfg.uri)
            if client.get_run(run_id).info.status != "RUNNING":
                return None
            client.set_tag(run_id, "detune.status", status)
            client.set_terminated(run_id, "FINISHED")
    except TrackingError as e:
        log.warning("%s", e)
        return None
    return run_id


def sync_trial_runs(cfg: TrackingConfig, *, parent_run_id: str, truth: Mapping[str, tuple[str, str]],
                    open_runs: tuple[str, str] | None = None) -> int:
    """Make the child runs of a study say what its trials.csv says: ``truth`` maps a trial id to its
    (status, reason); the run gets MLflow status FINISHED (completed, stopped, diverged), FAILED (failed) or
    KILLED (interrupted) and tags ``detune.status`` / ``detune.reason`` (no reason tag when empty).
    ``open_runs``: (status, reason) for children still RUNNING that ``truth`` does not name. Call it when no
    trial runs any more. Returns the number of runs changed; store errors are warnings, never raised."""
    changed = 0
    try:
        with _as_tracking_error(cfg, "cannot update the trial runs"):
            client = _client(cfg.uri)
            exp = client.get_experiment_by_name(cfg.experiment)
            runs = [] if exp is None else client.search_runs(
                [exp.experiment_id], max_results=10000, order_by=["attributes.start_time ASC"],
                filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
            seen: set[str] = set()
            for run in runs:
                trial_id = run.data.tags.get("detune.trial_id")
                if trial_id is None or trial_id in seen:
                    continue
                seen.add(trial_id)
                want = truth.get(trial_id) or (open_runs if run.info.status == "RUNNING" else None)
                if want is None:
                    continue
                status, reason = want
                mlstatus = {"failed": "FAILED", "interrupted": "KILLED"}.get(status, "FINISHED")
                tags = run.data.tags
                if (run.info.status, tags.get("detune.status"), tags.get("detune.reason", "")) == (
                        mlstatus, status, reason[:_MAX_TAG_VALUE]):
                    continue
                client.set_tag(run.info.run_id, "detune.status", status)
                if reason:
                    client.set_tag(run.info.run_id, "detune.reason", reason[:_MAX_TAG_VALUE])
                elif "detune.reason" in tags:
                    client.delete_tag(run.info.run_id, "detune.reason")
                if run.info.status != mlstatus:
                    client.set_terminated(run.info.run_id, mlstatus)
                changed += 1
    except TrackingError as e:
        log.warning("%s", e)
    return changed


def finish_run(cfg: TrackingConfig, run_id: str, *, status: str, metrics: Mapping[str, float] | None = None,
               params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
               artifacts: Sequence[Path] = ()) -> None:
    """Log final metrics (at step 0), params, tags and artifacts (files or folders) and set the status.

    Args:
        status: FINISHED, FAILED, KILLED, or detune's completed / diverged / failed / killed.

    Raises:
        TrackingError: when the store stays unreachable for ``cfg.flush_timeout`` seconds.
    """
    mlstatus = _mlflow_status(status)
    sender = _Sender(cfg, run_id)
    sender._add(metrics or {}, 0)
    sender._tags.update(_clean_tags(tags or {}))
    deadline = time.monotonic() + cfg.flush_timeout
    flat = flatten_params(params or {})
    params_sent = sender._attempt(lambda: _log_params(sender.client, run_id, flat), deadline)
    flushed = sender._flush(deadline)
    missed = [str(p) for p in artifacts if not sender._upload(Path(p), None, deadline)]
    report = sender._close(mlstatus, deadline, missed)
    if not (params_sent and flushed and not missed and report["status_set"]):
        raise TrackingError(f"could not finish run {run_id} in {redact(cfg.uri)} within "
                            f"{cfg.flush_timeout:g} s ({'; '.join(report['errors'])}); "
                            f"unlogged artifacts: {missed or 'none'}")


# ---- reads (reports) ----------------------------------------------------------------------------------
def read_study_runs(uri: str, experiment: str, *, run_id: str | None = None,
                    metric: str | None = None) -> dict[str, Any]:
    """The runs of a study, as plain data for ``detune.report``.

    Returns ``{"parent": {run_id, name, params}, "children": [{run_id, name, status, tags, params,
    seconds, history: {key: [(step, value), ...]}}]}`` for the newest study run (tag ``detune.kind=study``)
    of ``experiment`` or ``run_id``; histories of the study metric, ``lr/pg0`` and ``lr_step/pg0``.

    Raises:
        ConfigError: no such experiment or study run. TrackingError: the store cannot be read.
    """
    try:
        client = _client(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ConfigError(f"no study folder and no MLflow experiment named {clip(experiment)} in "
                              f"{redact(uri)}; pass a study output_dir (with trials.csv), or the "
                              "experiment name with --tracking-uri")
        found = [client.get_run(run_id)] if run_id else client.search_runs(
            [exp.experiment_id], filter_string="tags.`detune.kind` = 'study'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if not found:
            raise ConfigError(f"experiment {clip(experiment)} holds no study run (tag detune.kind=study); run a "
                              "study with tracking on, or pass --run-id")
        parent = found[0]
        keys = (metric or parent.data.params.get("metric") or "metrics/mAP50-95", "lr/pg0", "lr_step/pg0")
        query = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' AND tags.`detune.kind` = 'train'"
        children, token = [], None
        while True:
            page = client.search_runs([exp.experiment_id], filter_string=query, max_results=1000,
                                      page_token=token)
            for r in page:
                info, history = r.info, client.get_metric_history
                children.append({
                    "run_id": info.run_id, "name": info.run_name, "status": info.status,
                    "tags": dict(r.data.tags), "params": dict(r.data.params),
                    "seconds": (info.end_time - info.start_time) / 1000 if info.end_time else None,
                    "history": {k: [(m.step, m.value) for m in history(info.run_id, k)] for k in keys}})
            token = page.token
            if not token:
                break
    except (ConfigError, TrackingError):
        raise
    except Exception as e:  # noqa: BLE001 - MLflow, SQLAlchemy and requests errors all mean the same here
        raise TrackingError(f"cannot read experiment {clip(experiment)} from {redact(uri)}: "
                            f"{type(e).__name__}: {e}") from e
    return {"parent": {"run_id": parent.info.run_id, "name": parent.info.run_name,
                       "params": dict(parent.data.params)}, "children": children}


def list_experiments(uri: str) -> list[tuple[str, str]]:
    """``(experiment_id, name)`` of the active experiments of a store, oldest first (``detune ui``).

    Raises:
        TrackingError: the store cannot be read.
    """
    cfg = TrackingConfig(uri=uri)
    with _as_tracking_error(cfg, "cannot list experiments"):
        found = _client(uri).search_experiments(max_results=1000, order_by=["creation_time ASC"])
    return [(str(e.experiment_id), str(e.name)) for e in found]


def find_experiment_id(cfg: TrackingConfig) -> str | None:
    """The id of ``cfg.experiment``, or None when it does not exist or the store cannot be read (for links)."""
    try:
        with _quick_http(int(PROBE_TIMEOUT)):
            exp = _client(cfg.uri).get_experiment_by_name(cfg.experiment)
    except Exception as e:  # noqa: BLE001 - a link is a courtesy: never fail a finished run over it
        log.warning("cannot read experiment %s from %s: %s", clip(cfg.experiment), cfg.describe(), _short(e))
        return None
    return str(exp.experiment_id) if exp is not None else None

