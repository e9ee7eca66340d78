"""The Ray that a study starts or joins: loopback-only and token-protected when local, token-protected
clusters joined with --address, and trial resources the cluster can never give refused at once."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detune import _fake
from detune.errors import TuneError
from detune.tuning import tune

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


def _study(tmp_path: Path, shapes_yaml: Path, **changes: object) -> dict:
    base = {
        "name": "t", "output_dir": str(tmp_path / "out"),
        "train": {"data": str(shapes_yaml), "epochs": 3, "device": "cpu", "imgsz": 32, "warmup_epochs": 0.0},
        "search_space": {"lr0": {"grid": [0.01, 0.02]}}, "search": "grid", "trial_scheduler": "fifo",
        "num_samples": 1, "max_concurrent_trials": 2, "tracking": False, "resources_per_trial": {"cpu": 1},
    }
    return {**base, **changes}


def _listening(pids: set[int]) -> set[tuple[str, str, int]]:
    import psutil

    out = set()
    for c in psutil.net_connections("inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            try:
                name = psutil.Process(c.pid).name()
            except psutil.Error:
                name = "?"
            out.add((name, c.laddr.ip, c.laddr.port))
    return out


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def test_local_study_listens_on_loopback_only_with_a_token_kept_in_detune_home(
        tmp_path: Path, shapes_yaml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    from detune import _runtime

    fake_home = tmp_path / "user-home"
    fake_home.mkdir()
    monkeypatch.setenv("HOME", str(fake_home))  # ~/.ray must stay untouched
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    seen: set[tuple[str, str, int]] = set()
    ray_names: set[str] = set()
    trial_niceness: set[int] = set()

    def probe(rows: list[dict]) -> None:  # on the driver, while trials run
        me = psutil.Process()
        tree = [me, *me.children(recursive=True)]
        ray_names.update(p.name() for p in tree if p.is_running())
        seen.update(_listening({p.pid for p in tree}))
        for p in tree:
            with contextlib.suppress(psutil.Error):
                if "ImplicitFunc" in p.name():
                    trial_niceness.add(p.nice())

    result = tune(_study(tmp_path, shapes_yaml), fit=_fake.fit, progress=probe)
    assert {t["status"] for t in result.trials} == {"completed"}
    assert {"gcs_server", "raylet"} <= ray_names, ray_names  # the probe saw the Ray processes
    assert seen, "no listening socket seen in the Ray process tree"
    assert all(_is_loopback(ip) for _, ip, _ in seen), sorted(seen)
    # trials compete with other work at the driver's priority (Ray's default worker niceness is 15)
    assert trial_niceness == {os.nice(0)}, trial_niceness
    assert os.environ["RAY_AUTH_MODE"] == "token"
    token = _runtime.home() / "ray" / "auth_token"
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert len(token.read_text().strip()) >= 32 and token.stat().st_mode & 0o077 == 0
    assert not (fake_home / ".ray").exists()


def test_trial_resources_the_local_cluster_never_has_fail_fast(tmp_path: Path, shapes_yaml: Path) -> None:
    started = time.monotonic()
    cpus = os.cpu_count() or 1
    with pytest.raises(TuneError, match=r"resources_per_trial\.gpu \(1\).*0 GPUs.*gpu: 0") as err:
        tune(_study(tmp_path, shapes_yaml, resources_per_trial={"cpu": 1, "gpu": 1}), fit=_fake.fit)
    assert f"the local Ray has {cpus} CPUs and 0 GPUs" in str(err.value)  # what the machine has
    with pytest.raises(TuneError, match=rf"resources_per_trial\.cpu \({cpus + 3}\).*{cpus} CPUs"):
        tune(_study(tmp_path, shapes_yaml, name="t2", resources_per_trial={"cpu": cpus + 3}), fit=_fake.fit)
    assert time.monotonic() - started < 240  # each starts Ray (5-40 s, more under load), then stops at once
    import ray

    assert not ray.is_initialized()


# ---- a token-protected two-node cluster on this machine (ray start --head + ray start --address) --------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each `ray start --block` (it stops its node's processes), then kill by PID whatever of their
    trees is left (agents that ignore SIGTERM)."""
    import psutil

    tree: list[psutil.Process] = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            tree += [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    _, alive = psutil.wait_procs(tree, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _wait_nodes(env: dict, address: str, n: int, procs: list[subprocess.Popen]) -> None:
    code = ("import ray,sys; ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False); "
            "print(len([x for x in ray.nodes() if x['Alive']]))")
    deadline = time.monotonic() + 180
    while True:
        assert all(p.poll() is None for p in procs), "a ray start process ended"
        out = subprocess.run([sys.executable, "-c", code, address], env=env, capture_output=True, text=True,
                             timeout=120)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1] == str(n):
            return
        assert time.monotonic() < deadline, out.stderr[-2000:]
        time.sleep(2)


def test_study_on_a_token_protected_two_node_cluster(tmp_path: Path, shapes_yaml: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "cluster_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(tmp_path)}
    env.pop("RAY_AUTH_TOKEN", None)
    temp_dir = f"/tmp/ray-dt-{os.getpid()}"
    port = _free_port()
    common = ["--num-cpus", "1", "--temp-dir", temp_dir, "--block", "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []
    log = open(tmp_path / "ray-start.log", "wb")  # noqa: SIM115 - closed in finally
    try:
        procs.append(subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--include-dashboard=false",
                                       *common], env=env, stdout=log, stderr=subprocess.STDOUT))
        host = socket.gethostbyname(socket.gethostname())
        address = f"{host}:{port}"
        _wait_nodes(env, address, 1, procs)
        procs.append(subprocess.Popen([RAY, "start", "--address", address, *common], env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
        _wait_nodes(env, address, 2, procs)

        # a client without the token is refused, and detune says so within Ray's connect timeout
        wrong = {**env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "nope"), "RAY_AUTH_TOKEN": "0" * 64}
        wrong.pop("RAY_AUTH_MODE")  # detune's default (token) applies
        study_yaml = tmp_path / "study.yaml"
        import yaml

        study_yaml.write_text(yaml.safe_dump(_study(tmp_path, shapes_yaml, name="refused")))
        out = subprocess.run([str(Path(sys.executable).with_name("detune")), "tune", str(study_yaml),
                              "--address", address], env=wrong, capture_output=True, text=True, timeout=180,
                             cwd=tmp_path)
        assert out.returncode == 1, out.stderr[-3000:]
        assert "error: could not start or join Ray" in out.stderr and address in out.stderr, out.stderr[-3000:]
        assert "RAY_AUTH_MODE is 'token'" in out.stderr and "RAY_AUTH_TOKEN_PATH" in out.stderr  # the fix

        # with the cluster's token (and detune's default RAY_AUTH_MODE), a study spreads its trials over both nodes
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
        result = tune(_study(tmp_path, shapes_yaml, train={**_study(tmp_path, shapes_yaml)["train"], "epochs": 4}),
                      address=address, fit=_fake.fit)
        assert {t["status"] for t in result.trials} == {"completed"}
        nodes = {r.metrics["detune_node"] for r in result.result_grid}
        assert len(nodes) == 2, nodes  # two 1-CPU trials at once: one on each node
    finally:
        _stop(procs)
        log.close()
