"""Linear probe of a frozen backbone: the downstream protocol of CONTRIQUE, Re-IQA and ARNIQA.

A self-supervised quality representation is judged by how well a *linear* regressor on its frozen features
predicts MOS: pooled features at full and half scale, concatenated, a ridge regressor fitted on the training
split, its strength alpha chosen on the validation split (ARNIQA's grid search), SRCC/PLCC on test.

Here it measures the DAN after contrastive pre-training (``dan.pt``) against a randomly initialized backbone of
the same architecture (the reference a pre-training has to beat): a number for "does the DAN know quality"
that does not depend on an IQA fit, its initialization or its budget.

- :func:`extract_features`: (N, D) features, one row per item, from an evaluation loader of the datamodule.
- :func:`fit_ridge` / :func:`predict_ridge`: closed-form ridge on standardized features (train statistics
  only), primal or dual form, whichever system is smaller.
- :func:`probe_split`: the alpha grid on val (or, without val, grouped k-fold on train), the refit, test.
- :func:`init_stats_head_ridge`: the same probe as the starting point of a fine-tuning (LP-FT): MFENet's
  ``StatsLinearHead`` set to the ridge solution on the DAN's crop statistics before the IQA fit
  (``system.stats_head_init=ridge``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mfe_iqa.data.items import BATCH_IMAGE, BATCH_INDEX, IQAItem
from mfe_iqa.errors import UserError
from mfe_iqa.models.heads import STAGE_STATISTICS, stage_statistics

log = logging.getLogger("mfe_iqa.probe")

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 6, 15))  # half-decade steps
# how the linear-probe stage of LP-FT chooses alpha: on the val images (grouped CV on train when there are none),
# or always by grouped CV on the training images (the val images then only report)
HEAD_ALPHA_SELECTIONS = ("val", "cv")


class ProbeError(UserError, ValueError):
    """A probe that cannot be run as configured; the message says which key or item and what to do."""


# --------------------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------------------
POOLINGS = STAGE_STATISTICS
# what is done to the pooled features before the ridge: nothing, or log(x + eps). The pooled statistics of
# post-activation maps are positive, scale-like numbers (contrast, noise level, detail energy) whose effects on
# quality are multiplicative; their logarithm makes them additive for a linear model (BRISQUE and NIQE fit
# log-domain statistics for the same reason). On LIVE Challenge (README) the log read-out led by grouped CV on
# train+val on 8 of 8 splits.
FEATURE_TRANSFORMS = ("none", "log")
DEFAULT_LOG_EPS = 1e-2


def transform_features(x: np.ndarray, transform: str = "none", eps: float = DEFAULT_LOG_EPS) -> np.ndarray:
    """``x`` (N, D) as the ridge reads it: unchanged (``none``) or ``log(x + eps)`` (``log``), float64.

    ``log`` needs features > -eps (pooled means and standard deviations of post-activation maps are >= 0): a
    value at or below it is an error that names the first offending column, never a silent NaN.
    """
    if transform not in FEATURE_TRANSFORMS:
        raise ProbeError(f"feature transform must be one of {FEATURE_TRANSFORMS}, got {transform!r}")
    x = np.asarray(x, dtype=np.float64)
    if transform == "none":
        return x
    if not eps > 0:
        raise ProbeError(f"the log transform's eps must be > 0, got {eps}")
    bad = np.argwhere(~(x > -eps))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        raise ProbeError(
            f"the log feature transform needs features > -{eps:g}, but row {row}, column {col} is {float(x[row, col])} "
            f"({len(bad)} such values): use transform=none for features that can be negative (pooled maps of a "
            "backbone whose stages end without an activation)"
        )
    return np.log(x + eps)


def pooled_features(
    backbone: torch.nn.Module,
    images: torch.Tensor,
    scales: Sequence[float],
    stages: Sequence[int],
    pooling: Sequence[str] = ("mean",),
) -> torch.Tensor:
    """(V, 3, h, w) views in [0, 1] -> (V, D): pooled stage features, per scale, stage and pooling, concatenated.

    ``backbone(x)`` must return ``(list of stage maps, anything)`` (``DistortionAwareNetwork``). Scales other
    than 1 resize the view with antialiased bilinear interpolation (CONTRIQUE's half scale is 0.5). Pooling:
    ``mean`` (global average, CONTRIQUE) and/or ``std`` (the spatial standard deviation per channel, the
    second-order statistic the DAN pre-training also pools: noise, blur and contrast live there).
    """
    unknown = [p for p in pooling if p not in POOLINGS]
    if unknown or not pooling:
        raise ProbeError(f"probe pooling must be a non-empty list of {POOLINGS}, got {list(pooling)}")
    parts = []
    for s in scales:
        x = images
        if s != 1.0:
            h, w = images.shape[-2:]
            size = (max(1, round(h * s)), max(1, round(w * s)))
            x = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        maps = backbone(x)[0]
        parts.append(stage_statistics([maps[k] for k in stages], pooling))
    return torch.cat(parts, dim=1)


@torch.no_grad()
def extract_features(
    backbone: torch.nn.Module,
    loader: Iterable[Mapping[str, torch.Tensor]],
    num_items: int,
    scales: Sequence[float] = (1.0, 0.5),
    stages: Sequence[int] = (-1,),
    pooling: Sequence[str] = ("mean",),
) -> np.ndarray:
    """One feature row per item of an evaluation loader (batches of (B, K, 3, h, w) views and item indices).

    The K views of an item are averaged (the crops of ``data.test_mode=crops``, or the one whole image of
    ``full``). Every index in 0..num_items-1 must come exactly once: a missing or repeated item is an error,
    never a silently shorter matrix.
    """
    return item_rows(
        backbone,
        loader,
        num_items,
        lambda x: pooled_features(backbone, x, scales, stages, pooling),
        "feature extraction",
    )


def item_rows(
    module: torch.nn.Module,
    loader: Iterable[Mapping[str, torch.Tensor]],
    num_items: int,
    crop_features: Callable[[torch.Tensor], torch.Tensor],
    what: str,
    device: torch.device | str | None = None,
    on_crops: Callable[[torch.Tensor], None] | None = None,
) -> np.ndarray:
    """(N, D) float64: per item of ``loader`` the mean over its K views of ``crop_features((B*K, 3, h, w))``, with
    ``module`` in eval mode (restored afterwards); ``on_crops`` sees every batch's (B*K, D) float64 rows. Every
    index in 0..num_items-1 must come exactly once: a missing or repeated item is an error (named by ``what``),
    never a silently shorter matrix."""
    was_training = module.training
    module.eval()
    rows: dict[int, np.ndarray] = {}
    try:
        for batch in loader:
            views = batch[BATCH_IMAGE]  # (B, K, 3, h, w)
            if device is not None:
                views = views.to(device)
            b, k = views.shape[:2]
            feats = crop_features(views.flatten(0, 1)).double().cpu()  # (B*K, D)
            if on_crops is not None:
                on_crops(feats)
            for i, f in zip(batch[BATCH_INDEX].tolist(), feats.view(b, k, -1).mean(dim=1).numpy()):
                if int(i) in rows:
                    raise RuntimeError(f"{what}: item {i} came twice from the loader")
                rows[int(i)] = f
    finally:
        module.train(was_training)
    missing = sorted(set(range(num_items)) - set(rows))
    if missing or len(rows) != num_items:
        raise RuntimeError(
            f"{what}: the loader gave {len(rows)} items for {num_items} "
            f"(missing e.g. {missing[:5]}): every item must be embedded once"
        )
    return np.stack([rows[i] for i in range(num_items)])


# --------------------------------------------------------------------------------------------------------------
# Ridge regression
# --------------------------------------------------------------------------------------------------------------
@dataclass
class RidgeModel:
    """Standardization (train statistics) + weights + intercept, on float64."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    intercept: float
    alpha: float


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> RidgeModel:
    """Minimize ||Z w + b - y||^2 + alpha ||w||^2, Z = x standardized with its own mean and std.

    Features with zero variance on the training rows are left at 0 after standardization (scale 1). The
    intercept is not penalized (b = mean of y). Solved in the primal (D x D) or the dual (N x N) form,
    whichever is smaller; both give the same w.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"fit_ridge: x must be (N, D) with N = len(y), got {x.shape} and {y.shape}")
    if len(y) < 2:
        raise ProbeError(f"ridge regression needs at least 2 training images, got {len(y)}")
    if not alpha > 0:
        raise ProbeError(f"ridge alpha must be > 0, got {alpha}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    z = (x - mean) / scale
    y_mean = float(y.mean())
    yc = y - y_mean
    n, d = z.shape
    if d <= n:
        w = np.linalg.solve(z.T @ z + alpha * np.eye(d), z.T @ yc)
    else:
        w = z.T @ np.linalg.solve(z @ z.T + alpha * np.eye(n), yc)
    return RidgeModel(mean=mean, scale=scale, weights=w, intercept=y_mean, alpha=float(alpha))


def predict_ridge(model: RidgeModel, x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, dtype=np.float64) - model.mean) / model.scale) @ model.weights + model.intercept


def _srcc(pred: np.ndarray, y: np.ndarray) -> float:
    from mfe_iqa.metrics import srcc

    return float(srcc(torch.from_numpy(np.asarray(pred, float)), torch.from_numpy(np.asarray(y, float))))


def score_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The metrics every run of the framework reports, on one image per row (normalized MOS scale)."""
    from mfe_iqa.metrics import fitted_plcc, krcc, plcc, rmse, srcc

    p = torch.from_numpy(np.asarray(pred, dtype=np.float64))
    t = torch.from_numpy(np.asarray(y, dtype=np.float64))
    out = {"srcc": srcc(p, t), "plcc": plcc(p, t), "krcc": krcc(p, t), "rmse": rmse(p, t)}
    if len(p) >= 5:
        out["plcc_fit"] = fitted_plcc(p, t)
    return {k: float(v) for k, v in out.items()}


def grouped_folds(groups: Sequence[str], k: int, seed: int) -> list[np.ndarray]:
    """k folds of row indices such that no group (content id) is in two folds (seeded shuffle of the groups)."""
    names = sorted(set(groups))
    if len(names) < k:
        raise ProbeError(
            f"cross-validation on train needs at least {k} contents, got {len(names)}: lower probe.cv_folds "
            "or use a split with a validation part (split.ratios)"
        )
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {names[j]: rank % k for rank, j in enumerate(order)}
    labels = np.array([fold_of[g] for g in groups])
    return [np.flatnonzero(labels == f) for f in range(k)]


def choose_alpha(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    alphas: Sequence[float],
    groups: Sequence[str] | None = None,
    cv_folds: int = 5,
    seed: int = 0,
) -> tuple[float, list[dict[str, float]], str, bool]:
    """The ridge strength of the grid ``alphas`` with the best SRCC: on the val rows when there are at least 2,
    else the mean over ``cv_folds`` content-grouped folds of the training rows (``groups``: one content id per
    training row). Ties go to the larger alpha (the simpler model).
    Returns (alpha, curve [{"alpha", "val_srcc"}] in ascending alpha, selection "val" or "cv<k>", whether the
    alpha is at an end of a grid of several)."""
    alphas = sorted(float(a) for a in alphas)
    if not alphas or any(not a > 0 for a in alphas):
        raise ProbeError(
            "ridge alphas (mfe-iqa-probe: `alphas`; training: `system.stats_head_alphas`) must be a non-empty list "
            f"of positive numbers, got {list(alphas)}"
        )
    curve: list[dict[str, float]] = []
    if len(y_val) >= 2:
        selection = "val"
        for a in alphas:
            pred = predict_ridge(fit_ridge(x_train, y_train, a), x_val)
            curve.append({"alpha": a, "val_srcc": _srcc(pred, y_val)})
    else:
        if groups is None or len(groups) != len(y_train):
            raise ProbeError(
                "without val rows the alpha is chosen by grouped CV: give one content id per training row"
            )
        selection = f"cv{cv_folds}"
        folds = grouped_folds(list(groups), cv_folds, seed)
        for a in alphas:
            scores = []
            for held in folds:
                keep = np.setdiff1d(np.arange(len(y_train)), held)
                pred = predict_ridge(fit_ridge(x_train[keep], y_train[keep], a), x_train[held])
                scores.append(_srcc(pred, y_train[held]))
            curve.append({"alpha": a, "val_srcc": float(np.mean(scores))})
    scores = np.array([c["val_srcc"] for c in curve])
    best = int(np.flatnonzero(scores >= scores.max() - 1e-12)[-1])  # ties: the largest alpha
    return alphas[best], curve, selection, len(alphas) > 1 and best in (0, len(alphas) - 1)


@dataclass
class ProbeResult:
    """One split: the alpha curve, the chosen alpha, val and test metrics and the test predictions."""

    alpha: float
    alpha_curve: list[dict[str, float]]
    selection: str  # "val" or "cv<k>"
    val: dict[str, float] | None
    test: dict[str, float]
    test_pred: np.ndarray
    test_mos: np.ndarray
    at_grid_edge: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    model: RidgeModel | None = None  # the ridge fitted on all training rows with ``alpha``


def probe_split(
    features: np.ndarray,
    items: Sequence[IQAItem],
    parts: Mapping[str, Sequence[int]],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    cv_folds: int = 5,
    seed: int = 0,
) -> ProbeResult:
    """Ridge probe of one split: ``parts`` maps train/val/test to row indices of ``features`` / ``items``.

    alpha is chosen by the SRCC of the val rows (ties: the larger alpha, the simpler model); with no val rows by
    the mean SRCC over ``cv_folds`` content-grouped folds of the training rows. The model is then fitted on all
    training rows with that alpha and scored on test. Test rows never take part in the choice.
    """
    tr, va, te = (np.asarray(parts.get(p, ()), dtype=int) for p in ("train", "val", "test"))
    if len(te) == 0:
        raise ProbeError("the split has no test images: nothing to score (split.ratios)")
    if len(tr) < 2:
        raise ProbeError(f"the split has {len(tr)} training images: ridge regression needs at least 2")
    mos = np.array([it.mos for it in items], dtype=np.float64)
    alpha, curve, selection, at_grid_edge = choose_alpha(
        features[tr], mos[tr], features[va], mos[va], alphas,
        groups=[items[i].content_id for i in tr], cv_folds=cv_folds, seed=seed,
    )  # fmt: skip
    model = fit_ridge(features[tr], mos[tr], alpha)
    val = score_metrics(predict_ridge(model, features[va]), mos[va]) if selection == "val" else None
    test_pred = predict_ridge(model, features[te])
    return ProbeResult(
        alpha=alpha,
        alpha_curve=curve,
        selection=selection,
        val=val,
        test=score_metrics(test_pred, mos[te]),
        test_pred=test_pred,
        test_mos=mos[te],
        at_grid_edge=at_grid_edge,
        counts={"train": len(tr), "val": len(va), "test": len(te)},
        model=model,
    )


# --------------------------------------------------------------------------------------------------------------
# Linear probe, then fine-tune (LP-FT): a StatsLinearHead started at the probe's solution
# --------------------------------------------------------------------------------------------------------------
@dataclass
class HeadInitResult:
    """What the linear-probe stage fitted: alpha and its curve, in-sample train SRCC, val SRCC, counts."""

    alpha: float
    alpha_curve: list[dict[str, float]]
    selection: str  # "val" or "cv<k>"
    train_srcc: float
    val_srcc: float | None
    dead_features: int  # features constant over the training crops (weight 0)
    at_grid_edge: bool = False
    counts: dict[str, int] = field(default_factory=dict)


@torch.no_grad()
def crop_statistics(
    dan: torch.nn.Module,
    loader: Iterable[Mapping[str, torch.Tensor]],
    num_items: int,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a :class:`~mfe_iqa.models.heads.StatsLinearHead` reads, for every crop of an evaluation loader.

    ``dan(x)[0]`` is the list of stage maps; each crop gives ``stage_statistics`` of all of them (B*K, D).
    Returns (the mean over each item's K crops, (N, D); the per-feature mean and population variance over all
    N*K crops, (D,) and (D,)), in float64, with ``dan`` in eval mode (restored afterwards). Every index in
    0..num_items-1 must come exactly once.
    """
    sums: dict[str, Any] = {"n": 0, "sum": 0.0, "sum_sq": 0.0}  # over all N*K crops

    def accumulate(feats: torch.Tensor) -> None:
        sums["n"] += len(feats)
        sums["sum"] = sums["sum"] + feats.sum(0)
        sums["sum_sq"] = sums["sum_sq"] + (feats * feats).sum(0)

    rows = item_rows(
        dan, loader, num_items, lambda x: stage_statistics(dan(x)[0]), "crop statistics", device, accumulate
    )
    mean = (sums["sum"] / sums["n"]).numpy()
    var = np.maximum((sums["sum_sq"] / sums["n"]).numpy() - mean * mean, 0.0)
    return rows, mean, var


def init_stats_head_ridge(
    head: torch.nn.Module,
    dan: torch.nn.Module,
    train_loader: Iterable[Mapping[str, torch.Tensor]],
    train_items: Sequence[IQAItem],
    val_loader: Iterable[Mapping[str, torch.Tensor]] | None = None,
    val_items: Sequence[IQAItem] = (),
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    cv_folds: int = 5,
    seed: int = 0,
    device: torch.device | str | None = None,
    selection: str = "val",
) -> HeadInitResult:
    """The linear-probe stage of LP-FT (Kumar et al., ICLR 2022): set ``head`` (a ``StatsLinearHead`` over
    ``dan``'s stages) to the ridge regressor of the items' (normalized) MOS on its own input features.

    The head standardizes with its BatchNorm: its running mean and variance become the statistics of the training
    crops, so in eval mode it computes ``w . (f - mean) / sqrt(var + eps) + b`` for a crop's features ``f``. Since
    that is linear in ``f``, the average of the head over an image's crops is the head of the average feature:
    the ridge is fitted on those per-image averages (standardized the same way), alpha chosen on the val items'
    SRCC (or by grouped CV on train without val, as :func:`probe_split`; ``selection="cv"``: by ``cv_folds``-fold
    grouped CV on the training items even when there are val items, which then only report), and folded into
    ``head.weight`` and ``head.bias`` so that ``head`` in eval mode reproduces :func:`predict_ridge` exactly.
    Features constant over the training crops get weight 0. No test item is involved.
    """
    if selection not in HEAD_ALPHA_SELECTIONS:
        raise ProbeError(
            f"the linear-probe stage's alpha selection must be one of {HEAD_ALPHA_SELECTIONS}, got {selection!r}"
        )
    norm = getattr(head, "norm", None)
    if norm is None or getattr(head, "weight", None) is None or getattr(head, "bias", None) is None:
        raise TypeError(
            f"init_stats_head_ridge needs a StatsLinearHead (norm, weight, bias), got {type(head).__name__}"
        )
    if len(train_items) < 2:
        raise ProbeError(f"the linear-probe stage needs at least 2 training images, got {len(train_items)}")
    x_tr, mean, var = crop_statistics(dan, train_loader, len(train_items), device)
    if x_tr.shape[1] != head.weight.shape[1]:
        raise ValueError(
            f"the head reads {head.weight.shape[1]} features but the DAN's stage statistics have {x_tr.shape[1]}"
        )
    dead = var <= 1e-12 * (1.0 + mean * mean)
    std = np.sqrt(var + float(norm.eps))

    def standardize(x: np.ndarray) -> np.ndarray:
        z = (x - mean) / std
        z[:, dead] = 0.0
        return z

    z_tr = standardize(x_tr)
    y_tr = np.array([it.mos for it in train_items], dtype=np.float64)
    if len(val_items) >= 2 and val_loader is not None:
        z_va = standardize(crop_statistics(dan, val_loader, len(val_items), device)[0])
        y_va = np.array([it.mos for it in val_items], dtype=np.float64)
    else:
        z_va, y_va = np.zeros((0, z_tr.shape[1])), np.zeros(0)
    alpha, curve, chosen_by, at_grid_edge = choose_alpha(
        z_tr,
        y_tr,
        *((z_va, y_va) if selection == "val" else (z_va[:0], y_va[:0])),  # no val rows: grouped CV on train
        alphas,
        groups=[it.content_id for it in train_items],
        cv_folds=cv_folds,
        seed=seed,
    )
    model = fit_ridge(z_tr, y_tr, alpha)  # predicts ((z - m) / s) . w' + b'
    w = model.weights / model.scale
    b = model.intercept - float(model.mean @ w)
    w[dead] = 0.0
    val_srcc = None  # the chosen head's SRCC on val: the curve's value when val chose, else it only reports
    if chosen_by == "val":
        val_srcc = next(c["val_srcc"] for c in curve if c["alpha"] == alpha)
    elif len(y_va) >= 2:
        val_srcc = _srcc(z_va @ w + b, y_va)
    with torch.no_grad():
        norm.running_mean.copy_(torch.from_numpy(mean))
        norm.running_var.copy_(torch.from_numpy(var))
        head.weight.copy_(torch.from_numpy(w).view_as(head.weight))
        head.bias.fill_(b)
    return HeadInitResult(
        alpha=alpha,
        alpha_curve=curve,
        selection=chosen_by,
        train_srcc=_srcc(z_tr @ w + b, y_tr),
        val_srcc=val_srcc,
        dead_features=int(dead.sum()),
        at_grid_edge=at_grid_edge,
        counts={"train": len(y_tr), "val": len(y_va)},
    )
