"""Config files that never trip a newcomer (issue 13, section 7): encodings, folders, duplicated keys, YAML
anchor bombs, and plans of absurd trainings. Every failure is one ConfigError naming the file or key."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from detune.cli import app
from detune.config import load_config, parse_overrides, read_yaml
from detune.errors import ConfigError, DatasetError

runner = CliRunner()

# billion laughs in flow style: &i holds 10**9 scalars, built from 9 nodes of 10 items each
BOMB = ("[&a [x, x, x, x, x, x, x, x, x, x], "
        + ", ".join(f"&{c} [{', '.join([f'*{p}'] * 10)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
        + "]")


def invoke(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def test_non_utf8_and_binary_configs_name_the_file(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\nlr0: 0.01\n".encode("latin-1"))
    binary = tmp_path / "model.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    for path in (latin, binary):
        with pytest.raises(ConfigError, match=rf"config file '{path}'.*UTF-8 YAML") as info:
            load_config(path)
        assert "codec" not in str(info.value).split(";")[-1]


def test_a_folder_given_as_config_is_called_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"config file '{tmp_path}' is a directory; pass the path of a YAML"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_duplicated_keys_are_refused_with_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("lr0: 0.01\nepochs: 3\nscheduler_params:\n  gamma: 0.5\n  gamma: 0.1\nlr0: 0.1\n")
    with pytest.raises(ConfigError, match=rf"config file '{path}'.*key 'lr0' appears twice \(lines 1 and 6\)"):
        read_yaml(path)
    path.write_text("epochs: 3\nscheduler_params:\n  gamma: 0.5\n  gamma: 0.1\n")
    with pytest.raises(ConfigError, match=r"key 'gamma' appears twice \(lines 3 and 4\)"):
        read_yaml(path)
    # a merge key is not a duplicate: the explicit key overrides the merged one, as YAML defines
    path.write_text("base: &b {lr0: 0.01, epochs: 3}\ntrain:\n  <<: *b\n  lr0: 0.02\n")
    assert read_yaml(path)["train"] == {"lr0": 0.02, "epochs": 3}
    with pytest.raises(ConfigError, match=r"override 'scheduler_params'.*key 'gamma' appears twice"):
        parse_overrides(["scheduler_params={gamma: 0.5, gamma: 0.1}"])


def test_duplicated_keys_in_a_study_file(tmp_path: Path) -> None:
    from detune.study import load_study

    path = tmp_path / "study.yaml"
    path.write_text("name: s\nsearch_space:\n  lr0: {loguniform: [1.0e-4, 1.0e-1]}\nnum_samples: 2\n"
                    "search_space:\n  lrf: {uniform: [0.01, 1.0]}\n")
    with pytest.raises(ConfigError, match=rf"'{path}'.*key 'search_space' appears twice \(lines 2 and 5\)"):
        load_study(path)


def test_duplicated_keys_in_a_data_yaml(tmp_path: Path) -> None:
    from detune.datasets import check_dataset

    path = tmp_path / "data.yaml"
    path.write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: a}\ntrain: images/other\n")
    with pytest.raises(DatasetError, match=r"data.yaml.*key 'train' appears twice \(lines 2 and 5\)"):
        check_dataset(path)


def test_anchor_bomb_under_a_real_key_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(f"classes: {BOMB}\nepochs: 1\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"config file '{path}'.*'classes' expands to more than"):
        load_config(path)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(f"clases: {BOMB}\n")  # under an unknown key: refused at once too
    with pytest.raises(ConfigError, match="clases"):
        load_config(unknown)
    nested = tmp_path / "study.yaml"
    nested.write_text(f"name: s\ntrain:\n  epochs: 1\n  classes: {BOMB}\n")
    with pytest.raises(ConfigError, match=r"'train.classes' expands to more than"):
        read_yaml(nested)
    with pytest.raises(ConfigError, match=r"override 'classes'.*expands to more than"):
        parse_overrides([f"classes={BOMB}"])
    assert time.perf_counter() - start < 10
    result = invoke("schedule", path, "--steps-per-epoch", "1", "--out", tmp_path / "x.png")
    assert result.exit_code == 1 and result.stderr.startswith("error: config file") and "classes" in result.stderr


def test_self_referencing_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("classes: &a [1, *a]\n")
    with pytest.raises(ConfigError, match=r"'classes' refers to itself"):
        read_yaml(path)


def test_reasonable_values_still_load(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    names = ", ".join(f"c{i}" for i in range(2000))
    path.write_text(f"lr0: 1e-3\nepochs: 3\nclasses: [{', '.join(map(str, range(1000)))}]\nx: [{names}]\n")
    assert len(read_yaml(path)["classes"]) == 1000


# ---- `detune schedule` of absurd trainings: bounded, at once --------------------------------------------
def test_schedule_of_a_billion_epochs_is_refused_at_once(tmp_path: Path) -> None:
    start = time.perf_counter()
    result = invoke("schedule", "epochs=1000000000", "--steps-per-epoch", "1", "--out", tmp_path / "a.png")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: epochs (1000000000) must be <= 100000; train for at most 100000 epochs"
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("as_json", [False, True])
def test_schedule_of_the_longest_training_stays_small(tmp_path: Path, as_json: bool) -> None:
    start = time.perf_counter()
    result = invoke("schedule", "epochs=100000", "warmup_epochs=5", "--steps-per-epoch", "1000000",
                    "--out", tmp_path / "b.png", *(["--json"] if as_json else []))
    assert result.exit_code == 0, result.output
    if as_json:
        data = json.loads(result.stdout)
        points = data["key_points"]
        assert data["steps_per_epoch"] == 1_000_000 and 3 <= len(points) <= 1002
        assert points[0]["step"] == 0 and points[1]["step"] == 5_000_000 and points[-1]["step"] == 10**11 - 1
    else:
        assert 5 <= len(result.stdout.splitlines()) <= 1010
    assert (tmp_path / "b.png").stat().st_size > 0
    assert time.perf_counter() - start < 60


def test_schedule_refuses_absurd_steps_per_epoch(tmp_path: Path) -> None:
    result = invoke("schedule", "epochs=3", "--steps-per-epoch", "1e300", "--out", tmp_path / "c.png")
    assert result.exit_code == 1 and "steps_per_epoch (1e+300) must be <= 10000000" in result.stderr


def test_schedule_summary_reports_the_real_peak(tmp_path: Path) -> None:
    result = invoke("schedule", "scheduler=onecycle", "scheduler_params.max_lr=0.05", "epochs=10", "warmup_epochs=0",
                    "--steps-per-epoch", "10", "--json", "--out", tmp_path / "d.png")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["peak_lr"] == pytest.approx(0.05, rel=1e-3)
    result = invoke("schedule", "scheduler=onecycle", "scheduler_params.max_lr=0.05", "epochs=10", "warmup_epochs=0",
                    "--steps-per-epoch", "10", "--out", tmp_path / "d.png")
    assert "peak lr 0.05" in result.stdout.splitlines()[0]
