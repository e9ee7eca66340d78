"""The process environment detune trains in: offline, quiet, with a private Ultralytics config dir.

Nothing here runs at ``import detune``. ``prepare()`` is called by the adapter and tuning modules right
before they import Ultralytics or Ray, ``prepare_env()`` (the variables only, no file written) by the
tracking package before it imports MLflow, because those libraries read these variables at import time.
The user's own Ultralytics settings file is never read or written.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from pathlib import Path

from detune._paths import atomic_write

# Every switch measured in ../shared/STACK-NOTES.md; each one stops a network call or a write to $HOME.
_ENV = {
    "YOLO_OFFLINE": "1",  # no is_online() DNS probe, no analytics, no pip update checks
    "YOLO_AUTOINSTALL": "false",  # check_requirements never pip-installs at run time
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray's token auth on: with it off, gcs_server, raylet and the dashboard/jobs API run code for any caller
    # that reaches them. A local Ray's token lives under detune's home (local_ray_auth), never in ~/.ray.
    "RAY_AUTH_MODE": "token",
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0 the new output engine still prints tables to stdout
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TQDM_DISABLE": "1",
}
_QUIET_ENV = {"MLFLOW_LOGGING_LEVEL": "WARNING"}  # mlflow resets its logger level at import

# Ultralytics rewrites a settings file whose keys or types differ from its schema, so keep all of them.
_ULTRALYTICS_SETTINGS = {
    "settings_version": "0.0.8",
    "datasets_dir": "",
    "weights_dir": "",
    "runs_dir": "",
    "uuid": "detune",
    "sync": False,
    "api_key": "",
    "openai_api_key": "",
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "vscode_msg": False,
    "openvino_msg": False,
}


_STATE = {"verbose": False}
_CHATTY_LOGGERS = ("mlflow", "alembic", "optuna", "ray.tune", "ray.train")


def home() -> Path:
    """detune's own state directory: ``$DETUNE_HOME`` or ``~/.cache/detune``."""
    return Path(os.environ.get("DETUNE_HOME") or Path.home() / ".cache" / "detune").expanduser().resolve()


def _matplotlib_data() -> Path:
    """matplotlib's bundled data folder, found without importing matplotlib (detune._plotting is its home)."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("Ultralytics needs matplotlib: pip install matplotlib")
    return Path(next(iter(spec.submodule_search_locations))) / "mpl-data"


def prepare(*, verbose: bool = False) -> Path:
    """Set the offline/quiet environment and the private Ultralytics config dir; return that dir.

    Idempotent. Variables the user already set are respected, except ``YOLO_CONFIG_DIR``, which
    always points at detune's copy so the user's Ultralytics settings are never rewritten.
    """
    root = home()
    config_dir = root / "ultralytics"
    ultra = config_dir / "Ultralytics"
    ultra.mkdir(parents=True, exist_ok=True)
    settings = dict(_ULTRALYTICS_SETTINGS, datasets_dir=str(root / "datasets"), weights_dir=str(root / "weights"),
                    runs_dir=str(Path("runs").resolve()))
    settings_file = ultra / "settings.json"
    if not settings_file.exists() or json.loads(settings_file.read_text() or "{}") != settings:
        atomic_write(settings_file, json.dumps(settings, indent=2))
    font = ultra / "Arial.ttf"  # check_font() downloads Arial.ttf unless it is here; any TTF renders the plots
    if not font.exists():
        dejavu = _matplotlib_data() / "fonts" / "ttf" / "DejaVuSans.ttf"
        tmp = font.with_suffix(".tmp")
        shutil.copyfile(dejavu, tmp)
        tmp.replace(font)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ.setdefault("MPLCONFIGDIR", str(root / "matplotlib"))
    prepare_env(verbose=verbose)
    return config_dir


def prepare_env(*, verbose: bool = False) -> None:
    """The offline/quiet environment variables and logger levels only: no file is read or written (what
    reading an MLflow store needs; ``prepare`` adds the Ultralytics settings). Idempotent."""
    for key, value in _ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("RAY_TMPDIR", "/tmp/ray")
    _STATE["verbose"] = verbose
    if not verbose:
        os.environ.setdefault("YOLO_VERBOSE", "false")
        for key, value in _QUIET_ENV.items():
            os.environ.setdefault(key, value)
        quiet_loggers()


def local_ray_auth() -> Path | None:
    """Token auth for a Ray that detune starts on this machine; returns the token file it uses.

    Ray 2.60 would generate a missing token into ``~/.ray/auth_token`` (whatever ``RAY_AUTH_TOKEN_PATH``
    says), so detune keeps its own, created once (0600) under ``home()/ray``, and points
    ``RAY_AUTH_TOKEN_PATH`` at it. A token the user gave (``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``) is
    used as is; ``RAY_AUTH_MODE=disabled`` set by the user turns it off (returns None).
    """
    if os.environ.setdefault("RAY_AUTH_MODE", "token").lower() != "token":
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    path = home() / "ray" / "auth_token"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, secrets.token_hex(32), mode=0o600)  # 256 bits, as Ray's own generator
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    return path


def quiet_loggers() -> None:
    """INFO chatter such as Optuna's "A new study created": called again after those libraries are
    imported, since they set their own logger levels at import time."""
    if not _STATE["verbose"]:
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        # Ray's "Experiment state snapshotting has been triggered multiple times" tuning hint, printed
        # every few seconds of a study whose epochs are short: nothing a user of detune can act on.
        logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.ERROR)

