"""Mutual information between tokens at distance d, and the power-law fit behind bag weights.

The paper motivates decaying MCE weights by the mutual information of two tokens ``d`` apart,
fitted on DCLM as ``MI(d) = C0 + a * d**k`` (C0 ~ 3.63, a ~ 1.35, k ~ -1.25). We estimate MI(d)
on a prepared corpus and fit the same curve.

Estimator: the plug-in (maximum-likelihood) MI of the pair distribution
``(x_t, x_{t+d})`` over ``n`` positions, ``I = H(X) + H(Y) - H(X, Y)``, with each entropy given
the Miller-Madow correction ``H + (m - 1) / (2n)`` (``m`` = number of non-empty cells, nats).
The plug-in estimate is biased upwards because a sample of ``n`` pairs cannot fill a ``V x V``
table; the correction removes the first-order term. What it leaves is roughly constant in ``d``
and shows up in C0, which is why only the decaying part ``a * d**k`` informs the weights.
"""

from __future__ import annotations

import numpy as np

from .fileio import save_figure, write_text_atomic


def entropy_mm(counts: np.ndarray, n: int) -> float:
    """Return the Miller-Madow corrected plug-in entropy (nats) of non-zero ``counts`` summing to ``n``."""
    p = counts / n
    return float(-(p * np.log(p)).sum() + (len(counts) - 1) / (2 * n))


def mutual_information(tokens: np.ndarray, distance: int) -> float:
    """Return the bias-corrected plug-in MI (nats) between tokens ``distance`` apart in ``tokens``."""
    x = np.asarray(tokens[:-distance], dtype=np.int64)
    y = np.asarray(tokens[distance:], dtype=np.int64)
    n = len(x)
    if n < 2:
        raise ValueError(f"need more than {distance + 1} tokens for distance {distance}")
    top = int(max(x.max(), y.max())) + 1
    joint = np.unique(x * top + y, return_counts=True)[1]
    hx = entropy_mm(np.unique(x, return_counts=True)[1], n)
    hy = entropy_mm(np.unique(y, return_counts=True)[1], n)
    return hx + hy - entropy_mm(joint, n)


def fit_power_law(d: np.ndarray, mi: np.ndarray, k_grid: np.ndarray | None = None) -> dict[str, float]:
    """Return the least-squares fit ``{C0, a, k, rmse}`` of ``mi ~ C0 + a * d**k``.

    For each ``k`` on a fine grid the model is linear in ``(C0, a)``, solved exactly; the best
    ``k`` wins. No optimiser to tune, and the global optimum over the grid is found.
    """
    d, mi = np.asarray(d, dtype=np.float64), np.asarray(mi, dtype=np.float64)
    ks = np.linspace(-4.0, -0.05, 1580) if k_grid is None else k_grid
    best = None
    for k in ks:
        A = np.stack([np.ones_like(d), d**k], axis=1)
        coef, *_ = np.linalg.lstsq(A, mi, rcond=None)
        err = float(np.sqrt(np.mean((A @ coef - mi) ** 2)))
        if best is None or err < best["rmse"]:
            best = {"C0": float(coef[0]), "a": float(coef[1]), "k": float(k), "rmse": err}
    return best


def fitted_bag_weights(k: float, bag_size: int) -> list[float]:
    """Return the normalised slot weights ``i**k`` (``i = 1..s``): the decaying part of the fit."""
    w = np.arange(1, bag_size + 1, dtype=np.float64) ** k
    return (w / w.sum()).tolist()


def mi_curve(tokens: np.ndarray, max_distance: int, sample_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Return distances ``1..max_distance`` and MI at each, on the first ``sample_tokens`` tokens."""
    sample = np.asarray(tokens[: sample_tokens + max_distance])
    d = np.arange(1, max_distance + 1)
    return d, np.array([mutual_information(sample, int(k)) for k in d])


def plot_mi(d, mi, fit, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(d, mi, "o", ms=3, label="estimate (Miller-Madow plug-in)")
    dd = np.linspace(1, d.max(), 400)
    ax.plot(dd, fit["C0"] + fit["a"] * dd ** fit["k"], label=f"fit {fit['C0']:.3f} + {fit['a']:.3f} d^{fit['k']:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("distance d (tokens)")
    ax.set_ylabel("mutual information (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def run_mi(data_dir, out_dir, max_distance: int = 64, sample_tokens: int = 2_000_000, bag_size: int = 8) -> dict:
    """Estimate MI(d) on a prepared corpus's training split, fit it, and write mi.json and mi.png."""
    import json
    from pathlib import Path

    from .data.tokens import TokenData
    from .errors import ConfigError

    if max_distance < 1 or bag_size < 1 or sample_tokens < max_distance + 2:
        raise ConfigError(f"--max-distance and --bag-size must be >= 1 and --sample-tokens above --max-distance + 1; "
                          f"got {max_distance}, {bag_size}, {sample_tokens}")
    data = TokenData(data_dir)
    d, mi = mi_curve(data.train, max_distance, sample_tokens)
    fit = fit_power_law(d, mi)
    result = {"data": str(data_dir), "sample_tokens": min(sample_tokens, len(data.train)), "distances": d.tolist(),
              "mi": mi.tolist(), "fit": fit, "bag_size": bag_size, "weights": fitted_bag_weights(fit["k"], bag_size),
              "paper_dclm_fit": {"C0": 3.63, "a": 1.35, "k": -1.25}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "mi.json", json.dumps(result, indent=2) + "\n")
    plot_mi(d, mi, fit, out / "mi.png")
    return result
