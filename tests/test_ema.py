"""EMA of the weights (conf/callbacks/ema.yaml): the average is the hand-computed one, and a checkpoint tested
after the fit is tested with those averaged weights (what validation scored and selected)."""

from __future__ import annotations

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, ModelCheckpoint
from torch.utils.data import DataLoader

from mfe_iqa.callbacks import EMAWeights
from mfe_iqa.systems.iqa import IQATrainingModule
from training_helpers import NoiseDB, one_torch_thread, tiny_system  # noqa: F401 (autouse fixture)

DECAY = 0.8
DB = {"name": "toy", "kind": "authentic", "mos_min": 0.0, "mos_max": 1.0, "lower_better": False}


class RecordWeights(Callback):
    """The raw parameters after every optimizer step (runs before the EMA callback: listed first)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({k: v.detach().clone() for k, v in pl_module.named_parameters()})


def _fit(tmp_path, ema: Callback) -> tuple[IQATrainingModule, L.Trainer, RecordWeights]:
    """2 epochs x 3 steps; a checkpoint saved at each validation end, as mfe-iqa-train's ModelCheckpoint does."""
    system, record = tiny_system(5e-2, DB), RecordWeights()
    saver = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="e{epoch}", save_top_k=-1, auto_insert_metric_name=False
    )
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=[record, ema, saver], num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(
        system,
        train_dataloaders=DataLoader(NoiseDB(24, seed=1), batch_size=8, shuffle=True),
        val_dataloaders=DataLoader(NoiseDB(8, seed=2, crops=2), batch_size=4),
    )
    return system, trainer, record


def _hand_ema(steps: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """AveragedModel's EMA: the first update copies, then avg <- d * avg + (1 - d) * w after every step."""
    avg = {k: v.clone() for k, v in steps[0].items()}
    for w in steps[1:]:
        avg = {k: DECAY * avg[k] + (1 - DECAY) * w[k] for k in avg}
    return avg


def test_checkpoint_holds_the_hand_computed_average_and_the_test_uses_it(tmp_path):
    system, trainer, record = _fit(tmp_path, EMAWeights(decay=DECAY))
    assert len(record.steps) == 6  # 2 epochs x 3 batches
    expected, raw = _hand_ema(record.steps), record.steps[-1]
    path = tmp_path / "ckpt" / "e1.ckpt"  # saved during the fit, after the last step
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    for name, value in expected.items():
        torch.testing.assert_close(ckpt["state_dict"][name], value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ckpt["current_model_state"][name], raw[name])
    assert any(not torch.allclose(expected[k], raw[k]) for k in expected)  # the average is not the raw model

    # the final test in the same process (what mfe-iqa-train does): the averaged weights are what is scored
    trainer.test(
        system, DataLoader(NoiseDB(8, seed=3, crops=2), batch_size=4), ckpt_path=str(path), verbose=False
    )
    for name, value in system.named_parameters():
        torch.testing.assert_close(value.detach(), expected[name], rtol=1e-5, atol=1e-6)


def test_lightnings_own_callback_would_test_the_raw_weights(tmp_path):
    """Why EMAWeights exists: with the library callback the post-fit test reloads the unselected raw weights."""
    system, trainer, record = _fit(tmp_path, EMAWeightAveraging(decay=DECAY))
    path = tmp_path / "ckpt" / "e1.ckpt"
    trainer.test(
        system, DataLoader(NoiseDB(8, seed=3, crops=2), batch_size=4), ckpt_path=str(path), verbose=False
    )
    raw = record.steps[-1]
    for name, value in system.named_parameters():
        torch.testing.assert_close(value.detach(), raw[name])


def test_a_decay_of_zero_averages_nothing(tmp_path):
    _, trainer, record = _fit(tmp_path, EMAWeights(decay=0.0))
    path = tmp_path / "ckpt" / "e1.ckpt"  # saved during the fit, after the last step
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    for name, value in record.steps[-1].items():
        torch.testing.assert_close(ckpt["state_dict"][name], value)


def test_the_ema_config_composes_onto_the_default_callbacks(compose_cfg):
    cfg = compose_cfg("train", ["callbacks=[default,ema]"])
    assert cfg.callbacks.ema._target_ == "mfe_iqa.callbacks.EMAWeights"
    assert cfg.callbacks.model_checkpoint.monitor == "val/srcc"  # the defaults are still there
    assert isinstance(instantiate(cfg.callbacks.ema), EMAWeights)
