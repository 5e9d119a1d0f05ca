"""`mfe-iqa-pretrain`: DAN contrastive pre-training; writes <run dir>/dan.pt and prints the k-NN accuracies.

``run_pretraining(cfg)`` is the same task as a plain function, so that `mfe-iqa-train` can pre-train
first in its own process and hand the dan.pt on to ``model.dan.pretrained_ckpt``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from mfe_iqa.cli.common import (
    CONF_DIR,
    configure_runtime,
    exit_on_user_error,
    instantiate_callbacks,
    instantiate_loggers,
    log_hyperparameters,
    print_metrics_table,
    run_for_sweeper,
    save_resolved_config,
    task_wrapper,
    write_json,
)

log = logging.getLogger("mfe_iqa.pretrain")

DAN_FILE = "dan.pt"
METRICS_FILE = "pretrain_metrics.json"


@task_wrapper
def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Fit DANPretrainModule, reload the checkpoint with the best val/knn_type_acc, export dan.pt."""
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mfe_iqa.data.distortions import NUM_LEVELS
    from mfe_iqa.data.pretrain import NUM_TYPES, PRISTINE_CLASS

    configure_runtime(cfg)
    out = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    save_resolved_config(cfg, out)

    datamodule = instantiate(cfg.pretrain_data)
    system = instantiate(cfg.pretrain_system)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    log_hyperparameters(cfg, loggers, {"model/params_dan": sum(p.numel() for p in system.dan.parameters())})

    trainer.fit(system, datamodule=datamodule)
    # The last epoch's k-NN, before the selected checkpoint is validated again: it was not chosen on the
    # held-out images, so it is the unbiased figure beside the selected one (empty under ddp_spawn).
    last_epoch = {k: float(v) for k, v in system.last_knn.items()}

    # The final k-NN runs once, on one device, without loggers: every rank would compute the same value,
    # and a DDP (spawn) trainer's loggers are not reusable after fit.
    validator = L.Trainer(
        accelerator=cfg.trainer.get("accelerator", "auto"),
        devices=1,
        precision=cfg.trainer.get("precision", "32-true"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    checkpoint_cb = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    best = checkpoint_cb.best_model_path if checkpoint_cb is not None else ""
    if best:
        log.info("Exporting the DAN of the checkpoint with the best val/knn_type_acc: %s", best)
        results = validator.validate(
            system, datamodule=datamodule, ckpt_path=best, weights_only=False, verbose=False
        )
    else:
        log.info("No checkpoint selected: exporting the DAN of the last epoch")
        results = validator.validate(system, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}

    dan_path = out / DAN_FILE
    n_types = len(datamodule.types)
    pristine_class = 0 if system.knn_distorted_only else int(PRISTINE_CLASS in datamodule.classes)
    n_classes = n_types * NUM_LEVELS + pristine_class  # what val/knn_class_acc chooses among
    if trainer.is_global_zero:  # under ddp_spawn this code runs in the main process only
        torch.save(system.dan.export_state(), dan_path)
        write_json(
            out / METRICS_FILE,
            {
                **metrics,
                "backbone": system.dan.backbone_name,
                "checkpoint": best or None,
                "dan_path": str(dan_path),
                "chance_type_acc": 1.0 / n_types if n_types else float("nan"),
                "chance_class_acc": 1.0 / n_classes if n_classes else float("nan"),
                "num_types": len(datamodule.types),
                "of_types": NUM_TYPES,
                "images": {k: len(v) for k, v in datamodule.used_images.items()},
                "last_epoch": last_epoch,
            },
        )
        print_metrics_table(
            f"DAN pre-training ({cfg.experiment_name}, {system.dan.backbone_name}): k-NN on held-out images",
            {"held-out": metrics},
        )
        log.info("DAN weights written to %s", dan_path)
        print(
            f"k-NN distortion-type accuracy on {len(datamodule.val_paths)} held-out images: "
            f"{100 * metrics.get('val/knn_type_acc', float('nan')):.1f}% (chance {100 / max(1, n_types):.1f}%); "
            f"(type, level) accuracy: {100 * metrics.get('val/knn_class_acc', float('nan')):.1f}% "
            f"(chance {100 / max(1, n_classes):.1f}%)"
            + (
                f"; the last epoch's type accuracy: {100 * last_epoch['val/knn_type_acc']:.1f}%"
                if "val/knn_type_acc" in last_epoch
                else ""
            ),
            flush=True,
        )
    return {"dan_path": dan_path, **metrics}


def run_pretraining(cfg: DictConfig) -> Path:
    """Pre-train DAN with a composed `pretrain` config; returns the path of the written dan.pt."""
    return Path(pretrain(cfg)["dan_path"])


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="pretrain")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    """Console entry: returns the optimized metric (k-NN distortion-type accuracy) for sweepers."""
    return run_for_sweeper(pretrain, cfg)


if __name__ == "__main__":
    main()
