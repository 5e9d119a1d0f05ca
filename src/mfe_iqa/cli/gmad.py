"""`mfe-iqa-gmad`: pit two checkpoints against each other on unlabeled images (gMAD), figure + JSON."""

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
from mfe_iqa.cli.predict import load_model_from_cfg

log = logging.getLogger("mfe_iqa.gmad")


@task_wrapper
def gmad(cfg: DictConfig) -> dict[str, Any]:
    """Score every image with both models, select the gMAD pairs, write gmad.json and gmad.png."""
    from mfe_iqa.inference.gmad import gmad_report, plot_gmad
    from mfe_iqa.inference.sources import resolve_inputs

    configure_runtime(cfg)
    if cfg.name_a == cfg.name_b:
        raise ConfigError(f"name_a and name_b must differ (both are '{cfg.name_a}')")
    try:
        paths = resolve_inputs(cfg.input)
    except FileNotFoundError as err:
        raise ConfigError(f"input: {err}") from err
    scores, errors = {}, {}
    for key, name in (("ckpt_a", cfg.name_a), ("ckpt_b", cfg.name_b)):
        model = load_model_from_cfg(cfg, ckpt_key=key)
        log.info("Scoring %d files with %s (%s)", len(paths), name, cfg[key])
        scores[name], errs = model.score_files(
            paths, int(cfg.batch_size), int(cfg.num_workers), progress=bool(cfg.progress)
        )
        errors.update(errs)
        del model
    if errors:
        log.warning("%d files could not be scored and take no part; gmad.json lists them", len(errors))
    try:
        report = gmad_report(
            paths,
            scores[cfg.name_a],
            scores[cfg.name_b],
            (cfg.name_a, cfg.name_b),
            list(cfg.levels),
            float(cfg.tolerance),
            errors,
        )
    except ValueError as err:
        raise ConfigError(f"gMAD on '{cfg.input}': {err}") from err
    out = Path(cfg.paths.output_dir)
    report["checkpoints"] = {cfg.name_a: str(cfg.ckpt_a), cfg.name_b: str(cfg.ckpt_b)}
    write_json(out / "gmad.json", report)
    plot_gmad(report, out / "gmad.png", thumb_size=int(cfg.thumb_size), dpi=int(cfg.dpi))
    for e in report["pairs"]:
        gap = f"attacker gap {e['attacker_gap']:.3f}" if e["pair"] else e["reason"]
        log.info(
            "defender %s at q=%.2f (%d candidates): %s", e["defender"], e["level"], e["num_candidates"], gap
        )
    log.info("Wrote %s and %s", out / "gmad.json", out / "gmad.png")
    return report


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="gmad")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Console entry of `mfe-iqa-gmad`."""
    gmad(cfg)


if __name__ == "__main__":
    main()
