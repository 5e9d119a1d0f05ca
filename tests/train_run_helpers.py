"""Tiny `mfe-iqa-train` runs for the DDP, fault and determinism tests: one small demo shared by the session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# 6 references x 2 types x 3 levels = 36 images, 33 kept: 11 train / 11 val / 11 test (odd: DDP pads them)
DEMO = dict(num_refs=6, dist_types=["jpeg", "white_noise"], levels=[1, 3, 5], short_side=48)


_DEMO_ROOT: list[Path] = []


def shared_tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo of ``DEMO``, generated once per test session (each test module wraps this in a fixture)."""
    from mfe_iqa.data.demo import ensure_demo

    if not _DEMO_ROOT:
        _DEMO_ROOT.append(ensure_demo(tmp_path_factory.mktemp("tiny_demo") / "demo", **DEMO))
    return _DEMO_ROOT[0]


def demo_data_overrides(demo_root: Path) -> list[str]:
    """`data=demo` as ``DEMO`` generates it, for a config composed without the train preset (e.g. `probe`)."""
    return [
        "data=demo",
        f"data.root={demo_root}",
        f"data.num_refs={DEMO['num_refs']}",
        f"data.demo_short_side={DEMO['short_side']}",
        "data.dist_types=[" + ",".join(DEMO["dist_types"]) + "]",
        "data.levels=[" + ",".join(str(x) for x in DEMO["levels"]) + "]",
        f"data.num_dist_types={len(DEMO['dist_types'])}",
    ]


def tiny_overrides(demo_root: Path, run_dir: Path) -> list[str]:
    """32-px crops, 2 test crops, a global batch of 4, no DAN: about a second per epoch on one CPU thread."""
    return [
        f"hydra.run.dir={run_dir}",
        f"data.root={demo_root}",
        f"data.num_refs={DEMO['num_refs']}",
        f"data.demo_short_side={DEMO['short_side']}",
        "data.dist_types=[" + ",".join(DEMO["dist_types"]) + "]",
        f"data.num_dist_types={len(DEMO['dist_types'])}",
        "data.levels=[" + ",".join(str(x) for x in DEMO["levels"]) + "]",
        "data.limit_items=33",
        "split.ratios=[0.5,0.25,0.25]",
        "data.crop_size=32",
        "data.test_crops=2",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        "model.use_dan=false",  # VAN-B0 QEN + HFEN only: 4.3 M parameters, ~50 MB checkpoints
        "trainer.accelerator=cpu",
        "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null",
        "extras.torch_threads=1",
    ]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: one thread, W&B offline, and no W&B service inherited from this
    pytest process (an in-process test that called wandb.init leaves its service's address in WANDB_SERVICE,
    which would make every later subprocess share that service); ``extra`` adds or replaces variables."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", **extra}


def train_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "mfe_iqa.cli.train", *args]


def run_train(
    args: list[str], timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_cmd(args), capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env or cli_env()
    )


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())
