"""`mfe-iqa-train`: (optional DAN pre-training), multi-task IQA training, test on own and cross-dataset sets."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from mfe_iqa.cli.common import (
    CONF_DIR,
    ConfigError,
    configure_runtime,
    exit_on_user_error,
    hydra_choice,
    instantiate_callbacks,
    instantiate_loggers,
    kept_rng_state,
    log_hyperparameters,
    print_metrics_table,
    run_for_sweeper,
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


WANDB_RUN_ID_FILE = "wandb_run_id.txt"


def _is_rank_zero() -> bool:
    """Before the trainer exists: True in the launching process (DDP children get their rank from env vars)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0) == 0


def _new_wandb_id() -> str:
    """8 characters of [a-z0-9], like wandb's own ids; not drawn from the seeded RNGs."""
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _own_wandb_service_for_resume(run_id: str) -> None:
    """A resumed run starts a W&B service of its own instead of connecting to one named by ``WANDB_SERVICE``.

    ``WANDB_SERVICE`` points every process started under it at one shared wandb-core (``wandb beta core start``,
    or a parent process that called ``wandb.init`` itself). When a run is killed, that shared service keeps the
    run's stream open, and resuming the same id there fails with "run ID ... is in use". A service of this
    process's own does not know the killed stream; the run continues under the same id all the same.
    """
    if os.environ.pop("WANDB_SERVICE", None):
        log.info(
            "Resuming W&B run %s with a W&B service of this process's own: WANDB_SERVICE is ignored here "
            "(a shared service may still hold the interrupted run's id)",
            run_id,
        )


def _set_wandb_run_id(cfg: DictConfig, out: Path, resuming: bool) -> None:
    """Give the W&B logger a run id kept in <run dir>/wandb_run_id.txt, so that a resumed run continues it.

    Fresh run: `logger.wandb.id` (or a new id) is written to the file. Resumed run (a checkpoint to resume from):
    the file's id is reused with `resume="allow"`. Without a W&B logger this does nothing.
    """
    node = OmegaConf.select(cfg, "logger.wandb")
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    path = out / WANDB_RUN_ID_FILE
    run_id = node.get("id")
    if not run_id and resuming and path.is_file():
        run_id = path.read_text().strip() or None
        if run_id:
            log.info("Resuming the W&B run %s (id from %s)", run_id, path)
    resume = "allow" if run_id and resuming else node.get("resume")
    if run_id and resuming:
        _own_wandb_service_for_resume(run_id)
    run_id = run_id or _new_wandb_id()
    with open_dict(cfg):
        cfg.logger.wandb.id = str(run_id)
        cfg.logger.wandb.resume = resume
    if _is_rank_zero():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(f"{run_id}\n")
        tmp.replace(path)


def _keep_csv_log_of_interrupted_run(loggers: list) -> None:
    """Lightning's CSVLogger deletes an existing metrics.csv: a resumed run first renames it (metrics.<n>.csv)."""
    from lightning.pytorch.loggers import CSVLogger

    for lg in loggers:
        if not isinstance(lg, CSVLogger):
            continue
        old = Path(lg.log_dir) / "metrics.csv"
        if old.is_file():
            n = 1
            while (kept := old.with_name(f"metrics.{n}.csv")).exists():
                n += 1
            old.replace(kept)
            log.info("Resuming: the CSV log so far is kept as %s", kept)


def pretrain_overrides(pre) -> list[str]:
    """``pretrain_dan.overrides`` (a preset's pre-training) then ``pretrain_dan.extra_overrides`` (the user's).

    Hydra's command line replaces a list as a whole; the second list lets one setting change without
    restating the preset's, and comes last so that it wins.
    """
    lists = []
    for key in ("overrides", "extra_overrides"):
        value = pre.get(key) or []
        if isinstance(value, str) or not all(isinstance(o, str) for o in value):
            raise ConfigError(
                f"pretrain_dan.{key} must be a list of override strings such as "
                f"['trainer.max_epochs=4'], got {value!r}"
            )
        lists += list(value)
    return lists


def _maybe_pretrain_dan(cfg: DictConfig, datamodule) -> None:
    """Run DAN contrastive pre-training first and hand its dan.pt to the model config."""
    pre = cfg.get("pretrain_dan") or {}
    if not pre.get("enabled"):
        return
    if OmegaConf.select(cfg, "model.dan") is None or not OmegaConf.select(cfg, "model.use_dan", default=True):
        log.info("pretrain_dan.enabled but model.use_dan=false: skipping DAN pre-training")
        return
    strategy = str(OmegaConf.select(cfg, "trainer.strategy", default="auto"))
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    nodes = int(OmegaConf.select(cfg, "trainer.num_nodes", default=1) or 1)
    if "ddp" in strategy or nodes > 1 or (isinstance(devices, int) and devices > 1):
        raise ConfigError(
            "pretrain_dan.enabled=true runs DAN pre-training inside this job, which is not supported under "
            f"multi-process training (trainer.strategy={strategy}, devices={devices}): every process would "
            "pre-train its own DAN. Pre-train first (`mfe-iqa-pretrain ...`, it runs under DDP itself), then "
            "train with pretrain_dan.enabled=false model.dan.pretrained_ckpt=<its run dir>/dan.pt."
        )
    dan_path = _pretrain_one_dan(cfg, datamodule, Path(cfg.paths.output_dir) / "dan_pretrain", int(cfg.seed))
    with open_dict(cfg):
        cfg.model.dan.pretrained_ckpt = str(dan_path)
    log.info("DAN pre-trained: %s", dan_path)


def _pretrain_one_dan(cfg: DictConfig, datamodule, out: Path, seed: int) -> Path:
    """One DAN pre-training of ``pretrain_dan`` into ``out`` with ``seed``; returns its dan.pt (an existing one
    is reused: a resumed run, ckpt_path=last/auto in the same run dir, has pre-trained already)."""
    from hydra import compose

    from mfe_iqa.cli.pretrain import DAN_FILE, run_pretraining

    pre = cfg.get("pretrain_dan") or {}
    done = out / DAN_FILE
    if done.is_file():
        log.info("DAN pre-training of this run dir already done: using %s", done)
        return done
    overrides = pretrain_overrides(pre)
    overrides += [
        f"paths.output_dir={out}",
        f"seed={seed}",
        f"experiment_name={cfg.experiment_name}",
        f"model_backbone={OmegaConf.select(cfg, 'model.dan.backbone')}",
    ]
    pcfg = compose(config_name="pretrain", overrides=overrides)
    if pre.get("train_split_only"):
        paths = [str(p) for p in datamodule.pretrain_images()]
        with open_dict(pcfg):
            pcfg.pretrain_data.folders = []
            pcfg.pretrain_data.image_paths = paths
        log.info("DAN pre-training (seed %d) on %d images of the training split only", seed, len(paths))
    with kept_rng_state():  # the same initialization and data order as a run that loads this dan.pt
        return Path(run_pretraining(pcfg))


def _maybe_pretrain_extra_dans(cfg: DictConfig, datamodule, settings) -> None:
    """``readout.extra_dans`` more DANs for the read-out, pre-trained like the model's (``pretrain_dan``, the same
    training images) with seeds ``seed + 1``, ``seed + 2``, ... into ``<run>/dan_pretrain_2/``, ...; their dan.pt
    files are appended to ``readout.extra_dan_ckpts``."""
    if settings is None or not settings.extra_dans:
        return
    if not (cfg.get("pretrain_dan") or {}).get("enabled"):
        raise ConfigError(
            f"readout.extra_dans={settings.extra_dans} pre-trains DANs inside this job like the model's, which needs "
            "pretrain_dan.enabled=true; give readout.extra_dan_ckpts=[<dan.pt>, ...] instead to read with "
            "DANs pre-trained elsewhere"
        )
    out = Path(cfg.paths.output_dir)
    paths = [
        str(_pretrain_one_dan(cfg, datamodule, out / f"dan_pretrain_{k + 1}", int(cfg.seed) + k))
        for k in range(1, settings.extra_dans + 1)
    ]
    settings.extra_dan_ckpts = [*settings.extra_dan_ckpts, *paths]
    with open_dict(cfg):
        cfg.readout.extra_dan_ckpts = list(settings.extra_dan_ckpts)
    log.info("Extra DANs for the read-out: %s", ", ".join(paths))


def _readout_settings(cfg: DictConfig):
    """The read-out's settings when ``readout.enabled`` (checked before any fit: a bad key fails at once), else
    None. It reads the pre-trained DAN, so the model must have one and the job must test."""
    ro = cfg.get("readout") or {}
    if not ro.get("enabled"):
        return None
    from mfe_iqa.readout import ReadoutSettings

    settings = ReadoutSettings.from_config(OmegaConf.to_container(ro, resolve=True))
    if not cfg.get("test"):
        log.info("readout.enabled but test=false: no test predictions to blend, the read-out is skipped")
        return None
    if not OmegaConf.select(cfg, "model.use_dan", default=False) or not OmegaConf.select(
        cfg, "model.dan.pretrained_ckpt"
    ):
        raise ConfigError(
            "readout.enabled=true reads the whole images through the pre-trained DAN: the model needs one "
            "(model.use_dan=true and model.dan.pretrained_ckpt=<dan.pt>, or pretrain_dan.enabled=true); "
            "set readout.enabled=false for a model without it"
        )
    return settings


def _run_readout(cfg: DictConfig, datamodule, system, name: str, settings) -> dict[str, Any] | None:
    """The whole-image read-out of the pre-trained DAN on the job's split, blended with its test predictions
    (``mfe_iqa.readout``); None (logged) when the test did not score every test image (a fast dev run)."""
    from hydra.utils import instantiate

    from mfe_iqa.inference.scoring import resolve_device
    from mfe_iqa.readout import run_readout

    rows = system.test_predictions.get(name)
    if rows is None or len(rows["index"]) != len(datamodule.test_items):
        log.info(
            "Read-out skipped: the test scored %d of %d test images (a fast dev run scores one batch)",
            0 if rows is None else len(rows["index"]), len(datamodule.test_items),
        )  # fmt: skip
        return None
    out = Path(cfg.paths.output_dir)
    dcfg = OmegaConf.merge(
        cfg.data,
        settings.data,
        {"split": {"file": str(out / "split.csv")}, "output_dir": None},
    )
    readout_dm = instantiate(dcfg)
    readout_dm.setup("fit")
    job_items = {p: getattr(datamodule, f"{p}_items") for p in ("train", "val", "test")}
    return run_readout(
        [str(cfg.model.dan.pretrained_ckpt), *settings.extra_dan_ckpts],
        readout_dm,
        job_items,
        rows,
        settings,
        out / "readout",
        seed=int(cfg.seed),
        device=str(resolve_device("auto")),
    )


def _test_loaders(cfg: DictConfig, datamodule) -> tuple[list, list[str]]:
    """The own test split first, then every cross-dataset set in full."""
    from hydra.utils import instantiate

    own = hydra_choice("data") or datamodule.info.name
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
            # no validation end to save at: save at each train-epoch end (else nothing until training ends,
            # and a crash would leave no last.ckpt to resume from)
            cb._save_on_train_epoch_end = True
        kept.append(cb)
    return kept


def _report_selection(cb, metrics: dict[str, Any]) -> None:
    """``val/srcc_best`` of the run (metrics.json, the sweepers' objective) is the score of the checkpoint the
    test uses. The logged running maximum counts every validation; with ``select_after_steps`` the early ones
    are not candidates, so the selected checkpoint's score replaces it (and the last validation's score when the
    fit ended before any checkpoint could be selected). ``cb``: the run's ModelCheckpoint, or None."""
    if cb is None or cb.monitor != "val/srcc" or not getattr(cb, "select_after_steps", 0):
        return
    if cb.best_model_score is not None and cb.best_model_path:
        metrics["val/srcc_best"] = float(cb.best_model_score)
        if cb.skipped_selections:
            log.info(
                "%d validation(s) before step %d were not candidates (select_after_steps); selected: %s "
                "(val/srcc %.4f)",
                cb.skipped_selections,
                cb.select_after_steps,
                cb.best_model_path,
                float(cb.best_model_score),
            )
    elif "val/srcc" in metrics:
        log.warning(
            "No checkpoint was selected: the fit ended before select_after_steps=%d optimizer steps; the last "
            "epoch's model is tested. Lower callbacks.model_checkpoint.select_after_steps or train longer.",
            cb.select_after_steps,
        )
        metrics["val/srcc_best"] = metrics["val/srcc"]


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
    # resolved first: a wrong ckpt_path fails before any work, and W&B must know whether this run resumes
    ckpt_path = _resolve_ckpt_path(cfg)
    _set_wandb_run_id(cfg, out, resuming=ckpt_path is not None)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    _maybe_pretrain_dan(cfg, datamodule)
    readout = _readout_settings(cfg)
    _maybe_pretrain_extra_dans(cfg, datamodule, readout)
    if _is_rank_zero():  # DDP: the other ranks re-run this script; one copy of each file
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
    if ckpt_path is not None and _is_rank_zero():
        _keep_csv_log_of_interrupted_run(loggers)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    n_params = sum(p.numel() for p in net.parameters())
    # loggers only write on rank 0 (trainer.is_global_zero is not set yet in a DDP child before fit)
    if _is_rank_zero():
        log_hyperparameters(cfg, loggers, {"model/params_total": n_params})

    if cfg.get("train"):
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
    elif datamodule.has_val:
        # evaluation only (train=false): the given checkpoint (or the initial weights) on val, then on test
        trainer.validate(
            system, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False, verbose=False
        )

    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v)}
    checkpoint_cb = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    if cfg.get("train") and not trainer.fast_dev_run:  # a fast dev run saves no checkpoint to select
        _report_selection(checkpoint_cb, metrics)
    test_rows: dict[str, dict[str, float]] = {}
    if cfg.get("test"):
        loaders, names = _test_loaders(cfg, datamodule)
        system.test_set_names = names
        ckpt = None
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
        elif ckpt_path is not None:
            ckpt = ckpt_path
            log.info("Testing the checkpoint %s (train=false)", ckpt)
        trainer.test(system, dataloaders=loaders, ckpt_path=ckpt, weights_only=False, verbose=False)
        for k, v in trainer.callback_metrics.items():
            if torch.is_tensor(v):
                metrics[k] = float(v)
        for name in names:
            prefix = f"test/{name}/"
            test_rows[name] = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
        if trainer.is_global_zero:
            print_metrics_table(f"Test results ({cfg.experiment_name})", test_rows)
    readout_summary = None
    if readout is not None and trainer.is_global_zero:  # a read-out implies a test (_readout_settings)
        readout_summary = _run_readout(cfg, datamodule, system, names[0], readout)
        if readout_summary is not None:
            shown = {f"{names[0]}: {k}": v for k, v in readout_summary["test"].items()}
            print_metrics_table(
                f"Test with the whole-image read-out of the pre-trained DAN (blend weight {readout.weight:g})",
                shown,
            )
            # beside the network's test/<name>/* in every logger (W&B dashboards, the CSV log)
            logged = {
                f"test/{names[0]}/{part}/{k}": float(v)
                for part in ("readout", "blend")
                for k, v in readout_summary["test"][part].items()
            }
            for lg in loggers:
                lg.log_metrics(logged, step=trainer.global_step)
                lg.save()

    if not trainer.is_global_zero:
        return metrics
    write_run_metrics(
        out,
        train_db=str(hydra_choice("data", datamodule.info.name)),
        split_index=int(cfg.split.index),
        model=str(hydra_choice("model", "?")),
        experiment=str(cfg.experiment_name),
        metrics=metrics,
        test=test_rows,
        extra={"readout": readout_summary} if readout_summary is not None else None,
    )
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    """Console entry: returns the optimized metric (best val SRCC) for sweepers."""
    return run_for_sweeper(train, cfg)


if __name__ == "__main__":
    main()
