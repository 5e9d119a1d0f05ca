"""Parameter and FLOP counts of the model presets in ``conf/model/``, measured with torch's FlopCounterMode.

``python -m mfe_iqa.models.flops [--size 224 224] [--presets mfenet mfenet_tiny ...]`` prints the model-card table.
FLOPs count a multiply-add as 2 (torch's convention); GMACs = GFLOPs / 2 is the unit VAN and ResNet papers quote.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def default_conf_dir() -> Path:
    """The repository's ``conf/`` directory (``mfe_iqa.cli.common.CONF_DIR`` when that module exists)."""
    try:
        from mfe_iqa.cli.common import CONF_DIR

        return Path(CONF_DIR)
    except ImportError:
        return Path(__file__).resolve().parents[3] / "conf"


def list_presets(conf_dir: Path | None = None) -> list[str]:
    """Names of the yaml files in ``conf/model/``, sorted."""
    model_dir = (conf_dir or default_conf_dir()) / "model"
    if not model_dir.is_dir():
        raise FileNotFoundError(f"No model presets: '{model_dir}' is not a directory.")
    return sorted(p.stem for p in model_dir.glob("*.yaml"))


def compose_model_config(name: str, overrides: Sequence[str] = (), conf_dir: Path | None = None):
    """The composed ``model`` node of preset ``name`` (defaults lists applied), as Hydra would build it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        raise RuntimeError("compose_model_config needs Hydra uninitialized; call it outside a Hydra app.")
    conf_dir = (conf_dir or default_conf_dir()).resolve()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(overrides=[f"+model={name}", *[f"model.{o}" for o in overrides]])
    return cfg.model


def build_preset(name: str, overrides: Sequence[str] = (), conf_dir: Path | None = None) -> nn.Module:
    """Instantiate preset ``name`` of ``conf/model/`` with optional ``key=value`` overrides under ``model.``."""
    from hydra.utils import instantiate

    return instantiate(compose_model_config(name, overrides, conf_dir))


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, size: tuple[int, int] = (224, 224), batch: int = 1) -> int:
    """FLOPs of one eval-mode forward pass on a (batch, 3, H, W) input (multiply-add = 2 FLOPs)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.rand(batch, 3, *size))
    model.train(was_training)
    return counter.get_total_flops()


def preset_table(
    presets: Sequence[str] | None = None, size: tuple[int, int] = (224, 224), conf_dir: Path | None = None
) -> list[dict[str, float | str]]:
    """One row per preset: name, total params (M), GFLOPs and GMACs at ``size``."""
    rows = []
    for name in presets or list_presets(conf_dir):
        torch.manual_seed(0)
        model = build_preset(name, conf_dir=conf_dir)
        flops = count_flops(model, size)
        rows.append(
            {
                "preset": name,
                "params_M": count_params(model) / 1e6,
                "gflops": flops / 1e9,
                "gmacs": flops / 2e9,
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, float | str]], size: tuple[int, int]) -> str:
    """A Markdown table of ``preset_table`` rows."""
    lines = [
        f"| preset | params (M) | GFLOPs @{size[0]}x{size[1]} | GMACs @{size[0]}x{size[1]} |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['params_M']:.2f} | {r['gflops']:.2f} | {r['gmacs']:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Parameters and FLOPs of the conf/model presets.")
    parser.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    parser.add_argument(
        "--presets", nargs="*", default=None, help="preset names (default: all in conf/model)"
    )
    parser.add_argument("--conf-dir", type=Path, default=None, help="config root (default: the repo's conf/)")
    args = parser.parse_args(argv)
    size = (args.size[0], args.size[1])
    print(format_table(preset_table(args.presets, size, args.conf_dir), size))


if __name__ == "__main__":
    main()
