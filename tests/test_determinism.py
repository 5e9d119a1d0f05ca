"""Same seed and config on the same machine: the same split, the same crops, the same metrics."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from conftest import compose_config
from train_run_helpers import shared_tiny_demo, tiny_overrides


@pytest.fixture
def tiny_demo(tmp_path_factory) -> Path:
    return shared_tiny_demo(tmp_path_factory)


def _cfg(demo_root, run_dir, *extra: str):
    GlobalHydra.instance().clear()
    overrides = [o for o in tiny_overrides(demo_root, run_dir) if not o.startswith("hydra.")]
    return compose_config("train", [*overrides, *extra], run_dir)


def _first_batches(cfg) -> tuple[dict, dict]:
    L.seed_everything(cfg.seed, workers=True)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    return next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))


def test_same_seed_same_split_and_crops(tiny_demo, tmp_path):
    train_a, val_a = _first_batches(_cfg(tiny_demo, tmp_path / "a"))
    train_b, val_b = _first_batches(_cfg(tiny_demo, tmp_path / "b"))
    assert (tmp_path / "a" / "split.csv").read_bytes() == (tmp_path / "b" / "split.csv").read_bytes()
    for key in train_a:
        assert torch.equal(train_a[key], train_b[key]), key  # same shuffling and the same random crops
        assert torch.equal(val_a[key], val_b[key]), key  # the test crops never depend on the seed
    train_c, _ = _first_batches(_cfg(tiny_demo, tmp_path / "c", "seed=7"))
    assert not torch.equal(train_a["image"], train_c["image"])  # the comparison above is not vacuous


def test_two_identical_runs_give_identical_metrics(tiny_demo, tmp_path):
    from mfe_iqa.cli.train import train

    extra = ("trainer.max_epochs=2", "trainer.deterministic=true", "logger=csv_only")
    results = []
    for name in ("a", "b"):
        train(_cfg(tiny_demo, tmp_path / name, *extra))
        results.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    a, b = results
    assert (tmp_path / "a" / "split.csv").read_bytes() == (tmp_path / "b" / "split.csv").read_bytes()
    assert a["val"] and a["test"]["demo"]
    assert set(a["logged"]) == set(b["logged"]) and "train/loss" in a["logged"]
    for key, value in a["logged"].items():
        assert b["logged"][key] == pytest.approx(value, abs=1e-6), key
    for key, value in a["test"]["demo"].items():
        assert b["test"]["demo"][key] == pytest.approx(value, abs=1e-6), key
