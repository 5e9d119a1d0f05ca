"""Figures of the evaluation protocol: prediction-vs-MOS scatter with its logistic fit, cross-dataset heatmap.

Built on ``matplotlib.figure.Figure`` directly (no pyplot), so no GUI backend is touched and figures can be made
from worker processes; save them with ``fig.savefig(path)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from mfe_iqa.metrics import LogisticFit


def scatter_with_fit(
    prediction: np.ndarray,
    mos: np.ndarray,
    fit: LogisticFit | None = None,
    title: str = "",
    metrics: dict[str, float] | None = None,
) -> Figure:
    """Scatter of per-image prediction (x) against MOS (y), with the fitted logistic curve if given."""
    prediction = np.asarray(prediction, dtype=np.float64)
    mos = np.asarray(mos, dtype=np.float64)
    fig = Figure(figsize=(5.0, 4.5), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(prediction, mos, s=8, alpha=0.6, edgecolors="none", label=f"{prediction.size} images")
    if fit is not None and prediction.size >= 2 and np.ptp(prediction) > 0:
        xs = np.linspace(prediction.min(), prediction.max(), 200)
        label = f"{fit.kind}-param logistic" if fit.ok else "linear (logistic fit failed)"
        ax.plot(xs, fit(xs), color="tab:red", lw=2, label=label)
    ax.set_xlabel("prediction (normalized)")
    ax.set_ylabel("MOS (normalized, higher = better)")
    if metrics:
        title = (title + "\n" if title else "") + "  ".join(
            f"{k.upper()} {v:.3f}" for k, v in metrics.items()
        )
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def heatmap(
    values: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
    row_title: str = "trained on",
    col_title: str = "tested on",
) -> Figure:
    """Annotated heatmap (e.g. the cross-dataset median SRCC matrix); NaN cells are left blank."""
    values = np.asarray(values, dtype=np.float64)
    fig = Figure(figsize=(1.2 + 1.1 * max(len(col_labels), 1), 1.2 + 0.7 * max(len(row_labels), 1)), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels), rotation=30, ha="right")
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels))
    ax.set_xlabel(col_title)
    ax.set_ylabel(row_title)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                color = "black" if values[i, j] > 0.6 else "white"
                ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", color=color, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
