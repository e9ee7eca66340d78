"""The ``detune`` command line: parse, load config, call the library, turn errors into one message."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from detune.errors import DetuneError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Learning-rate control and tuning for Ultralytics YOLO, logged to MLflow.")
data_app = typer.Typer(no_args_is_help=True, help="Generate or check datasets.")
app.add_typer(data_app, name="data")

ConfigArg = Annotated[Optional[str], typer.Argument(help="YAML config; key=value overrides may follow it.")]
Overrides = Annotated[Optional[list[str]], typer.Argument(help="Ultralytics-style key=value overrides.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Let Ultralytics and Ray print their logs.")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _guard(fn: Callable[[], Any], debug: bool) -> Any:
    """Run ``fn``; a detune error (or bad value) becomes one message and exit code 1, no traceback."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return fn()
        except (DetuneError, ValueError, FileNotFoundError) as e:
            if debug:
                raise
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted")
        finally:
            for w in caught:
                if w.category.__name__ == "DetuneWarning":
                    typer.echo(f"warning: {w.message}", err=True)


def _split(config: str | None, overrides: list[str] | None) -> tuple[str | None, dict[str, Any]]:
    from detune.config import parse_overrides

    items = list(overrides or [])
    if config is not None and "=" in config and not Path(config).exists():
        items.insert(0, config)
        config = None
    return config, parse_overrides(items)


def _emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    typer.echo(json.dumps(data, default=str, indent=2) if as_json else text)


@app.command()
def train(config: ConfigArg = None, overrides: Overrides = None, as_json: JsonOpt = False,
          verbose: VerboseOpt = False, debug: DebugOpt = False) -> None:
    """Train a YOLO model under detune's LR control.

    [bold]Examples[/bold]

      detune train configs/train.yaml lr0=0.02 scheduler=onecycle epochs=30

      detune train data=../shared/datasets/coco128.yaml imgsz=320 scheduler=cosine_restarts
    """
    from detune.training import train as run_train

    path, values = _split(config, overrides)
    if verbose:
        values["verbose"] = True
    result = _guard(lambda: run_train(path, **values), debug)
    best = result.best
    lines = [f"status: {result.status}" + (f" ({result.reason})" if result.reason else ""),
             f"epochs: {len(result.history)}  best epoch: {result.best_epoch}",
             f"mAP50: {best.get('metrics/mAP50', float('nan')):.4f}  "
             f"mAP50-95: {best.get('metrics/mAP50-95', float('nan')):.4f}",
             f"results: {result.save_dir}"]
    if result.run_id:
        lines.append(f"MLflow run: {result.run_id}")
    _emit(as_json, {"status": result.status, "reason": result.reason, "best_epoch": result.best_epoch,
                    "best": best, "save_dir": str(result.save_dir), "run_id": result.run_id}, "\n".join(lines))
    if result.status == "failed":
        raise typer.Exit(1)


def run_tune(config: str, overrides: list[str], *, resume: bool, address: str | None, debug: bool,
             as_json: bool = False) -> int:
    """Shared by ``detune tune`` and ``scripts/tune.py``."""
    from detune.config import parse_overrides
    from detune.tuning import tune as run_study

    try:
        values = _guard(lambda: parse_overrides(overrides), debug)
        result = _guard(lambda: run_study(config, resume=resume, address=address, **values), debug)
    except typer.Exit as e:
        return int(e.exit_code)
    counts = {s: sum(t["status"] == s for t in result.trials) for s in ("completed", "stopped", "diverged",
                                                                         "failed")}
    lines = [f"study {result.name}: {len(result.trials)} trials "
             + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    if result.best_config is not None:
        lines.append(f"best {result.metric}: {result.best_metrics.get(result.metric, float('nan')):.4f} with "
                     + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in result.best_params.items()))
        lines.append(f"best config: {result.best_yaml}")
    else:
        lines.append("no trial produced a usable result; see trials.csv")
    lines.append(f"trials: {result.trials_csv}")
    if result.parent_run_id:
        lines.append("MLflow: mlflow ui --backend-store-uri sqlite:///mlflow.db  (then open http://127.0.0.1:5000)")
    typer.echo(json.dumps({"best_config": result.best_config, "best_metrics": result.best_metrics,
                           "trials": result.trials, "parent_run_id": result.parent_run_id}, default=str)
               if as_json else "\n".join(lines))
    return 0


@app.command()
def tune(config: Annotated[str, typer.Argument(help="Study YAML, e.g. configs/quick.yaml.")],
         overrides: Overrides = None,
         address: Annotated[Optional[str], typer.Option(help="Join a Ray cluster: auto or ray://host:10001.")] = None,
         resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted study.")] = False,
         as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Run a Ray Tune study over LR settings (same as scripts/tune.py).

    [bold]Examples[/bold]

      detune tune configs/quick.yaml

      detune tune configs/lr_search.yaml --address auto num_samples=32 train.epochs=50
    """
    code = run_tune(config, list(overrides or []), resume=resume, address=address, debug=debug, as_json=as_json)
    raise typer.Exit(code)


@data_app.command("make-shapes")
def make_shapes(root: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
                n_train: int = 128, n_val: int = 32, imgsz: int = 128, seed: int = 0,
                as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Generate the learnable shapes dataset (COCO128 layout).

    [bold]Example[/bold]

      detune data make-shapes datasets/shapes --n-train 128 --imgsz 128
    """
    from detune.datasets import make_shapes as make

    path = _guard(lambda: make(root, n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed), debug)
    _emit(as_json, {"data": str(path)}, f"wrote {path}")


@data_app.command("check")
def check(data: Annotated[str, typer.Argument(help="An Ultralytics data YAML.")], as_json: JsonOpt = False,
          debug: DebugOpt = False) -> None:
    """Validate a data YAML: paths, names, every label line.

    [bold]Example[/bold]

      detune data check ../shared/datasets/coco128.yaml
    """
    from detune.datasets import check_dataset

    info = _guard(lambda: check_dataset(data), debug)
    summary = info.summary()
    text = "\n".join([*(f"{k}: {v}" for k, v in summary.items()), *(f"warning: {w}" for w in info.warnings)])
    _emit(as_json, {**summary, "warnings": list(info.warnings)}, text)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
