"""The only module that imports matplotlib: figure setup and saving for every PNG detune draws.

matplotlib's object API only (a ``Figure`` with an Agg canvas): no pyplot, no global backend, safe in
threads and Ray workers. matplotlib is optional for the library (it ships with Ultralytics); a missing one
raises ``ImportError`` naming the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["colormap", "new_figure", "save"]


def new_figure(what: str, *, figsize: tuple[float, float], dpi: int = 100, layout: str | None = None) -> Any:
    """A new ``matplotlib.figure.Figure`` on an Agg canvas; ``what`` names the caller in the ImportError."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - matplotlib ships with ultralytics
        raise ImportError(f"{what} needs matplotlib: pip install matplotlib") from e
    fig = Figure(figsize=figsize, dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: str | Path, *, dpi: int | None = None) -> Path:
    """Write ``fig`` as a PNG to ``path`` (missing parent folders created); return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", **({"dpi": dpi} if dpi is not None else {}))
    return out


def colormap(name: str) -> Any:
    """matplotlib's registered colormap ``name`` (e.g. "viridis")."""
    from matplotlib import colormaps

    return colormaps[name]
