"""The MLflow UI on a local tracking store: the command ``detune ui`` runs, bound to 127.0.0.1 by default.

MLflow's UI has no login: anyone who can reach its port can read and delete every run. So it listens on
loopback unless the caller passes another ``host`` (and then gets a warning to show).

MLflow 3.17 opens an experiment in its GenAI view (traces, judges: empty for training runs); the page detune
prints (``UiServer.page``) is the experiment's runs table in the Model-training view (``ui_url``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from typing import NamedTuple

from detune.errors import TrackingError, did_you_mean
from detune.tracking_config import absolute_uri, clip, default_uri, env_uri, local_path, ui_url

__all__ = ["LOOPBACK", "UiServer", "ui_command"]

LOOPBACK = "127.0.0.1"


class UiServer(NamedTuple):
    cmd: list[str]
    env: dict[str, str]
    url: str
    store: str
    warning: str | None
    page: str = ""  # the page to open: the runs table of one experiment, or the experiments list


def ui_command(uri: str | None = None, *, host: str = LOOPBACK, port: int = 5000,
               experiment: str | None = None) -> UiServer:
    """The ``mlflow server`` command line (one worker, no job runner, no telemetry) for a local store.

    Args:
        uri: ``sqlite:///...`` or ``file:...`` store (default: ``$MLFLOW_TRACKING_URI`` or ./mlflow.db).
        host: address to bind; anything but loopback exposes the runs to the network.
        port: TCP port, which must be free on ``host``.
        experiment: the experiment whose runs ``page`` shows; None: the only experiment besides MLflow's
            empty "Default", else the experiments list.

    Raises:
        TrackingError: the store is a server already, does not exist, is a folder where a sqlite file is
            expected, the experiment does not exist, or the port is taken.
    """
    store = absolute_uri(uri) if uri else default_uri()
    origin = " (from MLFLOW_TRACKING_URI)" if not uri and env_uri() else ""
    path = local_path(store)
    if path is None:
        raise TrackingError(f"tracking URI {store}{origin} is not a local store: open a server in a browser; "
                            "detune ui serves local stores (sqlite:///path/mlflow.db or a file: folder)")
    if not path.exists():
        raise TrackingError(f"no MLflow store at {path}{origin}: run a training or study with tracking on first, "
                            "or pass --uri sqlite:///path/to/mlflow.db")
    if store.startswith("sqlite:") and path.is_dir():
        raise TrackingError(f"{store}{origin} names a folder, but a sqlite URI names the database file; pass "
                            f"--uri sqlite:///{path / 'mlflow.db'}")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as e:
        raise TrackingError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port, e.g. "
                            f"--port {port + 1}") from e
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host", host,
           "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    warning = None
    if not _is_loopback(host):
        warning = (f"the MLflow UI has no login: on {host} anyone who can reach port {port} can read and delete "
                   f"these runs; use the default --host {LOOPBACK} and an SSH tunnel instead")
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{LOOPBACK if host in ('0.0.0.0', '::') else shown}:{port}"
    return UiServer(cmd, env, url, store, warning, ui_url(url, _experiment_id(store, experiment)))


def _experiment_id(store: str, name: str | None) -> str | None:
    """The id of experiment ``name`` (TrackingError when missing), or of the only one besides "Default"."""
    from detune.tracking import list_experiments

    try:
        found = list_experiments(store)
    except TrackingError:
        if name is not None:
            raise
        return None  # the experiments list; the server reports what is wrong with the store
    if name is not None:
        ids = [i for i, n in found if n == name]
        if not ids:
            close = did_you_mean(name, [n for _, n in found], n=3, quote=True)
            names = [n for _, n in found][:10]
            raise TrackingError(f"no experiment {clip(name)} in {store}; "
                                + (close or f"experiments: {', '.join(clip(n) for n in names) or 'none'}"))
        return ids[0]
    mine = [i for i, n in found if not (i == "0" and n == "Default")]
    return mine[0] if len(mine) == 1 else None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
