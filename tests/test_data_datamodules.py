"""Data modules end to end (batches, deterministic test crops, split files), the demo database, the real LIVEC sample."""

from __future__ import annotations

import json
import multiprocessing as mp
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mfe_iqa.data.checks import BadItemsError
from mfe_iqa.data.datamodules import DemoDataModule, LiveChallengeDataModule
from mfe_iqa.data.demo import DEMO_REFERENCES, ensure_demo, pseudo_mos, skimage_data_dir
from mfe_iqa.data.images import load_rgb
from mfe_iqa.data.items import BATCH_DIST_TYPE, BATCH_IMAGE, BATCH_INDEX, BATCH_MOS

LIVEC_SAMPLE = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "livec-sample" / "ChallengeDB_release"
)
TINY = dict(num_refs=4, dist_types=["gaussian_blur", "jpeg", "white_noise", "contrast_change", "motion_blur"])
TINY.update(levels=[1, 3, 5], short_side=40)


def _tiny_demo_module(root: Path, **kwargs) -> DemoDataModule:
    options = dict(
        num_refs=TINY["num_refs"],
        dist_types=TINY["dist_types"],
        levels=TINY["levels"],
        demo_short_side=TINY["short_side"],
        num_dist_types=5,
        crop_size=32,
        test_crops=3,
        batch_size=4,
        eval_batch_size=2,
        split={"index": 0, "seed": 3, "ratios": [0.5, 0.25, 0.25], "file": None},
    )
    options.update(kwargs)
    return DemoDataModule(root, **options)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return ensure_demo(tmp_path_factory.mktemp("demo") / "demo", **TINY)


def test_demo_layout_and_labels(demo_root):
    assert sorted(p.name for p in (demo_root / "pristine").iterdir()) == sorted(
        Path(r).stem + ".png" for r in DEMO_REFERENCES[:4]
    )
    labels = pd.read_csv(demo_root / "labels.csv")
    assert list(labels.columns) == ["image", "reference", "dist_type", "dist_level", "mos"]
    assert len(labels) == 4 * 5 * 3 == len(list((demo_root / "images").iterdir()))
    assert labels["mos"].between(0, 100).all()
    assert labels.groupby("dist_level")["mos"].mean().is_monotonic_decreasing  # stronger = worse
    first = labels.iloc[0]
    pristine = load_rgb(demo_root / "pristine" / f"{first.reference}.png")
    assert min(pristine.shape[:2]) == 40
    distorted = load_rgb(demo_root / "images" / first.image)
    assert first.mos == pytest.approx(pseudo_mos(pristine, distorted), abs=1e-3)
    assert pseudo_mos(pristine, pristine) == 100.0
    gray_source = load_rgb(skimage_data_dir() / "camera.png")  # a gray photo becomes 3 equal channels
    assert np.array_equal(gray_source[..., 0], gray_source[..., 2])
    assert json.loads((demo_root / "demo.json").read_text())["levels"] == [1, 3, 5]


def test_demo_generation_is_deterministic(demo_root, tmp_path):
    other = ensure_demo(tmp_path / "again", **TINY)
    assert (other / "labels.csv").read_bytes() == (demo_root / "labels.csv").read_bytes()
    name = pd.read_csv(other / "labels.csv").image.iloc[-1]
    assert np.array_equal(load_rgb(other / "images" / name), load_rgb(demo_root / "images" / name))


def test_demo_refuses_bad_parameters_before_writing_anything(tmp_path):
    root = tmp_path / "demo"
    with pytest.raises(ValueError, match=r"demo dist_types: unknown distortion name\(s\) \['warp'\]"):
        ensure_demo(root, **{**TINY, "dist_types": ["jpeg", "warp"]})
    with pytest.raises(ValueError, match="demo dist_types must be a non-empty list"):
        ensure_demo(root, **{**TINY, "dist_types": []})
    with pytest.raises(ValueError, match=r"demo levels must be in 1..5, got \[0, 3\]"):
        ensure_demo(root, **{**TINY, "levels": [0, 3]})
    assert list(tmp_path.iterdir()) == []


def _generate(root: str) -> str:
    return str(ensure_demo(root, **{**TINY, "num_refs": 2}))


def test_demo_parallel_generation_is_safe(tmp_path):
    root = tmp_path / "shared_demo"
    with mp.get_context("fork").Pool(2) as pool:
        results = pool.map(_generate, [str(root)] * 2)
    assert results == [str(root)] * 2
    assert len(pd.read_csv(root / "labels.csv")) == 2 * 5 * 3
    assert [p.name for p in tmp_path.iterdir()] == ["shared_demo"]  # no temp folders left behind
    # other parameters: a separate cache next to it; the first is never replaced under a running job
    other = ensure_demo(root, **{**TINY, "num_refs": 1})
    assert other != root and other.parent == root.parent
    assert len(pd.read_csv(other / "labels.csv")) == 5 * 3
    assert len(pd.read_csv(root / "labels.csv")) == 2 * 5 * 3
    assert ensure_demo(root, **{**TINY, "num_refs": 1}) == other  # found again, not regenerated


def test_demo_datamodule_batches(demo_root, tmp_path):
    dm = _tiny_demo_module(demo_root, output_dir=tmp_path)
    dm.setup("fit")
    assert dm.info.name == "demo" and dm.info.num_dist_types == 5 and dm.has_val
    refs = {p: {i.content_id for i in getattr(dm, f"{p}_items")} for p in ("train", "val", "test")}
    assert (len(refs["train"]), len(refs["val"]), len(refs["test"])) == (2, 1, 1)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {BATCH_IMAGE, BATCH_MOS, BATCH_DIST_TYPE, BATCH_INDEX}
    assert batch[BATCH_IMAGE].shape == (4, 3, 32, 32) and batch[BATCH_IMAGE].dtype == torch.float32
    assert float(batch[BATCH_IMAGE].min()) >= 0 and float(batch[BATCH_IMAGE].max()) <= 1
    assert batch[BATCH_MOS].dtype == torch.float32 and batch[BATCH_DIST_TYPE].dtype == torch.int64
    for mos, index in zip(batch[BATCH_MOS], batch[BATCH_INDEX]):
        assert float(mos) == pytest.approx(dm.train_items[int(index)].mos)
    val = next(iter(dm.val_dataloader()))
    assert val[BATCH_IMAGE].shape == (2, 3, 3, 32, 32)
    assert val[BATCH_INDEX].tolist() == [0, 1]
    whole = dm.whole_dataloader()
    assert len(whole.dataset) == len(dm.items) == 60
    # the split written to the run dir reloads to the same parts
    reloaded = _tiny_demo_module(
        demo_root, split={"index": 9, "seed": 0, "file": str(tmp_path / "split.csv")}
    )
    reloaded.setup()
    assert [i.path for i in reloaded.test_items] == [i.path for i in dm.test_items]


def test_test_crops_identical_across_runs(demo_root):
    batches = []
    for run in range(2):
        torch.manual_seed(run)  # a different global seed must not move the test crops
        dm = _tiny_demo_module(demo_root)
        dm.setup("test")
        batches.append(next(iter(dm.test_dataloader()))[BATCH_IMAGE])
    assert torch.equal(batches[0], batches[1])
    assert not torch.equal(batches[0][0, 0], batches[0][0, 1])  # the K crops differ from each other


def test_train_crops_follow_the_global_seed(demo_root):
    def first_batch(seed):
        torch.manual_seed(seed)
        dm = _tiny_demo_module(demo_root)
        dm.setup("fit")
        torch.manual_seed(seed)
        return next(iter(dm.train_dataloader()))[BATCH_IMAGE]

    assert torch.equal(first_batch(1), first_batch(1))
    assert not torch.equal(first_batch(1), first_batch(2))


def test_no_val_part_and_full_test_mode(demo_root):
    dm = _tiny_demo_module(
        demo_root, split={"index": 0, "seed": 3, "ratios": [0.75, 0.0, 0.25]}, test_mode="full", train_crops=2
    )
    dm.setup()
    assert not dm.has_val and dm.val_items == [] and dm.val_dataloader() == []
    assert len(dm.train_dataloader().dataset) == 2 * len(dm.train_items)
    batch = next(iter(dm.test_dataloader()))
    assert batch[BATCH_IMAGE].shape[:2] == (1, 1) and min(batch[BATCH_IMAGE].shape[-2:]) == 40


def test_num_dist_types_must_match_the_database(demo_root):
    dm = _tiny_demo_module(demo_root, num_dist_types=25)
    with pytest.raises(ValueError, match="num_dist_types=25"):
        dm.setup()


def test_limit_items_keeps_many_references(demo_root):
    dm = _tiny_demo_module(demo_root, limit_items=12)
    dm.setup()
    assert len(dm.items) == 12 and len({i.content_id for i in dm.items}) == 4


def test_real_livec_sample_present_only(tmp_path):
    if not (LIVEC_SAMPLE / "Data" / "AllMOS_release.mat").is_file():
        pytest.skip(f"real LIVE Challenge sample absent at {LIVEC_SAMPLE}")
    strict = LiveChallengeDataModule(LIVEC_SAMPLE, crop_size=64, test_crops=2)
    with pytest.raises(BadItemsError) as err:
        strict.setup()
    assert "862 bad item(s) out of 1162" in str(err.value) and "present_only" in str(err.value)
    dm = LiveChallengeDataModule(
        LIVEC_SAMPLE, present_only=True, crop_size=64, test_crops=2, eval_batch_size=2
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup()
    assert any("300 of 1162" in str(w.message) and "862 absent" in str(w.message) for w in caught)
    assert len(dm.items) == 300 and len(dm.left_out) == 862
    assert (len(dm.train_items), len(dm.val_items), len(dm.test_items)) == (210, 30, 60)
    batch = next(iter(dm.test_dataloader()))
    assert batch[BATCH_IMAGE].shape == (2, 2, 3, 64, 64)


CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"
EXPECTED_DIST_TYPES = {"live": 5, "csiq": 6, "tid2013": 24, "kadid10k": 25, "demo": 6}


@pytest.mark.parametrize("path", sorted(CONF_DATA.glob("*.yaml")), ids=lambda p: p.stem)
def test_data_configs_follow_the_contract(path):
    """Every data config passes the shared split and run dir, roots under paths.data_dir, and the keys of the base."""
    import inspect

    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from mfe_iqa.data.datamodules import IQADataModule

    cfg = OmegaConf.load(path)
    raw = OmegaConf.to_container(cfg, resolve=False)
    assert raw["split"] == "${split}" and raw["output_dir"] == "${paths.output_dir}"
    assert raw["root"].startswith("${paths.data_dir}/")
    assert raw["num_dist_types"] == EXPECTED_DIST_TYPES.get(path.stem, 0)
    cls = get_class(raw["_target_"])
    assert issubclass(cls, IQADataModule)
    accepted = set()
    for klass in cls.__mro__:
        if klass is object or not issubclass(klass, IQADataModule):
            continue
        accepted |= set(inspect.signature(klass.__init__).parameters)
    unknown = set(raw) - accepted - {"_target_"}
    assert not unknown, f"{path.name}: keys the data module does not take: {unknown}"
