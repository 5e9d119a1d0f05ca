"""Whole-image read-out of the pre-trained DAN, blended with the fitted network's test predictions.

The IQA fit sees crops of downsized images (e.g. 128-px crops of a 160-px short side on LIVE Challenge: a CPU
budget). A downsizing removes first what authentic distortions are made of (sensor noise, mild blur, JPEG
blocks), and a crop sees a fraction of the photograph. The read-out sees the whole photograph at its own
resolution: the pooled stage statistics (``mfe_iqa.probe.pooled_features``) of the frozen pre-trained DAN at
full and half scale, a ridge regressor fitted on the training images' MOS, alpha chosen on val (grouped CV on
train without val): the linear probe of ``mfe-iqa-probe``, run inside the training job on the job's own split.
The final score is ``(1 - weight) * network + weight * read-out`` on the normalized MOS scale, both being
regressions of the same normalized MOS (no test statistic enters the blend).

No test image takes part in fitting or choosing anything; the DAN is the file the job pre-trained on its
training split (``model.dan.pretrained_ckpt``). Written under ``<run>/readout/``: ``predictions_test.csv``
(path, mos, network, readout, blend per test image), ``alpha_curve.csv``, ``summary.json`` and ``readout.pt``:
the fitted read-out as a model (:class:`ReadoutModel`: the DAN's weights, its views, the feature settings, the
ridge and the blend weight), which ``load_model(ckpt, readout=...)`` and ``mfe-iqa-predict readout=...`` use to
score new images the way the job's blend scored its test images.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mfe_iqa.errors import UserError
from mfe_iqa.probe import DEFAULT_LOG_EPS

log = logging.getLogger("mfe_iqa.readout")

# the data keys a read-out may change (the image sizes it reads and how it views them); the database, its root
# and the split are the job's own
READOUT_DATA_KEYS = ("short_side", "cache_dir", "test_mode", "crop_size", "test_crops")
READOUT_FORMAT = "mfe_iqa.readout/1"


class ReadoutError(UserError, ValueError):
    """A read-out that cannot run as configured; the message names the key and says what to do."""


@dataclass
class ReadoutSettings:
    weight: float = 0.5
    scales: Sequence[float] = (1.0, 0.5)
    stages: Sequence[int] | None = None
    pooling: Sequence[str] = ("mean", "std")
    transform: str = "log"
    log_eps: float = DEFAULT_LOG_EPS
    alphas: Sequence[float] | None = None
    cv_folds: int = 5
    data: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ReadoutSettings:
        from mfe_iqa.probe import FEATURE_TRANSFORMS, POOLINGS

        weight = float(cfg.get("weight", 0.5))
        if not 0.0 <= weight <= 1.0:
            raise ReadoutError(
                f"readout.weight must be in [0, 1] (0: the network alone, 1: the read-out alone), got {weight}"
            )
        scales = [float(s) for s in cfg.get("scales") or (1.0, 0.5)]
        if any(not s > 0 for s in scales):
            raise ReadoutError(f"readout.scales must be positive numbers (e.g. [1.0, 0.5]), got {scales}")
        pooling = [str(p) for p in cfg.get("pooling") or ("mean", "std")]
        if any(p not in POOLINGS for p in pooling):
            raise ReadoutError(f"readout.pooling must be a non-empty list of {list(POOLINGS)}, got {pooling}")
        transform = str(cfg.get("transform") or "log")
        if transform not in FEATURE_TRANSFORMS:
            raise ReadoutError(
                f"readout.transform must be one of {list(FEATURE_TRANSFORMS)}, got {transform!r}"
            )
        log_eps = float(cfg.get("log_eps", DEFAULT_LOG_EPS))
        if not log_eps > 0:
            raise ReadoutError(
                f"readout.log_eps must be > 0 (log(x + eps) of the pooled features), got {log_eps}"
            )
        alphas = cfg.get("alphas")
        if alphas is not None and (not list(alphas) or any(not float(a) > 0 for a in alphas)):
            raise ReadoutError(
                f"readout.alphas must be null or a list of positive numbers, got {list(alphas)}"
            )
        data = dict(cfg.get("data") or {})
        unknown = sorted(set(data) - set(READOUT_DATA_KEYS))
        if unknown:
            raise ReadoutError(
                f"readout.data may set {list(READOUT_DATA_KEYS)} (how the read-out views the job's images), "
                f"got {unknown}: the database and the split are the job's own"
            )
        stages = cfg.get("stages")
        return cls(
            weight=weight,
            scales=scales,
            stages=None if stages is None else [int(s) for s in stages],
            pooling=pooling,
            transform=transform,
            log_eps=log_eps,
            alphas=None if alphas is None else [float(a) for a in alphas],
            cv_folds=int(cfg.get("cv_folds", 5)),
            data=data,
        )


class ReadoutModel:
    """A fitted read-out as a model: the frozen DAN, how it views an image (``views``: a ``ViewSpec``, e.g. the
    whole image at its own resolution), the pooled-feature settings, the feature transform, the ridge and the
    blend weight. ``score_views`` gives the read-out's prediction (normalized MOS scale) of each image from its
    views; ``blend`` the final score with the network's. Saved as ``readout.pt`` (``save`` / ``load``)."""

    def __init__(
        self,
        dan: torch.nn.Module,
        views: Any,
        scales: Sequence[float],
        stages: Sequence[int],
        pooling: Sequence[str],
        transform: str,
        log_eps: float,
        ridge: Any,
        weight: float,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.dan = dan.eval()
        self.views = views
        self.scales = [float(x) for x in scales]
        self.stages = [int(x) for x in stages]
        self.pooling = [str(x) for x in pooling]
        self.transform = str(transform)
        self.log_eps = float(log_eps)
        self.ridge = ridge
        self.weight = float(weight)
        self.info = dict(info or {})

    @property
    def device(self) -> torch.device:
        return next(self.dan.parameters()).device

    def to(self, device: str | torch.device) -> ReadoutModel:
        self.dan.to(device)
        return self

    @torch.inference_mode()
    def score_views(self, views: torch.Tensor | Sequence[torch.Tensor]) -> np.ndarray:
        """(B, K, 3, h, w), or a list of B (K_i, 3, h_i, w_i) views in [0, 1] -> (B,) read-out predictions: per
        image the mean of its views' pooled features (as ``extract_features``), transformed, through the ridge."""
        from mfe_iqa.probe import pooled_features, predict_ridge, transform_features

        rows = []
        for v in views if not isinstance(views, torch.Tensor) else views.unbind(0):
            f = pooled_features(self.dan, v.to(self.device).float(), self.scales, self.stages, self.pooling)
            rows.append(f.double().mean(dim=0).cpu().numpy())
        if not rows:
            return np.zeros(0)
        x = transform_features(np.stack(rows), self.transform, self.log_eps)
        return predict_ridge(self.ridge, x)

    def score_files(self, paths: Sequence[str], batch_size: int = 8, num_workers: int = 0) -> np.ndarray:
        """The read-out's prediction of each file, in order; a file that cannot be read is an error naming it."""
        from mfe_iqa.inference.scoring import make_file_loader

        out = np.full(len(paths), np.nan)
        for batch in make_file_loader(list(paths), self.views, batch_size, num_workers):
            if batch["failed"]:
                index, reason = batch["failed"][0]
                raise ReadoutError(f"read-out: cannot read {paths[index]}: {reason}")
            out[batch["index"]] = self.score_views(batch["views"])
        return out

    def blend(self, network: np.ndarray, readout: np.ndarray) -> np.ndarray:
        return blend(network, readout, self.weight)

    def save(self, path: str | Path) -> None:
        from dataclasses import asdict

        from mfe_iqa.models.dan import DAN_CKPT_FORMAT

        torch.save(
            {
                "format": READOUT_FORMAT,
                "dan": {
                    "format": DAN_CKPT_FORMAT,
                    "backbone": self.dan.backbone_name,
                    "state_dict": {k: v.detach().cpu() for k, v in self.dan.backbone.state_dict().items()},
                },
                "views": asdict(self.views),
                "scales": self.scales,
                "stages": self.stages,
                "pooling": self.pooling,
                "transform": self.transform,
                "log_eps": self.log_eps,
                "ridge": asdict(self.ridge),  # mean, scale, weights, intercept, alpha
                "weight": self.weight,
                "info": self.info,
            },
            path,
        )

    @classmethod
    def load(cls, path: str | Path, weight: float | None = None) -> ReadoutModel:
        """A ``readout.pt`` written by a training job (``<run>/readout/readout.pt``); ``weight`` overrides the
        blend weight it was written with (0: the network alone, 1: the read-out alone)."""
        from mfe_iqa.inference.scoring import ViewSpec
        from mfe_iqa.models.dan import DistortionAwareNetwork
        from mfe_iqa.probe import RidgeModel

        path = Path(path)
        if not path.is_file():
            raise ReadoutError(
                f"read-out file '{path}' does not exist: give the readout.pt of a training run with "
                "readout.enabled (<run>/readout/readout.pt)"
            )
        obj = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(obj, dict) or obj.get("format") != READOUT_FORMAT:
            raise ReadoutError(
                f"'{path}' is not a read-out file (format '{READOUT_FORMAT}', written by mfe-iqa-train as "
                "<run>/readout/readout.pt)"
            )
        dan = DistortionAwareNetwork(backbone=obj["dan"]["backbone"])
        dan.backbone.load_state_dict(obj["dan"]["state_dict"])
        w = obj["weight"] if weight is None else float(weight)
        if not 0.0 <= w <= 1.0:
            raise ReadoutError(f"the read-out's blend weight must be in [0, 1], got {w}")
        return cls(
            dan,
            ViewSpec(**obj["views"]),
            obj["scales"],
            obj["stages"],
            obj["pooling"],
            obj["transform"],
            obj["log_eps"],
            RidgeModel(**obj["ridge"]),
            w,
            obj.get("info"),
        )


def blend(network: np.ndarray, readout: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * network + weight * readout``, element-wise (normalized MOS scale)."""
    return (1.0 - weight) * np.asarray(network, dtype=np.float64) + weight * np.asarray(
        readout, dtype=np.float64
    )


def network_predictions_by_item(
    rows: Mapping[str, np.ndarray], items: Sequence[Any], what: str
) -> np.ndarray:
    """The network's per-image test predictions (``IQASystem.test_predictions[name]``: index, prediction, mos) in
    the order of ``items``; every item exactly once, its MOS the item's (else the index order is broken)."""
    index = np.asarray(rows["index"]).astype(int)
    if len(index) != len(items) or sorted(index.tolist()) != list(range(len(items))):
        raise RuntimeError(
            f"{what}: the test gave {len(index)} predictions for {len(items)} test images: the read-out blends "
            "per image and needs every test image scored once"
        )
    pred = np.empty(len(items), dtype=np.float64)
    pred[index] = np.asarray(rows["prediction"], dtype=np.float64)
    mos = np.empty(len(items), dtype=np.float64)
    mos[index] = np.asarray(rows["mos"], dtype=np.float64)
    if not np.allclose(mos, [it.mos for it in items], atol=1e-5):
        raise RuntimeError(
            f"{what}: the MOS gathered at test time does not match the test items' (index order)"
        )
    return pred


def run_readout(
    dan_ckpt: str | Path,
    readout_dm: Any,
    job_items: Mapping[str, Sequence[Any]],
    network_test: Mapping[str, np.ndarray],
    settings: ReadoutSettings,
    out: Path,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Fit the read-out on ``readout_dm``'s training items (set up, the job's split, the read-out's views), blend
    it with ``network_test`` (the job's test predictions) and write ``out``'s files. ``job_items``: the job's
    own train/val/test items, which ``readout_dm``'s must repeat path for path. Returns the summary."""
    import pandas as pd

    from mfe_iqa.inference.scoring import ViewSpec
    from mfe_iqa.models.dan import DistortionAwareNetwork, load_dan_file
    from mfe_iqa.probe import DEFAULT_ALPHAS, extract_features, probe_split, score_metrics, transform_features

    t0 = time.monotonic()
    parts = {p: list(getattr(readout_dm, f"{p}_items")) for p in ("train", "val", "test")}
    for part, items in parts.items():
        mine = [str(it.path) for it in items]
        theirs = [str(it.path) for it in job_items[part]]
        if mine != theirs:
            first = (
                next((a for a, b in zip(mine, theirs) if a != b), None) if len(mine) == len(theirs) else None
            )
            raise RuntimeError(
                f"read-out: its {part} part ({len(mine)} images) is not the job's ({len(theirs)} images)"
                + (f", e.g. {first}" if first else "")
                + ": the read-out must use the job's split (split.file=<run>/split.csv)"
            )
    if len(parts["train"]) < 2 or not parts["test"]:
        raise ReadoutError(
            f"read-out: {len(parts['train'])} training and {len(parts['test'])} test images; it needs at least 2 "
            "and 1 (split.ratios)"
        )
    dan_ckpt = Path(dan_ckpt)
    if not dan_ckpt.is_file():
        raise ReadoutError(
            f"read-out: the pre-trained DAN '{dan_ckpt}' does not exist (model.dan.pretrained_ckpt)"
        )
    backbone = load_dan_file(str(dan_ckpt))["backbone"]
    dan = DistortionAwareNetwork(backbone=backbone, pretrained_ckpt=str(dan_ckpt)).to(device)
    n_stages = len(dan.channels)
    stages = list(range(n_stages)) if settings.stages is None else list(settings.stages)
    if not stages or any(not -n_stages <= s < n_stages for s in stages):
        raise ReadoutError(f"readout.stages {stages}: '{backbone}' has {n_stages} stages")

    # one pass over every image of the split; the ridge, its alpha and the metrics are mfe-iqa-probe's
    items = [*parts["train"], *parts["val"], *parts["test"]]
    loader = readout_dm.eval_dataloader(items)
    batches = ({k: v.to(device) if k == "image" else v for k, v in b.items()} for b in loader)
    x = transform_features(
        extract_features(dan, batches, len(items), settings.scales, stages, settings.pooling),
        settings.transform,
        settings.log_eps,
    )
    n_tr, n_va = len(parts["train"]), len(parts["val"])
    rows = {"train": range(n_tr), "val": range(n_tr, n_tr + n_va), "test": range(n_tr + n_va, len(items))}
    alphas = list(settings.alphas or DEFAULT_ALPHAS)
    result = probe_split(x, items, rows, alphas, settings.cv_folds, seed)
    if result.at_grid_edge:
        log.warning("read-out: alpha %.3g is at the edge of the grid [%.3g, %.3g]: widen readout.alphas",
                    result.alpha, min(alphas), max(alphas))  # fmt: skip
    readout_test = result.test_pred
    network = network_predictions_by_item(network_test, parts["test"], "read-out")
    blended = blend(network, readout_test, settings.weight)
    metrics = {
        "network": score_metrics(network, result.test_mos),
        "readout": result.test,
        "blend": score_metrics(blended, result.test_mos),
    }
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "path": [it.path for it in parts["test"]],
            "mos": result.test_mos,
            "network": network,
            "readout": readout_test,
            "blend": blended,
        }
    ).to_csv(out / "predictions_test.csv", index=False)
    pd.DataFrame(result.alpha_curve).to_csv(out / "alpha_curve.csv", index=False)
    et = readout_dm.eval_transform
    views = ViewSpec(et.mode, int(et.num_crops), int(et.crop_size), int(et.crop_seed), readout_dm.short_side)
    ReadoutModel(
        dan, views, settings.scales, stages, settings.pooling, settings.transform, settings.log_eps,
        result.model, settings.weight,
        info={"dan_ckpt": str(dan_ckpt), "alpha": result.alpha, "counts": {p: len(v) for p, v in parts.items()}},
    ).save(out / "readout.pt")  # fmt: skip
    summary = {
        "dan_ckpt": str(dan_ckpt),
        "backbone": backbone,
        "weight": settings.weight,
        "scales": list(settings.scales),
        "stages": stages,
        "pooling": list(settings.pooling),
        "transform": settings.transform,
        "log_eps": settings.log_eps if settings.transform == "log" else None,
        "data": dict(settings.data),
        "test_mode": str(readout_dm.eval_transform.mode),
        "feature_dim": int(x.shape[1]),
        "alpha": result.alpha,
        "selection": result.selection,
        "at_grid_edge": bool(result.at_grid_edge),
        "counts": {p: len(v) for p, v in parts.items()},
        "val_readout": result.val,
        "test": metrics,
        "model_file": str(out / "readout.pt"),
        "seconds": round(time.monotonic() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info(
        "Read-out (%s at %s, whole images, scales %s): alpha %.3g by %s; test SRCC network %.3f, read-out %.3f, "
        "blend (weight %.2f) %.3f; %.1f s -> %s",
        backbone, dan_ckpt, list(settings.scales), result.alpha, result.selection, metrics["network"]["srcc"],
        metrics["readout"]["srcc"], settings.weight, metrics["blend"]["srcc"], summary["seconds"], out,
    )  # fmt: skip
    return summary
