"""Pre-training data: the class-balanced batch sampler, views, held-out images, image lists and errors."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from mfe_iqa.data.distortions import CHROMA_ONLY_TYPES, DISTORTION_NAMES, apply_distortion
from mfe_iqa.data.pretrain import (
    NUM_SYNTHETIC_CLASSES,
    POOL_AUTHENTIC,
    PRISTINE_CLASS,
    ClassBalancedBatchSampler,
    PretrainBatchDataset,
    PretrainDataError,
    PretrainDataModule,
    chroma_only_classes,
    class_index,
    class_list,
    class_type_level,
    resolve_types,
)

SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina")


def _write_images(folder: Path, names=SOURCES, size=(72, 56)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        img = cv2.resize(getattr(data, name)(), size, interpolation=cv2.INTER_AREA)
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(str(path))
    return paths


@pytest.fixture
def pristine_folder(tmp_path) -> Path:
    _write_images(tmp_path / "pristine")
    return tmp_path / "pristine"


def test_class_ids_cover_types_and_levels():
    assert class_index(0, 1) == 1 and class_index(24, 5) == NUM_SYNTHETIC_CLASSES - 1 == 125
    ids = [class_index(t, lv) for t in range(25) for lv in range(1, 6)]
    assert sorted(ids) == list(range(1, 126))
    assert all(class_type_level(class_index(t, lv)) == (t, lv) for t in range(25) for lv in range(1, 6))
    assert class_type_level(PRISTINE_CLASS) == (-1, 0) and class_type_level(126) == (-1, 0)
    assert resolve_types(["jpeg", 0, "24"]) == [0, DISTORTION_NAMES.index("jpeg"), 24]
    assert len(class_list(range(25))) == 126 and PRISTINE_CLASS not in class_list([3], include_pristine=False)


@pytest.mark.parametrize(
    ("num_images", "batch_size", "m", "n_auth", "auth_per_batch", "classes"),
    [
        (9, 64, 2, 0, 0, class_list(range(25))),
        (5, 33, 3, 0, 0, class_list(range(25))),  # remainder goes to some classes
        (3, 40, 2, 4, 6, class_list([0, 9])),  # more items than classes: classes grow, never shrink
        (2, 10, 2, 0, 0, class_list([1])),
    ],
)
def test_batch_sampler_gives_every_anchor_a_positive(
    num_images, batch_size, m, n_auth, auth_per_batch, classes
):
    sampler = ClassBalancedBatchSampler(
        num_images,
        classes,
        batch_size,
        m,
        steps_per_epoch=25,
        num_authentic=n_auth,
        authentic_per_batch=auth_per_batch,
    )
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 25
        for batch in batches:
            assert len(batch) == batch_size
            synthetic = [(i, c) for pool, i, c, _ in batch if pool != POOL_AUTHENTIC]
            counts = Counter(c for _, c in synthetic)
            assert min(counts.values()) >= m, counts
            assert set(counts) <= set(classes)
            for c in counts:  # positives of other content whenever the pool allows
                images = [i for i, cc in synthetic if cc == c]
                assert len(set(images)) == min(len(images), num_images)
            authentic = [c for pool, _, c, _ in batch if pool == POOL_AUTHENTIC]
            assert len(authentic) == auth_per_batch and all(c >= NUM_SYNTHETIC_CLASSES for c in authentic)
            # Two views per item: every anchor's label occurs at least twice among the 2B embeddings.
            labels = np.repeat([c for _, _, c, _ in batch], 2)
            label_counts = Counter(labels.tolist())
            assert all(label_counts[x] >= 2 for x in labels)


def test_batch_sampler_is_deterministic_per_epoch_and_rank():
    def draw(epoch, rank):
        s = ClassBalancedBatchSampler(
            9, class_list(range(25)), 32, 2, steps_per_epoch=3, seed=7, rank=rank, world_size=2
        )
        s.set_epoch(epoch)
        return list(s)

    assert draw(0, 0) == draw(0, 0)
    assert draw(0, 0) != draw(1, 0)
    assert draw(0, 0) != draw(0, 1)


def test_batch_sampler_refuses_impossible_settings():
    with pytest.raises(PretrainDataError, match="samples_per_class"):
        ClassBalancedBatchSampler(9, [0, 1], 8, samples_per_class=1)
    with pytest.raises(PretrainDataError, match=">= 2 training images"):
        ClassBalancedBatchSampler(1, [0, 1], 8)
    with pytest.raises(PretrainDataError, match="no authentic image"):
        ClassBalancedBatchSampler(4, [0, 1], 8, authentic_per_batch=2)


def test_views_are_two_scales_of_one_distorted_region(pristine_folder):
    paths = sorted(str(p) for p in pristine_folder.glob("*.png"))
    ds = PretrainBatchDataset(paths, [], crop_size=16, hflip=False)
    cls = class_index(DISTORTION_NAMES.index("white_noise"), 5)
    spec = [(0, 0, cls, 11), (0, 1, cls, 12), (0, 2, PRISTINE_CLASS, 13)]
    batch = ds[spec]
    assert batch["views"].shape == (3, 2, 3, 16, 16) and batch["views"].dtype == torch.float32
    assert batch["views"].min() >= 0.0 and batch["views"].max() <= 1.0
    assert batch["label"].tolist() == [cls, cls, PRISTINE_CLASS]
    assert batch["dist_type"].tolist() == [10, 10, -1] and batch["dist_level"].tolist() == [5, 5, 0]
    assert batch["content"].tolist() == [0, 1, 2]
    torch.testing.assert_close(ds[spec]["views"], batch["views"])  # same seeds, same views
    # Rebuild item 0 by hand: region 32x32 at the seeded position, distorted, then crop and area-resize.
    rng = np.random.default_rng(11)
    img = cv2.cvtColor(cv2.imread(paths[0]), cv2.COLOR_BGR2RGB)
    y, x = int(rng.integers(0, img.shape[0] - 32 + 1)), int(rng.integers(0, img.shape[1] - 32 + 1))
    region = apply_distortion(img[y : y + 32, x : x + 32], 10, 5, rng)
    vy, vx = int(rng.integers(0, 17)), int(rng.integers(0, 17))
    full = torch.from_numpy(region[vy : vy + 16, vx : vx + 16].copy()).permute(2, 0, 1).float() / 255
    half = (
        torch.from_numpy(cv2.resize(region, (16, 16), interpolation=cv2.INTER_AREA)).permute(2, 0, 1).float()
        / 255
    )
    torch.testing.assert_close(batch["views"][0, 0], full)
    torch.testing.assert_close(batch["views"][0, 1], half)


def test_datamodule_over_folders_holds_out_images_and_records_them(pristine_folder, tmp_path):
    dm = PretrainDataModule(
        folders=[str(pristine_folder)],
        num_val_images=2,
        types=["jpeg", "gaussian_blur"],
        crop_size=16,
        batch_size=12,
        steps_per_epoch=2,
        eval_batch_size=64,
        output_dir=str(tmp_path / "run"),
    )
    dm.setup("fit")
    used = dm.used_images
    assert len(used["train"]) == 4 and len(used["val"]) == 2 and not set(used["train"]) & set(used["val"])
    assert sorted(used["train"] + used["val"]) == sorted(str(p) for p in pristine_folder.glob("*.png"))
    with open(tmp_path / "run" / "pretrain_images.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["role"], r["path"]) for r in rows) == sorted(
        [("train", p) for p in used["train"]] + [("val", p) for p in used["val"]]
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["views"].shape == (12, 2, 3, 16, 16)
    assert set(batch["label"].tolist()) <= set(dm.classes) and len(dm.classes) == 11
    val = [b for b in dm.val_dataloader()]
    labels = torch.cat([b["label"] for b in val])
    assert len(labels) == 2 * 11 and Counter(labels.tolist()) == Counter(dm.classes * 2)
    assert val[0]["image"].shape[1:] == (3, 16, 16)
    second = torch.cat([b["image"] for b in dm.val_dataloader()])
    torch.testing.assert_close(torch.cat([b["image"] for b in val]), second)  # fixed validation set


def test_datamodule_uses_exactly_the_listed_files_and_authentic_instances(tmp_path):
    paths = _write_images(tmp_path / "a", SOURCES[:4]) + _write_images(tmp_path / "b", SOURCES[4:5])
    auth = _write_images(tmp_path / "auth", ("coins", "camera"), size=(20, 24))  # smaller than a region
    dm = PretrainDataModule(
        image_paths=paths,
        authentic_paths=auth,
        authentic_per_batch=2,
        num_val_images=1,
        crop_size=16,
        batch_size=8,
    )
    dm.setup()
    assert sorted(dm.used_images["train"] + dm.used_images["val"]) == sorted(paths)
    assert dm.used_images["authentic"] == auth
    batch = next(iter(dm.train_dataloader()))
    is_auth = batch["label"] >= NUM_SYNTHETIC_CLASSES
    assert int(is_auth.sum()) == 2 and (batch["content"][is_auth] < 0).all()
    assert batch["views"].shape == (8, 2, 3, 16, 16)


def test_authentic_from_train_adds_training_images_never_queries(tmp_path):
    paths = _write_images(tmp_path / "a", SOURCES[:5])
    dm = PretrainDataModule(
        image_paths=paths,
        authentic_from_train=True,
        authentic_per_batch=2,
        num_val_images=2,
        crop_size=16,
        batch_size=8,
    )
    dm.setup()
    used = dm.used_images
    assert len(used["val"]) == 2 and len(used["train"]) == 3
    assert used["authentic"] == used["train"] and not set(used["authentic"]) & set(used["val"])
    batch = next(iter(dm.train_dataloader()))
    is_auth = batch["label"] >= NUM_SYNTHETIC_CLASSES
    assert int(is_auth.sum()) == 2
    # instance classes 126.. index the authentic list: each names one training image
    assert set((batch["label"][is_auth] - NUM_SYNTHETIC_CLASSES).tolist()) <= set(range(3))


def test_authentic_images_that_are_knn_queries_are_refused(tmp_path):
    paths = _write_images(tmp_path / "a", SOURCES[:5])
    dm = PretrainDataModule(image_paths=paths, authentic_paths=paths, authentic_per_batch=2, num_val_images=2)
    with pytest.raises(PretrainDataError, match="held-out k-NN query") as err:
        dm.setup()
    assert "authentic_from_train" in str(err.value)


def test_datamodule_defaults_to_the_demo_pristine_images(tmp_path):
    demo = {"num_refs": 4, "dist_types": ["jpeg"], "levels": [1], "short_side": 48}
    dm = PretrainDataModule(demo_root=str(tmp_path / "demo"), demo=demo, num_val_images=2, crop_size=16)
    dm.setup()
    files = sorted(str(p) for p in (tmp_path / "demo" / "pristine").iterdir())
    assert len(files) == 4 and sorted(dm.used_images["train"] + dm.used_images["val"]) == files


def test_datamodule_errors_name_the_problem(tmp_path, pristine_folder):
    with pytest.raises(PretrainDataError, match="does not exist"):
        PretrainDataModule(folders=[str(tmp_path / "nope")]).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainDataError, match="holds no image"):
        PretrainDataModule(folders=[str(tmp_path / "empty")]).setup()
    with pytest.raises(PretrainDataError, match="image_paths do not exist"):
        PretrainDataModule(image_paths=[str(tmp_path / "missing.png")]).setup()
    with pytest.raises(PretrainDataError, match="num_val_images"):
        PretrainDataModule(folders=[str(pristine_folder)], num_val_images=5).setup()
    with pytest.raises(
        PretrainDataError, match=r"pretrain_data.types: unknown distortion name\(s\) \['blurry'\]"
    ):
        PretrainDataModule(folders=[str(pristine_folder)], types=["blurry"])


def test_knn_set_has_held_out_queries_and_a_training_bank(pristine_folder):
    dm = PretrainDataModule(
        folders=[str(pristine_folder)], num_val_images=2, types=["jpeg"], crop_size=16, batch_size=12,
        steps_per_epoch=1, val_crops=2, bank_crops=1, num_bank_images=3, val_view="region", eval_batch_size=500,
    )  # fmt: skip
    dm.setup("fit")
    assert len(dm.bank_paths) == 3 and set(dm.bank_paths) <= set(dm.train_paths)
    batch = next(iter(dm.val_dataloader()))
    n_cls = len(dm.classes)  # pristine + 5 jpeg levels
    assert len(batch["label"]) == (2 * 2 + 3 * 1) * n_cls
    assert batch["image"].shape[1:] == (3, 32, 32)  # the whole 2c x 2c region
    queries, bank = ~batch["is_bank"], batch["is_bank"]
    assert int(queries.sum()) == 4 * n_cls and set(batch["content"][queries].tolist()) == {0, 1}
    assert set(batch["content"][bank].tolist()) == {2, 3, 4}
    # the two regions of one held-out image differ (centre and a seeded place); the set is fixed
    first = batch["image"][:n_cls]
    assert not torch.equal(first, batch["image"][n_cls : 2 * n_cls])
    torch.testing.assert_close(next(iter(dm.val_dataloader()))["image"], batch["image"])


def _write_gray(folder: Path, names=("camera", "moon"), size=(72, 56)) -> list[str]:
    paths = []
    for name in names:
        img = cv2.resize(getattr(data, name)(), size, interpolation=cv2.INTER_AREA)
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(np.repeat(img[..., None], 3, axis=2), cv2.COLOR_RGB2BGR))
        paths.append(str(path))
    return paths


def test_sampler_draws_chroma_only_classes_from_colour_images_alone():
    chroma = chroma_only_classes(class_list(range(25)))
    # the three chroma-only types at five levels, by name from the bank
    assert sorted({DISTORTION_NAMES[class_type_level(c)[0]] for c in chroma}) == sorted(CHROMA_ONLY_TYPES)
    assert len(chroma) == 3 * 5
    colour = [0, 2, 5]
    sampler = ClassBalancedBatchSampler(
        8, class_list(range(25)), 64, samples_per_class=4, steps_per_epoch=60, colour_images=colour,
        chroma_only=chroma,
    )  # fmt: skip
    used_by = {True: Counter(), False: Counter()}
    for spec in sampler:
        for _, image, cls, _ in spec:
            used_by[cls in chroma][image] += 1
    assert used_by[True] and set(used_by[True]) <= set(colour)  # never a gray image
    assert set(used_by[False]) == set(range(8))  # every other class still uses every image
    with pytest.raises(PretrainDataError, match="none of the 4 training images has colour"):
        ClassBalancedBatchSampler(4, class_list(range(25)), 16, colour_images=[], chroma_only=chroma)
    # no chroma-only class drawn: no colour needed
    ClassBalancedBatchSampler(4, class_list([9]), 16, colour_images=[], chroma_only=chroma)


def test_gray_images_leave_chroma_only_classes_out_of_the_knn_set(tmp_path, pristine_folder):
    gray_paths = _write_gray(pristine_folder)
    types = ["jpeg", "color_saturation_1"]
    kwargs = dict(
        folders=[str(pristine_folder)], num_val_images=3, types=types, crop_size=16, batch_size=12,
        steps_per_epoch=1, val_crops=2, bank_crops=1, val_view="region", eval_batch_size=1000,
        output_dir=str(tmp_path / "run"),
    )  # fmt: skip
    dm = PretrainDataModule(**kwargs)
    dm.setup("fit")
    assert {p for p, g in dm.gray.items() if g} == set(gray_paths) and len(dm.gray) == 8
    n_gray_val = sum(p in gray_paths for p in dm.val_paths)
    n_gray_bank = sum(p in gray_paths for p in dm.bank_paths)
    assert n_gray_val + n_gray_bank == 2
    batch = next(iter(dm.val_dataloader()))
    # 11 classes (pristine + 2 x 5); gray images lose the 5 saturation classes of each of their regions
    expected = 3 * 2 * 11 + 5 * 1 * 11 - 5 * (2 * n_gray_val + 1 * n_gray_bank)
    assert len(batch["label"]) == expected
    sat = DISTORTION_NAMES.index("color_saturation_1")
    gray_content = [i for i, p in enumerate(dm.val_paths + dm.bank_paths) if p in gray_paths]
    rows = torch.isin(batch["content"], torch.tensor(gray_content))
    assert not (batch["dist_type"][rows] == sat).any() and (batch["dist_type"][~rows] == sat).any()
    with open(tmp_path / "run" / "pretrain_images.csv") as f:
        flags = {r["path"]: r["gray"] for r in csv.DictReader(f)}
    assert flags == {p: ("1" if p in gray_paths else "0") for p in dm.train_paths + dm.val_paths}
    # check_gray=false (large colour pools): nothing decoded at setup, every item kept
    dm = PretrainDataModule(**{**kwargs, "check_gray": False})
    dm.setup("fit")
    assert dm.gray == {} and len(dm.val_dataset()) == 3 * 2 * 11 + 5 * 1 * 11


def _ramp_image(tmp_path: Path) -> str:
    """256 x 256 RGB with R = column, G = row: every pixel's place is readable from its colour."""
    yy, xx = np.mgrid[0:256, 0:256]
    img = np.stack([xx, yy, np.full_like(xx, 128)], axis=2).astype(np.uint8)
    path = tmp_path / "ramp.png"
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return str(path)


def _full_view_gradients(ds: PretrainBatchDataset, seed: int) -> tuple[float, float]:
    """Mean (d/dx, d/dy) of the R channel (the column ramp) of the full-scale view, in grey levels."""
    full = ds.views(0, 0, PRISTINE_CLASS, seed)[0, 0].numpy() * 255.0  # (c, c) red channel
    return float(np.diff(full, axis=1).mean()), float(np.diff(full, axis=0).mean())


def test_min_scale_reduces_a_larger_window_before_distortion(tmp_path):
    path = _ramp_image(tmp_path)
    plain = PretrainBatchDataset([path], [], crop_size=16, hflip=False)
    assert all(_full_view_gradients(plain, s) == pytest.approx((1.0, 0.0), abs=1e-4) for s in range(10))
    # a window of 32 / s pixels reduced to 32: the column ramp climbs 1 / s grey levels per pixel
    scaled = PretrainBatchDataset([path], [], crop_size=16, hflip=False, min_scale=0.5)
    slopes = [_full_view_gradients(scaled, s)[0] for s in range(60)]
    assert min(slopes) >= 1.0 - 0.05 and max(slopes) <= 2.0 + 0.05
    assert min(slopes) < 1.2 and max(slopes) > 1.8  # the whole range [1, 2] is drawn
    with pytest.raises(PretrainDataError, match="min_scale must be in"):
        PretrainDataModule(min_scale=0.0)


def test_rotate_turns_the_region_by_multiples_of_90_degrees(tmp_path):
    ds = PretrainBatchDataset([_ramp_image(tmp_path)], [], crop_size=16, hflip=False, rotate=True)
    seen = Counter()
    for s in range(40):
        gx, gy = (round(g, 3) for g in _full_view_gradients(ds, s))
        seen[(gx, gy)] += 1
    # the column ramp runs right (0), up (90), left (180) or down (270 degrees), nothing else
    assert set(seen) == {(1.0, 0.0), (0.0, -1.0), (-1.0, 0.0), (0.0, 1.0)}


def test_synthetic_contents_train_but_are_never_queries_nor_bank(pristine_folder, tmp_path):
    dm = PretrainDataModule(
        folders=[str(pristine_folder)], num_val_images=2, types=["jpeg"], crop_size=16, batch_size=24,
        samples_per_class=4, steps_per_epoch=4, bank_crops=1, synthetic_contents=40, synthetic_size=48,
        output_dir=str(tmp_path / "run"),
    )  # fmt: skip
    dm.setup("fit")
    n_real = len(dm.train_paths)
    assert n_real == 4 and dm.sampler.num_images == 4 + 40
    contents = torch.cat([b["content"] for b in dm.train_dataloader()])
    assert (contents >= n_real).any()  # dead-leaves contents are drawn
    assert int(contents.max()) < n_real + 40
    val = next(iter(dm.val_dataloader()))
    assert set(val["content"].tolist()) == set(range(2 + 4))  # 2 queries + 4 real bank images, nothing else
    with open(tmp_path / "run" / "pretrain_images.csv") as f:
        roles = Counter(r["role"] for r in csv.DictReader(f))
    assert roles == {"train": 4, "val": 2, "synthetic": 40}
    views = PretrainBatchDataset(dm.train_paths, [], 16, synthetic=dm.synthetic).views(
        0, n_real + 7, class_index(0, 1), seed=5
    )
    assert views.shape == (2, 3, 16, 16)
    with pytest.raises(PretrainDataError, match="synthetic_contents"):
        PretrainDataModule(folders=[str(pristine_folder)], synthetic_contents=-1)
    with pytest.raises(PretrainDataError, match="synthetic_size 48 is smaller than a training region"):
        PretrainDataModule(
            folders=[str(pristine_folder)], crop_size=32, synthetic_contents=4, synthetic_size=48
        )


def test_synthetic_fraction_fixes_each_class_share_of_synthetic_contents():
    real, fake = 9, 300
    colour = [0, 2, 4] + list(range(real, real + fake))  # six real images gray
    sampler = ClassBalancedBatchSampler(
        num_images=real + fake, classes=class_list(resolve_types(None)), batch_size=64, samples_per_class=4,
        steps_per_epoch=3, colour_images=colour, chroma_only=chroma_only_classes(class_list(resolve_types(None))),
        num_synthetic=fake, synthetic_fraction=0.25,
    )  # fmt: skip
    for batch in sampler:
        by_class: dict[int, list[int]] = {}
        for _, i, c, _ in batch:
            by_class.setdefault(c, []).append(i)
        for c, images in by_class.items():
            assert sum(i >= real for i in images) == 1  # round(0.25 * 4)
            assert len(set(images)) == 4  # still distinct contents
            if c in sampler.chroma_only:
                assert set(images) <= set(colour)
    uniform = ClassBalancedBatchSampler(
        num_images=real + fake, classes=[0, 1], batch_size=64, num_synthetic=fake
    )
    share = np.mean([i >= real for _, i, _, _ in uniform.batch(0)])
    assert share > 0.8  # without a fraction the 300 synthetic contents dominate the draws
    with pytest.raises(PretrainDataError, match="synthetic_fraction"):
        ClassBalancedBatchSampler(num_images=20, classes=[0, 1], batch_size=8, synthetic_fraction=0.5)
