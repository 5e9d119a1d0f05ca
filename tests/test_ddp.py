"""Multi-process training (`trainer=ddp_cpu`: 2 processes, gloo), the global batch size, mixed precision, and
per-image metrics that do not count the duplicates a DistributedSampler pads in."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from torch.utils.data import DataLoader

from mfe_iqa.data.datamodules import BatchSizeError, DemoDataModule
from mfe_iqa.errors import UserError
from mfe_iqa.metrics import build_iqa_metrics
from mfe_iqa.systems.iqa import IQATrainingModule
from train_run_helpers import DEMO, read_metrics, run_train, shared_tiny_demo, tiny_overrides
from training_helpers import MODEL_CFG, NoiseDB, TinyNet, one_torch_thread  # noqa: F401 (autouse fixture)


@pytest.fixture
def tiny_demo(tmp_path_factory) -> Path:
    return shared_tiny_demo(tmp_path_factory)


METRICS = ("srcc", "plcc", "krcc", "rmse", "plcc_fit")


# LP-FT's linear-probe stage runs in both processes and rank 0's head is broadcast; the single-process evaluation
# below reads the checkpoint those weights went into
LPFT = ["model.dan_stats_head=true", "system.stats_head_init=ridge"]


def _with_dan(overrides: list[str]) -> list[str]:
    return [o for o in overrides if o != "model.use_dan=false"]


def test_two_process_run_matches_one_process_evaluation_of_its_checkpoint(tiny_demo, tmp_path):
    """DDP on 2 CPU processes trains and reports val/test metrics; one process evaluating the same checkpoint on
    the same splits gets the same numbers. The 11 val and 11 test images make the sampler pad a duplicate."""
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp = run_train(
        [
            *_with_dan(tiny_overrides(tiny_demo, ddp_dir)),
            "trainer=ddp_cpu",
            "trainer.max_epochs=1",
            "system.lambda_hf=0",  # an ablation: the HF head is unused, which plain DDP refuses unless handled
            *LPFT,
            "logger=csv_only",
            "callbacks.model_checkpoint.save_last=false",
            "+callbacks.model_checkpoint.save_weights_only=true",
        ]
    )
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    assert "MEMBER: 2/2" in ddp.stdout + ddp.stderr  # really two processes
    assert (ddp.stdout + ddp.stderr).count("Linear-probe stage") == 2  # each process fitted the head
    parts = (ddp_dir / "split.csv").read_text().splitlines()[1:]
    assert (
        sum(r.endswith(",val") for r in parts) % 2 == 1 and sum(r.endswith(",test") for r in parts) % 2 == 1
    )

    ckpt = ddp_dir / "checkpoints" / "epoch_000.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["epoch"] == 0
    from conftest import compose_config
    from mfe_iqa.cli.train import train

    # one process, in this process: the checkpoint on the same split (val, then test)
    overrides = [o for o in _with_dan(tiny_overrides(tiny_demo, single_dir)) if not o.startswith("hydra.")]
    extra = [
        *LPFT,
        "train=false",
        f"ckpt_path={ckpt}",
        f"split.file={ddp_dir / 'split.csv'}",
        "logger=csv_only",
    ]
    train(compose_config("train", [*overrides, *extra], single_dir))
    a, b = read_metrics(ddp_dir), read_metrics(single_dir)
    for k in METRICS:
        assert a["val"][k] == pytest.approx(b["val"][k], abs=1e-5), k
        assert a["test"]["demo"][k] == pytest.approx(b["test"]["demo"][k], abs=1e-5), k


def test_a_padded_duplicate_does_not_change_the_metrics():
    """What DDP does at epoch end: every rank's (index, prediction, target) concatenated, duplicates included."""
    g = torch.Generator().manual_seed(0)
    n = 11
    mos = torch.rand(n, generator=g)
    pred = mos + 0.3 * torch.rand(n, generator=g)
    index = torch.arange(n)
    plain = build_iqa_metrics()
    plain.update(pred, mos, index=index)
    expected = {k: float(v) for k, v in plain.compute().items()}
    assert expected["srcc"] == pytest.approx(spearmanr(pred, mos)[0], abs=1e-5)
    assert expected["plcc"] == pytest.approx(pearsonr(pred, mos)[0], abs=1e-5)

    # rank 0 gets images 0, 2, 4, ..., 10; rank 1 gets 1, 3, ..., 9 and image 0 again (the padding)
    rank0, rank1 = index[0::2], torch.cat([index[1::2], index[:1]])
    padded = build_iqa_metrics()
    for idx in (rank0, rank1):
        padded.update(pred[idx], mos[idx], index=idx)
    assert {k: float(v) for k, v in padded.compute().items()} == pytest.approx(expected, abs=1e-7)

    # after a DDP sync the cat-list states are single tensors: the same result
    synced = build_iqa_metrics()
    for metric in synced.values():
        metric.index = torch.cat([rank0, rank1])
        metric.preds = pred[torch.cat([rank0, rank1])]
        metric.target = mos[torch.cat([rank0, rank1])]
        metric._update_count = 2  # as after the updates (silences torchmetrics' "compute before update")
    assert {k: float(v) for k, v in synced.compute().items()} == pytest.approx(expected, abs=1e-7)


def _demo_module(root, batch_size: int, world_size: int) -> DemoDataModule:
    dm = DemoDataModule(
        root,
        num_refs=DEMO["num_refs"],
        dist_types=DEMO["dist_types"],
        levels=DEMO["levels"],
        demo_short_side=DEMO["short_side"],
        num_dist_types=len(DEMO["dist_types"]),
        crop_size=32,
        test_crops=2,
        batch_size=batch_size,
        eval_batch_size=5,
        split={"index": 0, "seed": 1, "ratios": [0.5, 0.25, 0.25], "file": None},
    )
    dm.trainer = SimpleNamespace(world_size=world_size)
    dm.setup("fit")
    return dm


def test_batch_size_is_global_and_divided_by_the_world_size(tiny_demo):
    dm = _demo_module(tiny_demo, batch_size=8, world_size=2)
    assert dm.train_dataloader().batch_size == 4
    assert dm.val_dataloader().batch_size == 3  # eval: ceil(5 / 2), results do not depend on it
    dm.trainer = SimpleNamespace(world_size=1)
    assert dm.train_dataloader().batch_size == 8

    dm = _demo_module(tiny_demo, batch_size=8, world_size=3)
    with pytest.raises(BatchSizeError, match=r"data\.batch_size=8 .*global.*divisible by .* 3") as err:
        dm.train_dataloader()
    assert isinstance(err.value, UserError)


def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    """The precision comes from the trainer config; bf16 autocast runs on CPU too (fp16 `16-mixed` needs a GPU)."""
    torch.manual_seed(0)
    system = IQATrainingModule(
        net=TinyNet(),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-2),
        lambda_hf=0.1,
        lambda_dist=0.1,
        model_cfg=MODEL_CFG,
    )
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_steps=3,
        accelerator="cpu",
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(system, DataLoader(NoiseDB(16, seed=1), batch_size=4))
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
