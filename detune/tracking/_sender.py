"""Params, tags and the buffered, retrying sender every MLflow run writer uses."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detune.tracking._store import (
    _CALL_TIMEOUT,
    _MAX_ENTITIES,
    _MAX_PARAM_VALUE,
    _MAX_PARAMS_TAGS,
    _MAX_TAG_VALUE,
    _PACKAGES,
    _STATUSES,
    _UPLOAD_TIMEOUT,
    UNLOGGED_FILE,
    _as_tracking_error,
    _client,
    _quick_http,
    _short,
    prepare_store,
    sanitize_key,
)
from detune.tracking_config import TrackingConfig, redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


log = logging.getLogger(__name__)


# ---- params and tags -----------------------------------------------------------------------------------
def flatten_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings become dotted keys (``scheduler_params.gamma``); values strings of <= 6000 chars."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = json.dumps(list(value)) if isinstance(value, (list, tuple)) else str(value)
            out[sanitize_key(name)] = text[:_MAX_PARAM_VALUE]
    return out


def training_params(config: Mapping[str, Any], dataset: Mapping[str, Any], *,
                    effective_lr0: float) -> dict[str, str]:
    """Params of a training run: the resolved config (never its ``tracking`` setting), the dataset summary
    and the lr0 actually used. Nothing comes from the environment."""
    settings = {k: v for k, v in config.items() if k != "tracking"}
    return flatten_params({**settings, **dataset, "effective_lr0": effective_lr0})


@functools.lru_cache(maxsize=8)
def _git_commit(cwd: str) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=3)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def default_tags() -> dict[str, str]:
    """Package versions (read from metadata, nothing imported) and the git commit of the working directory."""
    tags = {}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags[f"version.{name}"] = metadata.version(name)
    commit = _git_commit(os.getcwd())
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _clean_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {(k if k.startswith("mlflow.") else sanitize_key(k)): str(v)[:_MAX_TAG_VALUE]
            for k, v in tags.items()}


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, str],
                tags: Mapping[str, str] | None = None) -> None:
    """Log params MLflow does not have yet (they are immutable: a resumed run keeps its first values)."""
    from mlflow.entities import Param, RunTag

    existing = client.get_run(run_id).data.params
    plist = [Param(k, v) for k, v in params.items() if k not in existing]
    tlist = [RunTag(k, v) for k, v in (tags or {}).items()]
    for i in range(0, max(len(plist), len(tlist)), _MAX_PARAMS_TAGS):
        client.log_batch(run_id, params=plist[i:i + _MAX_PARAMS_TAGS], tags=tlist[i:i + _MAX_PARAMS_TAGS],
                         synchronous=True)


def _open_run(cfg: TrackingConfig, params: Mapping[str, str], tags: Mapping[str, Any]) -> str:
    """Create the run (or reopen ``cfg.run_id`` as RUNNING), then log its params and tags."""
    all_tags = _clean_tags({**default_tags(), **tags, **cfg.tags})
    if cfg.parent_run_id:
        all_tags["mlflow.parentRunId"] = cfg.parent_run_id
    with _as_tracking_error(cfg, "cannot start the MLflow run"):
        client = _client(cfg.uri)
        if cfg.run_id:
            client.update_run(cfg.run_id, status="RUNNING")
            run_id = cfg.run_id
        else:
            run = client.create_run(prepare_store(cfg), tags=all_tags, run_name=cfg.run_name)
            run_id = str(run.info.run_id)
        _log_params(client, run_id, params, all_tags)
    return run_id


def _mlflow_status(status: str) -> str:
    if str(status).upper() in ("FINISHED", "FAILED", "KILLED"):
        return str(status).upper()
    if str(status).lower() not in _STATUSES:
        raise ValueError(f"status ({status!r}) must be FINISHED, FAILED, KILLED or {', '.join(_STATUSES)}")
    return _STATUSES[str(status).lower()]


# ---- buffered, retrying writes -------------------------------------------------------------------------
class _Sender:
    """Buffered writes to one existing run, retried with backoff; shared by ``RunLogger`` and ``finish_run``.

    After a failure the next attempt waits 1, 2, 4, ... 30 s. Without a deadline a call never waits (training
    goes on and the points stay buffered); with one it retries until the deadline passes.
    """

    def __init__(self, cfg: TrackingConfig, run_id: str) -> None:
        self.cfg, self.client, self.run_id = cfg, _client(cfg.uri), run_id
        self.save_dir: Path | None = None
        self.experiment_id: str | None = None  # for links to the run (set by open_training_run)
        self._pending: list[Any] = []  # mlflow.entities.Metric, in logging order
        self._tags: dict[str, str] = {}
        self._rejected: list[Any] = []  # points the store refused as invalid (never retried)
        self._logged = self._failures = 0
        self._next_try = 0.0
        self._errors: list[str] = []

    def _add(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)  # fixed per point: a batch resent after a lost reply is deduplicated
        self._pending.extend(Metric(sanitize_key(k), float(v), now, step) for k, v in values.items())

    def _send_next(self) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag(k, v) for k, v in list(self._tags.items())[:_MAX_PARAMS_TAGS]]
        metrics = self._pending[: _MAX_ENTITIES - len(tags)]
        try:
            self.client.log_batch(self.run_id, metrics=metrics, tags=tags, synchronous=True)
        except Exception as e:
            if getattr(e, "error_code", None) != "INVALID_PARAMETER_VALUE":
                raise
            self._rejected.extend(metrics)  # resending cannot help; keep them for the report
            self._errors.append(f"rejected {len(metrics)} points: {_short(e)}")
        else:
            self._logged += len(metrics)
        del self._pending[: len(metrics)]
        for tag in tags:
            self._tags.pop(tag.key, None)

    def _attempt(self, fn: Callable[[], Any], deadline: float | None, timeout: int = _CALL_TIMEOUT) -> bool:
        """Call ``fn`` once per backoff window; with a deadline, wait between attempts until it passes."""
        while True:
            now = time.monotonic()
            if now < self._next_try:
                if deadline is None or now >= deadline:
                    return False
                time.sleep(min(self._next_try, deadline) - now)
            try:
                with _quick_http(timeout):
                    fn()
            except Exception as e:  # noqa: BLE001 - any store error: keep the data, retry later
                self._failures += 1
                self._next_try = time.monotonic() + min(2 ** (self._failures - 1), 30)
                self._errors = [*self._errors[-4:], f"{type(e).__name__}: {_short(e)}"]
                if self._failures == 1:
                    log.warning("MLflow logging to %s failed, buffering: %s", redact(self.cfg.uri), _short(e))
                if deadline is None or time.monotonic() >= deadline:
                    return False
            else:
                self._failures, self._next_try = 0, 0.0
                return True

    def _flush(self, deadline: float | None = None) -> bool:
        while self._pending or self._tags:
            if not self._attempt(self._send_next, deadline):
                return False
        return True

    def _upload(self, path: Path, dest: str | None, deadline: float) -> bool:
        def send() -> None:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), dest)
            else:
                self.client.log_artifact(self.run_id, str(path), dest)
        return self._attempt(send, deadline, _UPLOAD_TIMEOUT)

    def _close(self, status: str, deadline: float, missed: list[str]) -> dict[str, Any]:
        terminated = self._attempt(lambda: self.client.set_terminated(self.run_id, status), deadline)
        return self.report(status=status, status_set=terminated, unlogged_artifacts=missed)

    def report(self, **extra: Any) -> dict[str, Any]:
        """What reached the store and what did not.

        Unsent points and tags (and the status, if it could not be set) are also written to
        ``mlflow_unlogged.json`` in the save dir (``flush_unlogged`` sends them later); ``local_copy`` is
        results.csv, the local copy of the per-epoch curves.
        """
        left = [*self._pending, *self._rejected]
        csv = self.save_dir / "results.csv" if self.save_dir else None
        out: dict[str, Any] = {
            "uri": redact(self.cfg.uri), "experiment": self.cfg.experiment, "experiment_id": self.experiment_id,
            "run_id": self.run_id, **extra,
            "logged_points": self._logged, "unlogged_points": len(left), "unlogged_tags": len(self._tags),
            "errors": list(self._errors), "local_copy": str(csv) if csv and csv.is_file() else None,
            "unlogged_file": None}
        stuck = left or self._tags or not extra.get("status_set", True)
        if stuck and self.save_dir and self.save_dir.is_dir():
            path = self.save_dir / UNLOGGED_FILE
            path.write_text(json.dumps({
                "uri": self.cfg.uri, "run_id": self.run_id, "status": extra.get("status"), "tags": self._tags,
                "metrics": [[m.key, m.value, m.step, m.timestamp] for m in self._pending]}))
            out["unlogged_file"] = str(path)
        return out


