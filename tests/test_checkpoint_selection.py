"""Checkpoint selection that waits (``AtomicModelCheckpoint(select_after_steps=...)``): validations before the
step are never candidates, ``last.ckpt`` is still written, and the run reports the selected checkpoint's score."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from mfe_iqa.callbacks import AtomicModelCheckpoint
from mfe_iqa.cli.train import _report_selection
from training_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

STEPS_PER_EPOCH = 3
SCRIPTED_VAL = [0.9, 0.2, 0.5, 0.4]  # epoch 0 is the best score: the early fluke a guard must not select


class ScriptedVal(BoringModel):
    """Logs a scripted ``val/srcc`` per epoch, so which epoch is best is known by construction."""

    def validation_step(self, batch, batch_idx):
        return None

    def on_validation_epoch_end(self) -> None:
        self.log("val/srcc", SCRIPTED_VAL[self.current_epoch])


def _fit(tmp_path, select_after_steps: int) -> AtomicModelCheckpoint:
    cb = AtomicModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="epoch_{epoch:03d}", monitor="val/srcc", mode="max", save_top_k=1,
        save_last=True, auto_insert_metric_name=False, select_after_steps=select_after_steps,
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=len(SCRIPTED_VAL), limit_train_batches=STEPS_PER_EPOCH, limit_val_batches=1, accelerator="cpu",
        logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[cb], num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(ScriptedVal())
    return cb


def test_without_a_guard_the_early_fluke_is_selected(tmp_path):
    cb = _fit(tmp_path, select_after_steps=0)
    assert cb.best_model_path.endswith("epoch_000.ckpt") and float(cb.best_model_score) == pytest.approx(0.9)


def test_validations_before_the_step_are_not_candidates(tmp_path):
    # validations end at steps 3, 6, 9, 12; from step 4 on the candidates are epochs 1-3, best epoch 2 (0.5)
    cb = _fit(tmp_path, select_after_steps=4)
    assert cb.best_model_path.endswith("epoch_002.ckpt") and float(cb.best_model_score) == pytest.approx(0.5)
    assert cb.skipped_selections == 1
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch_002.ckpt", "last.ckpt"]
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == len(SCRIPTED_VAL) - 1  # last.ckpt kept up to date through the guarded epochs


def test_a_fit_that_ends_before_the_step_selects_nothing(tmp_path):
    cb = _fit(tmp_path, select_after_steps=100)
    assert (
        cb.best_model_path == ""
        and cb.best_model_score is None
        and cb.skipped_selections == len(SCRIPTED_VAL)
    )
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["last.ckpt"]


def test_the_run_reports_the_selected_score_not_the_running_maximum(tmp_path):
    cb = _fit(tmp_path, select_after_steps=4)
    metrics = {"val/srcc": 0.4, "val/srcc_best": 0.9}  # what the system logs: the last score, the running max
    _report_selection(cb, metrics)
    assert metrics["val/srcc_best"] == pytest.approx(0.5)

    none_selected = _fit(tmp_path / "late", select_after_steps=100)
    metrics = {"val/srcc": 0.4, "val/srcc_best": 0.9}
    _report_selection(none_selected, metrics)
    assert metrics["val/srcc_best"] == pytest.approx(0.4)  # the last epoch's model is the one tested


@pytest.mark.parametrize("bad", [-1, 2.5, True, "70"])
def test_a_bad_select_after_steps_is_refused(bad):
    with pytest.raises(ValueError, match="select_after_steps must be a whole number"):
        AtomicModelCheckpoint(monitor="val/srcc", select_after_steps=bad)
