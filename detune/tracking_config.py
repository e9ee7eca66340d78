"""Which MLflow store, experiment and run: the ``tracking`` setting resolved, with no MLflow import.

``resolve_tracking`` turns what a config says (false, true, a URI, a mapping) into a ``TrackingConfig`` with
an absolute URI (Ray trials run in other working directories); ``detune.tracking`` does the logging.

Example:
    >>> cfg = resolve_tracking("sqlite:///runs/mlflow.db", default_experiment="demo")
    >>> cfg.uri.startswith("sqlite:////"), cfg.experiment
    (True, 'demo')
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detune.errors import ConfigError, did_you_mean

__all__ = ["DEFAULT_DB", "DEFAULT_EXPERIMENT", "ENV_VAR", "MAX_EXPERIMENT_NAME", "NAMED_STORES", "TrackingConfig",
           "UI_VIEW", "absolute_uri", "clip", "default_uri", "env_uri", "local_path", "redact", "resolve_tracking",
           "ui_url"]

DEFAULT_EXPERIMENT = "detune"
DEFAULT_DB = "mlflow.db"  # MLflow 3's own default store: sqlite:///mlflow.db in the working directory
ENV_VAR = "MLFLOW_TRACKING_URI"
MAX_EXPERIMENT_NAME = 500  # mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH
# MLflow's own names without "://" (databricks, Unity Catalog): never local paths, passed through as they are.
NAMED_STORES = ("databricks", "databricks-uc", "uc")
# MLflow 3.17 opens an experiment in its GenAI view (traces, judges) unless the URL asks for the Model-training
# view, which shows the runs table; the experiment tag mlflow.experimentKind alone did not switch it.
UI_VIEW = "workflowType=machine_learning"
_MAPPING_KEYS = ("uri", "experiment", "run_name", "tags", "flush_timeout")


@dataclass(frozen=True)
class TrackingConfig:
    """Where and how one run (or study) is tracked.

    Args:
        uri: Resolved, absolute tracking URI (``resolve_tracking`` makes relative sqlite/file paths absolute,
            because Ray trials run in other working directories).
        experiment: MLflow experiment name, created on first use.
        run_name: Name shown in the MLflow UI; None lets MLflow pick one.
        parent_run_id: Nest the run under this one (tag ``mlflow.parentRunId``).
        run_id: Continue this existing run instead of creating one (study resume).
        tags: Extra run tags, e.g. ``{"detune.trial_id": "a1b2"}``.
        flush_timeout: Seconds ``finish`` keeps retrying (with backoff) to send buffered points, artifacts and
            the final status before it reports what is left; >= 0.
        origin: Where ``uri`` came from when the config did not say it (``MLFLOW_TRACKING_URI``), for messages.
    """

    uri: str
    experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None
    parent_run_id: str | None = None
    run_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    flush_timeout: float = 30.0
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.uri, str) or not self.uri:
            raise ConfigError(f"tracking.uri ({clip(self.uri)}) must be a tracking URI, e.g. sqlite:///mlflow.db")
        if not isinstance(self.experiment, str) or not self.experiment.strip():
            raise ConfigError(f"tracking.experiment ({clip(self.experiment)}) must be a name, e.g. demo")
        if len(self.experiment) > MAX_EXPERIMENT_NAME:
            raise ConfigError(f"tracking.experiment ({clip(self.experiment)}, {len(self.experiment)} characters) "
                              f"is longer than MLflow's limit of {MAX_EXPERIMENT_NAME}; use a shorter name")
        if not isinstance(self.tags, Mapping):
            raise ConfigError(f"tracking.tags ({clip(self.tags)}) must be a mapping, e.g. {{team: vision}}")
        timeout = self.flush_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise ConfigError(f"tracking.flush_timeout ({timeout!r}) must be a number of seconds >= 0")

    def replace(self, **changes: Any) -> TrackingConfig:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """The URI for messages: no password, and where it came from when the environment set it."""
        return f"{redact(self.uri)} (from {self.origin})" if self.origin else redact(self.uri)


def clip(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters plus '...', so a huge value is never echoed whole."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def env_uri() -> str | None:
    """``$MLFLOW_TRACKING_URI`` made absolute (see ``absolute_uri``), or None when it is unset or empty."""
    env = os.environ.get(ENV_VAR, "").strip()
    return absolute_uri(env) if env else None


def default_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else MLflow 3's default ``sqlite:///<cwd>/mlflow.db`` (absolute)."""
    return env_uri() or "sqlite:///" + str(Path(DEFAULT_DB).resolve())


def ui_url(base: str, experiment_id: str | None = None) -> str:
    """The MLflow UI page of an experiment's runs table (or the experiments list) in the Model-training view.

    >>> ui_url("http://127.0.0.1:5000", "3")
    'http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning'
    """
    page = f"experiments/{experiment_id}/runs" if experiment_id is not None else "experiments"
    return f"{base.rstrip('/')}/#/{page}?{UI_VIEW}"


def absolute_uri(uri: str) -> str:
    """Make local stores absolute: ``sqlite:///rel.db``, ``file:rel``, plain paths (``*.db`` means sqlite)."""
    text = uri.strip()
    if text in NAMED_STORES:
        return text
    scheme = urllib.parse.urlsplit(text).scheme
    if scheme == "sqlite" and text.startswith("sqlite:///"):
        path, sep, query = text[len("sqlite:///"):].partition("?")
        return "sqlite:///" + str(Path(urllib.parse.unquote(path)).expanduser().resolve()) + sep + query
    if scheme == "file":
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(text).path)).expanduser().resolve().as_uri()
    if scheme in ("http", "https"):
        return text.rstrip("/")
    if scheme == "":
        path = Path(text).expanduser().resolve()
        return "sqlite:///" + str(path) if path.suffix in (".db", ".sqlite") else path.as_uri()
    return text


def local_path(uri: str) -> Path | None:
    """The file or folder of a local store (``sqlite:///...`` or ``file:...``); None for a server."""
    if uri.startswith("sqlite:///"):
        return Path(urllib.parse.unquote(uri[len("sqlite:///"):].partition("?")[0]))
    if uri.startswith("file:"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
    return None


def resolve_tracking(value: Any, *, default_experiment: str = DEFAULT_EXPERIMENT) -> TrackingConfig | None:
    """Turn a ``tracking`` setting into a ``TrackingConfig``, or None when tracking is off.

    Args:
        value: False/None (off), "auto" (the default store when ``$MLFLOW_TRACKING_URI`` is set, else off:
            ``detune.train``'s default), True (default store, see ``default_uri``), a tracking URI, a mapping with
            ``uri``, ``experiment``, ``run_name``, ``tags``, ``flush_timeout`` (all optional), or a
            ``TrackingConfig`` (returned as is).
        default_experiment: Experiment name used when ``value`` does not name one.

    Raises:
        ConfigError: for any other value or an unknown mapping key.
    """
    if value is None or value is False:
        return None
    if isinstance(value, TrackingConfig):
        return value
    if value is True or value == "auto":
        env = env_uri()
        if env is None and value == "auto":
            return None
        return TrackingConfig(uri=env or default_uri(), experiment=default_experiment, origin=ENV_VAR if env else "")
    if isinstance(value, (str, os.PathLike)) and str(value).strip():
        return TrackingConfig(uri=absolute_uri(str(value)), experiment=default_experiment)
    if isinstance(value, Mapping):
        for key in value:
            if key not in _MAPPING_KEYS:
                hint = did_you_mean(key, _MAPPING_KEYS) or f"valid keys are {', '.join(_MAPPING_KEYS)}"
                raise ConfigError(f"tracking.{key} is not a tracking setting; {hint}")
        uri, env = value.get("uri"), env_uri()
        return TrackingConfig(
            uri=absolute_uri(str(uri)) if uri else env or default_uri(), run_name=value.get("run_name"),
            experiment=value.get("experiment") or default_experiment,
            tags={str(k): str(v) for k, v in (value.get("tags") or {}).items()},
            flush_timeout=value.get("flush_timeout", 30.0), origin="" if uri or not env else ENV_VAR)
    raise ConfigError(f"tracking ({clip(value)}) must be false, true (local store ./{DEFAULT_DB}), \"auto\" (on "
                      f"when {ENV_VAR} is set), a tracking URI such as http://127.0.0.1:5000, or a mapping "
                      "{uri, experiment, run_name, tags}")


def redact(uri: str) -> str:
    """The URI without a password (``http://user:***@host``), for messages and logged config."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
