"""Plot pieces shared by the experiments' reports."""

from __future__ import annotations

from pathlib import Path

from ..fileio import save_figure


def save_step_value_course(fig, ax, ylabel: str, path: Path, legend_size: int) -> None:
    """Finish a plot of the phase-1 step value along a run (break-even and zero marked) and write it to ``path``."""
    import matplotlib.pyplot as plt

    ax.axhline(1.0, color="green", linestyle="--", linewidth=1, label="break-even")
    ax.axhline(0.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("TST step (phase 2, before the LR decay)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
