"""Throughput and memory benchmark: the overhead of Lightning, of the data pipeline and of prediction I/O.

Every ratio compares two measurements taken in the same process on the same model, data and batch,
each after warm-up steps:
- training images/s through ``IQATrainingModule`` + a Lightning ``Trainer`` vs a plain PyTorch loop that
  does the same forward, ``compute_losses``, backward and optimizer step (the module's own optimizer);
- data-loader images/s alone (decode + train transform + collate, no model);
- end-to-end prediction images/s (files -> views -> scores -> CSV) vs the bare forward on pre-loaded views;
- peak resident memory (Linux ``VmHWM`` of this process, reset through ``/proc/self/clear_refs``) of
  prediction over a small and a large number of images;
- on CUDA only: 32-true vs bf16-mixed, channels_last and ``torch.compile``.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mfe_iqa.data.datasets import IQATrainDataset, seed_worker
from mfe_iqa.data.items import BATCH_IMAGE, IQAItem
from mfe_iqa.data.transforms import TrainTransform
from mfe_iqa.inference.scoring import ImageFileDataset, Scorer, ViewSpec, autocast_context, collate_views

log = logging.getLogger(__name__)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock timings are true."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------------------
def write_synthetic_images(
    folder: str | Path, count: int, size: int, quality: int = 90, seed: int = 0
) -> list[str]:
    """``count`` seeded size x size JPEGs of smooth colour fields plus noise (decode cost like a photo's)."""
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"bench_{i:05d}.jpg"
        if not path.is_file():
            coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
            image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.int16)
            image += rng.integers(-12, 13, size=image.shape, dtype=np.int16)
            cv2.imwrite(
                str(path), np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality]
            )
        paths.append(str(path))
    return paths


def cycle_paths(paths: Sequence[str], count: int) -> list[str]:
    """``count`` paths, repeating the list when it is shorter."""
    if not paths:
        raise ValueError("no image to benchmark on")
    return [paths[i % len(paths)] for i in range(count)]


# ------------------------------------------------------------------------------------------------------------
# training: Lightning vs plain loop, and the data loader alone
# ------------------------------------------------------------------------------------------------------------
def make_train_loader(
    paths: Sequence[str], crop_size: int, batch_size: int, num_workers: int, num_batches: int, seed: int = 0
) -> DataLoader:
    """The training pipeline of the data package (decode, random crop + flip) over ``paths`` with random MOS."""
    rng = np.random.default_rng(seed)
    items = [
        IQAItem(path=p, mos=float(m), mos_raw=float(m), content_id=p)
        for p, m in zip(paths, rng.random(len(paths)))
    ]
    repeats = max(
        1, -(-num_batches * batch_size // len(items))
    )  # enough samples for num_batches full batches
    dataset = IQATrainDataset(
        items, TrainTransform(crop_size, hflip=True, seed=seed), crops_per_image=repeats
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
    )


def plain_training_rate(
    system: Any, loader: DataLoader, warmup: int, steps: int, device: torch.device, precision: str
) -> float:
    """Images/s of a hand-written loop: forward, the module's ``compute_losses``, backward, optimizer step."""
    system = system.to(device).train()
    optimizer = system.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    batches = iter(loader)
    seen = 0
    for step in range(warmup + steps):
        batch = next(batches)
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast_context(device, precision):
            loss = system.compute_losses(system.net(batch[BATCH_IMAGE]), batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if step >= warmup:
            seen += batch[BATCH_IMAGE].shape[0]
    synchronize(device)
    return seen / (time.perf_counter() - start)


def lightning_training_rate(
    system: Any, loader: DataLoader, warmup: int, steps: int, device: torch.device, precision: str
) -> float:
    """Images/s of ``Trainer.fit`` on the module, timed by a callback from step ``warmup`` to the last."""
    import lightning as L

    class _StepTimer(L.Callback):
        def __init__(self) -> None:
            self.start = self.end = None
            self.images = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == warmup:
                synchronize(device)
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx >= warmup:
                self.images += batch[BATCH_IMAGE].shape[0]
            if batch_idx == warmup + steps - 1:
                synchronize(device)
                self.end = time.perf_counter()

    timer = _StepTimer()
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_steps=warmup + steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(system, train_dataloaders=loader)
    if timer.start is None or timer.end is None:
        raise RuntimeError(f"the Lightning run stopped before step {warmup + steps}: the loader is too short")
    return timer.images / (timer.end - timer.start)


def data_loader_rate(loader: DataLoader, warmup: int, batches: int) -> float:
    """Images/s of the loader alone (workers decoding and transforming, nothing consuming but the loop)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    seen = sum(next(it)[BATCH_IMAGE].shape[0] for _ in range(batches))
    return seen / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------------------
# prediction: end to end vs the bare forward, and memory
# ------------------------------------------------------------------------------------------------------------
def preload_views(paths: Sequence[str], views: ViewSpec, batch_size: int) -> list[torch.Tensor]:
    """The prediction views of ``paths`` decoded once: a list of (B, K, 3, h, w) batches in memory."""
    dataset = ImageFileDataset(paths, views)
    batches = []
    for start in range(0, len(dataset), batch_size):
        batch = collate_views([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        if batch["failed"]:
            raise ValueError(f"benchmark images that do not decode: {batch['failed']}")
        batches.append(batch["views"])
    return batches


def forward_rate(scorer: Scorer, batches: Sequence[torch.Tensor], warmup: int) -> float:
    """Images/s of ``score_views`` alone on pre-loaded views (host-to-device copy included)."""
    for b in batches[:warmup]:
        scorer.score_views(b)
    timed = batches[warmup:] or batches
    synchronize(scorer.device)
    start = time.perf_counter()
    for b in timed:
        scorer.score_views(b)
    synchronize(scorer.device)
    return sum(b.shape[0] for b in timed) / (time.perf_counter() - start)


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise OSError("no VmHWM line in /proc/self/status")


def peak_rss_mb(fn: Callable[[], object]) -> float | None:
    """Peak resident set size (MiB) of this process while ``fn`` runs; None where Linux's counters are absent.

    The high-water mark is reset before the call (``echo 5 > /proc/self/clear_refs``), so an earlier
    measurement's peak does not carry over; but memory the allocator freed and still holds resident serves
    later allocations without raising the mark, so a measurement after a larger one can read low (the tests
    touch fresh pages for that reason). DataLoader worker processes are not included.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        fn()
        return None
    fn()
    return _vm_hwm_mb()


# ------------------------------------------------------------------------------------------------------------
# CUDA only
# ------------------------------------------------------------------------------------------------------------
def cuda_measurements(
    net_factory: Callable[[], torch.nn.Module],
    system_factory: Callable[[torch.nn.Module], Any],
    batch_size: int,
    crop_size: int,
    warmup: int,
    steps: int,
    use_compile: bool,
    use_channels_last: bool,
) -> dict[str, Any]:
    """Forward and plain-loop training images/s on resident GPU tensors: fp32 vs bf16, channels_last, compile."""
    device = torch.device("cuda")
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = torch.rand(batch_size, 3, crop_size, crop_size, generator=gen).to(device)
    batch = {"image": images, "mos": torch.rand(batch_size, generator=gen).to(device)}
    batch["dist_type"] = torch.full((batch_size,), -1, dtype=torch.long, device=device)
    batch["index"] = torch.arange(batch_size, device=device)

    def forward_ips(net: torch.nn.Module, precision: str, channels_last: bool = False) -> float:
        x = images.contiguous(memory_format=torch.channels_last) if channels_last else images
        net = net.to(device).eval()
        with torch.inference_mode(), autocast_context(device, precision):
            for _ in range(warmup):
                net(x)
            synchronize(device)
            start = time.perf_counter()
            for _ in range(steps):
                net(x)
            synchronize(device)
        return steps * batch_size / (time.perf_counter() - start)

    def train_ips(precision: str) -> float:
        system = system_factory(net_factory()).to(device).train()
        optimizer = system.configure_optimizers()
        optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
        for step in range(warmup + steps):
            if step == warmup:
                synchronize(device)
                start = time.perf_counter()
            with autocast_context(device, precision):
                loss = system.compute_losses(system.net(images), batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        synchronize(device)
        return steps * batch_size / (time.perf_counter() - start)

    out: dict[str, Any] = {
        "device_name": torch.cuda.get_device_name(device),
        "batch_size": batch_size,
        "crop_size": crop_size,
    }
    net = net_factory()
    out["forward_fp32_images_per_s"] = forward_ips(net, "32-true")
    out["forward_bf16_images_per_s"] = forward_ips(net, "bf16-mixed")
    out["train_fp32_images_per_s"] = train_ips("32-true")
    out["train_bf16_images_per_s"] = train_ips("bf16-mixed")
    out["train_bf16_vs_fp32"] = out["train_bf16_images_per_s"] / out["train_fp32_images_per_s"]
    out["forward_bf16_vs_fp32"] = out["forward_bf16_images_per_s"] / out["forward_fp32_images_per_s"]
    if use_channels_last:
        cl = net_factory().to(memory_format=torch.channels_last)
        out["forward_bf16_channels_last_images_per_s"] = forward_ips(cl, "bf16-mixed", channels_last=True)
        out["channels_last_speedup"] = (
            out["forward_bf16_channels_last_images_per_s"] / out["forward_bf16_images_per_s"]
        )
    if use_compile:
        start = time.perf_counter()
        compiled = torch.compile(net_factory().to(device).eval())
        with torch.inference_mode(), autocast_context(device, "bf16-mixed"):
            compiled(images)  # compilation happens here
        synchronize(device)
        out["compile_seconds"] = time.perf_counter() - start
        out["forward_bf16_compiled_images_per_s"] = forward_ips(compiled, "bf16-mixed")
        out["compile_speedup"] = out["forward_bf16_compiled_images_per_s"] / out["forward_bf16_images_per_s"]
    return out


# ------------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def check_targets(results: dict[str, Any], targets: dict[str, float]) -> list[dict[str, Any]]:
    """One row per target: its name, the measured value, the bound, and PASS / FAIL (n/a when not measured)."""
    cuda = results.get("cuda") or {}
    rows = [
        (
            "Lightning / plain training images/s",
            results["train"]["lightning_vs_plain"],
            ">=",
            targets["lightning_vs_plain_min"],
        ),
        (
            "end-to-end / forward prediction images/s",
            results["predict"]["end_to_end_vs_forward"],
            ">=",
            targets["predict_vs_forward_min"],
        ),
        (
            "peak RSS large / small prediction",
            results["memory"]["large_vs_small"],
            "<=",
            targets["memory_large_vs_small_max"],
        ),
        (
            "CUDA training bf16 / fp32 images/s",
            cuda.get("train_bf16_vs_fp32"),
            ">=",
            targets["bf16_vs_fp32_min"],
        ),
    ]
    out = []
    for name, value, op, bound in rows:
        if value is None:
            status = "n/a"
        else:
            status = "PASS" if (value >= bound if op == ">=" else value <= bound) else "FAIL"
        out.append({"name": name, "value": value, "target": f"{op} {bound}", "status": status})
    return out


def print_report(results: dict[str, Any]) -> str:
    """A rich table of every figure and of the targets; returns the plain-text version."""
    from rich.console import Console
    from rich.table import Table

    rows = [
        ("training, Lightning (images/s)", results["train"]["lightning_images_per_s"]),
        ("training, plain loop (images/s)", results["train"]["plain_images_per_s"]),
        ("data loader alone (images/s)", results["data_loader"]["images_per_s"]),
        ("prediction end to end (images/s)", results["predict"]["end_to_end_images_per_s"]),
        ("prediction forward alone (images/s)", results["predict"]["forward_images_per_s"]),
        (f"peak RSS, {results['memory']['small']} images (MiB)", results["memory"]["peak_rss_mb_small"]),
        (f"peak RSS, {results['memory']['large']} images (MiB)", results["memory"]["peak_rss_mb_large"]),
    ]
    for k, v in (results.get("cuda") or {}).items():
        if isinstance(v, float):
            rows.append((f"cuda {k}", v))
    table = Table(title=f"mfe-iqa bench: {results['model']} on {results['machine']['device_name']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    lines = []
    for name, value in rows:
        text = "n/a" if value is None else f"{value:.2f}"
        table.add_row(name, text)
        lines.append(f"{name}: {text}")
    targets = Table(title="targets")
    for col in ("target", "value", "bound", "status"):
        targets.add_column(col)
    for t in results["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        targets.add_row(t["name"], value, t["target"], t["status"])
        lines.append(f"{t['name']}: {value} ({t['target']}) {t['status']}")
    console = Console()
    console.print(table)
    console.print(targets)
    return "\n".join(lines)


def best_of_alternating(
    system: Any,
    loader: DataLoader,
    warmup: int,
    steps: int,
    device: torch.device,
    precision: str,
    repeats: int,
) -> tuple[float, float]:
    """(Lightning, plain) training images/s: best of ``repeats`` alternating runs, each on a fresh module copy."""
    lightning_best = plain_best = 0.0
    for _ in range(max(1, repeats)):
        plain_best = max(
            plain_best, plain_training_rate(copy.deepcopy(system), loader, warmup, steps, device, precision)
        )
        lightning_best = max(
            lightning_best,
            lightning_training_rate(copy.deepcopy(system), loader, warmup, steps, device, precision),
        )
    return lightning_best, plain_best
