"""Shared fixtures: compose the real Hydra configs, shrink them, run under tmp_path, clear Hydra state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "offline")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
LIVEC_SAMPLE = SHARED_DATA / "livec-sample" / "ChallengeDB_release"


@pytest.fixture(autouse=True)
def _clear_hydra():
    """Hydra keeps global state; every test starts and ends without it."""
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import torch

    torch.set_num_threads(1)  # 1 thread: 2 made the many tiny ops here 5-20x slower


def compose_config(config_name: str, overrides: list[str], output_dir: Path):
    """Compose conf/<config_name>.yaml as the CLI would, with the run dir set to `output_dir`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from mfe_iqa.cli.common import CONF_DIR

    # Left initialized (not a `with` block) so that code under test may call hydra.compose itself,
    # as it can inside a running app; the autouse fixture clears it after the test.
    initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3")
    cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(name, overrides) -> DictConfig with paths.output_dir = tmp_path / 'run'."""

    def _compose(config_name: str = "train", overrides: list[str] | None = None):
        return compose_config(config_name, list(overrides or []), tmp_path / "run")

    return _compose
