"""The benchmark readers' figures: one look (labels, grid, legend, 120 dpi), drawn without a display."""

from __future__ import annotations

from pathlib import Path

from tstrain import fileio


def new_figure(size: tuple[float, float] = (8, 4.5)):
    """Return ``(fig, ax)`` on matplotlib's file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def save_figure(fig, ax, path: str | Path, xlabel: str, ylabel: str, legend_at: str = "best") -> None:
    """Label the axes, add the grid and the legend, and write the figure to ``path`` (``fileio.save_figure``:
    never through a link, whole)."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc=legend_at)
    fig.tight_layout()
    fileio.save_figure(fig, Path(path))
    plt.close(fig)
