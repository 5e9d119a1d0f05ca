"""EMA of the weights (conf/callbacks/ema.yaml): the average is the hand-computed one, and a checkpoint tested
after the fit is tested with those averaged weights (what validation scored and selected)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, ModelCheckpoint
from torch.utils.data import DataLoader

from mfe_iqa.callbacks import EMAWeights, ema_warmup_decay
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


def _hand_ema(
    steps: list[dict[str, torch.Tensor]], decays: list[float] | None = None
) -> dict[str, torch.Tensor]:
    """AveragedModel's EMA: the first update copies, then avg <- d * avg + (1 - d) * w after every step
    (``decays[i]``: the decay of the update by ``steps[i + 1]``; DECAY throughout by default)."""
    decays = decays or [DECAY] * (len(steps) - 1)
    avg = {k: v.clone() for k, v in steps[0].items()}
    for d, w in zip(decays, steps[1:], strict=True):
        avg = {k: d * avg[k] + (1 - d) * w[k] for k in avg}
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


def test_warmup_decay_against_hand_values():
    # 1 - (1 + n)^-3/4: n = 1 -> 1 - 2^-0.75 = 1 - 0.594604 ; n = 15 -> 1 - 16^-0.75 = 1 - 1/8 ; n = 255 -> 1 - 1/64
    assert ema_warmup_decay(1, 0.99, 0.75) == pytest.approx(0.405396, abs=1e-6)
    assert ema_warmup_decay(15, 0.99, 0.75) == pytest.approx(0.875)
    assert ema_warmup_decay(30, 0.99, 0.75, gamma=2.0) == pytest.approx(0.875)  # gamma stretches the count
    assert ema_warmup_decay(255, 0.99, 0.75) == pytest.approx(1 - 1 / 64)
    assert ema_warmup_decay(100_000, 0.99, 0.75) == 0.99  # capped at the decay
    assert ema_warmup_decay(1, 0.99, None) == 0.99  # no warm-up: the constant decay


def test_warmup_update_in_place_and_integer_buffers_follow_the_model():
    ema = EMAWeights(decay=0.99, warmup_power=0.75)
    avg, cur = [torch.zeros(3), torch.full((2,), 4.0)], [torch.ones(3), torch.zeros(2)]
    ema._warmup_update(avg, cur, torch.tensor(1))  # d = 0.405396: avg = 0.405396 * avg + 0.594604 * w
    torch.testing.assert_close(avg[0], torch.full((3,), 0.594604), rtol=0, atol=1e-6)
    torch.testing.assert_close(avg[1], torch.full((2,), 4 * 0.405396), rtol=0, atol=1e-5)
    counters = [torch.tensor([3], dtype=torch.long)]
    ema._warmup_update(counters, [torch.tensor([5], dtype=torch.long)], torch.tensor(1))
    assert counters[0].item() == 5 and counters[0].dtype == torch.long


def test_checkpoint_holds_the_hand_computed_warmup_average(tmp_path):
    """Update k (after k snapshots) uses min(DECAY, 1 - (1 + k)^-0.75): 0.41, 0.56, 0.65, 0.70, 0.74 here."""
    _, _, record = _fit(tmp_path, EMAWeights(decay=DECAY, warmup_power=0.75))
    decays = [min(DECAY, 1 - (1 + k) ** -0.75) for k in range(1, len(record.steps))]
    assert decays[0] == pytest.approx(0.405396, abs=1e-6) and max(decays) < DECAY  # the warm-up is what acts
    ckpt = torch.load(tmp_path / "ckpt" / "e1.ckpt", map_location="cpu", weights_only=False)
    expected, constant = _hand_ema(record.steps, decays), _hand_ema(record.steps)
    for name, value in expected.items():
        torch.testing.assert_close(ckpt["state_dict"][name], value, rtol=1e-5, atol=1e-6)
    assert any(
        not torch.allclose(expected[k], constant[k]) for k in expected
    )  # differs from the constant decay


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"decay": 1.5}, "decay must be in"), ({"warmup_power": 0.0}, "warmup_power must be > 0"),
     ({"warmup_power": 0.75, "warmup_gamma": -1.0}, "warmup_gamma must be > 0")],
)  # fmt: skip
def test_bad_ema_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EMAWeights(**kwargs)


def test_the_ema_config_composes_onto_the_default_callbacks(compose_cfg):
    cfg = compose_cfg("train", ["callbacks=[default,ema]"])
    assert cfg.callbacks.ema._target_ == "mfe_iqa.callbacks.EMAWeights"
    assert cfg.callbacks.model_checkpoint.monitor == "val/srcc"  # the defaults are still there
    assert isinstance(instantiate(cfg.callbacks.ema), EMAWeights)
