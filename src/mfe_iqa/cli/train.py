"""`mfe-iqa-train`: (optional DAN pre-training), multi-task IQA training, test on own and cross-dataset sets."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from mfe_iqa.cli.common import (
    CONF_DIR,
    ConfigError,
    configure_runtime,
    exit_on_user_error,
    instantiate_callbacks,
    instantiate_loggers,
    log_hyperparameters,
    print_metrics_table,
    save_resolved_config,
    task_wrapper,
)

log = logging.getLogger("mfe_iqa.train")


def _resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`ckpt_path=last`: the run dir's own last.ckpt (resume after a crash; error if there is none).
    `ckpt_path=auto`: resume from it when it exists, else start fresh (requeued SLURM jobs)."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, ""):
        return None
    if ckpt in ("last", "auto"):
        path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if ckpt == "auto":
            return str(path) if path.is_file() else None
        if not path.is_file():
            raise ConfigError(
                f"ckpt_path=last, but there is no {path}. Resume by running in the interrupted run's dir "
                "(hydra.run.dir=<that run dir>) or give the checkpoint's path."
            )
        return str(path)
    if not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path='{ckpt}' does not exist: give an existing checkpoint file or `last`.")
    return str(ckpt)


def _maybe_pretrain_dan(cfg: DictConfig, datamodule) -> None:
    """Run DAN contrastive pre-training first and hand its dan.pt to the model config."""
    pre = cfg.get("pretrain_dan") or {}
    if not pre.get("enabled"):
        return
    if OmegaConf.select(cfg, "model.dan") is None or not OmegaConf.select(cfg, "model.use_dan", default=True):
        log.info("pretrain_dan.enabled but model.use_dan=false: skipping DAN pre-training")
        return
    from hydra import compose

    from mfe_iqa.cli.pretrain import run_pretraining

    out = Path(cfg.paths.output_dir) / "dan_pretrain"
    overrides = list(pre.get("overrides") or [])
    overrides += [
        f"paths.output_dir={out}",
        f"seed={cfg.seed}",
        f"experiment_name={cfg.experiment_name}",
        f"model_backbone={OmegaConf.select(cfg, 'model.dan.backbone')}",
    ]
    pcfg = compose(config_name="pretrain", overrides=overrides)
    if pre.get("train_split_only"):
        paths = sorted({it.path for it in datamodule.train_items})
        with open_dict(pcfg):
            pcfg.pretrain_data.folders = []
            pcfg.pretrain_data.image_paths = paths
        log.info("DAN pre-training on the %d training-split images only", len(paths))
    dan_path = run_pretraining(pcfg)
    with open_dict(cfg):
        cfg.model.dan.pretrained_ckpt = str(dan_path)
    log.info("DAN pre-trained: %s", dan_path)


def _test_loaders(cfg: DictConfig, datamodule) -> tuple[list, list[str]]:
    """The own test split first, then every cross-dataset set in full."""
    from hydra.utils import instantiate

    own = OmegaConf.select(cfg, "hydra:runtime.choices.data", default=None) or datamodule.info.name
    loaders, names = [datamodule.test_dataloader()], [str(own)]
    if cfg.get("test_sets"):
        from mfe_iqa.cli.common_data import compose_data_config

        for name in cfg.test_sets:
            dcfg = compose_data_config(str(name), cfg)
            dm = instantiate(dcfg)
            dm.setup("test")
            loaders.append(dm.whole_dataloader())
            names.append(str(name))
    return loaders, names


def _use_validation(cfg: DictConfig, datamodule, callbacks: list) -> list:
    """Without a validation split nothing may select on test: drop early stopping, keep only `last`."""
    if datamodule.has_val:
        return callbacks
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    log.warning(
        "No validation split (split.ratios=%s): the LAST epoch's model is tested (paper parity); "
        "no checkpoint is selected on the test split.",
        list(cfg.split.ratios),
    )
    kept = []
    for cb in callbacks:
        if isinstance(cb, EarlyStopping):
            continue
        if isinstance(cb, ModelCheckpoint):
            cb.monitor = None
            cb.save_top_k = 1 if cb.save_top_k != 0 else 0
        kept.append(cb)
    return kept


@task_wrapper
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit on `data`, select on its validation split, test on its test split and on every `test_sets` entry."""
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mfe_iqa.metrics import write_run_metrics

    configure_runtime(cfg)
    out = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    _maybe_pretrain_dan(cfg, datamodule)
    save_resolved_config(cfg, out)

    net = instantiate(cfg.model)
    database = {k: v for k, v in dataclasses.asdict(datamodule.info).items() if k != "dist_type_names"}
    system = instantiate(
        cfg.system,
        net=net,
        model_cfg=OmegaConf.to_yaml(cfg.model, resolve=True),
        database=database,
        _recursive_=True,
    )

    callbacks = _use_validation(cfg, datamodule, instantiate_callbacks(cfg.get("callbacks")))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    n_params = sum(p.numel() for p in net.parameters())
    log_hyperparameters(cfg, loggers, {"model/params_total": n_params})

    if cfg.get("train"):
        trainer.fit(system, datamodule=datamodule, ckpt_path=_resolve_ckpt_path(cfg))

    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v)}
    test_rows: dict[str, dict[str, float]] = {}
    if cfg.get("test"):
        loaders, names = _test_loaders(cfg, datamodule)
        system.test_set_names = names
        ckpt = None
        checkpoint_cb = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
        if (
            cfg.get("train")
            and datamodule.has_val
            and checkpoint_cb is not None
            and checkpoint_cb.best_model_path
        ):
            ckpt = checkpoint_cb.best_model_path
            log.info("Testing the checkpoint with the best val/srcc: %s", ckpt)
        elif cfg.get("train"):
            log.info("Testing the model of the last epoch")
        trainer.test(system, dataloaders=loaders, ckpt_path=ckpt, weights_only=False, verbose=False)
        for k, v in trainer.callback_metrics.items():
            if torch.is_tensor(v):
                metrics[k] = float(v)
        for name in names:
            prefix = f"test/{name}/"
            test_rows[name] = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
        print_metrics_table(f"Test results ({cfg.experiment_name})", test_rows)

    write_run_metrics(
        out,
        train_db=str(OmegaConf.select(cfg, "hydra:runtime.choices.data", default=datamodule.info.name)),
        split_index=int(cfg.split.index),
        model=str(OmegaConf.select(cfg, "hydra:runtime.choices.model", default="?")),
        experiment=str(cfg.experiment_name),
        metrics=metrics,
        test=test_rows,
    )
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    """Console entry: returns the optimized metric (best val SRCC) for the Optuna sweeper."""
    try:
        metrics = train(cfg)
    except Exception:
        if cfg.get("on_failure") == "nan":  # sweeps: Optuna records the trial as failed and goes on
            log.error("This job failed; returning NaN so that the sweep records it as failed and continues")
            return float("nan")
        raise
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise ConfigError(
            f"optimized_metric='{name}' was not logged by this run; logged metrics: {sorted(metrics)}"
        )
    return float(metrics[name])


if __name__ == "__main__":
    main()
