"""Image-level IQA metrics (SRCC, PLCC, KRCC, RMSE, logistic-fitted PLCC) and the run metrics file.

Every metric keeps the raw ``(index, prediction, target)`` triples as concatenated states, so that under DDP
torchmetrics gathers them from all ranks, and groups them by ``index`` at ``compute``: the crops of one image
are averaged into one prediction, and the duplicates that Lightning's ``DistributedSampler`` pads a val/test
set with are counted once. Correlations are computed in float64 with ``torchmetrics.functional``.

Conventions (documented in README "Multi-task IQA training"):
- A correlation (SRCC, PLCC, KRCC, fitted PLCC) of constant predictions or constant targets is undefined;
  it is reported as 0.0 ("no association") with a ``UserWarning``, never NaN, so that checkpoint monitors
  and ``MaxMetric`` keep working. RMSE stays defined.
- Fewer than 2 images: every correlation is 0.0 with a warning.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import OptimizeWarning, curve_fit
from torchmetrics import MaxMetric, Metric, MetricCollection
from torchmetrics.functional import (
    kendall_rank_corrcoef,
    mean_squared_error,
    pearson_corrcoef,
    spearman_corrcoef,
)
from torchmetrics.utilities import dim_zero_cat

METRIC_NAMES = ("srcc", "plcc", "krcc", "rmse", "plcc_fit")
RUN_METRICS_FILE = "metrics.json"
RUN_METRICS_FORMAT = "mfe_iqa.run_metrics/1"


# --------------------------------------------------------------------------------------------------------------
# Grouping crops and duplicates into one value per image
# --------------------------------------------------------------------------------------------------------------
def group_by_image(
    index: torch.Tensor, preds: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Average all predictions that share an image index; return (index (N,), pred (N,), target (N,)) sorted.

    ``index``, ``preds`` and ``target`` are flat (M,) tensors with M >= N (several crops or padded duplicates
    per image). Targets of one index must agree: a conflict means two images share an index, which is a bug
    in the data pipeline, so it raises.
    """
    if index.numel() == 0:
        empty = torch.zeros(0, dtype=torch.float64, device=preds.device)
        return index.long(), empty, empty
    unique, inverse = torch.unique(index.long(), sorted=True, return_inverse=True)
    n = unique.numel()
    preds = preds.double()
    target = target.double()
    counts = torch.zeros(n, dtype=torch.float64, device=preds.device).index_add_(
        0, inverse, torch.ones_like(preds)
    )
    pred_mean = (
        torch.zeros(n, dtype=torch.float64, device=preds.device).index_add_(0, inverse, preds) / counts
    )
    target_mean = (
        torch.zeros(n, dtype=torch.float64, device=preds.device).index_add_(0, inverse, target) / counts
    )
    spread = (target - target_mean[inverse]).abs()
    if spread.numel() and float(spread.max()) > 1e-5:
        bad = int(unique[inverse[int(spread.argmax())]])
        raise ValueError(
            f"image index {bad} appears with different targets in one metric: every crop/duplicate of an image "
            "must carry the same MOS. Check that the dataset's `index` is the position of the image in its dataset."
        )
    return unique, pred_mean, target_mean


def _is_constant(x: torch.Tensor) -> bool:
    return x.numel() < 2 or bool(torch.all(x == x[0]))


def _defined_correlation(name: str, preds: torch.Tensor, target: torch.Tensor) -> bool:
    """False (with a warning) where a correlation between ``preds`` and ``target`` is undefined."""
    if preds.numel() < 2:
        warnings.warn(
            f"{name}: fewer than 2 images ({preds.numel()}); reporting 0.0", UserWarning, stacklevel=3
        )
        return False
    if _is_constant(preds) or _is_constant(target):
        which = "predictions" if _is_constant(preds) else "targets"
        warnings.warn(
            f"{name}: constant {which} over {preds.numel()} images, the correlation is undefined; reporting 0.0",
            UserWarning,
            stacklevel=3,
        )
        return False
    return True


def srcc(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Spearman rank-order correlation (ties get average ranks), 0.0 where undefined."""
    if not _defined_correlation("SRCC", preds, target):
        return torch.zeros((), dtype=torch.float64, device=preds.device)
    return spearman_corrcoef(preds.double(), target.double())


def plcc(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson linear correlation without any mapping, 0.0 where undefined."""
    if not _defined_correlation("PLCC", preds, target):
        return torch.zeros((), dtype=torch.float64, device=preds.device)
    return pearson_corrcoef(preds.double(), target.double())


def krcc(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Kendall tau-b (tie-corrected, as scipy's default), 0.0 where undefined."""
    if not _defined_correlation("KRCC", preds, target):
        return torch.zeros((), dtype=torch.float64, device=preds.device)
    return kendall_rank_corrcoef(preds.double(), target.double(), variant="b")


def rmse(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root mean squared error on the normalized MOS scale (no mapping); NaN for zero images."""
    if preds.numel() == 0:
        return torch.full((), float("nan"), dtype=torch.float64, device=preds.device)
    return mean_squared_error(preds.double(), target.double(), squared=False)


# --------------------------------------------------------------------------------------------------------------
# Logistic mapping (VQEG) before PLCC
# --------------------------------------------------------------------------------------------------------------
def logistic_4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG FR-TV Phase II 4-parameter logistic: (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2."""
    z = np.clip(-(x - b3) / max(abs(b4), 1e-12), -500.0, 500.0)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def logistic_5(x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """Sheikh et al. (TIP 2006) 5-parameter logistic: b1 (1/2 - 1 / (1 + exp(b2 (x - b3)))) + b4 x + b5."""
    z = np.clip(b2 * (x - b3), -500.0, 500.0)
    return b1 * (0.5 - 1.0 / (1.0 + np.exp(z))) + b4 * x + b5


@dataclass(frozen=True)
class LogisticFit:
    """Result of fitting a logistic from predictions to MOS.

    ``kind`` is "4" or "5"; ``params`` are on the original scales (b1..b4 or b1..b5); ``ok`` is False when
    curve_fit failed and the fallback (a least-squares straight line, whose PLCC equals the raw PLCC) was used.
    """

    kind: str
    params: tuple[float, ...]
    ok: bool

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if not self.ok:
            slope, intercept = self.params
            return slope * x + intercept
        fn = logistic_4 if self.kind == "4" else logistic_5
        return fn(x, *self.params)


def _to_original_scale(
    kind: str, c: np.ndarray, mx: float, sx: float, my: float, sy: float
) -> tuple[float, ...]:
    """Map parameters fitted on standardized x' = (x - mx) / sx, y' = (y - my) / sy back to x and y."""
    if kind == "4":
        c1, c2, c3, c4 = c
        return (my + sy * c1, my + sy * c2, mx + sx * c3, sx * abs(c4))
    c1, c2, c3, c4, c5 = c
    return (sy * c1, c2 / sx, mx + sx * c3, sy * c4 / sx, my + sy * c5 - sy * c4 * mx / sx)


def fit_logistic(
    preds: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray, kind: str = "4"
) -> LogisticFit:
    """Fit the VQEG 4-parameter (``kind="4"``) or the 5-parameter logistic mapping ``preds`` onto ``target``.

    The fit runs on standardized x and y (so the initial guesses do not depend on the MOS scale) from several
    starting points, keeping the least-squares best. If every start fails, or the data are constant, it falls back
    to a straight line and warns; the fallback's PLCC is then the raw PLCC.
    """
    if kind not in ("4", "5"):
        raise ValueError(f"logistic kind must be '4' or '5', got {kind!r}")
    x = np.asarray(preds, dtype=np.float64).ravel()
    y = np.asarray(target, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"fit_logistic: preds {x.shape} and target {y.shape} differ in length")
    mx, sx, my, sy = (
        float(x.mean()) if x.size else 0.0,
        float(x.std()),
        float(y.mean()) if y.size else 0.0,
        float(y.std()),
    )
    if x.size <= int(kind) or sx == 0.0 or sy == 0.0:
        warnings.warn(
            f"{kind}-parameter logistic fit impossible on {x.size} points (constant or too few); "
            "using a straight line instead (fitted PLCC = raw PLCC)",
            UserWarning,
            stacklevel=2,
        )
        return _linear_fallback(kind, x, y)
    xs, ys = (x - mx) / sx, (y - my) / sy
    sign = 1.0 if np.corrcoef(xs, ys)[0, 1] >= 0 else -1.0
    hi, lo = float(ys.max()), float(ys.min())
    if kind == "4":
        fn = logistic_4
        starts = [
            [hi, lo, 0.0, 1.0] if sign > 0 else [lo, hi, 0.0, 1.0],
            [hi, lo, 0.0, 0.3] if sign > 0 else [lo, hi, 0.0, 0.3],
            [2 * hi, 2 * lo, 0.0, 2.0] if sign > 0 else [2 * lo, 2 * hi, 0.0, 2.0],
        ]
    else:
        fn = logistic_5
        starts = [
            # offsets start at exactly 0.0 (the standardized mean): MINPACK's finite-difference step is
            # relative to a parameter's value, so a start like 1e-16 would freeze that parameter
            [sign * (hi - lo), 1.0, 0.0, 0.0, 0.0],
            [sign * (hi - lo), 3.0, 0.0, 0.0, 0.0],
            [sign * 0.5 * (hi - lo), 1.0, 0.0, sign * 0.5, 0.0],
        ]
    best: tuple[float, np.ndarray] | None = None
    for p0 in starts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                params, _ = curve_fit(fn, xs, ys, p0=p0, maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((fn(xs, *params) - ys) ** 2))
        if np.all(np.isfinite(params)) and math.isfinite(sse) and (best is None or sse < best[0]):
            best = (sse, params)
    if best is None:
        warnings.warn(
            f"{kind}-parameter logistic fit did not converge on {x.size} points; "
            "using a straight line instead (fitted PLCC = raw PLCC)",
            UserWarning,
            stacklevel=2,
        )
        return _linear_fallback(kind, x, y)
    return LogisticFit(kind=kind, params=_to_original_scale(kind, best[1], mx, sx, my, sy), ok=True)


def _linear_fallback(kind: str, x: np.ndarray, y: np.ndarray) -> LogisticFit:
    if x.size >= 2 and x.std() > 0:
        slope, intercept = np.polyfit(x, y, 1)
    else:
        slope, intercept = 0.0, float(y.mean()) if y.size else 0.0
    return LogisticFit(kind=kind, params=(float(slope), float(intercept)), ok=False)


def fitted_plcc(preds: torch.Tensor, target: torch.Tensor, kind: str = "4") -> torch.Tensor:
    """|PLCC| between the logistic-mapped predictions and the target, with the sign of the raw PLCC.

    0.0 where undefined (constant predictions or targets, fewer than 2 images).
    """
    if not _defined_correlation(f"PLCC after {kind}-parameter logistic", preds, target):
        return torch.zeros((), dtype=torch.float64, device=preds.device)
    x = preds.detach().double().cpu().numpy()
    y = target.detach().double().cpu().numpy()
    mapped = fit_logistic(x, y, kind=kind)(x)
    if np.all(mapped == mapped[0]):
        warnings.warn("fitted PLCC: the fitted curve is flat, reporting 0.0", UserWarning, stacklevel=2)
        return torch.zeros((), dtype=torch.float64, device=preds.device)
    r = pearson_corrcoef(torch.from_numpy(mapped), torch.from_numpy(y))
    # The mapping absorbs the direction (a decreasing fit makes any anti-correlated predictor look good);
    # keep the sign of the raw correlation so that an inverted model reads negative, as its SRCC does.
    sign = 1.0 if float(np.corrcoef(x, y)[0, 1]) >= 0 else -1.0
    return (sign * r.abs()).to(preds.device)


# --------------------------------------------------------------------------------------------------------------
# torchmetrics Metric classes
# --------------------------------------------------------------------------------------------------------------
class ImageLevelMetric(Metric):
    """Base: keeps (index, prediction, target) triples, groups them per image at compute.

    ``update(preds, target, index)``: preds (B,) or (B, K) with K crops per image (averaged), target (B,),
    index (B,) int. States are cat-lists, so DDP gathers every rank's triples before grouping.
    """

    is_differentiable = False
    higher_is_better: bool | None = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> None:
        preds = preds.detach().float()
        if preds.ndim == 2:  # (B, K) crops -> (B*K,), every crop tagged with its image's index and target
            k = preds.shape[1]
            index = index.reshape(-1, 1).expand(-1, k)
            target = target.reshape(-1, 1).expand(-1, k)
        preds = preds.flatten()
        target = target.detach().float().flatten()
        index = index.detach().long().flatten()
        if not preds.numel() == target.numel() == index.numel():
            raise ValueError(
                f"{type(self).__name__}.update: preds ({preds.numel()}), target ({target.numel()}) and index "
                f"({index.numel()}) must describe the same images"
            )
        self.index.append(index)
        self.preds.append(preds)
        self.target.append(target)

    def grouped(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(index, prediction, target) per image, sorted by index (float64)."""
        # cat-list states are lists before a DDP sync and one concatenated tensor after it
        if isinstance(self.index, list) and not self.index:
            empty = torch.zeros(0, dtype=torch.float64, device=self.device)
            return torch.zeros(0, dtype=torch.long, device=self.device), empty, empty
        return group_by_image(dim_zero_cat(self.index), dim_zero_cat(self.preds), dim_zero_cat(self.target))


class SRCC(ImageLevelMetric):
    """Spearman rank-order correlation over images."""

    def compute(self) -> torch.Tensor:
        _, p, t = self.grouped()
        return srcc(p, t).float()


class PLCC(ImageLevelMetric):
    """Pearson linear correlation over images, without a mapping."""

    def compute(self) -> torch.Tensor:
        _, p, t = self.grouped()
        return plcc(p, t).float()


class KRCC(ImageLevelMetric):
    """Kendall tau-b over images."""

    def compute(self) -> torch.Tensor:
        _, p, t = self.grouped()
        return krcc(p, t).float()


class RMSE(ImageLevelMetric):
    """Root mean squared error over images (normalized MOS scale, no mapping)."""

    higher_is_better = False

    def compute(self) -> torch.Tensor:
        _, p, t = self.grouped()
        return rmse(p, t).float()


class FittedPLCC(ImageLevelMetric):
    """PLCC after a logistic mapping fitted with scipy at compute (``kind`` "4": VQEG, "5": Sheikh et al.)."""

    def __init__(self, kind: str = "4", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kind not in ("4", "5"):
            raise ValueError(f"FittedPLCC kind must be '4' or '5', got {kind!r}")
        self.kind = kind

    def compute(self) -> torch.Tensor:
        _, p, t = self.grouped()
        return fitted_plcc(p, t, kind=self.kind).float()


class ImagePredictions(ImageLevelMetric):
    """Not a score: gathers the per-image predictions (sorted by index) so that they can be written out."""

    def compute(self) -> dict[str, torch.Tensor]:
        index, p, t = self.grouped()
        return {"index": index, "prediction": p, "mos": t}


def build_iqa_metrics(prefix: str = "", fit_5_parameter: bool = False) -> MetricCollection:
    """One collection per stage / test set: srcc, plcc, krcc, rmse, plcc_fit (4-param), plcc_fit5 if asked."""
    metrics: dict[str, Metric] = {
        "srcc": SRCC(),
        "plcc": PLCC(),
        "krcc": KRCC(),
        "rmse": RMSE(),
        "plcc_fit": FittedPLCC(kind="4"),
    }
    if fit_5_parameter:
        metrics["plcc_fit5"] = FittedPLCC(kind="5")
    # compute_groups=False: every member has the same states; sharing them would save memory but torchmetrics'
    # group detection compares states after the first update, which is brittle with cat-lists.
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)


def best_tracker() -> MaxMetric:
    """Running maximum of a validation score (``val/srcc_best``); NaN values are ignored with a warning."""
    return MaxMetric(nan_strategy="warn")


# --------------------------------------------------------------------------------------------------------------
# The per-run metrics file that mfe-iqa-report aggregates
# --------------------------------------------------------------------------------------------------------------
def _plain_float_dict(name: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            out[str(key)] = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"write_run_metrics: {name}[{key!r}] = {value!r} is not a number") from err
    return out


def write_run_metrics(
    output_dir: str | Path,
    *,
    train_db: str,
    split_index: int | None,
    model: str | None,
    experiment: str | None,
    test: Mapping[str, Mapping[str, Any]],
    val: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<output_dir>/metrics.json``, the one file per run that ``mfe-iqa-report`` reads.

    ``test``: {"<test database>": {"srcc", "plcc", "plcc_fit", "krcc", "rmse", ...}}, the training database's own
    test split under its own name. ``val``: validation metrics without prefix ({"srcc": ...}); when not given they
    are taken from ``metrics`` (a flat dict of logged values such as ``trainer.callback_metrics``: its ``val/*``
    entries, i.e. the last validation epoch plus ``srcc_best``), and stay None for a run without validation.
    ``metrics`` is also kept whole under "logged". ``extra`` holds anything else (e.g. the checkpoint path).
    """
    logged = _plain_float_dict("metrics", metrics) if metrics else {}
    if val is None and logged:
        val = {k.removeprefix("val/"): v for k, v in logged.items() if k.startswith("val/")} or None
    payload = {
        "format": RUN_METRICS_FORMAT,
        "train_db": str(train_db),
        "split_index": None if split_index is None else int(split_index),
        "model": None if model is None else str(model),
        "experiment": None if experiment is None else str(experiment),
        "val": None if val is None else _plain_float_dict("val", val),
        "test": {str(db): _plain_float_dict(f"test[{db!r}]", m) for db, m in test.items()},
    }
    if logged:
        payload["logged"] = logged
    if extra:
        payload["extra"] = json.loads(json.dumps(dict(extra), default=str))
    path = Path(output_dir) / RUN_METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n")
    return path


def read_run_metrics(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`write_run_metrics`, with a clear error for anything else."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != RUN_METRICS_FORMAT:
        raise ValueError(
            f"{path}: not an mfe-iqa run metrics file (expected 'format': {RUN_METRICS_FORMAT!r}); "
            "these files are written by mfe_iqa.metrics.write_run_metrics at the end of a training run"
        )
    for key in ("train_db", "test"):
        if key not in payload:
            raise ValueError(f"{path}: run metrics file lacks the key {key!r}")
    return payload
