"""Crash-safe checkpoints: a kill during a save never leaves a truncated or missing ``last.ckpt``.

``AtomicCheckpointIO`` writes every checkpoint to a hidden temporary file in the target's folder, fsyncs it, then
``os.replace``s it over the target (atomic on POSIX: a reader sees the old file or the new one, never half of one),
and fsyncs the folder so the rename survives a power loss. ``AtomicModelCheckpoint`` is Lightning's
``ModelCheckpoint`` that installs that writer on the trainer's strategy and makes ``save_last="link"`` atomic too
(Lightning removes ``last.ckpt`` before linking; here the new link replaces it in one rename).
Wire it with ``_target_: mfe_iqa.callbacks.AtomicModelCheckpoint`` (conf/callbacks/model_checkpoint.yaml).

``EMAWeights`` is Lightning's ``EMAWeightAveraging`` made consistent with model selection: validation and every
saved ``state_dict`` hold the averaged weights, and testing a checkpoint after the fit tests those averaged weights
(the selected ones), not the raw weights Lightning keeps beside them for resuming (conf/callbacks/ema.yaml).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"  # temporary names: ".<name>.tmp-<pid>" (hidden, and not ending in .ckpt)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through a temporary file in the same folder, fsync, then ``os.replace``.

    If anything fails (or the process dies) before the rename, ``path`` keeps its previous content; the
    temporary file is removed on an exception (a killed process may leave a hidden ``.<name>.tmp-<pid>``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_link(target: str | os.PathLike, link: str | os.PathLike) -> None:
    """Point ``link`` at ``target`` (relative symlink, or a copy where links are not allowed) in one rename."""
    target, link = Path(target), Path(link)
    tmp = _tmp_path(link)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.symlink(os.path.relpath(target, link.parent), tmp)
        except OSError:
            shutil.copyfile(target, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(link.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, with an fsynced write-then-rename save (local paths)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}"
            )
        if "://" in str(path):  # remote file systems: Lightning's own (fsspec transaction) save
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose files are written atomically (see the module docstring).

    On setup it swaps the strategy's default ``TorchCheckpointIO`` for ``AtomicCheckpointIO`` (a custom IO given
    through ``trainer.plugins`` is kept, with a warning) and removes temporary files a killed save left behind.
    With ``save_last=True`` the last checkpoint is refreshed at every save opportunity, improved or not.
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        strategy = trainer.strategy
        io = getattr(strategy, "checkpoint_io", None)
        if type(io) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()
        elif not isinstance(io, AtomicCheckpointIO):
            log.warning(
                "AtomicModelCheckpoint: the strategy uses %s, not AtomicCheckpointIO: checkpoint writes are "
                "only as safe as that plugin makes them",
                type(io).__name__,
            )
        if trainer.is_global_zero and self.dirpath and os.path.isdir(self.dirpath):
            for stale in Path(self.dirpath).glob(f".*{TMP_MARK}*"):
                log.info("Removing a temporary file left by an interrupted checkpoint save: %s", stale)
                stale.unlink(missing_ok=True)

    # Lightning >= 2.5 refreshes last.ckpt only when a top-k checkpoint was saved at the same step, so with
    # `monitor` + `save_top_k` last.ckpt stayed at the best epoch and a resumed run lost the epochs after it.
    # Here `save_last: true` writes last.ckpt at every checkpoint opportunity (each validation end, or each
    # train-epoch end with save_on_train_epoch_end), which is what `ckpt_path=last` needs.
    def _save_last_if_missed(self, trainer) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        if self.save_last is not True or trainer.fast_dev_run or trainer.sanity_checking:
            return
        if trainer.state.fn != TrainerFn.FITTING or self._last_global_step_saved == trainer.global_step:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    @staticmethod
    def _link_checkpoint(trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            if os.path.isdir(linkpath) and not os.path.islink(linkpath):
                shutil.rmtree(linkpath)
            atomic_link(filepath, linkpath)
        trainer.strategy.barrier()


class EMAWeights(EMAWeightAveraging):
    """Exponential moving average of the weights, evaluated and tested as the averaged model.

    Lightning's callback stores the averaged weights as the checkpoint's ``state_dict`` (what validation scored,
    so what ``val/srcc`` selected) and the raw weights as ``current_model_state`` (to resume the fit). Its
    ``on_load_checkpoint`` puts the raw weights back into the module whenever an averaged model exists, which
    after a fit includes ``trainer.test(ckpt_path=best)`` in the same process: the test would score weights
    that were never validated. Outside the fit stage this callback leaves the loaded ``state_dict`` (the
    averaged weights) in place; resuming a fit restores both as before.
    """

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
