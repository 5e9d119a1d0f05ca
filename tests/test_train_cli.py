"""`mfe-iqa-train` end to end on a tiny demo: fast dev run, and a 1-epoch run with all its artefacts."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from train_run_helpers import run_train


def _tiny(tmp_path: Path) -> list[str]:
    """A 3-reference demo (3 types x 3 levels, short side 64) and 32-px crops: seconds per epoch."""
    return [
        f"data.root={tmp_path / 'demo'}",
        "data.num_refs=3",
        "data.dist_types=[gaussian_blur,jpeg,white_noise]",
        "data.num_dist_types=3",
        "data.levels=[1,3,5]",
        "data.demo_short_side=64",
        "data.crop_size=32",
        "data.batch_size=4",
        "data.test_crops=2",
        "split.ratios=[0.34,0.33,0.33]",
        "trainer.accelerator=cpu",
        "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null",
    ]


def _train(tmp_path: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_train([f"hydra.run.dir={run_dir}", *_tiny(tmp_path), *extra], timeout=300)


def test_fast_dev_run_completes(tmp_path):
    proc = _train(tmp_path, tmp_path / "fdr", "debug=fdr", "logger=csv_only")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "fdr" / "config_resolved.yaml").is_file()


def test_one_epoch_writes_checkpoints_csv_wandb_and_the_results_table(tmp_path):
    run = tmp_path / "run"
    proc = _train(tmp_path, run, "trainer.max_epochs=1", "logger=many", "experiment_name=cli_test")
    assert proc.returncode == 0, proc.stderr[-3000:]

    # checkpoints: the best on val/srcc and last, both loadable, from epoch 0
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and "epoch_000.ckpt" in ckpts, ckpts
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 0 and state["state_dict"]

    # CSV log with the per-image validation and test metrics
    log = pd.read_csv(run / "csv" / "metrics.csv")
    assert log["val/srcc"].notna().any()
    test_cols = [c for c in log.columns if c.startswith("test/demo/")]
    assert {"test/demo/srcc", "test/demo/plcc", "test/demo/krcc"} <= set(test_cols)

    # an offline W&B run under the run dir, with the logged config and the shared group
    wandb_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1, list((run / "wandb").iterdir())
    config = yaml.safe_load((wandb_runs[0] / "files" / "config_resolved.yaml").read_text())
    assert config["experiment_name"] == "cli_test" and config["data"]["crop_size"] == 32
    record = next(wandb_runs[0].glob("run-*.wandb")).read_bytes()
    assert b"cli_test" in record and b"crop_size" in record  # the logged config is in the run's record

    # the resolved config and the one results file of the run agree with the logs
    resolved = yaml.safe_load((run / "config_resolved.yaml").read_text())
    assert resolved["data"]["num_refs"] == 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["train_db"], metrics["model"]) == ("demo", "mfenet_tiny")  # the config choices by name
    last = log.dropna(subset=["test/demo/srcc"]).iloc[-1]
    assert metrics["test"]["demo"]["srcc"] == pytest.approx(float(last["test/demo/srcc"]), abs=1e-6)

    # the table printed at the end
    assert "Test results (cli_test)" in proc.stdout and "srcc" in proc.stdout


def test_resumed_run_reuses_its_dan_pretraining(compose_cfg, tmp_path):
    """A run resumed in its own dir does not pre-train DAN again: it loads the dan.pt already there."""
    from mfe_iqa.cli.train import _maybe_pretrain_dan

    cfg = compose_cfg("train", ["experiment=demo"])
    done = tmp_path / "run" / "dan_pretrain" / "dan.pt"
    done.parent.mkdir(parents=True)
    done.write_bytes(b"")
    _maybe_pretrain_dan(cfg, datamodule=None)  # would fail on None if it pre-trained
    assert cfg.model.dan.pretrained_ckpt == str(done)


def test_in_job_dan_pretraining_refuses_multi_process_runs(compose_cfg):
    from mfe_iqa.cli.common import ConfigError
    from mfe_iqa.cli.train import _maybe_pretrain_dan

    cfg = compose_cfg("train", ["experiment=demo", "trainer=ddp_cpu"])
    with pytest.raises(ConfigError, match="mfe-iqa-pretrain"):
        _maybe_pretrain_dan(cfg, datamodule=None)


def test_a_resumed_wandb_run_leaves_a_shared_wandb_service_and_a_fresh_run_keeps_it(compose_cfg, monkeypatch):
    """Under WANDB_SERVICE (one wandb-core shared by processes) a killed run's stream stays open there and its id
    is "in use": resuming must start a service of its own. A fresh run, even with resume=allow, keeps sharing."""
    from mfe_iqa.cli.train import WANDB_RUN_ID_FILE, _set_wandb_run_id

    shared = "3-123-tcp-localhost-45678"
    fresh = compose_cfg("train", ["experiment=demo", "logger=wandb", "logger.wandb.resume=allow"])
    resumed = copy.deepcopy(fresh)
    out = Path(fresh.paths.output_dir)
    monkeypatch.setenv("WANDB_SERVICE", shared)
    _set_wandb_run_id(fresh, out, resuming=False)
    assert os.environ["WANDB_SERVICE"] == shared
    run_id = (out / WANDB_RUN_ID_FILE).read_text().strip()
    assert fresh.logger.wandb.id == run_id

    _set_wandb_run_id(resumed, out, resuming=True)
    assert "WANDB_SERVICE" not in os.environ
    assert resumed.logger.wandb.id == run_id and resumed.logger.wandb.resume == "allow"


def _draws() -> tuple[float, float, float]:
    import random

    import numpy as np

    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_in_job_dan_pretraining_leaves_the_random_streams_where_a_reusing_run_has_them(
    compose_cfg, tmp_path, monkeypatch
):
    """Pre-training in the job and loading its dan.pt must start the fit from one initialization.

    The stand-in for the pre-training re-seeds and draws from every global generator, as the real one does;
    after it the next draws must equal those of a run that skipped it.
    """
    import random

    import lightning as L
    import numpy as np

    import mfe_iqa.cli.pretrain as pretrain_cli
    from mfe_iqa.cli.train import _maybe_pretrain_dan

    dan = tmp_path / "elsewhere" / "dan.pt"

    def fake_pretraining(pcfg):
        L.seed_everything(999)
        random.random(), np.random.rand(5), torch.randn(7)
        os.environ["PL_GLOBAL_SEED"] = "999"
        return dan

    monkeypatch.setattr(pretrain_cli, "run_pretraining", fake_pretraining)
    cfg = compose_cfg("train", ["experiment=demo", "pretrain_dan.enabled=true"])

    L.seed_everything(cfg.seed)
    reusing = _draws()  # pretrain_dan.enabled=false: nothing runs between seeding and the network

    class Split:  # the preset pre-trains on the training split's images
        @staticmethod
        def pretrain_images():
            return [tmp_path / "a.png"]

    L.seed_everything(cfg.seed)
    _maybe_pretrain_dan(cfg, datamodule=Split())
    assert cfg.model.dan.pretrained_ckpt == str(dan)  # it did run
    assert _draws() == reusing
    assert os.environ["PL_GLOBAL_SEED"] == str(cfg.seed)


def test_synthetic_quality_ranking_trains_from_the_command_line(tmp_path):
    """data.degraded_twin + system.lambda_twin wired through Hydra: the twin term is trained and logged."""
    run = tmp_path / "twin"
    proc = _train(
        tmp_path,
        run,
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "logger=csv_only",
        "data.degraded_twin.enabled=true",
        "data.degraded_twin.types=[jpeg,gaussian_blur]",
        "system.lambda_twin=1.0",
        "system.twin_fraction=0.5",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = pd.read_csv(run / "csv" / "metrics.csv")
    twin = log["train/loss_twin"].dropna()
    order = log["train/twin_order_acc"].dropna()
    assert len(twin) == 1 and float(twin.iloc[0]) >= 0.0
    assert len(order) == 1 and 0.0 <= float(order.iloc[0]) <= 1.0
    resolved = yaml.safe_load((run / "config_resolved.yaml").read_text())
    assert resolved["data"]["degraded_twin"]["types"] == ["jpeg", "gaussian_blur"]


def test_twin_weight_without_twins_stops_with_the_key_to_set(tmp_path):
    proc = _train(tmp_path, tmp_path / "nt", "debug=fdr", "logger=csv_only", "system.lambda_twin=1.0")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "data.degraded_twin.enabled=true" in proc.stderr + proc.stdout
