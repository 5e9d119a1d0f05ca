"""`mfe-iqa-export`: a checkpoint to TorchScript and ONNX, verified against PyTorch on sample images."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from mfe_iqa.cli.common import (
    CONF_DIR,
    ConfigError,
    configure_runtime,
    exit_on_user_error,
    task_wrapper,
    write_json,
)

log = logging.getLogger("mfe_iqa.export")

FORMATS = ("torchscript", "onnx")


def sample_views(
    spec: str | None, num: int, size: int, seed: int
) -> tuple[torch.Tensor, list[str], list[str]]:
    """(N, 3, size, size) float [0, 1] crops (one per image) of up to ``num`` images of ``spec`` (random if None).

    Returns the tensor, the files used and the reasons files were skipped (each one named).
    """
    from mfe_iqa.data.datasets import image_key
    from mfe_iqa.data.images import ImageDecodeError, load_rgb
    from mfe_iqa.data.transforms import EvalTransform
    from mfe_iqa.inference.sources import resolve_inputs

    if not spec:
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(num, 3, size, size, generator=gen), [], []
    centre = EvalTransform(mode="crops", crop_size=size, num_crops=1, crop_seed=seed)
    views, used, skipped = [], [], []
    for path in resolve_inputs(spec):
        if len(used) == num:
            break
        try:
            views.append(centre(load_rgb(path), image_key(path))[0])  # (3, size, size) float in [0, 1]
            used.append(path)
        except (ImageDecodeError, OSError, ValueError) as err:
            skipped.append(f"{path}: {err}")
    if not views:
        raise ConfigError(f"verify.samples='{spec}' holds no decodable image ({len(skipped)} files skipped)")
    return torch.stack(views), used, skipped


@task_wrapper
def export(cfg: DictConfig) -> dict[str, Any]:
    """Write the exports and ``export_report.json`` (max abs differences); fail when one exceeds ``verify.atol``."""
    from mfe_iqa.inference.export import ExportMismatchError, compare_exports, export_onnx, export_torchscript
    from mfe_iqa.systems.iqa import CheckpointFormatError, load_net_from_checkpoint

    configure_runtime(cfg)
    unknown = [f for f in cfg.formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"formats: {unknown} unknown; choose among {list(FORMATS)}")
    try:
        net, database = load_net_from_checkpoint(cfg.ckpt_path, map_location="cpu")
    except (FileNotFoundError, CheckpointFormatError) as err:
        raise ConfigError(f"ckpt_path: {err}") from err
    out = Path(cfg.export_dir)
    size = int(cfg.input_size)
    example = torch.rand(int(cfg.example_batch), 3, size, size, generator=torch.Generator().manual_seed(0))
    ts_path = onnx_path = None
    if "torchscript" in cfg.formats:
        ts_path = export_torchscript(net, example, out / "model.ts", method=cfg.torchscript_method)
        log.info("TorchScript (%s): %s", cfg.torchscript_method, ts_path)
    if "onnx" in cfg.formats:
        onnx_path = export_onnx(
            net,
            example,
            out / "model.onnx",
            opset=cfg.onnx_opset,
            dynamic_hw=cfg.dynamic_hw,
            exporter=cfg.onnx_exporter,
        )
        log.info("ONNX (%s exporter): %s", cfg.onnx_exporter, onnx_path)

    images, used, skipped = sample_views(
        cfg.verify.samples, int(cfg.verify.num_samples), size, int(cfg.verify.seed)
    )
    diffs = compare_exports(net, images, ts_path, onnx_path)
    atol = float(cfg.verify.atol)
    report = {
        "ckpt_path": str(cfg.ckpt_path),
        "database": database,
        "input": {"name": "image", "shape": ["batch", 3, size, size], "range": [0.0, 1.0]},
        "output": {"name": "score", "shape": ["batch"]},
        "torchscript": None if ts_path is None else str(ts_path),
        "onnx": None if onnx_path is None else str(onnx_path),
        "onnx_exporter": cfg.onnx_exporter,
        "verify": {
            "num_images": int(images.shape[0]),
            "samples": used or "random tensors",
            "skipped": skipped,
            "max_abs_diff": diffs,
            "atol": atol,
            "passed": all(d <= atol for d in diffs.values()),
        },
    }
    write_json(out / "export_report.json", report)
    for name, d in diffs.items():
        print(
            f"{name}: max |score - PyTorch score| = {d:.3e} over {images.shape[0]} images (atol {atol:.0e})"
        )
    if not report["verify"]["passed"]:
        raise ExportMismatchError(f"exported scores differ from PyTorch's by more than {atol}: {diffs}")
    return report


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Console entry of `mfe-iqa-export`."""
    export(cfg)


if __name__ == "__main__":
    main()
