"""`mfe-iqa-eval`: score a trained checkpoint on one or more configured databases, on one device.

For each database it writes into the run dir ``predictions_<dataset>.csv`` (one row per image, in dataset order),
``scatter_<dataset>.png`` (prediction vs MOS with the fitted 4-parameter logistic) and, for all of them,
``metrics.json`` in the run-metrics format that ``mfe-iqa-report`` aggregates.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from mfe_iqa.cli.common import (
    CONF_DIR,
    ConfigError,
    configure_runtime,
    exit_on_user_error,
    hydra_choice,
    instantiate_loggers,
    print_metrics_table,
    save_resolved_config,
    task_wrapper,
)

log = logging.getLogger("mfe_iqa.eval")

EVAL_SPLITS = ("whole", "test", "val")
PREDICTION_COLUMNS = ("index", "path", "mos", "prediction", "mos_raw", "prediction_mos", "prediction_fit_mos")


def denormalize(value: np.ndarray, database: Mapping[str, Any]) -> np.ndarray:
    """Normalized score (higher = better) -> the raw scale of ``database`` (flipped back for DMOS databases)."""
    lo, hi = float(database["mos_min"]), float(database["mos_max"])
    x = 1.0 - value if database.get("lower_better") else value
    return lo + x * (hi - lo)


def _loader_and_items(datamodule, split: str) -> tuple[Any, list]:
    if split == "whole":
        return datamodule.whole_dataloader(), list(datamodule.items)
    if split == "test":
        return datamodule.test_dataloader(), list(datamodule.test_items)
    if not datamodule.has_val:
        raise ConfigError(
            f"eval_split=val, but {datamodule.info.name} has no validation split (split.ratios)"
        )
    return datamodule.val_dataloader(), list(datamodule.val_items)


def prediction_table(
    rows: Mapping[str, np.ndarray], items: Sequence, train_database: Mapping[str, Any] | None
):
    """One row per image (pandas DataFrame, dataset order): path, normalized mos and prediction, raw-scale columns.

    mos_raw: the label as the database's file gives it; prediction_mos: the prediction on the *training*
    database's MOS scale (what mfe-iqa-predict reports); prediction_fit_mos: the prediction mapped onto this
    database's raw scale by the 4-parameter logistic fitted here (cross-dataset scales differ).
    """
    import pandas as pd

    from mfe_iqa.metrics import fit_logistic

    index = rows["index"].astype(int)
    if len(index) != len(items) or (len(index) and (index.min() < 0 or index.max() >= len(items))):
        raise RuntimeError(
            f"evaluation returned {len(index)} images (indices {index.min() if len(index) else '-'}.."
            f"{index.max() if len(index) else '-'}) for a dataset of {len(items)} items: every image must be scored once"
        )
    picked = [items[i] for i in index]
    mos = np.array([it.mos for it in picked], dtype=np.float64)
    if not np.allclose(mos, rows["mos"], atol=1e-5):
        raise RuntimeError(
            "the MOS gathered at test time does not match the dataset's items: index order is broken"
        )
    mos_raw = np.array([it.mos_raw for it in picked], dtype=np.float64)
    pred = rows["prediction"].astype(np.float64)
    df = pd.DataFrame({"index": index, "path": [it.path for it in picked], "mos": mos, "prediction": pred})
    df["mos_raw"] = mos_raw
    df["prediction_mos"] = denormalize(pred, train_database) if train_database else np.nan
    df["prediction_fit_mos"] = fit_logistic(pred, mos_raw, kind="4")(pred) if len(pred) >= 5 else np.nan
    return df


def _with_readout(
    readout, rows: Mapping[str, np.ndarray], items: Sequence, metrics: Mapping[str, float], batch_size: int
):
    """The network's rows with ``prediction`` replaced by the read-out's blend (``network`` and ``readout`` kept),
    the blend's metrics (SRCC, PLCC, KRCC, RMSE and the fitted PLCC: ``mfe_iqa.probe.score_metrics``), and
    {part: metrics} for the network (the system's own) and the read-out alone."""
    from mfe_iqa.probe import score_metrics

    index = np.asarray(rows["index"]).astype(int)
    network = np.asarray(rows["prediction"], dtype=np.float64)
    mos = np.asarray(rows["mos"], dtype=np.float64)
    read = readout.score_files([items[i].path for i in index], batch_size=batch_size)
    blended = readout.blend(network, read)
    out = {**rows, "prediction": blended, "network": network, "readout": read}
    blend_metrics = {**score_metrics(blended, mos), "n_images": float(len(index))}
    parts = {"network": dict(metrics), "readout": {**score_metrics(read, mos), "n_images": float(len(index))}}
    return out, blend_metrics, parts


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.datasets`` (or ``cfg.data``); returns {dataset: {metric: value}}."""
    import lightning as L
    from hydra.utils import instantiate

    from mfe_iqa.cli.common_data import compose_data_config
    from mfe_iqa.metrics import fit_logistic, write_run_metrics
    from mfe_iqa.plots import scatter_with_fit
    from mfe_iqa.systems.iqa import CheckpointFormatError, IQATrainingModule, load_net_from_checkpoint

    configure_runtime(cfg)
    ckpt_path = cfg.get("ckpt_path")
    if not ckpt_path:
        raise ConfigError("ckpt_path is required: mfe-iqa-eval ckpt_path=<run dir>/checkpoints/<file>.ckpt")
    if not Path(ckpt_path).is_file():
        raise ConfigError(
            f"ckpt_path='{ckpt_path}' does not exist: give a checkpoint written by mfe-iqa-train"
        )
    split = str(cfg.get("eval_split", "whole"))
    if split not in EVAL_SPLITS:
        raise ConfigError(f"eval_split='{split}': choose one of {', '.join(EVAL_SPLITS)}")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    save_resolved_config(cfg, out)

    try:
        net, train_database = load_net_from_checkpoint(ckpt_path)
    except CheckpointFormatError as err:
        raise ConfigError(str(err)) from err
    readout = None
    if cfg.get("readout"):
        from mfe_iqa.readout import ReadoutError, ReadoutModel

        try:
            readout = ReadoutModel.load(str(cfg.readout), weight=cfg.get("readout_weight"))
            warning = (
                readout.check_pairing(net, f"checkpoint '{ckpt_path}'", f"read-out '{cfg.readout}'")
                if cfg.get("readout_check", True)
                else None
            )
        except ReadoutError as err:
            raise ConfigError(f"readout: {err}") from err
        if warning:
            log.warning(warning)

    names = [str(n) for n in (cfg.get("datasets") or [])]
    loaders, item_lists, labels = [], [], []
    if names:
        for name in names:
            dm = instantiate(compose_data_config(name, cfg, output_subdir="eval_sets"))
            dm.setup("test")
            loader, items = _loader_and_items(dm, split)
            loaders.append(loader)
            item_lists.append(items)
            labels.append(name)
    else:
        dm = instantiate(cfg.data)
        dm.setup("test")
        loader, items = _loader_and_items(dm, split)
        loaders.append(loader)
        item_lists.append(items)
        labels.append(str(hydra_choice("data") or dm.info.name))
    log.info("Evaluating %s on %s (%s)", ckpt_path, ", ".join(labels), split)

    system = IQATrainingModule(
        net=net,
        database=train_database,
        test_set_names=labels,
        fit_5_parameter=bool(cfg.get("fit_5_parameter", False)),
    )
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=[],
        devices=1,
        num_nodes=1,
        strategy="auto",
        enable_checkpointing=False,
    )
    trainer.test(system, dataloaders=loaders, verbose=False)

    results: dict[str, dict[str, float]] = {}
    readout_parts: dict[str, dict[str, dict[str, float]]] = {}  # label -> network / readout -> metrics
    for label, items in zip(labels, item_lists):
        rows = system.test_predictions[label]
        metrics = dict(system.test_results[label])
        if readout is not None:  # the blend replaces the prediction; both parts are kept as columns and rows
            rows, metrics, parts = _with_readout(
                readout, rows, items, metrics, int(cfg.get("readout_batch_size", 8))
            )
            readout_parts[label] = parts
        table = prediction_table(rows, items, train_database)
        if readout is not None:
            table["network"], table["readout"] = rows["network"], rows["readout"]
        table.to_csv(out / f"predictions_{label}.csv", index=False)
        fit = fit_logistic(table["prediction"], table["mos"], kind="4") if len(table) >= 5 else None
        shown = {k: metrics[k] for k in ("srcc", "plcc", "plcc_fit") if k in metrics}
        fig = scatter_with_fit(
            table["prediction"], table["mos"], fit, title=f"{label} ({split})", metrics=shown
        )
        fig.savefig(out / f"scatter_{label}.png")
        results[label] = metrics
        log.info("%s: %d images -> %s", label, len(table), out / f"predictions_{label}.csv")

    model_target = f"{type(net).__module__}.{type(net).__qualname__}"
    write_run_metrics(
        out,
        train_db=str(train_database.get("name", "?")),
        split_index=None,
        model=str(cfg.get("model_name") or model_target),
        experiment=str(cfg.get("experiment_name", "eval")),
        val=None,
        test=results,
        extra={
            "source": "eval",
            "ckpt_path": str(ckpt_path),
            "eval_split": split,
            **(
                {
                    "readout": str(cfg.readout),
                    "readout_weight": readout.weight,
                    "readout_parts": readout_parts,
                }
                if readout is not None
                else {}
            ),
        },
    )
    title = f"Evaluation of {Path(ckpt_path).name} ({split})"
    if readout is not None:
        title += f", blended with the read-out {cfg.readout} (weight {readout.weight:g})"
        shown = {f"{label}: {part}": m for label, parts in readout_parts.items() for part, m in parts.items()}
        print_metrics_table(f"The blend's parts ({split})", shown)
    print_metrics_table(title, results)
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Console entry point."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
