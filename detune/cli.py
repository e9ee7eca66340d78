"""The ``detune`` command line: parse, load config, call the library, turn errors into one message.

Exit codes: 0 done, 1 a detune error (one message, no traceback unless --debug), 2 a usage error,
130 interrupted (a study stays resumable), 143 terminated by SIGTERM (the same clean stop as Ctrl-C).
Results go to stdout; progress, warnings and errors to stderr; what Ultralytics, Ray and MLflow print
goes to a ``detune.log`` unless --verbose.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from detune.errors import ConfigError, DetuneError

__all__ = ["BROKEN_PIPE", "INTERRUPTED", "TERMINATED", "app", "data_app", "main", "run_tune", "sigterm_as_ctrl_c"]

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  pretty_exceptions_show_locals=False,
                  help="Learning-rate control and tuning for Ultralytics YOLO, logged to MLflow.")
data_app = typer.Typer(no_args_is_help=True, help="Generate or check datasets.")
app.add_typer(data_app, name="data")

ConfigArg = Annotated[str | None, typer.Argument(help="YAML config; key=value overrides may follow it.",
                                                    show_default=False)]
Overrides = Annotated[list[str] | None, typer.Argument(help="Ultralytics-style key=value overrides.",
                                                          show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress: only the final summary.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Let Ultralytics and Ray print their own "
                                          "logs (default: into detune.log).")]
INTERRUPTED = 130
BROKEN_PIPE = 141  # 128 + SIGPIPE: stdout's reader is gone
TERMINATED = 143  # 128 + SIGTERM, what shells and `timeout` report for a process SIGTERM ended


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``kill``, a scheduler) raised as a KeyboardInterrupt, so it takes Ctrl-C's path:
    finally blocks run, the Ray that a study started is shut down with its workers, logs are moved."""


_SIGTERM = {"received": False}  # libraries may re-raise a KeyboardInterrupt of their own: remember the signal


def _on_sigterm(signum: int, frame: Any) -> None:
    _SIGTERM["received"] = True
    raise _Terminated


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """While inside, SIGTERM raises ``_Terminated`` (a KeyboardInterrupt); the previous handler is put back
    after. Every command gets it (the app callback)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _SIGTERM["received"] = False
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}" if code == 1 else message, err=True)
    raise typer.Exit(code)


def _guard(fn: Callable[[], Any], debug: bool, *, interrupted: str = "interrupted") -> Any:
    """Run ``fn``; a detune error (or bad value) becomes one message and exit code 1, no traceback.

    DetuneWarnings are shown as ``warning:`` lines; other warnings go where stderr goes (the log file while
    the libraries' output is captured).
    """
    from detune.config import DetuneWarning

    notes: list[str] = []

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if issubclass(category, DetuneWarning):
            notes.append(str(message))
        else:
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.simplefilter("always", DetuneWarning)
        warnings.showwarning = show
        try:
            return fn()
        except typer.Exit:
            raise
        except KeyboardInterrupt as e:
            if debug:
                raise
            if isinstance(e, _Terminated) or _SIGTERM["received"]:
                _fail(interrupted.replace("interrupted", "terminated (SIGTERM)", 1), TERMINATED)
            _fail(interrupted, INTERRUPTED)
        except (DetuneError, ValueError, FileNotFoundError) as e:
            if debug:
                raise
            _fail(str(e))
        except Exception as e:  # noqa: BLE001 - a bug or an environment problem: still one line
            if debug:
                raise
            _fail(f"unexpected {type(e).__name__}: {e} (run again with --debug for the traceback)")
        finally:
            for note in dict.fromkeys(notes):
                typer.echo(f"warning: {note}", err=True)


def _split(config: str | None, overrides: list[str] | None) -> tuple[str | None, dict[str, Any]]:
    from detune.config import parse_overrides

    items = list(overrides or [])
    if config is not None and "=" in config and not Path(config).exists():
        items.insert(0, config)
        config = None
    return config, parse_overrides(items)


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null, paths strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def _emit(term: Any, as_json: bool, data: dict[str, Any], lines: list[str]) -> None:
    """Print the result on stdout. A reader that went away (``detune train ... | head -1``) ends the command
    quietly with 141 (128 + SIGPIPE), the code a shell shows for ``cat`` or ``seq`` in that pipe; what was
    computed is on disk already."""
    try:
        term.echo(json.dumps(_clean(data), indent=2) if as_json else "\n".join(lines))
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):  # no error again when Python flushes stdout at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(BROKEN_PIPE) from None


def _fit_of(ctx: typer.Context) -> Any:
    """The trainer a caller injected as ``obj={"fit": ...}`` (tests: ``CliRunner().invoke(app, args,
    obj={"fit": detune._fake.fit})``; see ``detune.adapters.base.Fit``); None: the Ultralytics adapter."""
    obj = ctx.find_root().obj
    return obj.get("fit") if isinstance(obj, dict) else None


def _terminal(quiet: bool, verbose: bool = False) -> Any:
    from detune._progress import Terminal

    return Terminal(quiet=quiet, verbose=verbose)


def _version(value: bool) -> None:
    if value:
        from detune import __version__

        typer.echo(f"detune {__version__}")
        raise typer.Exit()


@app.callback()
def _main(ctx: typer.Context,
          version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Learning-rate control and tuning for Ultralytics YOLO, logged to MLflow."""
    ctx.with_resource(sigterm_as_ctrl_c())  # every command: SIGTERM stops like Ctrl-C


# ---------------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------------
@app.command()
def train(ctx: typer.Context, config: ConfigArg = None, overrides: Overrides = None, as_json: JsonOpt = False,
          quiet: QuietOpt = False, verbose: VerboseOpt = False, debug: DebugOpt = False) -> None:
    """Train a YOLO model under detune's LR control, with epoch/step progress.

    [bold]Examples[/bold]

      detune train configs/train.yaml lr0=0.02 scheduler=onecycle epochs=30

      detune train data=../shared/datasets/coco128.yaml imgsz=320 scheduler=cosine_restarts --json
    """
    from detune import training
    from detune._paths import first_missing, remove_empty, writable_dir
    from detune._progress import TrainDisplay, capture, move_log, train_summary
    from detune.config import load_config

    term = _terminal(quiet, verbose)
    path, values = _guard(lambda: _split(config, overrides), debug)
    if verbose:
        values["verbose"] = True
    cfg = _guard(lambda: load_config(path, **values), debug)
    _guard(lambda: writable_dir(cfg.project, field="project"), debug)  # the log below is opened in project
    display = TrainDisplay(term, epochs=cfg.epochs)
    temp_log = Path(cfg.project) / f".detune-{os.getpid()}.log"
    created = first_missing(Path(cfg.project))  # removed again when a check refuses the run before compute
    state: dict[str, Any] = {}

    def run() -> Any:
        try:
            with capture(temp_log, verbose=verbose), display, _warn_now(term):
                state["result"] = training.run(cfg, observers=[display], fit=_fit_of(ctx))
            return state["result"]
        except DetuneError:
            state["refused"] = True
            raise
        finally:
            result = state.get("result")
            folder = result.save_dir if result is not None else display.save_dir
            if folder is None and state.get("refused"):  # nothing ran: leave nothing behind
                remove_empty(temp_log, created)
            elif not verbose:
                state["log"] = move_log(temp_log, folder or Path(cfg.project))

    result = _guard(run, debug)
    try:
        _emit(term, as_json, *train_summary(result, state["log"]))
    finally:  # a failed training says so on stderr even when stdout is gone
        if result.status == "failed":
            _fail(f"training failed: {result.reason}; partial results in {result.save_dir}")


@contextlib.contextmanager
def _warn_now(term: Any) -> Any:
    """Show DetuneWarnings raised meanwhile at once on the terminal (not the log), e.g. before the first epoch
    of a training instead of after its last; other warnings go where they went."""
    from detune.config import DetuneWarning

    previous = warnings.showwarning

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, DetuneWarning):
            term.console.print(f"warning: {message}", markup=False, highlight=False)
        else:
            previous(message, category, *args, **kwargs)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


# ---------------------------------------------------------------------------------------------------------
# tune
# ---------------------------------------------------------------------------------------------------------
class _SigintWatch:
    """Tells whether Ray's SIGINT handler fired. Ray installs its own in ``tune.run`` (first Ctrl-C: save the
    experiment state and return normally) and puts the previous handler back when it fires; with ours as the
    previous one, finding ours again after Ray's was seen means the study was interrupted. A second Ctrl-C
    reaches ours: KeyboardInterrupt, which ``_guard`` turns into the resume hint."""

    def __init__(self) -> None:
        self.installed = self.ray_seen = False
        self.previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def __enter__(self) -> _SigintWatch:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
            self.installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.previous)

    def check(self) -> None:
        """Called from the progress callback, i.e. inside ``tune.run``."""
        if self.installed and signal.getsignal(signal.SIGINT) != self._handler:
            self.ray_seen = True

    @property
    def fired(self) -> bool:
        return self.installed and self.ray_seen and signal.getsignal(signal.SIGINT) == self._handler


def run_tune(config: str, overrides: list[str], *, resume: bool, address: str | None, debug: bool,
             as_json: bool = False, quiet: bool = False, verbose: bool = False, fit: Any = None) -> int:
    """``detune tune``: run (or resume) a study with live progress (the library writes its report), print the
    summary; returns the exit code."""
    from detune._progress import TuneDisplay, capture, tune_summary
    from detune.study import load_study

    term = _terminal(quiet, verbose)
    resume_cmd = shlex.join(["detune", "tune", config, *overrides, "--resume"])  # pasted into a shell
    try:
        values = _guard(lambda: _parse(overrides, verbose), debug)
        study = _guard(lambda: load_study(config, **values), debug)
        display = TuneDisplay(term, name=study.name, metric=study.metric, mode=study.mode,
                              epochs=study.train.epochs, total_trials=study.trial_count,
                              params=list(study.search_space))
        log = study.output_dir / "detune.log"
        started = time.time()
        with _SigintWatch() as watch:
            def progress(rows: list[dict[str, Any]]) -> None:
                watch.check()
                display(rows)

            def run() -> Any:
                from detune.study_files import open_study
                from detune.tuning import check_study, tune

                check_study(study)
                # folders checked and the study locked before detune.log is opened in output_dir
                with open_study(study, resume=resume), capture(log, verbose=verbose, ultralytics_log=False), \
                        display:
                    return tune(study, resume=resume, address=address, progress=progress, fit=fit)

            hint = f"interrupted: the study in {study.output_dir} can be resumed with: {resume_cmd}"
            result = _guard(run, debug, interrupted=hint)
            interrupted = watch.fired
        report = result.report  # written once, by detune.tuning.tune
    except typer.Exit as e:
        return int(e.exit_code)
    try:
        _emit(term, as_json, *tune_summary(result, study, report=report, log=None if verbose else log,
                                           elapsed=time.time() - started, interrupted=interrupted))
    except typer.Exit as e:  # stdout closed by its reader: a code, never an exception for callers
        return int(e.exit_code)
    if interrupted:
        typer.echo(hint, err=True)
        return INTERRUPTED
    return 0


def _parse(overrides: list[str], verbose: bool) -> dict[str, Any]:
    """Study overrides as ``load_study`` takes them (``detune.study.parse_study_overrides``), plus --verbose."""
    from detune.study import parse_study_overrides

    values = parse_study_overrides(overrides)
    if verbose:
        values["train.verbose"] = True
    return values


@app.command()
def tune(ctx: typer.Context, config: Annotated[str, typer.Argument(help="Study YAML, e.g. configs/quick.yaml.")],
         overrides: Overrides = None,
         address: Annotated[str | None, typer.Option(help="Join a Ray cluster: auto or "
                                                     "ray://host:10001.")] = None,
         resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted study.")] = False,
         as_json: JsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
         debug: DebugOpt = False) -> None:
    """Run a Ray Tune study over LR settings with a live trial table and write its report.

    Writes best.yaml, trials.csv, report/ and detune.log into the study's output_dir.

    Ctrl-C stops the study and keeps it resumable: run the same command with --resume.

    [bold]Examples[/bold]

      detune tune configs/quick.yaml

      detune tune configs/lr_search.yaml --address auto num_samples=32 train.epochs=50

      detune tune configs/quick.yaml --resume
    """
    code = run_tune(config, list(overrides or []), resume=resume, address=address, debug=debug,
                    as_json=as_json, quiet=quiet, verbose=verbose, fit=_fit_of(ctx))
    raise typer.Exit(code)



# ---------------------------------------------------------------------------------------------------------
# lr-find
# ---------------------------------------------------------------------------------------------------------
@app.command("lr-find")
def lr_find(ctx: typer.Context, config: ConfigArg = None, overrides: Overrides = None,
            out: Annotated[Path | None, typer.Option("--out", "-o", help="Plot PNG (default: "
                                                     "<project>/lr_find.png).")] = None,
            method: Annotated[str, typer.Option(help="valley (default), steepest or min_div_10.")] = "valley",
            as_json: JsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
            debug: DebugOpt = False) -> None:
    """LR range test: suggest lr0 from a short throw-away training with a rising lr, and plot loss vs lr.

    Overrides set the training (model, data, optimizer, batch, imgsz, ...) and the sweep:

    min_lr, max_lr, num_iters (default 100, batches cycled as needed), mode, smoothing, stop_factor, augment.

    A curve with no signal (its smoothed loss never falls clearly below the noise of its start) or too few
    points gives no suggestion: the reason is printed and the exit code is 1.

    [bold]Examples[/bold]

      detune lr-find configs/train.yaml num_iters=100

      detune lr-find data=shapes imgsz=64 batch=8 min_lr=1e-5 max_lr=1 --out lr.png
    """
    from detune._lr_suggest import METHODS
    from detune._paths import first_missing, remove_empty, writable_dir, writable_file
    from detune._progress import FinderDisplay, capture, finder_summary

    term = _terminal(quiet, verbose)
    if method not in METHODS:
        _fail(f"--method ({method!r}) must be one of {', '.join(METHODS)}")
    cfg, settings, rerun = _guard(lambda: _finder_config(config, overrides, verbose), debug)
    plot = out or Path(cfg.project) / "lr_find.png"
    _guard(lambda: writable_file(out, field="--out", kind="a .png file") if out else writable_dir(
        cfg.project, field="project"), debug)  # the plot and detune.log go there: checked before the sweep
    display = FinderDisplay(term, num_iters=settings.num_iters)
    log = plot.parent / "detune.log"
    created = first_missing(plot.parent)  # removed again when a check refuses the sweep before compute

    def run() -> Any:
        from detune.lr_finder import range_test

        try:
            with capture(log, verbose=verbose), display:
                return range_test(cfg, settings, fit=_fit_of(ctx), observers=[display])
        except DetuneError:
            if math.isnan(display.lr):  # no step swept: nothing to keep
                remove_empty(log, created)
            raise

    result = _guard(run, debug)
    path = _guard(lambda: result.plot(plot, method=method), debug)
    _emit(term, as_json, *finder_summary(result, method, path, rerun=rerun, log=None if verbose else log))
    found = result.suggest(method)
    if found.lr is None:
        _fail(f"the LR finder gave no {method} suggestion: {found.reason}")


def _finder_config(config: str | None, overrides: list[str] | None, verbose: bool) -> tuple[Any, Any, str]:
    """The train config, the sweep settings and the ``detune train ...`` command to use the suggestion."""
    import dataclasses

    from detune._lr_suggest import FinderSettings
    from detune.config import load_config

    path, values = _split(config, overrides)
    keys = [f.name for f in dataclasses.fields(FinderSettings)]
    settings = FinderSettings(**{k: values.pop(k) for k in keys if k in values})
    args = [a for a in ([config] if config else []) + list(overrides or [])
            if a.partition("=")[0] not in (*keys, "lr0")]
    if verbose:
        values["verbose"] = True
    return load_config(path, **values), settings, " ".join(["detune train", *args])


# ---------------------------------------------------------------------------------------------------------
# schedule
# ---------------------------------------------------------------------------------------------------------
@app.command()
def schedule(config: ConfigArg = None, overrides: Overrides = None,
             out: Annotated[Path, typer.Option("--out", "-o", help="Plot PNG.")] = Path("lr_schedule.png"),
             steps_per_epoch: Annotated[float | None, typer.Option(
                 help="Optimizer steps per epoch; default: from the dataset size, batch and nbs.")] = None,
             log_y: Annotated[bool, typer.Option("--log-y", help="Log-scale lr axis.")] = False,
             as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Plot the LR plan of a train config to a PNG and print its key points (no training).

    The plot shows every param group's lr and the momentum at every optimizer step.

    [bold]Examples[/bold]

      detune schedule configs/train.yaml scheduler=onecycle epochs=30 --out onecycle.png

      detune schedule scheduler=cosine_restarts scheduler_params.period=5 epochs=20 --steps-per-epoch 8
    """
    from detune._paths import writable_file
    from detune._progress import schedule_summary
    from detune.config import load_config, lr_plan
    from detune.schedules import key_points, peak_lr, plot, plot_groups

    term = _terminal(True)
    path, values = _guard(lambda: _split(config, overrides), debug)
    cfg = _guard(lambda: load_config(path, **values), debug)
    _guard(lambda: writable_file(out, field="--out", kind="a .png file"), debug)
    spe, source = _guard(lambda: _steps_per_epoch(cfg, steps_per_epoch), debug)
    plan = _guard(lambda: lr_plan(cfg, spe), debug)
    png = _guard(lambda: plot(plan, out, log_y=log_y, groups=plot_groups(cfg.lr_mult, cfg.lr_layer_decay)), debug)
    points = [{"step": s, "epoch": plan.epoch_of(s) + 1, "lr": lr, "momentum": plan.momentum_at(s),
               "bias_lr": plan.lr(s, plan.epoch_of(s), bias=True)} for s, lr in key_points(plan)]
    _emit(term, as_json, *schedule_summary(cfg, plan, points, source, png, peak=peak_lr(plan)))


def _steps_per_epoch(cfg: Any, given: float | None) -> tuple[float, str]:
    """Ultralytics' count: ceil(train images x fraction / batch) batches, one optimizer step per
    round(nbs / batch) of them."""
    if given is not None:
        if not given > 0:
            raise ConfigError(f"--steps-per-epoch ({given:g}) must be > 0")
        return given, "given"
    from detune.config import optimizer_steps
    from detune.datasets import check_dataset, resolve_data
    from detune.errors import DatasetError

    try:
        info = check_dataset(resolve_data(cfg.data))
    except DatasetError as e:
        raise ConfigError(f"steps per epoch come from the dataset, which cannot be read: {e}; or pass "
                          "--steps-per-epoch N") from e
    images, batches, accumulate = optimizer_steps(cfg, info.train_images)
    return batches / accumulate, f"{images} images / batch {cfg.batch} = {batches} batches, accumulate {accumulate}"


# ---------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------
@app.command()
def report(source: Annotated[str, typer.Argument(help="A study output_dir, or an MLflow experiment name.")],
           out: Annotated[Path | None, typer.Option("--out", "-o", help="Report folder (default: "
                                                       "<output_dir>/report).")] = None,
           tracking_uri: Annotated[str | None, typer.Option(help="MLflow store to read SOURCE from as an "
                                                               "experiment (default: $MLFLOW_TRACKING_URI or "
                                                               "./mlflow.db).")] = None,
           run_id: Annotated[str | None, typer.Option(help="The study run (default: the newest).")] = None,
           metric: Annotated[str | None, typer.Option(help="Metric to rank by (default: the study's).")]
           = None,
           mode: Annotated[str | None, typer.Option(help="max or min (default: the study's).")] = None,
           top: Annotated[int, typer.Option(help="Trials drawn in the per-epoch curves.")] = 5,
           as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Write a study's report: figures (PNG) and report.md, from its output_dir or MLflow experiment.

    Figures: metric vs lr0, parallel coordinates, per-epoch metric and LR curves of the top trials.

    report.md: best config, comparison with Ultralytics' defaults, trial counts, compute used.

    [bold]Examples[/bold]

      detune report runs/detune/quick

      detune report quick --tracking-uri sqlite:///mlflow.db --out quick-report
    """
    from detune._paths import writable_dir
    from detune.report import FIGURES, build_report

    term = _terminal(True)
    if out is not None:
        _guard(lambda: writable_dir(out, field="--out"), debug)
    folder = _guard(lambda: build_report(source, tracking_uri=tracking_uri, run_id=run_id, out_dir=out,
                                         metric=metric, mode=mode, top=top), debug)
    figures = [folder / f for f in FIGURES if (folder / f).is_file()]
    text = (folder / "report.md").read_text()
    best = next((line for line in text.splitlines() if line.startswith("Trial `")), "no best trial")
    lines = [f"report: {folder / 'report.md'}", f"figures: {', '.join(f.name for f in figures)}",
             best.replace("**", "").replace("`", "")]
    _emit(term, as_json, {"report": folder / "report.md", "folder": folder, "figures": figures}, lines)


@app.command()
def ui(uri: Annotated[str | None, typer.Option("--uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or "
                                                              "./mlflow.db).")] = None,
       host: Annotated[str, typer.Option(help="Address to listen on. The UI has no login: keep 127.0.0.1 "
                                              "and use an SSH tunnel to reach it from elsewhere.")] = "127.0.0.1",
       port: Annotated[int, typer.Option(help="TCP port.")] = 5000,
       experiment: Annotated[str | None, typer.Option(help="Experiment (study name) whose runs table the printed "
                                                           "URL opens; default: the store's only one.")] = None,
       debug: DebugOpt = False) -> None:
    """Open the MLflow UI on a local tracking store: studies, trials, curves, artifacts. Ctrl-C stops it.

    The printed URL opens the runs table in MLflow's Model-training view (MLflow 3.17 starts in its GenAI
    view, where training runs do not appear).

    [bold]Examples[/bold]

      detune ui

      detune ui --uri sqlite:///runs/mlflow.db --port 5001 --experiment quick
    """
    import signal
    import subprocess

    from detune import _runtime
    from detune.ui import ui_command

    server = _guard(lambda: ui_command(uri, host=host, port=port, experiment=experiment), debug)
    if server.warning:
        typer.echo(f"warning: {server.warning}", err=True)
    log = _runtime.home() / "ui.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    typer.echo(f"MLflow UI for {server.store} at {server.page}  (Ctrl-C to stop; server log: {log})")
    with open(log, "wb") as out:
        proc = subprocess.Popen(server.cmd, env=server.env, stdout=out, stderr=subprocess.STDOUT)
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # pass it on (a terminal's Ctrl-C reached the server too) and let it finish
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise typer.Exit(0) from None
    if code != 0:
        tail = (log.read_text(errors="replace").strip().splitlines() or [""])[-1]
        _fail(f"the MLflow server stopped with exit code {code}: {tail} (full log: {log})")


# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------
@data_app.command("make-shapes")
def make_shapes(root: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
                spec: Annotated[list[str] | None, typer.Argument(
                    help="Optional spec YAML (like datasets/shapes.yaml), then key=value overrides: n_train, "
                         "n_val, imgsz, seed, n_classes, min_objects, max_objects, min_size, max_size.",
                    show_default=False)] = None,
                as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Generate the learnable shapes dataset (COCO128 layout); the same settings give the same bytes.

    [bold]Examples[/bold]

      detune data make-shapes datasets/shapes n_train=128 imgsz=128

      detune data make-shapes /tmp/shapes datasets/shapes.yaml n_val=16
    """
    from detune._shapes import spec_from_mapping
    from detune.config import read_yaml
    from detune.datasets import check_dataset, make_shapes_from_spec

    term = _terminal(True)
    path, values = _guard(lambda: _split(spec[0] if spec else None, spec[1:] if spec else None), debug)
    shapes = _guard(lambda: spec_from_mapping({**(read_yaml(path) if path else {}), **values},
                                              source=path or "make-shapes overrides"), debug)
    data = _guard(lambda: make_shapes_from_spec(root, shapes), debug)
    info = _guard(lambda: check_dataset(data), debug)
    _emit(term, as_json, {"data": data, **info.summary()},
          [f"wrote {data}", f"{info.train_images} train / {info.val_images} val images at {shapes.imgsz} "
           f"px, classes: {', '.join(info.names)}"])


@data_app.command("check")
def check(data: Annotated[str, typer.Argument(help="An Ultralytics data YAML.")],
          overrides: Annotated[list[str] | None, typer.Argument(
              help="datasets_dir=PATH: last folder to try for a relative path:.", show_default=False)] = None,
          as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Validate a data YAML before training: paths, names, every label line (Ultralytics' path rules).

    [bold]Examples[/bold]

      detune data check ../shared/datasets/coco128.yaml

      detune data check data.yaml datasets_dir=/data --json
    """
    from detune.datasets import check_dataset

    term = _terminal(True)
    _, values = _guard(lambda: _split(None, overrides), debug)
    unknown = [k for k in values if k != "datasets_dir"]
    if unknown:
        _fail(f"unknown setting {unknown[0]!r} for data check; the only one is datasets_dir=PATH")
    info = _guard(lambda: check_dataset(data, **values), debug)
    lines = [f"data: {info.yaml_path} (root {info.root})", f"classes: {info.nc} ({', '.join(info.names)})",
             f"train: {info.train_images} images, {info.train_instances} boxes"
             + (f" ({len(info.train_dropped)} unreadable images left out)" if info.train_dropped else ""),
             f"val: {info.val_images} images, {info.val_instances} boxes"
             + (f" ({len(info.val_dropped)} unreadable images left out)" if info.val_dropped else "")
             + (" (the same images as train)" if info.val_is_train else ""),
             *(f"warning: {w}" for w in info.warnings)]
    lines.append("ok" if not info.warnings else f"ok, with {len(info.warnings)} warning(s)")
    data_ = {**info.summary(), "names": list(info.names), "warnings": list(info.warnings),
             "train_dropped": list(info.train_dropped), "val_dropped": list(info.val_dropped)}
    _emit(term, as_json, data_, lines)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
