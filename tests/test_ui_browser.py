"""The MLflow UI pages detune prints: which page (fast), and what a real headless Chromium shows there (slow).

MLflow 3.17 opens an experiment in its GenAI view (traces, judges), where training runs do not appear; detune's
links ask for the Model-training view (``workflowType=machine_learning``), whose runs table shows the study's
parent run and, expanded, its trials. The browser is driven over Chromium's DevTools pipe (stdlib only).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from detune import tracking
from detune.errors import TrackingError
from detune.tracking_config import TrackingConfig
from detune.ui import ui_command

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
VIEW = "workflowType=machine_learning"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_study(uri: str, experiment: str, trials: int = 2) -> tuple[str, str, list[str]]:
    """A study as detune logs it (parent run, nested finished trial runs), without training: (exp id, parent
    name, trial run names)."""
    cfg = TrackingConfig(uri=uri, experiment=experiment)
    parent = tracking.start_study_run(cfg, name=f"{experiment}-parent", params={"metric": "metrics/mAP50-95"})
    names = [f"{experiment}-trial-{i}" for i in range(trials)]
    for i, name in enumerate(names):
        child = cfg.replace(parent_run_id=parent, run_name=name, tags={"detune.trial_id": f"t{i}"})
        run_id = tracking._open_run(child, {"lr0": str(0.01 * (i + 1))}, {"detune.kind": "train"})
        tracking.finish_run(child, run_id, status="completed", metrics={"metrics/mAP50-95": 0.1 * i})
    tracking.finish_run(cfg, parent, status="FINISHED")
    return tracking.prepare_store(cfg), f"{experiment}-parent", names


# ---- which page detune prints (fast) -----------------------------------------------------------------------
def test_ui_page_is_the_runs_table_of_the_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = tracking.prepare_store(TrackingConfig(uri=uri, experiment="quick"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # one experiment (besides MLflow's empty "Default"): its runs table, in the Model-training view
    assert ui_command(uri, port=port).page == f"{base}/#/experiments/{first}/runs?{VIEW}"
    second = tracking.prepare_store(TrackingConfig(uri=uri, experiment="other"))
    # several: the experiments list, still in the Model-training view (the browser keeps the choice)
    assert ui_command(uri, port=port).page == f"{base}/#/experiments?{VIEW}"
    assert ui_command(uri, port=port, experiment="other").page == f"{base}/#/experiments/{second}/runs?{VIEW}"
    with pytest.raises(TrackingError, match=r"no experiment 'quik' in .*did you mean 'quick'"):
        ui_command(uri, port=port, experiment="quik")
    from typer.testing import CliRunner

    from detune.cli import app

    result = CliRunner().invoke(app, ["ui", "--uri", uri, "--port", str(port), "--experiment", "quik"])
    assert result.exit_code == 1 and "did you mean 'quick'?" in result.output, result.output
    with pytest.raises(TrackingError, match=r"no experiment 'xxxxx.*\.\.\. in ") as caught:
        ui_command(uri, port=port, experiment="x" * 600)
    assert "x" * 100 not in str(caught.value)
    # a sqlite URI on a folder, from the environment: refused at once, naming the variable
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///")
    with pytest.raises(TrackingError, match=r"\(from MLFLOW_TRACKING_URI\) names a folder.*mlflow\.db"):
        ui_command(port=port)


def test_summaries_print_model_training_links(tmp_path: Path) -> None:
    """The study summary links the runs table: a server's page, or the detune ui command plus the page."""
    from detune._progress import tune_summary

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.prepare_store(TrackingConfig(uri=uri, experiment="my study"))
    result = SimpleNamespace(
        name="my study", trials=[{"status": "completed", "epochs_run": 2}], best_config=None, metric="m",
        mode="max", best_metrics={}, best_params={}, best_yaml=None, trials_csv=tmp_path / "trials.csv",
        parent_run_id="abc", output_dir=tmp_path, confirm=None)
    _, lines = tune_summary(result, SimpleNamespace(tracking=uri, name="my study"), report=None, log=None,
                            elapsed=3.0, interrupted=False)
    line = next(x for x in lines if x.startswith("MLflow:"))
    assert f"detune ui --uri {uri} --experiment 'my study'" in line
    assert f"/#/experiments/{exp}/runs?{VIEW}" in line, line
    server = "http://127.0.0.1:9"  # nothing listens: the link is still printed, without an experiment id
    _, lines = tune_summary(result, SimpleNamespace(tracking=server, name="s"), report=None, log=None,
                            elapsed=3.0, interrupted=False)
    assert f"experiment s: {server}/#/experiments?{VIEW}" in next(x for x in lines if x.startswith("MLflow:"))
    _, lines = tune_summary(result, SimpleNamespace(tracking="postgresql://db/mlflow", name="s"), report=None,
                            log=None, elapsed=3.0, interrupted=False)
    line = next(x for x in lines if x.startswith("MLflow:"))
    assert "experiment s of postgresql://db/mlflow" in line and "detune ui" not in line, line


# ---- what a real browser shows there (slow) -------------------------------------------------------------------
class Chromium:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (DevTools protocol on fds 3 and 4)."""

    def __init__(self, binary: str, profile: Path) -> None:
        read_in, self._out = os.pipe()  # we write, Chromium reads on fd 3
        self._in, write_out = os.pipe()  # Chromium writes on fd 4, we read

        def wire() -> None:
            a, b = os.dup(read_in), os.dup(write_out)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--window-size=1400,900", f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=wire, pass_fds=(3, 4),
            start_new_session=True)
        os.close(read_in)
        os.close(write_out)
        self._buf, self._id, self._session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self._session and not method.startswith("Target."):
            message["sessionId"] = self._session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._in, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium closed its pipe during {method}")
                self._buf += chunk
            raw, _, self._buf = self._buf.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply["result"])

    def text(self) -> str:
        found = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                          returnByValue=True)
        return str(found.get("result", {}).get("value") or "")

    def open(self, url: str, *, until: str, timeout: float = 90) -> str:
        """Load ``url`` and return the page text once it contains ``until`` (or at ``timeout``)."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if until in text:
                break
            time.sleep(0.5)
        return text

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.proc.wait(timeout=20)
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        finally:
            os.close(self._out)
            os.close(self._in)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium; .ci/run installs it when it can)")
    chrome = Chromium(CHROMIUM, Path(tempfile.mkdtemp(dir=tmp_path, prefix="profile-")))
    try:
        yield chrome
    finally:
        chrome.close()


@pytest.fixture(scope="module")
def served_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A logged study in a fresh store, served by ``detune ui`` on a free port; yields what it printed."""
    tmp_path = tmp_path_factory.mktemp("served")
    store = tmp_path / "mlflow.db"
    exp_id, parent, children = log_study(f"sqlite:///{store}", "browser-study")
    port = free_port()
    cli = [str(Path(sys.executable).with_name("detune")), "ui", "--uri", f"sqlite:///{store}", "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(Path(tracking.__file__).parents[2])}
    out = tmp_path / "ui.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(cli, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, out.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "detune ui did not answer /health in 180 s"
                time.sleep(0.5)
        printed = re.search(r" at (http\S+)", out.read_text())
        assert printed, out.read_text()
        yield {"url": printed.group(1), "base": f"http://127.0.0.1:{port}", "exp_id": exp_id, "parent": parent,
               "children": children}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_printed_url_opens_the_runs_table_with_parent_and_trials(browser: Chromium,
                                                                  served_study: dict[str, Any]) -> None:
    url, parent, children = served_study["url"], served_study["parent"], served_study["children"]
    assert url == f"{served_study['base']}/#/experiments/{served_study['exp_id']}/runs?{VIEW}"
    text = browser.open(url, until=parent)
    assert parent in text, text[:2000]
    lines = {line.strip() for line in text.splitlines()}
    assert "Runs" in lines and "Overview" not in lines, text[:2000]  # the Model-training runs table
    assert f"{1 + len(children)} matching runs" in text, text[:2000]
    # the trials are nested under the parent: expand it, and their names are in the table
    expanded = browser.call("Runtime.evaluate", returnByValue=True, expression=(
        "[...document.querySelectorAll('button[data-component-id*=runnamecellrenderer]')]"
        ".map(b => (b.click(), 1)).length"))
    assert expanded["result"]["value"] >= 1
    deadline = time.monotonic() + 30
    while not all(c in text for c in children) and time.monotonic() < deadline:
        time.sleep(0.5)
        text = browser.text()
    assert all(c in text for c in children), text[:2000]


@pytest.mark.slow
def test_the_experiment_link_without_the_view_shows_no_runs(browser: Chromium,
                                                             served_study: dict[str, Any]) -> None:
    """MLflow's own experiment link opens the GenAI overview: no runs table (what detune's links avoid)."""
    plain = f"{served_study['base']}/#/experiments/{served_study['exp_id']}"
    text = browser.open(plain, until="Overview")
    lines = {line.strip() for line in text.splitlines()}
    assert "Overview" in lines and served_study["parent"] not in text, text[:2000]
    text = browser.open(f"{plain}?{VIEW}", until=served_study["parent"])  # the same link with the view: runs
    assert served_study["parent"] in text, text[:2000]
