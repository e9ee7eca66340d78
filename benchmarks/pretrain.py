"""Benchmark scaffolding: a pretrained yolo11n checkpoint, made here once (no weights can be downloaded).

yolo11n is built from ``yolo11n.yaml`` and trained with ``detune.train`` on the generated SOURCE dataset
(15 shape classes, see ``_targets.py``). The checkpoint is cached by a hash of its recipe (dataset spec
and generator version, train settings, torch and Ultralytics versions) under ``$DETUNE_BENCH_CACHE``
(default ``benchmarks/.cache``, git-ignored), with a record of how long the pretraining took and the
checkpoint's own mAP50-95 on the source val and test splits. Benchmarks that fine-tune call
``pretrained_checkpoint(gpu, quick)``; the first call pays for the pretraining, the next ones reuse it.

``--check`` then fine-tunes the checkpoint and a model built from scratch on the generated TARGET for the
same few epochs (the settings of ``check_settings``) and records both curves: the point of pretraining is
that early epochs carry signal, and this shows whether they do.

    .venv/bin/python benchmarks/pretrain.py              # CPU recipe (~20 min on 2 idle cores, once)
    .venv/bin/python benchmarks/pretrain.py --check      # plus fine-tuning from it vs from scratch
    .venv/bin/python benchmarks/pretrain.py --quick      # smoke: a few images, 1 epoch, imgsz 32
    .venv/bin/python benchmarks/pretrain.py --gpu        # GPU node recipe
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import _common
import _targets

MODEL = "yolo11n.yaml"
CHECKPOINT = "yolo11n-source.pt"
RECORD = "record.json"

# Train settings per mode (detune.train keyword arguments). nbs = batch: one optimizer step per batch.
# mosaic off: at 64 px it would shrink the objects to a few pixels; Ultralytics' other default
# augmentations (HSV, flips, translate, scale) stay on.
_COMMON = {"optimizer": "AdamW", "lr0": 0.001, "momentum": 0.9, "lrf": 0.05, "cos_lr": True, "warmup_epochs": 1.0,
           "mosaic": 0.0, "close_mosaic": 0, "seed": 0, "plots": False}
TRAIN = {
    "quick": {**_COMMON, "epochs": 1, "imgsz": 32, "batch": 8, "nbs": 8, "warmup_epochs": 0.0, "device": "cpu"},
    "cpu": {**_COMMON, "epochs": 30, "imgsz": 64, "batch": 16, "nbs": 16, "device": "cpu"},
    "gpu": {**_COMMON, "epochs": 60, "imgsz": 256, "batch": 64, "nbs": 64, "device": "0", "workers": 8},
}


def recipe(gpu: bool = False, quick: bool = False) -> dict[str, Any]:
    """Everything that decides the checkpoint of a mode: source dataset spec and train settings."""
    m = _targets.mode(gpu, quick)
    return {"mode": m, "model": MODEL, "source": asdict(_targets.SOURCE[m]), "train": dict(TRAIN[m])}


def recipe_key(r: dict[str, Any]) -> str:
    """Hash of the recipe plus what else changes the weights: generator, torch and Ultralytics versions."""
    versions = {name: metadata.version(name) for name in ("torch", "ultralytics")}
    blob = json.dumps({"recipe": {k: v for k, v in r.items() if k != "mode"}, "versions": versions,
                       "generator": _targets.GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir(r: dict[str, Any]) -> Path:
    return _targets.CACHE / "pretrain" / f"yolo11n-source-{r['mode']}-{recipe_key(r)}"


def pretrained_checkpoint(gpu: bool = False, quick: bool = False) -> Path:
    """The pretrained yolo11n checkpoint of a mode (built on first use, then cached): a local .pt path
    to pass as ``model=`` to ``detune.train``, ``detune.tune`` studies or ``YOLO``."""
    return checkpoint_for(recipe(gpu, quick))


def record(gpu: bool = False, quick: bool = False) -> dict[str, Any] | None:
    """The pretraining record of a mode (duration, mAP, per-epoch history), or None before it is built."""
    path = cache_dir(recipe(gpu, quick)) / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def checkpoint_for(r: dict[str, Any], *, rebuild: bool = False) -> Path:
    """The checkpoint of any recipe, built under a lock so parallel benchmark processes pretrain once."""
    folder = cache_dir(r)
    ckpt = folder / CHECKPOINT
    with _lock(folder.with_suffix(".lock")):
        if rebuild or not (ckpt.is_file() and (folder / RECORD).is_file()):
            shutil.rmtree(folder, ignore_errors=True)
            build(r, folder)
    return ckpt


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(r: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Pretrain, score the best epoch on the source test split, write the checkpoint and its record."""
    import detune

    made = time.monotonic()
    data = _targets.make_scenes(_targets.SceneSpec(**r["source"]))
    made = time.monotonic() - made
    print(f"pretraining {r['model']} on {data.parent} ({r['train']['epochs']} epochs) into {folder}", flush=True)
    start, cpu_start = time.monotonic(), _cpu_seconds()
    result = detune.train(model=r["model"], data=str(data), project=str(folder), name="run", exist_ok=True,
                          tracking=False, **r["train"])
    seconds, cpu = time.monotonic() - start, _cpu_seconds() - cpu_start
    if result.status != "completed" or "best" not in result.weights:
        raise RuntimeError(f"pretraining {result.status}: {result.reason}; partial results in {result.save_dir}")
    tmp = folder / f"tmp-{CHECKPOINT}"  # Ultralytics loads only *.pt
    shutil.copyfile(result.weights["best"], tmp)
    rec = {"recipe": r, "key": recipe_key(r), "data": str(data), "checkpoint": str(folder / CHECKPOINT),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": _common.machine_facts(), "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
           "data_seconds": round(made, 1),
           "epoch_seconds": epoch_seconds(result.save_dir), "best_epoch": result.best_epoch,
           "val": {k: result.best.get(k) for k in ("metrics/mAP50-95", "metrics/mAP50")},
           "test": score(tmp, data, "test", r["train"], folder), "history": [
               {k: h.get(k) for k in ("epoch", "metrics/mAP50-95", "metrics/mAP50", "val/box_loss", "val/cls_loss")}
               for h in result.history]}
    tmp.replace(folder / CHECKPOINT)
    (folder / f"tmp-{RECORD}").write_text(json.dumps(rec, indent=1, default=str))
    (folder / f"tmp-{RECORD}").replace(folder / RECORD)  # the record last: both files present = finished
    return rec


def _cpu_seconds() -> float:
    """CPU time of this process (all threads): on a shared machine a steadier cost than wall time."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def epoch_seconds(save_dir: Path | None) -> list[float]:
    """Wall seconds of each epoch (training and validation), from Ultralytics' results.csv."""
    import csv

    path = Path(save_dir or "") / "results.csv"
    if not path.is_file():
        return []
    times = [float(row["time"]) for row in csv.DictReader(path.open()) if row.get("time")]
    return [round(b - a, 2) for a, b in zip([0.0, *times], times, strict=False)]


def score(weights: Path, data: Path, split: str, train: dict[str, Any], folder: Path) -> dict[str, float]:
    """mAP50-95 and mAP50 of ``weights`` on one split, through Ultralytics' own validator."""
    from ultralytics import YOLO  # detune.train has already set the offline, quiet environment

    metrics = YOLO(str(weights)).val(data=str(data), split=split, imgsz=train["imgsz"], batch=train["batch"],
                                     device=train["device"], plots=False, verbose=False, project=str(folder),
                                     name=f"val-{split}", exist_ok=True)
    return {"metrics/mAP50-95": float(metrics.box.map), "metrics/mAP50": float(metrics.box.map50)}


# ---- --check: early epochs from the checkpoint against from scratch --------------------------------------

def check_settings(gpu: bool, quick: bool) -> dict[str, Any]:
    """The fine-tuning both sides of ``--check`` run: Ultralytics' SGD defaults, nbs = batch, seed 0."""
    spec = _targets.TARGET[_targets.mode(gpu, quick)]
    return {"epochs": 1 if quick else 2, "imgsz": spec.imgsz, "batch": 8 if quick else 16,
            "nbs": 8 if quick else 16, "optimizer": "SGD", "lr0": 0.01, "warmup_epochs": 0.0 if quick else 1.0,
            "mosaic": 0.0, "close_mosaic": 0, "seed": 0, "plots": False,
            "device": "0" if gpu else "cpu", "tracking": False}


def check(ckpt: Path, gpu: bool, quick: bool, workdir: Path, *, threads: int | None = None) -> dict[str, Any]:
    """Fine-tune ``ckpt`` and a model built from scratch on the generated target; both curves."""
    import detune

    data = _targets.make_scenes(_targets.TARGET[_targets.mode(gpu, quick)])
    s = {**check_settings(gpu, quick), **({"threads": threads} if threads else {})}
    out: dict[str, Any] = {"settings": s, "data": str(data)}
    for side, model in (("pretrained", str(ckpt)), ("scratch", MODEL)):
        start = time.monotonic()
        result = detune.train(model=model, data=str(data), project=str(workdir), name=side, exist_ok=True, **s)
        out[side] = {"status": result.status, "seconds": round(time.monotonic() - start, 1),
                     "mAP50-95": [round(h["metrics/mAP50-95"], 4) for h in result.history],
                     "mAP50": [round(h["metrics/mAP50"], 4) for h in result.history],
                     "val_loss": [round(sum(h[f"val/{k}_loss"] for k in ("box", "cls", "dfl")), 3)
                                  for h in result.history]}
        print(f"{side}: per epoch mAP50-95 {out[side]['mAP50-95']}, val loss {out[side]['val_loss']}", flush=True)
    return out


def markdown(rec: dict[str, Any], cached: bool, checked: dict[str, Any] | None) -> str:
    r, src = rec["recipe"], rec["recipe"]["source"]
    t = r["train"]
    per_epoch = sorted(rec["epoch_seconds"])[len(rec["epoch_seconds"]) // 2] if rec["epoch_seconds"] else float("nan")
    cpu = f"; {rec['cpu_seconds'] / 60:.1f} min of CPU" if "cpu_seconds" in rec else ""
    lines = [
        "## Pretrained checkpoint (for the fine-tuning benchmarks)", "",
        f"yolo11n from `{r['model']}`, trained with `detune.train` on the generated source dataset "
        f"({len(_targets.class_names('source'))} shape classes; {src['n_train']}/{src['n_val']}/{src['n_test']} "
        f"train/val/test images at {src['imgsz']} px): {t['epochs']} epoch(s), {t['optimizer']} lr0 {t['lr0']:g}, "
        f"batch {t['batch']} (nbs {t['nbs']}), imgsz {t['imgsz']}. Recipe hash `{rec['key']}`"
        f"{' (reused from the cache; built ' + rec['date'] + ')' if cached else ''}.", "",
        f"- Pretraining took **{rec['seconds'] / 60:.1f} min** ({per_epoch:.1f} s per epoch, median, validation "
        f"included{cpu}) on "
        f"{rec['machine']['cpu']}, {rec['machine']['cores']} cores ({t.get('threads') or 'all'} torch threads; "
        f"load average {rec['machine']['load_average'][0]} when it ended), GPUs: "
        f"{', '.join(rec['machine'].get('gpus') or []) or 'none'}.",
        f"- Its own mAP50-95 (best epoch, {rec['best_epoch']}): **{rec['val']['metrics/mAP50-95']:.3f}** on the "
        f"source val split, {rec['test']['metrics/mAP50-95']:.3f} on the source test split "
        f"(mAP50 {rec['val']['metrics/mAP50']:.3f} / {rec['test']['metrics/mAP50']:.3f}).",
    ]
    if checked:
        s = checked["settings"]
        lines.append(f"- Fine-tuning on the generated target ({s['epochs']} epoch(s), SGD lr0 {s['lr0']:g}, batch "
                     f"{s['batch']}, imgsz {s['imgsz']}), mAP50-95 on its val split per epoch: from this checkpoint "
                     f"{checked['pretrained']['mAP50-95']}, from scratch {checked['scratch']['mAP50-95']} "
                     f"(validation loss, box + cls + dfl: {checked['pretrained']['val_loss']} against "
                     f"{checked['scratch']['val_loss']}).")
    return "\n".join(lines)


def main() -> int:
    p = _common.parser(__doc__)
    p.add_argument("--check", action="store_true", help="fine-tune from the checkpoint and from scratch on the target")
    p.add_argument("--rebuild", action="store_true", help="pretrain again even if the cache holds this recipe")
    p.add_argument("--probe", nargs=3, type=int, metavar=("N_TRAIN", "N_VAL", "EPOCHS"),
                   help="a short pretraining (its own cache entry; writes pretrain_probe.*, not pretrain.*)")
    p.add_argument("--threads", type=int, help="torch CPU threads for every training here (default: all cores); "
                   "part of the recipe, so pretrained_checkpoint() reuses only a checkpoint built without it")
    args = p.parse_args()
    head = _common.start("pretrain_probe" if args.probe else "pretrain")
    r = recipe(args.gpu, args.quick)
    if args.probe:
        n_train, n_val, epochs = args.probe
        r["source"].update(n_train=n_train, n_val=n_val, n_test=n_val)
        r["train"]["epochs"] = epochs
        r["mode"] = f"{r['mode']}-probe{n_train}x{epochs}"
    if args.threads:
        r["train"]["threads"] = args.threads
    cached = not args.rebuild and (cache_dir(r) / RECORD).is_file()
    ckpt = checkpoint_for(r, rebuild=args.rebuild)
    rec = json.loads((ckpt.parent / RECORD).read_text())
    checked = None
    if args.check:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="detune-pretrain-check-") as tmp:
            checked = check(ckpt, args.gpu, args.quick, Path(tmp), threads=args.threads)
    _common.save(args.out, head, {"cached": cached, **rec, "check": checked}, markdown(rec, cached, checked))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
