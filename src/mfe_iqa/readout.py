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
training split (``model.dan.pretrained_ckpt``). With ``readout.extra_dans`` (or ``extra_dan_ckpts``) more DANs,
pre-trained the same way with other seeds, read the same images; each gets its own ridge (its own alpha) and the
read-out is the mean of their predictions. Written under ``<run>/readout/``: ``predictions_test.csv``
(path, mos, network, readout, blend per test image), ``alpha_curve.csv``, ``summary.json`` and ``readout.pt``:
the fitted read-out as a model (:class:`ReadoutModel`: the DANs' weights, its views, the feature settings, one
ridge per DAN and the blend weight), which ``load_model(ckpt, readout=...)`` and ``mfe-iqa-predict readout=...`` use to
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
READOUT_FORMAT = "mfe_iqa.readout/2"  # /2: a list of DANs ("dans"); /1 (one "dan") still loads
READOUT_FORMATS = ("mfe_iqa.readout/1", READOUT_FORMAT)


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
    extra_dans: int = 0
    extra_dan_ckpts: Sequence[str] = ()

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
        extra_dans = cfg.get("extra_dans", 0)
        if isinstance(extra_dans, bool) or not isinstance(extra_dans, int) or extra_dans < 0:
            raise ReadoutError(
                f"readout.extra_dans must be a whole number >= 0 (DANs pre-trained beside the model's, for the "
                f"read-out only), got {extra_dans!r}"
            )
        extra_ckpts = cfg.get("extra_dan_ckpts") or []
        if isinstance(extra_ckpts, str) or not all(isinstance(c, str) and c for c in extra_ckpts):
            raise ReadoutError(
                f"readout.extra_dan_ckpts must be a list of dan.pt paths (e.g. ['<run>/dan_pretrain_2/dan.pt']), "
                f"got {extra_ckpts!r}"
            )
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
            extra_dans=extra_dans,
            extra_dan_ckpts=[str(c) for c in extra_ckpts],
        )


def readout_features(
    dans: Sequence[torch.nn.Module],
    images: torch.Tensor,
    scales: Sequence[float],
    stages: Sequence[int],
    pooling: Sequence[str],
) -> torch.Tensor:
    """(V, 3, h, w) views -> (V, D): ``pooled_features`` of each DAN in turn, concatenated (DAN-major: one pass
    over the images gives every DAN's columns; ``split_by_dan`` takes them apart)."""
    from mfe_iqa.probe import pooled_features

    return torch.cat([pooled_features(d, images, scales, stages, pooling) for d in dans], dim=1)


def split_by_dan(features: np.ndarray, num_dans: int) -> list[np.ndarray]:
    """(N, num_dans * D) columns of ``readout_features`` -> num_dans (N, D) blocks, one per DAN."""
    if features.shape[1] % num_dans:
        raise RuntimeError(f"read-out: {features.shape[1]} feature columns do not split into {num_dans} DANs")
    return np.split(features, num_dans, axis=1)


class ReadoutModel:
    """A fitted read-out as a model: the frozen DANs (``dans``: the model's pre-trained DAN first, then any extra
    DANs pre-trained beside it, ``readout.extra_dans``), how it views an image (``views``: a ``ViewSpec``, e.g. the
    whole image at its own resolution), the pooled-feature settings, the feature transform, one ridge per DAN
    (``ridges``) and the blend weight. The read-out's prediction is the mean of the DANs' ridge predictions.
    ``score_views`` gives it (normalized MOS scale) for each image from its views; ``blend`` the final score with
    the network's. Saved as ``readout.pt`` (``save`` / ``load``)."""

    def __init__(
        self,
        dans: torch.nn.Module | Sequence[torch.nn.Module],
        views: Any,
        scales: Sequence[float],
        stages: Sequence[int],
        pooling: Sequence[str],
        transform: str,
        log_eps: float,
        ridges: Any,
        weight: float,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.dans = [d.eval() for d in ([dans] if isinstance(dans, torch.nn.Module) else dans)]
        if not self.dans:
            raise ReadoutError("a read-out needs at least one DAN")
        self.views = views
        self.scales = [float(x) for x in scales]
        self.stages = [int(x) for x in stages]
        self.pooling = [str(x) for x in pooling]
        self.transform = str(transform)
        self.log_eps = float(log_eps)
        self.ridges = list(ridges) if isinstance(ridges, list | tuple) else [ridges]
        if len(self.ridges) != len(self.dans):
            raise ReadoutError(
                f"a read-out needs one ridge per DAN, got {len(self.ridges)} for {len(self.dans)}"
            )
        self.weight = float(weight)
        self.info = dict(info or {})
        self._fingerprints: list[str] | None = None

    @property
    def dan(self) -> torch.nn.Module:
        """The model's pre-trained DAN (the first): the one ``check_pairing`` matches with the checkpoint."""
        return self.dans[0]

    @property
    def device(self) -> torch.device:
        return next(self.dan.parameters()).device

    def to(self, device: str | torch.device) -> ReadoutModel:
        for d in self.dans:
            d.to(device)
        return self

    @torch.inference_mode()
    def score_views(self, views: torch.Tensor | Sequence[torch.Tensor]) -> np.ndarray:
        """(B, K, 3, h, w), or a list of B (K_i, 3, h_i, w_i) views in [0, 1] -> (B,) read-out predictions: per
        image the mean of its views' pooled features (as ``extract_features``) of each DAN, transformed, through
        that DAN's ridge; the mean over the DANs."""
        from mfe_iqa.probe import predict_ridge, transform_features

        rows = []
        for v in views if not isinstance(views, torch.Tensor) else views.unbind(0):
            f = readout_features(self.dans, v.to(self.device).float(), self.scales, self.stages, self.pooling)
            rows.append(f.double().mean(dim=0).cpu().numpy())
        if not rows:
            return np.zeros(0)
        x = transform_features(np.stack(rows), self.transform, self.log_eps)
        return np.mean(
            [predict_ridge(r, b) for r, b in zip(self.ridges, split_by_dan(x, len(self.dans)), strict=True)],
            axis=0,
        )

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

    @property
    def fingerprints(self) -> list[str]:
        """``dan_fingerprint`` of each DAN this read-out reads with, in order."""
        from mfe_iqa.models.dan import dan_fingerprint

        if self._fingerprints is None:
            self._fingerprints = [dan_fingerprint(d.backbone.state_dict()) for d in self.dans]
        return self._fingerprints

    @property
    def fingerprint(self) -> str:
        """``dan_fingerprint`` of the model's pre-trained DAN (the first), which the run's checkpoint records."""
        return self.fingerprints[0]

    def check_pairing(
        self, net: torch.nn.Module, checkpoint: str = "the checkpoint", source: str = "readout.pt"
    ) -> str | None:
        """Check that ``net`` is the network of the run that wrote this read-out: its DAN started from the same
        pre-trained DAN (``net.dan.pretrained_fingerprint``, recorded in IQA checkpoints). Another run's pair is
        an error (its ridge and blend weight belong to another split and DAN); a network without a DAN, too (only
        models with a DAN write a read-out). Returns a warning when it cannot tell (a checkpoint written before the
        fingerprint was recorded), else None."""
        from mfe_iqa.systems.iqa import pretrained_dan_fingerprint

        fix = (
            "give the readout.pt of the checkpoint's own run (<run>/readout/readout.pt beside <run>/checkpoints/), "
            "or readout_check=false to blend the two anyway"
        )
        if getattr(net, "dan", None) is None:
            raise ReadoutError(
                f"{source} blends a read-out of a pre-trained DAN with a network, but {checkpoint}'s network has no "
                f"DAN: it is not the network of the run that wrote {source} (only models with a DAN write one); {fix}"
            )
        theirs = pretrained_dan_fingerprint(net)
        if theirs is None:
            return (
                f"cannot check that {source} and {checkpoint} come from the same run: the checkpoint records no "
                "pre-trained DAN (written before mfe-iqa recorded it, or its DAN was not pre-trained)"
            )
        if theirs != self.fingerprint:
            raise ReadoutError(
                f"{source} and {checkpoint} come from different runs: the read-out reads with the pre-trained DAN "
                f"{self.fingerprint}, the checkpoint's DAN started from {theirs}; {fix}"
            )
        return None

    def save(self, path: str | Path) -> None:
        from dataclasses import asdict

        from mfe_iqa.models.dan import DAN_CKPT_FORMAT

        torch.save(
            {
                "format": READOUT_FORMAT,
                "dans": [
                    {
                        "format": DAN_CKPT_FORMAT,
                        "backbone": d.backbone_name,
                        "state_dict": {k: v.detach().cpu() for k, v in d.backbone.state_dict().items()},
                    }
                    for d in self.dans
                ],
                "views": asdict(self.views),
                "scales": self.scales,
                "stages": self.stages,
                "pooling": self.pooling,
                "transform": self.transform,
                "log_eps": self.log_eps,
                "ridges": [asdict(r) for r in self.ridges],  # per DAN: mean, scale, weights, intercept, alpha
                "weight": self.weight,
                "info": {**self.info, "dan_fingerprints": self.fingerprints},
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
        if not isinstance(obj, dict) or obj.get("format") not in READOUT_FORMATS:
            raise ReadoutError(
                f"'{path}' is not a read-out file (format '{READOUT_FORMAT}', written by mfe-iqa-train as "
                "<run>/readout/readout.pt)"
            )
        dans = []
        for stored in obj["dans"] if "dans" in obj else [obj["dan"]]:
            dan = DistortionAwareNetwork(backbone=stored["backbone"])
            dan.backbone.load_state_dict(stored["state_dict"])
            dans.append(dan)
        w = obj["weight"] if weight is None else float(weight)
        if not 0.0 <= w <= 1.0:
            raise ReadoutError(f"the read-out's blend weight must be in [0, 1], got {w}")
        model = cls(
            dans,
            ViewSpec(**obj["views"]),
            obj["scales"],
            obj["stages"],
            obj["pooling"],
            obj["transform"],
            obj["log_eps"],
            [RidgeModel(**r) for r in (obj["ridges"] if "ridges" in obj else [obj["ridge"]])],
            w,
            obj.get("info"),
        )
        stored = model.info.get("dan_fingerprints")  # absent in files written before it was recorded
        if stored is not None and list(stored) != model.fingerprints:
            raise ReadoutError(
                f"'{path}': its DAN weights do not give the fingerprints it was written with ({list(stored)}, now "
                f"{model.fingerprints}): the file was altered or damaged; use the run's own copy or run the "
                "read-out again"
            )
        return model


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
    dan_ckpt: str | Path | Sequence[str | Path],
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
    own train/val/test items, which ``readout_dm``'s must repeat path for path. ``dan_ckpt``: the model's
    pre-trained DAN (``model.dan.pretrained_ckpt``), or a list of ``dan.pt`` files beginning with it (the extra
    DANs of ``readout.extra_dans``): each gets its own ridge and the read-out is their mean. Returns the summary."""
    import pandas as pd

    from mfe_iqa.inference.scoring import ViewSpec
    from mfe_iqa.models.dan import DistortionAwareNetwork, load_dan_file
    from mfe_iqa.probe import (
        DEFAULT_ALPHAS,
        item_rows,
        predict_ridge,
        probe_split,
        score_metrics,
        transform_features,
    )

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
    ckpts = [Path(p) for p in ([dan_ckpt] if isinstance(dan_ckpt, str | Path) else dan_ckpt)]
    if not ckpts:
        raise ReadoutError("read-out: no pre-trained DAN given (model.dan.pretrained_ckpt)")
    dans = []
    for k, ckpt in enumerate(ckpts):
        what = "model.dan.pretrained_ckpt" if k == 0 else "readout.extra_dan_ckpts"
        if not ckpt.is_file():
            raise ReadoutError(f"read-out: the pre-trained DAN '{ckpt}' does not exist ({what})")
        name = load_dan_file(str(ckpt))["backbone"]
        if dans and name != dans[0].backbone_name:
            raise ReadoutError(
                f"read-out: '{ckpt}' ({what}) holds a '{name}', the model's DAN '{ckpts[0]}' a "
                f"'{dans[0].backbone_name}': the read-out's DANs must share one backbone (pre-train them alike)"
            )
        dans.append(DistortionAwareNetwork(backbone=name, pretrained_ckpt=str(ckpt)).to(device).eval())
    dan, backbone = dans[0], dans[0].backbone_name
    n_stages = len(dan.channels)
    stages = list(range(n_stages)) if settings.stages is None else list(settings.stages)
    if not stages or any(not -n_stages <= s < n_stages for s in stages):
        raise ReadoutError(f"readout.stages {stages}: '{backbone}' has {n_stages} stages")

    # one pass over every image of the split; each DAN's ridge, its alpha and metrics are mfe-iqa-probe's
    items = [*parts["train"], *parts["val"], *parts["test"]]
    loader = readout_dm.eval_dataloader(items)
    batches = ({k: v.to(device) if k == "image" else v for k, v in b.items()} for b in loader)
    with torch.no_grad():
        features = item_rows(
            dan,
            batches,
            len(items),
            lambda v: readout_features(dans, v, settings.scales, stages, settings.pooling),
            "read-out feature extraction",
        )
    x = transform_features(features, settings.transform, settings.log_eps)
    n_tr, n_va = len(parts["train"]), len(parts["val"])
    rows = {"train": range(n_tr), "val": range(n_tr, n_tr + n_va), "test": range(n_tr + n_va, len(items))}
    alphas = list(settings.alphas or DEFAULT_ALPHAS)
    blocks = split_by_dan(x, len(dans))
    # one ridge per DAN, each with its own alpha (a ridge on all DANs' columns at once chose its alpha on 30 val
    # images less stably: README "Two DANs"); the read-out is the mean of their predictions
    results = [probe_split(b, items, rows, alphas, settings.cv_folds, seed) for b in blocks]
    for k, r in enumerate(results):
        if r.at_grid_edge:
            log.warning("read-out: DAN %d's alpha %.3g is at the edge of the grid [%.3g, %.3g]: widen readout.alphas",
                        k + 1, r.alpha, min(alphas), max(alphas))  # fmt: skip
    result = results[0]
    readout_test = np.mean([r.test_pred for r in results], axis=0)
    val_rows = list(rows["val"])
    val_readout = (
        score_metrics(
            np.mean(
                [predict_ridge(r.model, b[val_rows]) for r, b in zip(results, blocks, strict=True)], axis=0
            ),
            np.array([items[i].mos for i in val_rows], dtype=np.float64),
        )
        if result.selection == "val"
        else None
    )
    network = network_predictions_by_item(network_test, parts["test"], "read-out")
    blended = blend(network, readout_test, settings.weight)
    metrics = {
        "network": score_metrics(network, result.test_mos),
        "readout": score_metrics(readout_test, result.test_mos),
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
    pd.DataFrame([{"dan": k + 1, **row} for k, r in enumerate(results) for row in r.alpha_curve]).to_csv(
        out / "alpha_curve.csv", index=False
    )
    et = readout_dm.eval_transform
    views = ViewSpec(et.mode, int(et.num_crops), int(et.crop_size), int(et.crop_seed), readout_dm.short_side)
    ReadoutModel(
        dans, views, settings.scales, stages, settings.pooling, settings.transform, settings.log_eps,
        [r.model for r in results], settings.weight,
        info={"dan_ckpt": str(ckpts[0]), "dan_ckpts": [str(c) for c in ckpts], "alphas": [r.alpha for r in results],
              "counts": {p: len(v) for p, v in parts.items()}},
    ).save(out / "readout.pt")  # fmt: skip
    summary = {
        "dan_ckpt": str(ckpts[0]),
        "extra_dan_ckpts": [str(c) for c in ckpts[1:]],
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
        "alphas": [r.alpha for r in results],
        "selection": result.selection,
        "at_grid_edge": any(bool(r.at_grid_edge) for r in results),
        "counts": {p: len(v) for p, v in parts.items()},
        "val_readout": val_readout,
        "test": metrics,
        "model_file": str(out / "readout.pt"),
        "seconds": round(time.monotonic() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info(
        "Read-out (%s at %s, whole images, scales %s): alpha %s by %s; test SRCC network %.3f, read-out %.3f, "
        "blend (weight %.2f) %.3f; %.1f s -> %s",
        backbone, " + ".join(str(c) for c in ckpts), list(settings.scales),
        " / ".join(f"{r.alpha:.3g}" for r in results), result.selection, metrics["network"]["srcc"],
        metrics["readout"]["srcc"], settings.weight, metrics["blend"]["srcc"], summary["seconds"], out,
    )  # fmt: skip
    return summary
