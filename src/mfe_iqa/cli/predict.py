"""`mfe-iqa-predict`: score a folder, glob or list of images with a checkpoint, streaming a CSV."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from mfe_iqa.cli.common import (
    CONF_DIR,
    ConfigError,
    configure_runtime,
    exit_on_user_error,
    task_wrapper,
    write_json,
)

log = logging.getLogger("mfe_iqa.predict")


def load_model_from_cfg(cfg: DictConfig, ckpt_key: str = "ckpt_path"):
    """``load_model`` with the device, precision and view keys of a predict-like config; user errors named."""
    from mfe_iqa.inference.api import load_model
    from mfe_iqa.readout import ReadoutError
    from mfe_iqa.systems.iqa import CheckpointFormatError

    ckpt = cfg.get(ckpt_key)
    if not ckpt:
        raise ConfigError(
            f"{ckpt_key} is not set: give the .ckpt written by mfe-iqa-train, e.g. {ckpt_key}=best.ckpt"
        )
    try:
        return load_model(
            ckpt,
            device=cfg.device,
            precision=cfg.precision,
            mode=cfg.mode,
            crops=int(cfg.crops),
            crop_size=int(cfg.crop_size),
            crop_seed=int(cfg.get("crop_seed", 0)),
            short_side=cfg.get("short_side"),
            channels_last=bool(cfg.get("channels_last", False)),
            readout=cfg.get("readout"),
            readout_weight=cfg.get("readout_weight"),
            readout_check=bool(cfg.get("readout_check", True)),
        )
    except ReadoutError as err:
        raise ConfigError(f"readout: {err}") from err
    except (FileNotFoundError, CheckpointFormatError) as err:
        raise ConfigError(f"{ckpt_key}: {err}") from err


@task_wrapper
def predict(cfg: DictConfig) -> dict[str, Any]:
    """Resolve the inputs, load the checkpoint, write the CSV and a JSON summary; return the summary."""
    from mfe_iqa.inference.predict import predict_to_csv
    from mfe_iqa.inference.sources import resolve_inputs

    configure_runtime(cfg)
    try:
        paths = resolve_inputs(cfg.input)
    except FileNotFoundError as err:
        raise ConfigError(f"input: {err}") from err
    model = load_model_from_cfg(cfg)
    log.info("Scoring %d files with %s on %s (%s)", len(paths), cfg.ckpt_path, model.device, cfg.precision)
    if model.readout is not None:
        log.info(
            "Blending with the read-out %s (weight %g; views %s)",
            cfg.readout,
            model.readout.weight,
            model.readout.views,
        )
    summary = predict_to_csv(
        model.scorer,
        paths,
        cfg.output,
        model.views,
        database=model.database,
        batch_size=int(cfg.batch_size),
        num_workers=int(cfg.num_workers),
        progress=bool(cfg.progress),
        readout=model.readout,
    )
    write_json(Path(cfg.paths.output_dir) / "predict_summary.json", summary.as_dict())
    log.info(
        "Wrote %s: %d scored, %d not scored (%.1f images/s)",
        summary.output,
        summary.num_scored,
        summary.num_failed,
        summary.images_per_s,
    )
    return summary.as_dict()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Console entry of `mfe-iqa-predict`."""
    predict(cfg)


if __name__ == "__main__":
    main()
