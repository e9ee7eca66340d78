"""Shared by the benchmarks: machine facts, the command line, datasets and where results go.

Every benchmark prints its command, the machine facts and its figures, and writes ``results/<name>.json``
and ``results/<name>.md`` (its section of RESULTS.md, which ``run_all.py`` assembles).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
COCO128 = REPO.parent / "shared" / "datasets" / "coco128.yaml"
sys.path.insert(0, str(REPO))


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="GPU node mode: device 0, bigger images and batches")
    p.add_argument("--quick", action="store_true", help="smoke version: the same code on the smallest sizes")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for <name>.json and <name>.md")
    return p


def start(name: str) -> dict[str, Any]:
    """Print and return the command, date and machine facts; keep detune's home out of the user's."""
    os.environ.setdefault("DETUNE_HOME", str(Path(tempfile.gettempdir()) / "detune-bench-home"))
    argv = [Path(sys.executable).name, os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]
    head = {"benchmark": name, "command": shlex.join(argv),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_facts(), "started": time.monotonic()}
    print("command:", head["command"])
    print("date:", head["date"])
    print("machine:", json.dumps(head["machine"]), flush=True)
    return head


def machine_facts() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    facts: dict[str, Any] = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}
    facts.update({name: metadata.version(name) for name in ("torch", "ultralytics", "ray", "mlflow", "detune")})
    with contextlib.suppress(Exception):
        import torch

        facts["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    facts["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return facts


def shapes(**spec: Any) -> Path:
    """The generated shapes dataset (made once under detune's home), as a data YAML path."""
    from detune.datasets import resolve_data

    return resolve_data("shapes:" + ",".join(f"{k}={v}" for k, v in spec.items()))


def coco128(workdir: Path) -> Path | None:
    """COCO128 from ../shared as a data YAML with absolute paths, or None when it is absent."""
    if not COCO128.is_file():
        print(f"coco128: skipped, {COCO128} is absent", flush=True)
        return None
    from detune.datasets import check_dataset

    return check_dataset(COCO128).write_yaml(Path(workdir) / "coco128.yaml")


def save(out: Path, head: dict[str, Any], figures: dict[str, Any], markdown: str) -> None:
    """Write results/<name>.json and the RESULTS.md section results/<name>.md (with date and command)."""
    out.mkdir(parents=True, exist_ok=True)
    name = head["benchmark"]
    m = head["machine"]
    facts = (f"{m['cpu']}, {m['cores']} cores, GPUs: {', '.join(m.get('gpus') or []) or 'none'}; torch {m['torch']}, "
             f"ultralytics {m['ultralytics']}, ray {m['ray']}, mlflow {m['mlflow']}; load average at start "
             f"{m['load_average'][0]}")
    head = {**{k: v for k, v in head.items() if k != "started"}, "seconds": round(time.monotonic() - head["started"])}
    section = (f"{markdown.strip()}\n\n- Measured {head['date']} on: {facts}; took {head['seconds'] / 60:.1f} min."
               f"\n- Reproduce: `{head['command']}`\n")
    (out / f"{name}.json").write_text(json.dumps({**head, **figures}, indent=1, default=str))
    (out / f"{name}.md").write_text(section)
    print("\n" + section, flush=True)


def ratio_text(value: float, goal: float, *, below: bool = True) -> str:
    met = value <= goal if below else value >= goal
    return f"{value:.3f} (goal {'<=' if below else '>='} {goal:g}: {'met' if met else 'MISSED'})"
