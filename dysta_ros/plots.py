"""Figures people look at: matplotlib on a file-only backend, written as PNG."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """Return matplotlib.pyplot on the Agg backend: robots and CI have no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path, dpi: int = 100) -> Path:
    """Lay out `fig`, write it to `path` (folders made as needed), free it; return the path."""
    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
