"""MLflow tracking for detune: explicit tracking URIs and run ids, buffered logging that never stops training.

This is the only module that imports ``mlflow`` (lazily, inside functions). Everything goes through
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

import contextlib
import fcntl
import functools
import json
import logging
import os
import posixpath
import re
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detune.errors import ConfigError, TrackingError
from detune.tracking_config import TrackingConfig, clip, local_path, redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from detune.adapters.base import RunOutcome

log = logging.getLogger(__name__)

UNLOGGED_FILE = "mlflow_unlogged.json"
PROBE_TIMEOUT = 3.0  # seconds for the reachability probe of an HTTP server
LOCK_TIMEOUT = 120.0  # seconds to wait for another process creating the same sqlite store
_CALL_TIMEOUT, _UPLOAD_TIMEOUT = 10, 60  # seconds per MLflow HTTP call / artifact upload
_MAX_ENTITIES, _MAX_PARAMS_TAGS = 1000, 100  # MLflow's log_batch limits
_MAX_KEY, _MAX_PARAM_VALUE, _MAX_TAG_VALUE = 250, 6000, 8000
_STATUSES = {"completed": "FINISHED", "diverged": "FINISHED", "finished": "FINISHED", "failed": "FAILED",
             "killed": "KILLED", "interrupted": "KILLED"}
_PACKAGES = ("detune", "ultralytics", "torch", "ray", "mlflow")
_FIX = "or set tracking: false to train without tracking"


def sanitize_key(key: str) -> str:
    """An MLflow-valid name: only ``[/\\w.\\- :]``, path-normal (no ``..``, ``//``, leading/trailing ``/``),
    at most 250 characters. ``metrics/mAP50-95(B)`` -> ``metrics/mAP50-95_B_``."""
    text = re.sub(r"[^/\w.\- :]", "_", str(key))
    while ".." in text:
        text = text.replace("..", "._")
    text = "/".join(p for p in text.split("/") if p not in ("", "."))[:_MAX_KEY].rstrip("/")
    return text if text and posixpath.normpath(text) == text else "_"


# ---- store access --------------------------------------------------------------------------------------
_ENV_LOCK = threading.RLock()


@contextlib.contextmanager
def _quick_http(timeout: int = _CALL_TIMEOUT) -> Iterator[None]:
    """No MLflow-internal retries and a short timeout for the calls inside.

    detune retries with its own backoff instead: MLflow's default (7 retries, backoff factor 2, 120 s timeout)
    blocks a single call for ~4 minutes against a stopped server. MLflow reads these variables per request;
    they are restored on exit.
    """
    changes = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout)}
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in changes}
        os.environ.update(changes)
        try:
            yield
        finally:
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old


@contextlib.contextmanager
def _as_tracking_error(cfg: TrackingConfig, what: str) -> Iterator[None]:
    try:
        with _quick_http():
            yield
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001 - MLflow, SQLAlchemy and requests errors all mean the same here
        raise TrackingError(f"{what} in MLflow store {cfg.describe()}: {type(e).__name__}: {_short(e)}; "
                            f"check that the store is reachable and writable, {_FIX}") from e


def _initialized(db: Path) -> bool:
    """True when the sqlite file already has MLflow's schema (an ``alembic_version`` row)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{urllib.parse.quote(str(db))}?mode=ro", uri=True,
                                                timeout=1.0)) as con:
            return con.execute("SELECT 1 FROM alembic_version LIMIT 1").fetchone() is not None
    except sqlite3.Error:
        return False


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Hold ``<db>.lock`` (flock) for a local sqlite store: MLflow creates a fresh DB's tables on first open,
    and two processes doing that at once crash one of them ("duplicate column name", "Online migration
    expected to match one row"). The process that may create the schema holds the lock exclusively; openers
    of an initialized DB share it (they only wait while a creation runs), so many trials opening the same
    store at once are not serialized. Other stores, and a DB whose folder does not exist yet, need no lock."""
    path = local_path(uri) if uri.startswith("sqlite:") else None
    if path is None or not path.parent.is_dir():
        yield
        return
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only folder: nothing can create the DB there, so nothing to serialize
        yield
        return
    try:
        mode = fcntl.LOCK_SH if _initialized(path) else fcntl.LOCK_EX
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TrackingError(f"MLflow store {path} stayed locked by another process for "
                                        f"{LOCK_TIMEOUT:g} s ({lock}); wait for it to finish or stop it") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


def _client(uri: str, shown: str | None = None) -> MlflowClient:
    """A client bound to ``uri``; ``TrackingError`` (naming ``shown``, default the redacted URI) when MLflow
    refuses the store (e.g. a file store). A local sqlite store is opened under ``_store_lock``."""
    from detune import _runtime

    _runtime.prepare()  # MLFLOW_DISABLE_TELEMETRY etc. must be set before mlflow is imported
    from mlflow.tracking import MlflowClient

    try:
        with _store_lock(uri):
            return MlflowClient(tracking_uri=uri)
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001 - unknown scheme, file store switched off, unreadable DB
        raise TrackingError(f"MLflow cannot open tracking store {shown or redact(uri)}: {_short(e)}; use e.g. "
                            f"sqlite:///mlflow.db or http://host:5000, {_FIX}") from e


def _short(e: object, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."


def check_reachable(cfg: TrackingConfig) -> None:
    """Fail fast (seconds) when the store cannot be used: HTTP ``GET /health``, or a writable local directory.

    Raises:
        TrackingError: naming the URI and the fix.
    """
    parts = urllib.parse.urlsplit(cfg.uri)
    if parts.scheme in ("http", "https"):
        url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])) + "/health"
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as response:  # noqa: S310 - http(s) only
                reason = "" if response.status == 200 else f"GET /health answered {response.status}"
        except (OSError, ValueError) as e:
            reason = f"{type(e).__name__}: {_short(getattr(e, 'reason', e))}"
        if reason:
            raise TrackingError(f"MLflow tracking server {cfg.describe()} is not reachable ({reason}); "
                                "start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`), point "
                                f"tracking or MLFLOW_TRACKING_URI at a running server, {_FIX}")
        return
    path = local_path(cfg.uri)
    if path is not None:
        _check_sqlite_file(cfg)
        folder = path.parent if parts.scheme == "sqlite" else path
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise TrackingError(f"MLflow store {cfg.describe()} cannot be created: {existing} is not a writable "
                                f"directory; choose another tracking URI, {_FIX}")
        return
    with _as_tracking_error(cfg, "cannot reach the tracking store"):
        _client(cfg.uri, cfg.describe()).search_experiments(max_results=1)


def _check_sqlite_file(cfg: TrackingConfig) -> None:
    """A sqlite URI names the database file: a folder there makes MLflow retry for minutes, so refuse it now."""
    path = local_path(cfg.uri)
    if cfg.uri.startswith("sqlite:") and path is not None and path.is_dir():
        raise TrackingError(f"MLflow store {cfg.describe()}: {path} is a folder, but a sqlite URI names the "
                            f"database file; use e.g. sqlite:///{path / 'mlflow.db'}, {_FIX}")


def prepare_store(cfg: TrackingConfig) -> str:
    """Create the store and the experiment once (before parallel writers) and return the experiment id.

    Two processes creating a fresh sqlite DB at once would crash one of them (MLflow creates the tables on
    first open); ``_client`` serializes that with a file lock next to the DB, and a study still calls this in
    its driver before any trial starts.
    """
    path = local_path(cfg.uri)
    if path is not None and cfg.uri.startswith("sqlite:"):
        _check_sqlite_file(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
    with _as_tracking_error(cfg, f"cannot open experiment {clip(cfg.experiment)}"):
        client = _client(cfg.uri, cfg.describe())
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            try:
                return str(client.create_experiment(cfg.experiment))
            except Exception:  # noqa: BLE001 - created meanwhile by another process: read it back
                exp = client.get_experiment_by_name(cfg.experiment)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(f"experiment {clip(cfg.experiment)} in {cfg.describe()} is deleted; restore it "
                                f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or use "
                                "another experiment name")
        return str(exp.experiment_id)


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


# ---- one training run ----------------------------------------------------------------------------------
class RunLogger(_Sender):
    """An adapter observer that logs one training run; logging errors are buffered and retried, never raised.

    Points are kept in memory and sent with ``log_batch`` (<= 1000 per call) at each epoch end, or earlier
    when 1000 are waiting. ``finish`` retries for ``cfg.flush_timeout`` seconds, then reports what is left.

    Raises:
        TrackingError: from the constructor only, when the run cannot be created or reopened.
    """

    def __init__(self, cfg: TrackingConfig, *, params: Mapping[str, Any], tags: Mapping[str, Any]) -> None:
        super().__init__(cfg, _open_run(cfg, flatten_params(params), {"detune.kind": "train", **tags}))

    # ---- adapter events (never raise) --------------------------------------------------------------------
    def on_start(self, info: Mapping[str, Any]) -> None:
        self.save_dir = Path(info["save_dir"]) if info.get("save_dir") else None
        self._tags.update(_clean_tags({"detune.device": info.get("device", ""),
                                       "detune.save_dir": self.save_dir or ""}))
        self._flush()

    def on_step(self, step: int, epoch: int, lrs: Sequence[float]) -> None:
        self._add({f"lr_step/pg{i}": lr for i, lr in enumerate(lrs)}, int(step))
        if len(self._pending) >= _MAX_ENTITIES:
            self._flush()

    def on_epoch(self, record: Mapping[str, float], weights_dir: Path) -> None:
        self._add({k: v for k, v in record.items() if k != "epoch"}, int(record["epoch"]))
        self._flush()

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        """Buffer extra metrics at ``step`` (e.g. the LR finder's curve; keys sanitized), sent with the next
        flush and at the latest by ``finish``; never raises for store errors."""
        self._add(values, int(step))
        if len(self._pending) >= _MAX_ENTITIES:
            self._flush()

    # ---- end of run --------------------------------------------------------------------------------------
    def finish(self, result: RunOutcome, *, artifacts: Sequence[Path] = ()) -> dict[str, Any]:
        """Send what is buffered, the artifacts and the final status of ``result`` (a ``RunOutcome``, such as
        a ``TrainResult``, with the run's settings in ``config``); return ``report()``.

        Status: completed -> FINISHED; diverged -> FINISHED with tags ``detune.status=diverged`` and
        ``detune.reason``; failed -> FAILED with ``detune.reason``. Artifacts: ``weights/best.pt``,
        ``results.csv``, ``lr_schedule.png``, ``config.yaml`` (re-runnable), Ultralytics' ``plots/*.png``,
        then ``artifacts`` (files or folders).
        """
        deadline = time.monotonic() + self.cfg.flush_timeout
        self._failures, self._next_try = 0, 0.0  # the store may be back: restart the backoff at 1 s
        self.save_dir = result.save_dir or self.save_dir
        self._tags["detune.status"] = result.status
        if result.reason:
            self._tags["detune.reason"] = result.reason[:_MAX_TAG_VALUE]
        self._flush(deadline)
        files = self._artifact_files(result, artifacts)
        missed = [str(path) for path, dest in files if not self._upload(path, dest, deadline)]
        return self._close(_mlflow_status(result.status), deadline, missed)

    def abort(self, error: BaseException) -> dict[str, Any]:
        """End the run after an exception escaped training: KILLED for KeyboardInterrupt, FINISHED with
        ``detune.status=stopped`` for the SystemExit Ray raises in a trial its scheduler stopped, else FAILED."""
        if isinstance(error, SystemExit):
            self._tags.update({"detune.status": "stopped", "detune.reason": "stopped early by the trial scheduler"})
            deadline = time.monotonic() + min(self.cfg.flush_timeout, 5.0)
            self._failures, self._next_try = 0, 0.0
            self._flush(deadline)
            return self._close("FINISHED", deadline, [])
        killed = isinstance(error, KeyboardInterrupt)
        self._tags.update({"detune.status": "killed" if killed else "failed",
                           "detune.reason": f"{type(error).__name__}: {_short(error, 2000)}"})
        deadline = time.monotonic() + min(self.cfg.flush_timeout, 5.0)
        self._failures, self._next_try = 0, 0.0
        self._flush(deadline)
        csv = self.save_dir / "results.csv" if self.save_dir else None
        missed = [str(csv)] if csv and csv.is_file() and not self._upload(csv, None, deadline) else []
        return self._close("KILLED" if killed else "FAILED", deadline, missed)

    def _artifact_files(self, result: RunOutcome, extra: Sequence[Path]) -> list[tuple[Path, str | None]]:
        files: list[tuple[Path, str | None]] = []
        if "best" in result.weights:
            files.append((Path(result.weights["best"]), "weights"))
        folder = self.save_dir if self.save_dir and self.save_dir.is_dir() else None
        if folder is not None:
            files += [(folder / "results.csv", None)] if (folder / "results.csv").is_file() else []
            pngs = sorted(folder.glob("*.png"))
            files += [(p, None if p.name == "lr_schedule.png" else "plots") for p in pngs]
        config_dir = folder or Path(tempfile.mkdtemp(prefix="detune-config-"))
        files.append((write_config(result.config, config_dir / "config.yaml"), None))
        return files + [(Path(p), None) for p in extra]


def write_config(config: Mapping[str, Any], path: Path) -> Path:
    """The resolved config as YAML, re-runnable with ``detune.train(path)``; tracking URIs lose passwords."""
    import yaml

    data = dict(config)
    track = data.get("tracking")
    if isinstance(track, TrackingConfig):
        data["tracking"] = {"uri": redact(track.uri), "experiment": track.experiment}
    elif isinstance(track, str):
        data["tracking"] = redact(track)
    elif isinstance(track, Mapping) and isinstance(track.get("uri"), str):
        data["tracking"] = {**track, "uri": redact(track["uri"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def open_training_run(cfg: TrackingConfig, *, config: Mapping[str, Any], dataset: Mapping[str, Any],
                      effective_lr0: float) -> RunLogger:
    """Check the store, create the experiment and the run of one training (what ``detune.train`` does).

    Raises:
        TrackingError: before any training, when the store is unreachable or refuses the run.
    """
    check_reachable(cfg)
    experiment_id = prepare_store(cfg)
    logger = RunLogger(cfg, params=training_params(config, dataset, effective_lr0=effective_lr0),
                       tags={"detune.device": config.get("device", "")})
    logger.experiment_id = experiment_id
    return logger


def flush_unlogged(path: str | os.PathLike[str]) -> int:
    """Send what a run could not log (``mlflow_unlogged.json``) when the store is back; returns points sent.

    Raises:
        TrackingError: when the store still cannot be written (the file is kept for another try).
    """
    from mlflow.entities import Metric

    data = json.loads(Path(path).read_text())
    sender = _Sender(TrackingConfig(uri=data["uri"]), data["run_id"])
    sender._pending = [Metric(k, float(v), int(ts), int(step)) for k, v, step, ts in data["metrics"]]
    sender._tags = dict(data["tags"])
    count = len(sender._pending)
    with _as_tracking_error(sender.cfg, f"cannot flush {path}"):
        while sender._pending or sender._tags:
            sender._send_next()
        if data.get("status"):
            sender.client.set_terminated(data["run_id"], data["status"])
    Path(path).unlink()
    return count


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
