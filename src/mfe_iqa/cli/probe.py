"""`mfe-iqa-probe`: linear probe of a frozen (pre-trained or random) DAN backbone on an IQA database.

The CONTRIQUE / Re-IQA / ARNIQA downstream protocol (``mfe_iqa.probe``): pooled features at full and half scale,
ridge regression fitted on train, alpha chosen on val, SRCC/PLCC on test; over one split or many seeded splits
of the same features (median and mean +- std, as those papers report). Writes into the run dir:

- ``metrics.json`` (one split) or ``split_<i>/metrics.json`` (each of ``split_indices``): the run-metrics format,
  so ``mfe-iqa-report`` aggregates probes like training runs;
- ``predictions_test.csv`` (``split_<i>/`` likewise): path, mos, prediction per test image;
- ``alpha_curve.csv``: split, alpha, val SRCC (or CV SRCC) for every alpha of the grid;
- ``probe_summary.json``: the settings, the chosen alphas, per-split and aggregate test metrics.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from mfe_iqa.cli.common import (
    CONF_DIR,
    ConfigError,
    configure_runtime,
    exit_on_user_error,
    hydra_choice,
    print_metrics_table,
    save_resolved_config,
    task_wrapper,
    write_json,
)
from mfe_iqa.data.items import IQAItem

log = logging.getLogger("mfe_iqa.probe")


def _real(path: str | Path, root: Path | None = None) -> str:
    p = Path(path)
    if not p.is_absolute() and root is not None:
        p = root / p
    return os.path.realpath(p)


def read_pretrain_list(path: str | Path) -> list[str]:
    """The files of a ``pretrain_images.csv`` (``role,path,gray``); in-memory synthetic contents are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"pretrain_images='{path}' does not exist: give the pretrain_images.csv of the DAN's run"
        )
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ConfigError(
                f"{path}: not a pretrain image list (expected a 'path' column, got {reader.fieldnames}); "
                "it is written by mfe-iqa-pretrain as <run>/pretrain_images.csv"
            )
        return [row["path"] for row in reader if row["path"] and not row["path"].startswith("dead_leaves:")]


def pretrain_overlap(
    pretrain_paths: Sequence[str], parts: dict[str, Sequence[IQAItem]], root: Path
) -> list[str]:
    """Val/test items the DAN's pre-training has seen: the same file, or a file named after the item's content
    (a synthetic database's pristine reference ``<content>.png``, an authentic image's own name)."""
    files = {_real(p) for p in pretrain_paths}
    names = {Path(p).name for p in pretrain_paths} | {Path(p).stem for p in pretrain_paths}
    found = []
    for part, items in parts.items():
        for it in items:
            if _real(it.path, root) in files:
                found.append(f"{part} image {it.path} (the same file)")
            elif str(it.content_id) in names:
                found.append(f"{part} image {it.path} (its content '{it.content_id}')")
    return found


def _resolve_pretrain_list(cfg: DictConfig) -> Path | None:
    setting = cfg.get("pretrain_images")
    if setting in (None, "", "none", "null"):
        return None
    if str(setting) == "auto":
        if not cfg.get("dan_ckpt"):
            return None
        candidate = Path(str(cfg.dan_ckpt)).parent / "pretrain_images.csv"
        return candidate if candidate.is_file() else None
    return Path(str(setting))


def build_backbone(cfg: DictConfig):
    """The DAN to probe: loaded from ``dan_ckpt``, or freshly initialized (seeded) when there is none."""
    import torch

    from mfe_iqa.models.dan import DistortionAwareNetwork, load_dan_file

    ckpt, name = cfg.get("dan_ckpt"), cfg.get("backbone")
    if ckpt:
        if not Path(str(ckpt)).is_file():
            raise ConfigError(
                f"dan_ckpt='{ckpt}' does not exist: give a dan.pt (mfe-iqa-pretrain, or <train run>/dan_pretrain/)"
            )
        stored = load_dan_file(str(ckpt))["backbone"]
        if name and str(name) != stored:
            raise ConfigError(
                f"backbone={name}, but dan_ckpt '{ckpt}' holds a '{stored}': drop backbone= or give a matching file"
            )
        name = stored
    elif not name:
        raise ConfigError(
            "give dan_ckpt=<dan.pt> to probe a pre-trained DAN, or backbone=<timm name> (e.g. resnet10t) to probe a "
            "randomly initialized one (the reference)"
        )
    torch.manual_seed(int(cfg.seed))
    try:
        net = DistortionAwareNetwork(backbone=str(name), pretrained_ckpt=str(ckpt) if ckpt else None)
    except RuntimeError as err:  # timm: unknown model name
        raise ConfigError(f"backbone='{name}': {err}") from err
    return net, str(name)


def _split_list(cfg: DictConfig, dm) -> list[tuple[int | None, Any]]:
    """[(split index, Split)]: the datamodule's own split, or each of split_indices on the same items."""
    from mfe_iqa.data.splits import Split, check_no_leak, content_aware_split

    indices = cfg.get("split_indices")
    if indices is None:
        spec = dm.split_spec
        index = None if (spec.file or dm.use_official_split) else spec.index
        return [(index, Split(dm.train_items, dm.val_items, dm.test_items, source=dm.split_source))]
    if isinstance(indices, int) or not OmegaConf.is_list(indices) and not isinstance(indices, list | tuple):
        raise ConfigError(f"split_indices must be a list of split indices (e.g. [0,1,2]), got {indices!r}")
    if dm.split_spec.file or dm.use_official_split:
        raise ConfigError(
            "split_indices draws seeded splits: it cannot be combined with split.file or data.use_official_split"
        )
    out = []
    for i in indices:
        split = content_aware_split(dm.items, replace(dm.split_spec, index=int(i)))
        check_no_leak(split)
        out.append((int(i), split))
    return out


@task_wrapper
def probe(cfg: DictConfig) -> dict[str, Any]:
    """Run the probe; returns the summary (also written to ``probe_summary.json``)."""
    import lightning as L
    import pandas as pd
    from hydra.utils import instantiate

    from mfe_iqa.inference.scoring import resolve_device
    from mfe_iqa.metrics import write_run_metrics
    from mfe_iqa.probe import (
        DEFAULT_ALPHAS,
        DEFAULT_LOG_EPS,
        FEATURE_TRANSFORMS,
        POOLINGS,
        extract_features,
        probe_split,
        transform_features,
    )

    configure_runtime(cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    save_resolved_config(cfg, out)
    scales = [float(s) for s in cfg.scales]
    pooling = [str(p) for p in cfg.get("pooling", ["mean"])]
    if not pooling or any(p not in POOLINGS for p in pooling):
        raise ConfigError(f"pooling must be a non-empty list of {list(POOLINGS)}, got {pooling}")
    if not scales or any(not s > 0 for s in scales):
        raise ConfigError(f"scales must be positive numbers (e.g. [1.0, 0.5]), got {scales}")
    alphas = [float(a) for a in cfg.alphas] if cfg.get("alphas") else list(DEFAULT_ALPHAS)
    transform, log_eps = str(cfg.get("transform") or "none"), float(cfg.get("log_eps", DEFAULT_LOG_EPS))
    if transform not in FEATURE_TRANSFORMS or not log_eps > 0:
        raise ConfigError(
            f"transform must be one of {list(FEATURE_TRANSFORMS)} and log_eps > 0, got transform={transform!r}, "
            f"log_eps={log_eps}"
        )

    net, backbone_name = build_backbone(cfg)
    n_stages = len(net.channels)
    stages = list(range(n_stages)) if cfg.get("stages") is None else [int(s) for s in cfg.stages]
    bad = [s for s in stages if not -n_stages <= s < n_stages]
    if not stages or bad:
        raise ConfigError(
            f"stages {stages}: '{backbone_name}' has {n_stages} stages (use indices -{n_stages}..{n_stages - 1})"
        )
    device = resolve_device(str(cfg.get("device", "auto")))
    net.to(device)

    dm = instantiate(cfg.data)
    dm.setup("test")
    label = str(hydra_choice("data") or dm.info.name)
    root = Path(dm.database.root)
    splits = _split_list(cfg, dm)

    pretrain_list = _resolve_pretrain_list(cfg)
    if pretrain_list is not None:
        seen = read_pretrain_list(pretrain_list)
        for index, split in splits:
            overlap = pretrain_overlap(seen, {"val": split.val, "test": split.test}, root)
            if overlap:
                raise ConfigError(
                    f"the DAN was pre-trained on {len(overlap)} image(s) of split {index if index is not None else split.source}'s "
                    f"val/test part ({pretrain_list}), e.g. {overlap[:3]}. Probe it on the split it was pre-trained "
                    "for (split.file=<its run>/split.csv), or set pretrain_images=null to skip this check knowingly."
                )
        log.info("Pre-training list %s: %d files, none in val or test", pretrain_list, len(seen))
    elif cfg.get("dan_ckpt"):
        log.warning(
            "No pre-training image list for %s: val/test overlap with its pre-training NOT checked",
            cfg.dan_ckpt,
        )

    items = list(dm.items)
    log.info(
        "Embedding %d %s images with %s (%s) at scales %s, stages %s, pooling %s, transform %s",
        len(items), label, backbone_name, cfg.get("dan_ckpt") or "random init", scales, stages, pooling, transform,
    )  # fmt: skip
    batches = ({k: v.to(device) if k == "image" else v for k, v in b.items()} for b in dm.whole_dataloader())
    features = transform_features(
        extract_features(net, batches, len(items), scales, stages, pooling), transform, log_eps
    )
    position = {id(it): k for k, it in enumerate(items)}

    curve_rows, per_split, table = [], [], {}
    for index, split in splits:
        parts = {p: [position[id(it)] for it in getattr(split, p)] for p in ("train", "val", "test")}
        result = probe_split(features, items, parts, alphas, int(cfg.cv_folds), int(cfg.seed))
        if result.at_grid_edge:
            log.warning(
                "split %s: the chosen alpha %.3g is at the edge of the grid [%.3g, %.3g]: widen probe alphas",
                index, result.alpha, alphas[0], alphas[-1],
            )  # fmt: skip
        run_dir = out if len(splits) == 1 else out / f"split_{index}"
        run_dir.mkdir(parents=True, exist_ok=True)
        test_items = [items[k] for k in parts["test"]]
        pd.DataFrame(
            {"path": [it.path for it in test_items], "mos": result.test_mos, "prediction": result.test_pred}
        ).to_csv(run_dir / "predictions_test.csv", index=False)
        write_run_metrics(
            run_dir,
            train_db=str(dm.info.name),
            split_index=index,
            model=f"probe:{backbone_name}:{'pretrained' if cfg.get('dan_ckpt') else 'random'}",
            experiment=str(cfg.get("experiment_name", "probe")),
            val=result.val,
            test={str(dm.info.name): result.test},
            extra={"source": "probe", "dan_ckpt": cfg.get("dan_ckpt"), "alpha": result.alpha,
                   "selection": result.selection},
        )  # fmt: skip
        curve_rows += [{"split": index, **c} for c in result.alpha_curve]
        name = f"split {index}" if index is not None else "split"
        table[name] = {**result.test, "alpha": result.alpha}
        per_split.append(
            {"split": index, "alpha": result.alpha, "selection": result.selection, "at_grid_edge": result.at_grid_edge,
             "counts": result.counts, "val": result.val, "test": result.test}
        )  # fmt: skip
    pd.DataFrame(curve_rows).to_csv(out / "alpha_curve.csv", index=False)

    aggregate = {}
    if len(per_split) > 1:
        for metric in ("srcc", "plcc"):
            v = np.array([s["test"][metric] for s in per_split])
            aggregate[metric] = {
                "median": float(np.median(v)),
                "mean": float(v.mean()),
                "std": float(v.std()),
            }
        table["median"] = {m: aggregate[m]["median"] for m in aggregate}
        table["mean"] = {m: aggregate[m]["mean"] for m in aggregate}
        table["std"] = {m: aggregate[m]["std"] for m in aggregate}
    summary = {
        "database": str(dm.info.name),
        "backbone": backbone_name,
        "dan_ckpt": cfg.get("dan_ckpt"),
        "pretrain_images_checked": str(pretrain_list) if pretrain_list else None,
        "scales": scales,
        "stages": stages,
        "pooling": pooling,
        "transform": transform,
        "log_eps": log_eps if transform == "log" else None,
        "feature_dim": int(features.shape[1]),
        "test_mode": str(dm.eval_transform.mode),
        "alphas": alphas,
        "splits": per_split,
        "aggregate": aggregate,
    }
    write_json(out / "probe_summary.json", summary)
    print_metrics_table(
        f"Linear probe of {backbone_name} ({cfg.get('dan_ckpt') or 'random init'}) on {label}", table
    )
    return summary


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="probe")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Console entry point."""
    probe(cfg)


if __name__ == "__main__":
    main()
