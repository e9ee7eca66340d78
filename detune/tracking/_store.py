"""The MLflow store: the client (opened under a file lock), the reachability probe, experiment creation."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import posixpath
import re
import sqlite3
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from detune.errors import TrackingError
from detune.tracking_config import TrackingConfig, clip, local_path, redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


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

    _runtime.prepare_env()  # MLFLOW_DISABLE_TELEMETRY etc. before mlflow is imported; no Ultralytics settings
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


