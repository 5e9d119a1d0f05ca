"""Synthetic quality ranking: degraded twins of the training crops (data) and the twin ranking loss (system)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from mfe_iqa.data.datamodules import DemoDataModule
from mfe_iqa.data.datasets import IQATrainDataset
from mfe_iqa.data.demo import ensure_demo
from mfe_iqa.data.distortions import DISTORTION_NAMES, apply_distortion
from mfe_iqa.data.items import BATCH_IMAGE, BATCH_IMAGE_DEGRADED, BATCH_MOS, IQAItem
from mfe_iqa.data.transforms import QUALITY_LOWERING_TYPES, DegradedTwin, TrainTransform
from mfe_iqa.losses.iqa import QualityLoss, TwinRankLoss
from mfe_iqa.models.outputs import MFENetOutput
from mfe_iqa.systems.iqa import IQATrainingModule


def _natural(size: int = 48, seed: int = 0) -> np.ndarray:
    """A textured colour image (smooth gradients + edges + noise): every bank type changes it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1) % 256
    base[size // 3 : size // 2, :, :] = 250
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def _u8(t: torch.Tensor) -> np.ndarray:
    """(3, h, w) float in [0, 1] made from uint8 -> the uint8 (h, w, 3) it came from."""
    return np.round(t.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)


def test_twin_is_the_crop_through_the_bank():
    """Blur and JPEG draw no random numbers: the twin must equal apply_distortion on the same crop."""
    crop = _natural()
    blur, jpeg = DISTORTION_NAMES.index("gaussian_blur"), DISTORTION_NAMES.index("jpeg")
    assert np.array_equal(DegradedTwin(["gaussian_blur"], [3])(crop), apply_distortion(crop, blur, 3, 0))
    expected = [apply_distortion(crop, t, 5, 0) for t in (blur, jpeg)]
    drawn = [DegradedTwin(["gaussian_blur", "jpeg"], [5], seed=s)(crop) for s in range(12)]
    hits = [next(i for i, e in enumerate(expected) if np.array_equal(d, e)) for d in drawn]
    assert set(hits) == {0, 1}  # both types are drawn, nothing else comes out


def test_twin_repeats_for_a_seed_and_changes_the_crop():
    crop = _natural()
    a, b = DegradedTwin(seed=3), DegradedTwin(seed=3)
    outs_a, outs_b = [a(crop) for _ in range(6)], [b(crop) for _ in range(6)]
    assert all(np.array_equal(x, y) for x, y in zip(outs_a, outs_b))
    assert all(x.shape == crop.shape and x.dtype == np.uint8 and not np.array_equal(x, crop) for x in outs_a)
    a.reseed(4)
    assert not all(np.array_equal(a(crop), y) for y in outs_b[:3])


def test_default_types_are_the_quality_lowering_ones():
    assert set(QUALITY_LOWERING_TYPES) <= set(DISTORTION_NAMES)
    assert not {"brighten", "darken", "contrast_change", "high_sharpen"} & set(QUALITY_LOWERING_TYPES)
    twin = DegradedTwin()
    assert twin.levels == [2, 3, 4, 5]
    assert [DISTORTION_NAMES[i] for i in twin.types] == list(QUALITY_LOWERING_TYPES)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"types": ["gaussian_blurr"]},
            r"data.degraded_twin.types: unknown distortion name\(s\) \['gaussian_blurr'\]",
        ),
        ({"types": []}, "data.degraded_twin.types must be a non-empty list"),
        ({"levels": [0, 3]}, r"data.degraded_twin.levels: \[0\] not in 1..5"),
        ({"levels": 3}, "data.degraded_twin.levels must be a non-empty list"),
    ],
)
def test_bad_twin_settings_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DegradedTwin(**kwargs)


def test_dataset_yields_the_crop_and_its_twin(tmp_path):
    import cv2

    path = tmp_path / "a.png"
    cv2.imwrite(str(path), _natural(64)[:, :, ::-1])
    items = [IQAItem(path=str(path), mos=0.5, mos_raw=50.0, content_id="a")]
    ds = IQATrainDataset(items, TrainTransform(32), twin=DegradedTwin(["jpeg"], [4]))
    sample = ds[0]
    assert sample[BATCH_IMAGE].shape == sample[BATCH_IMAGE_DEGRADED].shape == (3, 32, 32)
    crop = _u8(sample[BATCH_IMAGE])
    assert np.array_equal(
        _u8(sample[BATCH_IMAGE_DEGRADED]), apply_distortion(crop, DISTORTION_NAMES.index("jpeg"), 4)
    )
    assert BATCH_IMAGE_DEGRADED not in IQATrainDataset(items, TrainTransform(32))[0]


def test_datamodule_batches_carry_twins_only_when_enabled(tmp_path):
    root = ensure_demo(
        tmp_path / "demo", num_refs=3, dist_types=["gaussian_blur", "jpeg"], levels=[1, 5], short_side=40
    )
    options = dict(
        num_dist_types=2,
        crop_size=32,
        test_crops=2,
        batch_size=4,
        split={"index": 0, "seed": 3, "ratios": [0.34, 0.33, 0.33], "file": None},
        num_refs=3,
        dist_types=["gaussian_blur", "jpeg"],
        levels=[1, 5],
        demo_short_side=40,
    )
    on = DemoDataModule(root, degraded_twin={"enabled": True, "levels": [5]}, **options)
    on.setup("fit")
    batch = next(iter(on.train_dataloader()))
    assert batch[BATCH_IMAGE_DEGRADED].shape == batch[BATCH_IMAGE].shape == (4, 3, 32, 32)
    off = DemoDataModule(root, degraded_twin={"enabled": False, "types": ["jpeg"]}, **options)
    off.setup("fit")
    assert BATCH_IMAGE_DEGRADED not in next(iter(off.train_dataloader()))
    with pytest.raises(ValueError, match=r"data.degraded_twin: unknown key\(s\) \['level'\]"):
        DemoDataModule(root, degraded_twin={"level": [5]}, **options)
    with pytest.raises(ValueError, match="data.degraded_twin.types: unknown"):
        DemoDataModule(root, degraded_twin={"types": ["blur"]}, **options)


def test_twin_rank_loss_by_hand():
    loss = TwinRankLoss(margin=0.1)
    source, degraded = torch.tensor([0.5, 0.2, 0.9]), torch.tensor([0.3, 0.25, 0.95])
    # margins: 0.2 (in order by more than 0.1: 0), -0.05 -> 0.15, -0.05 -> 0.15
    assert float(loss(source, degraded)) == pytest.approx((0.0 + 0.15 + 0.15) / 3)
    assert float(TwinRankLoss(0.0)(source, source - 0.01)) == 0.0
    with pytest.raises(ValueError, match="twin_margin must be >= 0"):
        TwinRankLoss(-0.1)


class MeanNet(nn.Module):
    """score = w * mean(x) + b; remembers the batch sizes it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))
        self.b = nn.Parameter(torch.tensor(0.1))
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> MFENetOutput:
        self.seen.append(x.shape[0])
        return MFENetOutput(score=self.w * x.mean(dim=(1, 2, 3)) + self.b)

    def parameter_groups(self):
        return {"backbone": [self.w], "head": [self.b]}


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_training_step_adds_the_twin_term(fraction):
    image = torch.stack([torch.full((3, 4, 4), v) for v in (0.2, 0.5, 0.8)])
    twin = torch.stack([torch.full((3, 4, 4), v) for v in (0.1, 0.52, 0.9)])
    mos = torch.tensor([0.3, 0.6, 0.7])
    net = MeanNet()
    system = IQATrainingModule(
        net, quality_loss=QualityLoss(l1=1.0), lambda_twin=0.5, twin_margin=0.1, twin_fraction=fraction
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        loss = system.training_step({BATCH_IMAGE: image, BATCH_MOS: mos, BATCH_IMAGE_DEGRADED: twin}, 0)
    k = math.ceil(fraction * 3)
    assert net.seen == [3 + k]  # one forward pass: the batch and its first k twins
    s = [2 * v + 0.1 for v in (0.2, 0.5, 0.8)]
    d = [2 * v + 0.1 for v in (0.1, 0.52, 0.9)]
    l1 = sum(abs(a - m) for a, m in zip(s, (0.3, 0.6, 0.7))) / 3
    hinge = sum(max(0.0, 0.1 - (s[i] - d[i])) for i in range(k)) / k
    assert float(loss.detach()) == pytest.approx(l1 + 0.5 * hinge, rel=1e-5)


def test_twin_weight_without_twins_in_the_batch_says_what_to_set():
    system = IQATrainingModule(MeanNet(), quality_loss=QualityLoss(l1=1.0), lambda_twin=1.0)
    batch = {BATCH_IMAGE: torch.rand(2, 3, 4, 4), BATCH_MOS: torch.rand(2)}
    with pytest.raises(Exception, match="data.degraded_twin.enabled=true"):
        system.training_step(batch, 0)
    with pytest.raises(ValueError, match="twin_fraction"):
        IQATrainingModule(MeanNet(), lambda_twin=1.0, twin_fraction=0.0)


def test_twins_without_a_twin_weight_are_reported_once(caplog):
    system = IQATrainingModule(MeanNet(), quality_loss=QualityLoss(l1=1.0))
    batch = {
        BATCH_IMAGE: torch.rand(2, 3, 4, 4),
        BATCH_MOS: torch.rand(2),
        BATCH_IMAGE_DEGRADED: torch.rand(2, 3, 4, 4),
    }
    with warnings.catch_warnings(), caplog.at_level("WARNING", logger="mfe_iqa.systems.iqa"):
        warnings.simplefilter("ignore")  # self.log without a trainer
        system.training_step(batch, 0)
        system.training_step(batch, 1)
    unused = [r for r in caplog.records if "system.lambda_twin=0" in r.getMessage()]
    assert len(unused) == 1 and "data.degraded_twin.enabled=false" in unused[0].getMessage()
