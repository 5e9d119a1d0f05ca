"""The benchmark runs a few steps of every measurement and writes its JSON with every figure."""

from __future__ import annotations

import json
import math
import mmap

import pytest

from inference_helpers import torch_threads
from mfe_iqa.inference.bench import check_targets, cycle_paths, peak_rss_mb


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def test_bench_writes_every_figure(tmp_path, compose_cfg):
    from mfe_iqa.cli.bench import bench

    cfg = compose_cfg(
        "bench",
        [
            "model=mfenet_tiny",
            "device=cpu",
            "image_size=40",
            "train.batch_size=2",
            "train.crop_size=32",
            "train.num_workers=0",
            "train.warmup_steps=1",
            "train.steps=2",
            "train.repeats=1",
            "data_loader.batches=2",
            "predict.batch_size=2",
            "predict.num_workers=1",
            "predict.crops=2",
            "predict.crop_size=32",
            "predict.num_images=6",
            "predict.warmup_batches=1",
            "memory.small=4",
            "memory.large=8",
        ],
    )
    results = bench(cfg)
    saved = json.loads((tmp_path / "run" / "bench.json").read_text())
    assert saved["train"]["lightning_images_per_s"] == results["train"]["lightning_images_per_s"]
    figures = [
        saved["train"]["lightning_images_per_s"],
        saved["train"]["plain_images_per_s"],
        saved["train"]["lightning_vs_plain"],
        saved["data_loader"]["images_per_s"],
        saved["predict"]["end_to_end_images_per_s"],
        saved["predict"]["forward_images_per_s"],
        saved["predict"]["end_to_end_vs_forward"],
        saved["memory"]["peak_rss_mb_small"],
        saved["memory"]["peak_rss_mb_large"],
        saved["memory"]["large_vs_small"],
    ]
    assert all(isinstance(f, float) and math.isfinite(f) and f > 0 for f in figures), figures
    assert (
        saved["train"]["lightning_vs_plain"]
        == saved["train"]["lightning_images_per_s"] / saved["train"]["plain_images_per_s"]
    )
    assert saved["cuda"] is None  # CPU run: the GPU measurements are skipped
    statuses = {t["name"]: t["status"] for t in saved["targets"]}
    assert len(statuses) == 4 and statuses["CUDA training bf16 / fp32 images/s"] == "n/a"
    assert all(s in ("PASS", "FAIL") for name, s in statuses.items() if not name.startswith("CUDA"))
    assert saved["machine"]["device"] == "cpu" and saved["model"] == "mfenet_tiny"


def test_peak_rss_sees_an_allocation():
    baseline = peak_rss_mb(lambda: None)
    if baseline is None:  # not Linux: nothing to check
        return
    peak = peak_rss_mb(_touch_fresh_pages)
    assert peak - baseline > 30


def _touch_fresh_pages(mib: int = 40) -> None:
    """Write one byte per page of a new anonymous mapping: ``mib`` MiB the kernel must back with fresh pages,
    whatever free but resident heap the allocator holds (a long-lived pytest worker reuses such memory for
    a NumPy array, and the peak does not move)."""
    size = mib * 2**20
    with mmap.mmap(-1, size) as mem:
        for offset in range(0, size, mmap.PAGESIZE):
            mem[offset] = 1


def test_targets_pass_fail_by_hand():
    results = {
        "train": {"lightning_vs_plain": 0.96},
        "predict": {"end_to_end_vs_forward": 0.7},
        "memory": {"large_vs_small": None},
        "cuda": None,
    }
    bounds = {
        "lightning_vs_plain_min": 0.95,
        "predict_vs_forward_min": 0.8,
        "memory_large_vs_small_max": 1.1,
        "bf16_vs_fp32_min": 1.8,
    }
    assert [t["status"] for t in check_targets(results, bounds)] == ["PASS", "FAIL", "n/a", "n/a"]
    assert cycle_paths(["a", "b"], 5) == ["a", "b", "a", "b", "a"]
