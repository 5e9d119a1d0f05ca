"""gMAD competition (group MAximum Differentiation, Ma et al., TPAMI 2018) between two IQA models.

For each model as *defender* and each quality level (a quantile of the defender's scores), the
images the defender rates alike (within ``tolerance`` of that level) form a candidate set; the
*attacker* picks from it the pair it rates most differently. If humans see the attacker's gap, the
defender lost; if they see no difference, the attacker is wrong. The selection is a pure function
of two score arrays (``select_gmad_pairs``) so that it can be checked by hand; scoring, the figure
and the JSON are separate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def select_gmad_pairs(
    scores_a: Sequence[float],
    scores_b: Sequence[float],
    names: tuple[str, str] = ("A", "B"),
    levels: Sequence[float] = (0.15, 0.85),
    tolerance: float = 0.02,
) -> list[dict]:
    """One entry per (defender, level): defender A at every level, then defender B.

    ``levels`` are quantiles in [0, 1] of the defender's scores (numpy's linear interpolation);
    candidates are images with |defender - level score| <= ``tolerance`` (on the defender's [0, 1]
    scale). Among them the attacker's best-rated image is ``better`` and its worst-rated ``worse``
    (lowest index on ties). Non-finite scores (unreadable files) are never candidates. An entry
    whose band holds fewer than two images has ``pair = None`` and says so in ``reason``.
    """
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"score arrays must be 1-D and of equal length, got {a.shape} and {b.shape}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    valid = np.isfinite(a) & np.isfinite(b)
    if valid.sum() < 2:
        raise ValueError(f"gMAD needs at least two images scored by both models, got {int(valid.sum())}")
    entries = []
    for defender, attacker, d_scores, t_scores in ((0, 1, a, b), (1, 0, b, a)):
        for level in levels:
            if not 0.0 <= level <= 1.0:
                raise ValueError(f"quality level {level} is not a quantile in [0, 1]")
            target = float(np.quantile(d_scores[valid], level))
            band = np.flatnonzero(valid & (np.abs(d_scores - target) <= tolerance))
            entry = {
                "defender": names[defender],
                "attacker": names[attacker],
                "level": float(level),
                "level_score": target,
                "band": [target - tolerance, target + tolerance],
                "num_candidates": int(band.size),
                "pair": None,
                "reason": "",
            }
            if band.size < 2:
                entry["reason"] = (
                    f"only {band.size} image(s) within {tolerance} of the defender's level score {target:.4f}: "
                    "raise `tolerance` or add images"
                )
            else:
                better = int(band[np.argmax(t_scores[band])])
                rest = band[band != better]
                worse = int(rest[np.argmin(t_scores[rest])])
                entry["pair"] = {"better": better, "worse": worse}
                entry["attacker_gap"] = float(t_scores[better] - t_scores[worse])
                entry["defender_gap"] = float(abs(d_scores[better] - d_scores[worse]))
            entries.append(entry)
    return entries


def gmad_report(
    paths: Sequence[str],
    scores_a: Sequence[float],
    scores_b: Sequence[float],
    names: tuple[str, str],
    levels: Sequence[float],
    tolerance: float,
    errors: dict[str, str] | None = None,
) -> dict:
    """The JSON-ready result: selected pairs with their paths and both models' scores, plus skipped files."""
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    entries = select_gmad_pairs(a, b, names, levels, tolerance)
    for e in entries:
        if e["pair"] is None:
            continue
        for role in ("better", "worse"):
            i = e["pair"][role]
            e["pair"][role] = {
                "index": i,
                "path": str(paths[i]),
                names[0]: float(a[i]),
                names[1]: float(b[i]),
            }
    return {
        "models": list(names),
        "levels": [float(x) for x in levels],
        "tolerance": float(tolerance),
        "num_images": len(paths),
        "num_scored": int((np.isfinite(a) & np.isfinite(b)).sum()),
        "skipped": dict(errors or {}),
        "pairs": entries,
    }


def plot_gmad(report: dict, output: str | Path, thumb_size: int = 256, dpi: int = 120) -> Path:
    """PNG grid as in the paper's Figure 2: a row per defender, an image pair per level, both models' scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mfe_iqa.data.images import load_rgb, resize_short_side

    names = report["models"]
    entries = report["pairs"]
    levels = report["levels"]
    fig, axes = plt.subplots(
        2, 2 * len(levels), figsize=(3.2 * 2 * len(levels), 7.0), squeeze=False, constrained_layout=True
    )
    for k, e in enumerate(entries):
        row, col = divmod(k, len(levels))
        for j, role in enumerate(("better", "worse")):
            ax = axes[row, 2 * col + j]
            ax.set_xticks([])
            ax.set_yticks([])
            if e["pair"] is None:
                ax.text(
                    0.5, 0.5, "no pair:\nband too sparse", ha="center", va="center", transform=ax.transAxes
                )
            else:
                item = e["pair"][role]
                ax.imshow(resize_short_side(load_rgb(item["path"]), thumb_size))
                ax.set_xlabel(
                    f"{names[0]}: {item[names[0]]:.3f}   {names[1]}: {item[names[1]]:.3f}", fontsize=9
                )
            if j == 0:
                ax.set_title(
                    f"{e['defender']} defends q={e['level']:.2f}; {e['attacker']} attacks",
                    fontsize=10,
                    loc="left",
                )
            ax.set_ylabel(f"{e['attacker']}: {role}", fontsize=9)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=dpi)
    plt.close(fig)
    return output
