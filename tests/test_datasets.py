"""Tests of detune.datasets: the shapes generator and check_dataset (synthetic files only, no training)."""

from __future__ import annotations

import doctest
import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import detune._shapes
import detune.datasets
from detune.datasets import DatasetInfo, check_dataset, make_shapes, make_shapes_from_spec, shapes_spec
from detune.errors import ConfigError, DatasetError

REPO = Path(__file__).resolve().parents[1]
COCO128 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128.yaml"
SMALL = {"n_train": 6, "n_val": 3, "imgsz": 64}


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def tiny_jpeg() -> bytes:
    """A valid 16x16 JPEG (check_dataset opens every image's header)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 60, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def write_dataset(root: Path, labels: dict[str, str], yaml_text: str | None = None) -> Path:
    """images/<split>/<name>.jpg (a valid tiny JPEG) with labels/<split>/<name>.txt."""
    image = tiny_jpeg()
    for key, text in labels.items():
        split, name = key.split("/")
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "images" / split / f"{name}.jpg").write_bytes(image)
        if text is not None:
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{name}.txt").write_text(text)
    data = root / "data.yaml"
    data.write_text(
        yaml_text if yaml_text is not None else "train: images/train\nval: images/val\nnames: [a, b]\n"
    )
    return data


GOOD = {
    "train/t0": "0 0.5 0.5 0.2 0.2\n1 0.2 0.2 0.1 0.1\n",
    "train/t1": "1 0.5 0.5 0.5 0.5\n",
    "val/v0": "0 0.5 0.5 0.3 0.3\n",
}


# ---- make_shapes -------------------------------------------------------------------------------------------


def test_make_shapes_writes_ultralytics_layout(tmp_path: Path) -> None:
    data = make_shapes(tmp_path / "s", **SMALL)
    assert data == (tmp_path / "s" / "data.yaml").resolve()
    content = yaml.safe_load(data.read_text())
    assert content["path"] == str(data.parent) and Path(content["path"]).is_absolute()
    assert (content["train"], content["val"]) == ("images/train", "images/val")
    assert content["names"] == {0: "circle", 1: "square", 2: "triangle"}
    for split, count in (("train", 6), ("val", 3)):
        assert len(list((data.parent / "images" / split).glob("*.png"))) == count
        assert len(list((data.parent / "labels" / split).glob("*.txt"))) == count
    info = check_dataset(data)
    assert (info.train_images, info.val_images, info.nc, info.warnings) == (6, 3, 3, ())
    assert info.train_instances >= 6 and not info.val_is_train


def test_make_shapes_is_byte_identical_for_a_seed(tmp_path: Path) -> None:
    a = digests(make_shapes(tmp_path / "a", **SMALL).parent)
    b = digests(make_shapes(tmp_path / "b", **SMALL).parent)
    other = digests(make_shapes(tmp_path / "c", **SMALL, seed=1).parent)
    pixels = {k: v for k, v in a.items() if k.endswith((".png", ".txt"))}
    assert pixels and all(b[k] == v for k, v in pixels.items())
    assert all(other[k] != v for k, v in pixels.items() if k.endswith(".png"))


def test_image_i_does_not_depend_on_split_size(tmp_path: Path) -> None:
    small = digests(make_shapes(tmp_path / "a", **SMALL).parent)
    big = digests(make_shapes(tmp_path / "b", **{**SMALL, "n_train": 9}).parent)
    assert all(big[k] == v for k, v in small.items() if k.startswith(("images", "labels")))


def test_make_shapes_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_shapes(tmp_path / "s", **SMALL)
    before = {p: p.stat().st_mtime_ns for p in data.parent.rglob("*")}

    def fail(*args: object) -> None:
        raise AssertionError("regenerated an up-to-date dataset")

    monkeypatch.setattr(detune._shapes, "_write_split", fail)
    assert make_shapes(tmp_path / "s", **SMALL) == data
    assert {p: p.stat().st_mtime_ns for p in data.parent.rglob("*")} == before


def test_make_shapes_regenerates_when_parameters_change(tmp_path: Path) -> None:
    make_shapes(tmp_path / "s", **SMALL)
    data = make_shapes(tmp_path / "s", **{**SMALL, "n_train": 4, "n_classes": 2})
    assert len(list((data.parent / "images" / "train").iterdir())) == 4
    assert check_dataset(data).names == ("circle", "square")
    assert not list(tmp_path.glob(".s.tmp-*"))


def test_make_shapes_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not empty and holds no detune-shapes.json"):
        make_shapes(tmp_path, **SMALL)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_classes": 7}, r"n_classes \(7\) must be an integer in 1..6"),
        ({"n_train": 0}, r"n_train \(0\) must be an integer >= 1"),
        ({"imgsz": 16}, r"imgsz \(16\) must be an integer >= 32"),
        ({"min_objects": 3, "max_objects": 2}, r"max_objects \(2\) must be an integer >= 3"),
        ({"min_size": 0.6, "max_size": 0.5}, r"min_size \(0.6\) <= max_size \(0.5\)"),
    ],
)
def test_make_shapes_rejects_bad_parameters(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        make_shapes(tmp_path / "s", **{**SMALL, **kwargs})  # type: ignore[arg-type]
    assert not (tmp_path / "s").exists()


def test_shapes_spec_reads_the_repo_yaml_and_overrides(tmp_path: Path) -> None:
    spec = shapes_spec()
    assert spec == shapes_spec(REPO / "datasets" / "shapes.yaml")
    assert shapes_spec(n_train=5).n_train == 5
    data = make_shapes_from_spec(tmp_path / "s", shapes_spec(**SMALL))
    assert check_dataset(data).train_images == 6


def test_shapes_spec_rejects_unknown_keys(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("n_trian: 10\n")
    with pytest.raises(DatasetError, match=r"spec.yaml: unknown key 'n_trian'; did you mean 'n_train'\?"):
        shapes_spec(spec)


# ---- check_dataset: forms that must pass ------------------------------------------------------------------


def test_dataset_error_is_a_config_error() -> None:
    assert issubclass(DatasetError, ConfigError) and issubclass(DatasetError, ValueError)


def test_check_counts_and_summary(tmp_path: Path) -> None:
    info = check_dataset(write_dataset(tmp_path, GOOD))
    assert isinstance(info, DatasetInfo)
    assert (info.root, info.names, info.nc) == (tmp_path.resolve(), ("a", "b"), 2)
    assert (info.train_images, info.val_images, info.train_instances, info.val_instances) == (2, 1, 3, 1)
    summary = info.summary()
    assert summary["data.nc"] == 2 and summary["data.val_is_train"] == "false"
    for key, value in summary.items():
        assert re.fullmatch(r"[/\w.\- :]*", key) and isinstance(value, (str, int))


def test_val_equal_to_train_is_flagged(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, GOOD, "train: images/train\nval: images/train\nnames: [a, b]\n")
    info = check_dataset(data)
    assert info.val_is_train and info.summary()["data.val_is_train"] == "true"
    assert any("val and train are the same 2 images" in w for w in info.warnings)


def test_partial_overlap_and_missing_labels_are_warnings(tmp_path: Path) -> None:
    labels = {**GOOD, "train/bg": None}
    data = write_dataset(
        tmp_path, labels, "train: images/train\nval: [images/val, images/train/t0.jpg]\nnames: [a, b]\n"
    )
    with pytest.raises(DatasetError, match="is a single image; point it at a folder or a .txt list"):
        check_dataset(data)
    (tmp_path / "val.txt").write_text("./images/val/v0.jpg\n./images/train/t0.jpg\n")
    data.write_text("train: images/train\nval: val.txt\nnames: [a, b]\n")
    info = check_dataset(data)
    assert not info.val_is_train
    assert any("1 of 2 val images are also train images" in w for w in info.warnings)
    assert any("1 of 3 train images have no label file" in w and "bg.txt" in w for w in info.warnings)


def test_list_file_and_list_of_dirs(tmp_path: Path) -> None:
    labels = {**GOOD, "extra/e0": "0 0.5 0.5 0.1 0.1\n"}
    write_dataset(tmp_path, labels)
    (tmp_path / "train.txt").write_text("./images/train/t0.jpg\n\n./images/train/t1.jpg\nnotes.md\n")
    data = tmp_path / "data.yaml"
    data.write_text("train: train.txt\nval: [images/val, images/extra]\nnames: {0: a, 1: b}\n")
    info = check_dataset(data)
    assert (info.train_images, info.val_images, info.val_instances) == (2, 2, 2)
    assert info.train == (tmp_path.resolve() / "train.txt",)
    assert len(info.val) == 2


def test_path_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "sets" / "mine"
    write_dataset(root, GOOD)
    cfg = tmp_path / "sets" / "mine.yaml"
    body = "train: images/train\nval: images/val\nnames: [a, b]\n"
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for path_value in ("mine", str(root), "./mine"):  # relative to the YAML's folder, or absolute
        cfg.write_text(f"path: {path_value}\n{body}")
        assert check_dataset(cfg).root == root.resolve()
    assert check_dataset(root / "data.yaml").root == root.resolve()  # no path: the YAML's folder
    cfg.write_text(f"path: sets/mine\n{body}")
    monkeypatch.chdir(tmp_path)  # Ultralytics' rule: relative to the CWD
    assert check_dataset(cfg).root == root.resolve()
    monkeypatch.chdir(elsewhere)
    assert check_dataset(cfg, datasets_dir=tmp_path).root == root.resolve()  # then datasets_dir
    with pytest.raises(
        DatasetError,
        match=r"mine.yaml:1: path 'sets/mine' is not an existing folder \(tried "
        r".*sets/sets/mine \(beside the YAML\), .*cwd/sets/mine \(the CWD\)\); fix path",
    ):
        check_dataset(cfg)
    cfg.write_text(f"path: {tmp_path / 'gone'}\n{body}")
    with pytest.raises(DatasetError, match=r"mine.yaml:1: path '/.*/gone' is not an existing folder"):
        check_dataset(cfg)


def test_yaml_dir_versus_cwd_conflict_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dataset(tmp_path / "yamldir" / "d", GOOD)
    (tmp_path / "cwd" / "d").mkdir(parents=True)
    cfg = tmp_path / "yamldir" / "x.yaml"
    cfg.write_text("path: d\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    monkeypatch.chdir(tmp_path / "cwd")
    info = check_dataset(cfg)
    assert info.root == (tmp_path / "yamldir" / "d").resolve()
    assert any("but Ultralytics would use" in w for w in info.warnings)


def test_write_yaml_pins_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = check_dataset(write_dataset(tmp_path / "d", GOOD))
    out = info.write_yaml(tmp_path / "out" / "resolved.yaml")
    content = yaml.safe_load(out.read_text())
    assert content["path"] == str(info.root) and Path(content["train"]).is_absolute()
    monkeypatch.chdir(tmp_path / "out")
    again = check_dataset(out)
    assert (again.train_images, again.val_instances, again.names) == (2, 1, ("a", "b"))


def test_validation_key_nc_only_and_polygons(tmp_path: Path) -> None:
    labels = {**GOOD, "val/v0": "1 0.1 0.1 0.9 0.1 0.5 0.9\n"}
    data = write_dataset(tmp_path, labels, "train: images/train\nvalidation: images/val\nnc: 2\n")
    info = check_dataset(data)
    assert info.names == ("class_0", "class_1") and info.val_instances == 1
    data.write_text("train: images/train\nval: images/val\nnc: '2'\nnames: [a, b]\n")
    assert check_dataset(data).nc == 2
    assert any("'validation' read as 'val'" in w for w in info.warnings)


def test_coordinates_within_ultralytics_tolerance_pass(tmp_path: Path) -> None:
    labels = {**GOOD, "train/t1": "1 1.005 0.5 0.5 0.5\n0 0.5 -0.004 0.5 0.5\n"}
    assert check_dataset(write_dataset(tmp_path, labels)).train_instances == 4


# ---- check_dataset: errors name file:line, value and fix ------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("train: images/train\nval: [images/val\nnames: [a]\n", r"data.yaml:3: YAML syntax error"),
        ("- train\n- val\n", r"data.yaml: expected a mapping with train, val and names keys, got list"),
        ("train: images/train\nval: images/val\n", r"data.yaml: no 'names' key; add names:"),
        (
            "train: images/train\nval: images/val\nnames: a\n",
            r"data.yaml:3: names must be a list or a mapping",
        ),
        ("train: images/train\nval: images/val\nnames: []\n", r"data.yaml:3: names is empty"),
        (
            "train: images/train\nval: images/val\nnames:\n  0: a\n  2: b\n",
            r"data.yaml:5: class ids in names must be 0..1 without gaps; found id 2 while id 1 is missing",
        ),
        (
            "train: images/train\nval: images/val\nnames:\n  0: a\n  x: b\n",
            r"data.yaml:5: class id 'x' in names is not an integer",
        ),
        (
            "train: images/train\nval: images/val\nnc: 3\nnames: [a, b]\n",
            r"data.yaml:3: nc \(3\) does not match the 2 entries of names; set nc: 2 or remove nc",
        ),
        (
            "train: images/train\nval: images/val\nnc: two\nnames: [a, b]\n",
            r"data.yaml:3: nc \('two'\) must be",
        ),
        ("val: images/val\nnames: [a, b]\n", r"data.yaml: no 'train' key; add train: images/train"),
        ("train: images/train\nnames: [a, b]\n", r"data.yaml: no 'val' key"),
        (
            "train: images/nope\nval: images/val\nnames: [a, b]\n",
            r"data.yaml:1: train .*images/nope not found \(relative to the dataset root .*\); fix 'train:'",
        ),
        (
            "train: images/train\nval: 3\nnames: [a, b]\n",
            r"data.yaml:2: val \(3\) must be a folder, a .txt list",
        ),
        (
            "path: 7\ntrain: images/train\nval: images/val\nnames: [a, b]\n",
            r"data.yaml:1: path \(7\) must be a folder name",
        ),
        (
            "train: labels/train\nval: images/val\nnames: [a, b]\n",
            r"data.yaml:1: train has no images in .*labels",
        ),
    ],
)
def test_yaml_errors(tmp_path: Path, yaml_text: str, message: str) -> None:
    data = write_dataset(tmp_path, GOOD, yaml_text)
    with pytest.raises(DatasetError, match=message):
        check_dataset(data)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("0 0.5 0.5 0.2", r"t1.txt:2: expected 5 numbers 'class x_center y_center width height', got 4"),
        ("0 0.5 zero 0.2 0.2", r"t1.txt:2: 'zero' is not a number"),
        (
            "2 0.5 0.5 0.2 0.2",
            r"t1.txt:2: class id 2 is out of range: the data YAML has 2 classes \(ids 0..1\)",
        ),
        ("-1 0.5 0.5 0.2 0.2", r"t1.txt:2: class id -1 is out of range"),
        ("0.5 0.5 0.5 0.2 0.2", r"t1.txt:2: class id 0.5 is not an integer"),
        (
            "0 320 0.5 0.2 0.2",
            r"t1.txt:2: x_center 320 is outside \[0, 1\]: .*divide pixel values by the image",
        ),
        ("0 0.5 0.5 1.2 0.2", r"t1.txt:2: width 1.2 is outside \[0, 1\]"),
        ("0 0.5 0.5 -0.005 0.2", r"t1.txt:2: negative width or height"),
        ("0 0.5 0.5 nan 0.2", r"t1.txt:2: non-finite value"),
        ("0 0.1 0.1 0.9 0.1 0.5 0.9", r"t1.txt: mixes box rows \(5 numbers\) and polygon rows"),
    ],
)
def test_label_errors(tmp_path: Path, row: str, message: str) -> None:
    data = write_dataset(tmp_path, {**GOOD, "train/t1": f"1 0.5 0.5 0.5 0.5\n{row}\n"})
    with pytest.raises(DatasetError, match=message):
        check_dataset(data)


def test_four_value_label_line_is_one_problem_not_a_polygon_mix(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, {**GOOD, "train/t1": "1 0.5 0.5 0.5 0.5\n0 0.5 0.5 0.2\n"})
    with pytest.raises(DatasetError, match=r"1 label problem\(s\)") as caught:
        check_dataset(data)
    text = str(caught.value)
    assert "t1.txt:2: expected 5 numbers 'class x_center y_center width height', got 4: '0 0.5 0.5 0.2'" in text
    assert "mixes" not in text and "polygon rows" not in text


def test_label_errors_are_collected_and_capped(tmp_path: Path) -> None:
    bad = "".join("9 0.5 0.5 0.1 0.1\n" for _ in range(12))
    data = write_dataset(tmp_path, {**GOOD, "train/t0": bad, "val/v0": "0 2 0.5 0.1 0.1\n"})
    with pytest.raises(DatasetError, match=r"13 label problem\(s\)") as caught:
        check_dataset(data)
    text = str(caught.value)
    assert "t0.txt:1: class id 9" in text and "t0.txt:10:" in text and "... and 3 more" in text


def test_missing_yaml_and_list_file_entries(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope.yaml: data YAML not found"):
        check_dataset(tmp_path / "nope.yaml")
    with pytest.raises(DatasetError, match=r"data.json: a data YAML must end in .yaml or .yml"):
        check_dataset(tmp_path / "data.json")
    data = write_dataset(tmp_path, GOOD, "train: train.txt\nval: images/val\nnames: [a, b]\n")
    (tmp_path / "train.txt").write_text("./images/train/t0.jpg\n./images/train/gone.jpg\n")
    with pytest.raises(DatasetError, match=r"train.txt:2: image './images/train/gone.jpg' not found"):
        check_dataset(data)


def test_no_labels_at_all_is_an_error(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, {"train/t0": None, "val/v0": "0 0.5 0.5 0.1 0.1\n"})
    with pytest.raises(
        DatasetError, match=r"data.yaml:1: no labelled objects in train; .*labels/train/t0.txt"
    ):
        check_dataset(data)


# ---- images that do not decode, symlinks -------------------------------------------------------------------


def test_unreadable_images_are_named_counted_and_left_out(tmp_path: Path) -> None:
    """A 0-byte image and a JPEG of garbage pass Ultralytics' path checks but it drops them at training time:
    check_dataset opens every image's header, names each bad file with the reason and the fix, and leaves
    them out of the counts (their labels are not counted either)."""
    data = write_dataset(tmp_path, {**GOOD, "train/empty": "0 0.5 0.5 0.2 0.2\n", "train/junk": "1 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "images" / "train" / "empty.jpg").write_bytes(b"")
    (tmp_path / "images" / "train" / "junk.jpg").write_bytes(b"\xff\xd8 this is not a JPEG" * 20)
    info = check_dataset(data)
    assert (info.train_images, info.train_instances) == (2, 3)  # t0 and t1 only
    assert sorted(Path(p).name for p in info.train_dropped) == ["empty.jpg", "junk.jpg"]
    assert info.val_dropped == ()
    warning = next(w for w in info.warnings if "cannot be read" in w)
    assert "2 of 4 train images cannot be read" in warning
    assert "empty.jpg (empty file, 0 bytes)" in warning and "junk.jpg (" in warning
    assert "Ultralytics skips them" in warning and "replace or remove" in warning
    assert info.summary()["data.train_dropped"] == 2 and info.summary()["data.val_dropped"] == 0


def test_a_split_whose_images_all_fail_to_decode_is_an_error(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, GOOD)
    (tmp_path / "images" / "val" / "v0.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"val: none of its 1 images can be read .*v0.jpg \(empty file, 0 bytes\)"):
        check_dataset(data)


def test_tiny_images_are_dropped_like_ultralytics_does(tmp_path: Path) -> None:
    from PIL import Image

    data = write_dataset(tmp_path, {**GOOD, "train/small": "0 0.5 0.5 0.2 0.2\n"})
    Image.new("RGB", (8, 40)).save(tmp_path / "images" / "train" / "small.jpg")
    info = check_dataset(data)
    assert [Path(p).name for p in info.train_dropped] == ["small.jpg"]
    assert any("small.jpg (8x40 px: Ultralytics needs at least 10 px a side)" in w for w in info.warnings)


def test_a_symlink_loop_is_refused_with_the_link_named(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, GOOD)
    link = tmp_path / "images" / "train" / "again"
    link.symlink_to(tmp_path / "images" / "train", target_is_directory=True)
    start = time.perf_counter()
    with pytest.raises(DatasetError, match=r"again is a symlink loop: it points to .*images/train, a folder that "
                       r"contains it.*remove the link"):
        check_dataset(data)
    assert time.perf_counter() - start < 5


def test_images_reached_twice_through_symlinks_count_once(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, {**GOOD, "extra/e0": "0 0.5 0.5 0.1 0.1\n"})
    (tmp_path / "images" / "train" / "more").symlink_to(tmp_path / "images" / "extra", target_is_directory=True)
    (tmp_path / "images" / "train" / "more2").symlink_to(tmp_path / "images" / "extra", target_is_directory=True)
    (tmp_path / "images" / "train" / "t0-copy.jpg").symlink_to(tmp_path / "images" / "train" / "t0.jpg")
    info = check_dataset(data)
    assert info.train_images == 3  # t0, t1, e0: each real file once
    assert any("2 train image paths are duplicates" in w and "resolve to the same file" in w for w in info.warnings)
    written = yaml.safe_load(info.write_yaml(tmp_path / "pinned" / "d.yaml").read_text())
    listed = Path(written["train"]).read_text().split()  # what Ultralytics gets: each file once, t0 by its own path
    assert Path(written["train"]).name == "d.train.txt" and len(listed) == 3
    assert str(tmp_path / "images" / "train" / "t0.jpg") in listed
    assert written["val"] == str(tmp_path.resolve() / "images" / "val")  # a clean split stays a folder


# ---- real data, docs and import cost ----------------------------------------------------------------------


def test_real_coco128() -> None:
    if not COCO128.is_file():
        pytest.skip(f"real COCO128 not found at {COCO128} (place ../shared/datasets beside the repo)")
    start = time.perf_counter()
    info = check_dataset(COCO128)
    assert time.perf_counter() - start < 1.0
    assert (info.nc, info.train_images, info.val_images) == (80, 128, 128)
    assert (info.train_instances, info.val_instances) == (929, 929)  # Ultralytics' own count
    assert info.val_is_train and info.names[0] == "person"
    assert info.root == (COCO128.parent / "coco128").resolve()
    assert any("2 of 128 train images have no label file" in w for w in info.warnings)


def test_repo_coco128_yaml_matches_ultralytics_form() -> None:
    content = yaml.safe_load((REPO / "datasets" / "coco128.yaml").read_text())
    assert "download" not in content
    assert (content["path"], content["train"], content["val"]) == (
        "coco128",
        "images/train2017",
        "images/train2017",
    )
    assert len(content["names"]) == 80 and content["names"][79] == "toothbrush"


@pytest.mark.parametrize("module", [detune.datasets, detune._shapes])
def test_docstring_examples(module: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(module, raise_on_error=False)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


def test_import_stays_light() -> None:
    code = (
        "import sys, detune.datasets; heavy = {'numpy', 'PIL', 'torch', 'ultralytics', 'yaml'} & "
        "set(sys.modules); print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_make_shapes_defaults_equal_the_repo_spec() -> None:
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(make_shapes).parameters.items() if k != "root"}
    assert shapes_spec() == detune.datasets.ShapesSpec(**defaults) == detune.datasets.ShapesSpec()
