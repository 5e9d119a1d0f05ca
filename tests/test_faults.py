"""Faults: a run killed mid-training resumes (W&B run included), checkpoints survive a crash during a save,
and a non-finite loss stops training with a message that names the step and every loss term."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from mfe_iqa.callbacks import AtomicCheckpointIO, AtomicModelCheckpoint
from mfe_iqa.errors import UserError
from mfe_iqa.systems.iqa import IQATrainingModule, NonFiniteLossError
from train_run_helpers import REPO, cli_env, run_train, shared_tiny_demo, tiny_overrides, train_cmd
from training_helpers import MODEL_CFG, NoiseDB, TinyNet, one_torch_thread  # noqa: F401 (autouse fixture)


@pytest.fixture
def tiny_demo(tmp_path_factory) -> Path:
    return shared_tiny_demo(tmp_path_factory)


EPOCHS = 3


@pytest.fixture
def shared_wandb_service(tmp_path):
    """A detached wandb-core that processes started with WANDB_SERVICE=<its address> share, as
    `export WANDB_SERVICE=$(wandb beta core start)` sets one up for multi-process workloads; stopped afterwards."""
    wandb_cli = [sys.executable, "-c", "from wandb.cli.cli import cli; cli()", "beta", "core"]
    env = cli_env(WANDB_DIR=str(tmp_path))
    started = subprocess.run(
        [*wandb_cli, "start", "--idle-timeout", "5m"], capture_output=True, text=True, env=env, timeout=60
    )
    assert started.returncode == 0, started.stderr
    address = started.stdout.strip().splitlines()[-1]
    yield address
    subprocess.run(
        [*wandb_cli, "stop"], capture_output=True, env={**env, "WANDB_SERVICE": address}, timeout=60
    )


def test_killed_run_resumes_from_last_ckpt_and_continues_its_wandb_run(
    tiny_demo, tmp_path, shared_wandb_service
):
    """Both runs are started under one shared W&B service, which keeps the killed run's stream: resuming its
    id there failed with "run ID ... is in use" until the resumed run started a service of its own."""
    run = tmp_path / "run"
    args = [*tiny_overrides(tiny_demo, run), f"trainer.max_epochs={EPOCHS}", "logger=many"]
    last = run / "checkpoints" / "last.ckpt"
    env = cli_env(WANDB_SERVICE=shared_wandb_service)
    with open(tmp_path / "first.log", "wb") as log_file:
        proc = subprocess.Popen(
            train_cmd(args),
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kill takes every process of the run along
        )
        try:
            deadline = time.monotonic() + 240
            while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proc.poll() is None, (
                "the run ended before its first checkpoint:\n" + (tmp_path / "first.log").read_text()[-3000:]
            )
            assert last.exists(), "no checkpoint within the time limit"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = torch.load(last, map_location="cpu", weights_only=False)  # complete even though killed
    assert killed["epoch"] < EPOCHS - 1
    steps_per_epoch = killed["global_step"] // (killed["epoch"] + 1)
    run_id = (run / "wandb_run_id.txt").read_text().strip()
    assert len(run_id) == 8 and not (run / "metrics.json").exists()

    resumed = run_train([*args, "ckpt_path=last"], env=env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    out = resumed.stdout + resumed.stderr
    assert f"Resuming W&B run {run_id} with a W&B service of this process's own" in out
    assert "Restoring states from the checkpoint path at" in out and str(last) in out
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert final["epoch"] == EPOCHS - 1 and final["global_step"] == EPOCHS * steps_per_epoch
    assert (run / "metrics.json").is_file()
    # the same W&B run: the id file is kept and both offline run folders carry its id
    assert (run / "wandb_run_id.txt").read_text().strip() == run_id
    assert len(list((run / "wandb").glob(f"offline-run-*-{run_id}"))) == 2
    assert "resume: allow" in (run / "config_resolved.yaml").read_text()
    # the CSV log of the interrupted part is kept beside the resumed one
    assert (run / "csv" / "metrics.1.csv").is_file() and (run / "csv" / "metrics.csv").is_file()


def test_ckpt_path_last_without_a_checkpoint_is_a_clear_error(tiny_demo, tmp_path):
    from omegaconf import OmegaConf

    from mfe_iqa.cli.common import ConfigError
    from mfe_iqa.cli.train import _resolve_ckpt_path

    cfg = OmegaConf.create({"ckpt_path": "last", "paths": {"output_dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match="hydra.run.dir="):
        _resolve_ckpt_path(cfg)
    cfg.ckpt_path = "auto"
    assert _resolve_ckpt_path(cfg) is None


def _broken_save(obj, f, *args, **kwargs):
    """A crash in the middle of a save: half of the bytes written, then an error."""
    f.write(b"PK\x03\x04 half a checkpoint")
    raise OSError("No space left on device (simulated)")


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 0, "w": torch.arange(4)}, path)
    monkeypatch.setattr(torch, "save", _broken_save)
    with pytest.raises(OSError, match="simulated"):
        io.save_checkpoint({"epoch": 1, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    state = torch.load(path, weights_only=False)
    assert state["epoch"] == 0 and torch.equal(state["w"], torch.arange(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left


def _system() -> IQATrainingModule:
    torch.manual_seed(0)
    return IQATrainingModule(
        net=TinyNet(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-2), model_cfg=MODEL_CFG
    )


def _fit(tmp_path, checkpoint: AtomicModelCheckpoint, epochs: int, ckpt_path=None) -> L.Trainer:
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_system(), DataLoader(NoiseDB(8, seed=1), batch_size=4), ckpt_path=ckpt_path)
    return trainer


def test_a_crash_while_lightning_saves_keeps_last_ckpt_loadable(tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "checkpoints"
    trainer = _fit(tmp_path, AtomicModelCheckpoint(dirpath=ckpt_dir, save_last=True), epochs=1)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    last = ckpt_dir / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 0
    stale = ckpt_dir / ".last.ckpt.tmp-999"  # what a killed save leaves: removed at the next start
    stale.write_bytes(b"partial")

    monkeypatch.setattr(torch, "save", _broken_save)
    with pytest.raises(OSError, match="simulated"):
        _fit(tmp_path, AtomicModelCheckpoint(dirpath=ckpt_dir, save_last=True), epochs=2, ckpt_path=last)
    monkeypatch.undo()
    assert torch.load(last, weights_only=False)["epoch"] == 0
    assert not list(ckpt_dir.glob(".*.tmp-*"))


def test_save_last_link_replaces_the_link_atomically(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    checkpoint = AtomicModelCheckpoint(
        dirpath=ckpt_dir,
        monitor="train/loss",
        mode="min",
        save_top_k=1,
        save_last="link",
        filename="e{epoch}",
        auto_insert_metric_name=False,
    )
    _fit(tmp_path, checkpoint, epochs=2)
    last = ckpt_dir / "last.ckpt"
    assert last.is_symlink() and last.resolve() == (ckpt_dir / checkpoint.best_model_path).resolve()
    assert torch.load(last, weights_only=False)["epoch"] in (0, 1)
    assert not list(ckpt_dir.glob(".*.tmp-*"))


def test_non_finite_loss_stops_the_run_with_step_and_terms(tiny_demo, tmp_path, monkeypatch, capsys):
    """A NaN in the quality loss at global step 2: the CLI prints one `Error:` paragraph and exits with 2."""
    from conftest import compose_config
    from mfe_iqa.cli.common import exit_on_user_error
    from mfe_iqa.cli.train import train
    from mfe_iqa.losses.iqa import QualityLoss

    calls = {"n": 0}
    original = QualityLoss.forward

    def nan_at_step_2(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        calls["n"] += 1  # the quality loss runs once per training step (evaluation has no loss)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(QualityLoss, "forward", nan_at_step_2)
    overrides = [o for o in tiny_overrides(tiny_demo, tmp_path) if not o.startswith("hydra.")]
    cfg = compose_config("train", [*overrides, "trainer.max_epochs=3", "logger=csv_only"], tmp_path / "run")
    assert issubclass(NonFiniteLossError, UserError) and issubclass(NonFiniteLossError, FloatingPointError)
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(train)(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: non-finite training loss at global step 2 "), err
    for term in ("loss=nan", "loss_quality=nan", "loss_hf=", "loss_dist="):
        assert term in err, err
    assert "Traceback" not in err


def test_without_a_validation_split_checkpoints_are_written_every_epoch(tiny_demo, tmp_path):
    """No validation end to save at (paper protocol, val ratio 0): last.ckpt still follows every epoch."""
    from conftest import compose_config
    from mfe_iqa.cli.train import train

    overrides = [o for o in tiny_overrides(tiny_demo, tmp_path) if not o.startswith("hydra.")]
    overrides = [o for o in overrides if not o.startswith("split.ratios")]
    extra = ["split.ratios=[0.8,0,0.2]", "trainer.max_epochs=2", "logger=csv_only", "test=false"]
    cfg = compose_config("train", [*overrides, *extra], tmp_path / "run")
    train(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 1
    assert sorted(p.name for p in ckpts.glob("epoch_*.ckpt")) == ["epoch_001.ckpt"]
