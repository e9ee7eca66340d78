"""The MLflow UI on a local tracking store: the command ``detune ui`` runs, bound to 127.0.0.1 by default.

MLflow's UI has no login: anyone who can reach its port can read and delete every run. So it listens on
loopback unless the caller passes another ``host`` (and then gets a warning to show).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from typing import NamedTuple

from detune.errors import TrackingError
from detune.tracking_config import absolute_uri, default_uri, local_path

LOOPBACK = "127.0.0.1"


class UiServer(NamedTuple):
    cmd: list[str]
    env: dict[str, str]
    url: str
    store: str
    warning: str | None


def ui_command(uri: str | None = None, *, host: str = LOOPBACK, port: int = 5000) -> UiServer:
    """The ``mlflow server`` command line (one worker, no job runner, no telemetry) for a local store.

    Args:
        uri: ``sqlite:///...`` or ``file:...`` store (default: ``$MLFLOW_TRACKING_URI`` or ./mlflow.db).
        host: address to bind; anything but loopback exposes the runs to the network.
        port: TCP port, which must be free on ``host``.

    Raises:
        TrackingError: the store is a server already, does not exist, or the port is taken.
    """
    store = absolute_uri(uri) if uri else default_uri()
    path = local_path(store)
    if path is None:
        raise TrackingError(f"tracking URI {store} is not a local store: open a server in a browser; detune ui "
                            "serves local stores (sqlite:///path/mlflow.db or a file: folder)")
    if not path.exists():
        raise TrackingError(f"no MLflow store at {path}: run a training or study with tracking on first, or pass "
                            "--uri sqlite:///path/to/mlflow.db")
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
    return UiServer(cmd, env, f"http://{LOOPBACK if host in ('0.0.0.0', '::') else shown}:{port}", store, warning)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
