"""Where detune writes: impossible or unwritable output paths are refused up front, a closed stdout is not a
failure (tests through the CLI entry point, CliRunner in-process and a real pipe in a subprocess)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import detune
from detune.cli import app
from detune.errors import ConfigError

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def invoke(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    return path


@contextlib.contextmanager
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may write in: immutable (chattr +i) when running as root, mode 0555 otherwise."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"root cannot make a read-only folder here (chattr +i: {made.stderr.strip()})")
        try:
            yield folder
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


def train_args(tmp_path: Path, shapes_yaml: Path, project: Path | str) -> list[str]:
    return [f"data={shapes_yaml}", "epochs=1", "batch=8", "nbs=8", "imgsz=32", "device=cpu", "workers=0",
            "plots=False", "warmup_epochs=0", "threads=1", f"project={project}", "name=t"]


# ---- project for detune train ------------------------------------------------------------------------------


def test_train_project_under_a_file_is_one_clear_error_before_anything(tmp_path: Path, shapes_yaml: Path,
                                                                       a_file: Path) -> None:
    project = a_file / "x"
    result = invoke("train", *train_args(tmp_path, shapes_yaml, project))
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: project ({project}): {a_file} is a file, not a folder;"), result.output
    assert "unexpected" not in result.output and "set project to a folder you can write" in result.output
    assert a_file.read_text() == "not a folder\n"


def test_train_project_in_a_read_only_folder_is_one_clear_error(tmp_path: Path, shapes_yaml: Path) -> None:
    with read_only_folder(tmp_path) as folder:
        result = invoke("train", *train_args(tmp_path, shapes_yaml, folder / "runs"))
        assert list(folder.iterdir()) == []
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: project ({folder / 'runs'}): cannot write in {folder} ("), result.output
    assert "unexpected" not in result.output


def test_train_refused_before_compute_leaves_no_project_folder(tmp_path: Path, shapes_yaml: Path) -> None:
    """A check that fails before any compute (here a GPU device on a machine without one) leaves nothing:
    no project folder, no detune.log (it used to leave <project>/detune.log behind)."""
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU")
    args = [a for a in train_args(tmp_path, shapes_yaml, tmp_path / "new" / "runs") if a != "device=cpu"]
    result = invoke("train", *args, "device=cuda:0")
    assert result.exit_code == 1, result.output
    assert "sees 0 GPUs" in result.output
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a project folder that existed stays, without a log in it
    args = [a for a in train_args(tmp_path, shapes_yaml, tmp_path / "kept") if a != "device=cpu"]
    assert invoke("train", *args, "device=cuda:0").exit_code == 1
    assert list((tmp_path / "kept").iterdir()) == []
    finder = invoke("lr-find", f"data={shapes_yaml}", "imgsz=32", "batch=8", "device=cuda:0",
                    f"project={tmp_path / 'lr' / 'runs'}")
    assert finder.exit_code == 1 and "sees 0 GPUs" in finder.output, finder.output
    assert not (tmp_path / "lr").exists()


def test_library_train_refuses_an_impossible_project_before_any_compute(tmp_path: Path, shapes_yaml: Path,
                                                                        a_file: Path) -> None:
    with pytest.raises(ConfigError, match=rf"project \({a_file}/x\): {a_file} is a file, not a folder"):
        detune.train(data=str(shapes_yaml), epochs=1, batch=8, imgsz=32, device="cpu", warmup_epochs=0.0,
                     project=str(a_file / "x"))


# ---- --out whose parent is a file ----------------------------------------------------------------------------


def minimal_study(root: Path) -> Path:
    """A study output_dir with one completed trial (Ultralytics' results.csv as the history)."""
    out = root / "study"
    (out / "trials" / "t1").mkdir(parents=True)
    (out / "trials" / "t1" / "results.csv").write_text("epoch,metrics/mAP50-95(B),lr/pg0\n1,0.1,0.01\n2,0.2,0.005\n")
    (out / "trials.csv").write_text("trial_id,status,best_metric,best_epoch,epochs_run,reason,lr0\n"
                                    "t1,completed,0.2,2,2,,0.01\n")
    (out / "best.yaml").write_text("# best trial t1 of study s\nlr0: 0.01\n")
    (out / "study.json").write_text(json.dumps({"parent_run_id": None, "name": "s"}))
    return out


@pytest.mark.parametrize("command", ["schedule", "report", "lr-find"])
def test_out_under_a_file_is_one_clear_error(tmp_path: Path, shapes_yaml: Path, a_file: Path,
                                             command: str) -> None:
    out = a_file / "sub" / ("plot.png" if command != "report" else "report")
    args = {
        "schedule": ["schedule", "scheduler=constant", "epochs=2", "warmup_epochs=0", "--steps-per-epoch", "4"],
        "report": ["report", minimal_study(tmp_path)],
        "lr-find": ["lr-find", f"data={shapes_yaml}", "imgsz=32", "batch=8", "device=cpu", "workers=0",
                    f"project={tmp_path / 'runs'}", "num_iters=4"],
    }[command]
    result = invoke(*args, "--out", out)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: --out ({out}): {a_file} is a file, not a folder;"), result.output
    assert "unexpected" not in result.output
    assert not (tmp_path / "runs").exists()  # lr-find trained nothing


def test_out_that_is_a_folder_is_refused_for_a_plot(tmp_path: Path) -> None:
    result = invoke("schedule", "scheduler=constant", "epochs=2", "warmup_epochs=0", "--steps-per-epoch", "4",
                    "--out", tmp_path)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: --out ({tmp_path}) is a folder; give the path of a .png file")


# ---- a closed stdout -------------------------------------------------------------------------------------------


def run_with_closed_stdout(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the CLI with stdout a pipe whose reader is already gone, like ``detune ... | true``."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    try:
        return subprocess.run([sys.executable, "-c", "from detune.cli import main; main()", *args],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env,
                              timeout=timeout)
    finally:
        os.close(write_end)


def test_data_check_into_a_closed_pipe_exits_141_quietly(tmp_path: Path, shapes_yaml: Path) -> None:
    done = run_with_closed_stdout(["data", "check", str(shapes_yaml)], tmp_path, timeout=120)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


@pytest.mark.slow
def test_train_into_a_closed_pipe_completes_and_exits_141_quietly(tmp_path: Path, shapes_yaml: Path) -> None:
    done = run_with_closed_stdout(["train", *train_args(tmp_path, shapes_yaml, tmp_path / "runs"), "--quiet"],
                                  tmp_path, timeout=600)
    assert done.returncode == 141, done.stderr
    assert "error" not in done.stderr.lower() and "Exception" not in done.stderr, done.stderr
    assert (tmp_path / "runs" / "t" / "weights" / "last.pt").is_file()  # the training was not lost
    assert (tmp_path / "runs" / "t" / "detune.log").is_file()


def test_paths_docstring_example() -> None:
    import doctest

    import detune._paths

    result = doctest.testmod(detune._paths, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


def test_data_check_names_unreadable_images_and_does_not_say_plain_ok(tmp_path: Path) -> None:
    from detune.datasets import make_shapes

    data = make_shapes(tmp_path / "shapes", n_train=6, n_val=3, imgsz=64, seed=0)
    (data.parent / "images" / "train" / "zero.jpg").write_bytes(b"")
    result = invoke("data", "check", data)
    assert result.exit_code == 0, result.output
    assert "train: 6 images" in result.output and "(1 unreadable images left out)" in result.output
    assert "zero.jpg (empty file, 0 bytes)" in result.output and "ok, with 1 warning(s)" in result.output
    as_json = json.loads(invoke("data", "check", data, "--json").output)
    assert [Path(p).name for p in as_json["train_dropped"]] == ["zero.jpg"] and as_json["data.train_dropped"] == 1


def test_epoch_line_of_an_epoch_without_optimizer_step_shows_no_lr(tmp_path: Path) -> None:
    import io
    import math

    from detune._progress import Terminal, TrainDisplay

    err = io.StringIO()
    display = TrainDisplay(Terminal(out=io.StringIO(), err=err), epochs=3)
    display.on_start({"steps_per_epoch": 1 / 3, "save_dir": str(tmp_path), "device": "cpu"})
    display.on_epoch({"epoch": 1, "lr/pg0": math.nan, "metrics/mAP50-95": 0.0}, tmp_path)
    display.on_step(0, 1, [0.04, 0.04, 0.04])
    display.on_epoch({"epoch": 2, "lr/pg0": 0.04, "metrics/mAP50-95": 0.0}, tmp_path)
    display.on_epoch({"epoch": 3, "lr/pg0": math.nan, "metrics/mAP50-95": 0.0}, tmp_path)
    lines = [x for x in err.getvalue().splitlines() if x.startswith("epoch ")]
    assert "no optimizer step" in lines[0] and "lr 0.04" in lines[1] and "no optimizer step" in lines[2], lines


@pytest.mark.slow
def test_train_cli_shows_the_few_steps_warning_before_the_first_epoch(tmp_path: Path) -> None:
    from detune.datasets import make_shapes

    data = make_shapes(tmp_path / "shapes16", n_train=16, n_val=8, imgsz=64, seed=0)
    args = [a for a in train_args(tmp_path, data, tmp_path / "runs") if not a.startswith(("nbs=", "epochs="))]
    result = invoke("train", *args, "epochs=2", "nbs=64")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    warning = next(i for i, x in enumerate(lines) if x.startswith("warning: 16 train images / batch 8"))
    first_epoch = next(i for i, x in enumerate(lines) if x.startswith("epoch 1/2"))
    assert warning < first_epoch, result.output
    assert sum(x.startswith("warning: 16 train images") for x in lines) == 1
