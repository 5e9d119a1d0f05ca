"""Measure decoding and loader throughput (images/s for one worker) on a folder of images.

    python -m mfe_iqa.data.speed --images ../shared/data/livec-sample/ChallengeDB_release/Images

Reports, per file type: decode-only rates for OpenCV (our path) and PIL (``Image.open().convert``),
and the full per-item cost of the training pipeline (decode + random crop + flip + tensor) and of
the test pipeline (decode + K crops + tensors), measured in-process: one DataLoader worker does
exactly this work, so N workers give about N times the rate on N free cores.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mfe_iqa.data.datasets import IQAEvalDataset, IQATrainDataset
from mfe_iqa.data.images import load_rgb
from mfe_iqa.data.items import IQAItem
from mfe_iqa.data.transforms import EvalTransform, TrainTransform


def _rate(paths: Sequence[Path], fn: Callable[[Path], object], repeats: int) -> float:
    fn(paths[0])  # warm-up (library init, file cache)
    start = time.perf_counter()
    for _ in range(repeats):
        for p in paths:
            fn(p)
    return repeats * len(paths) / (time.perf_counter() - start)


def _pil_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def measure(
    paths: Sequence[Path], crop_size: int = 224, test_crops: int = 25, repeats: int = 2
) -> dict[str, float]:
    """images/s for decode (cv2, PIL), train item and test item over ``paths``."""
    items = [IQAItem(str(p), 0.5, 50.0, p.name) for p in paths]
    train = IQATrainDataset(items, TrainTransform(crop_size), 1)
    test = IQAEvalDataset(items, EvalTransform("crops", crop_size, test_crops))
    return {
        "decode_cv2": _rate(paths, load_rgb, repeats),
        "decode_pil": _rate(paths, _pil_rgb, repeats),
        "train_item": repeats
        * len(items)
        / _timed(lambda: [train[i] for _ in range(repeats) for i in range(len(items))]),
        "test_item": repeats
        * len(items)
        / _timed(lambda: [test[i] for _ in range(repeats) for i in range(len(items))]),
    }


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, type=Path, help="folder of images")
    parser.add_argument("--limit", type=int, default=60, help="images per file type")
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--test-crops", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    groups: dict[str, list[Path]] = {}
    for p in sorted(args.images.iterdir()):
        if p.is_file():
            groups.setdefault(p.suffix.lower(), []).append(p)
    print(
        f"{'type':6} {'n':>4} {'size':>9} {'decode cv2':>11} {'decode PIL':>11} {'train item':>11} {'test item':>10}"
    )
    for suffix, paths in sorted(groups.items()):
        paths = paths[: args.limit]
        h, w = load_rgb(paths[0]).shape[:2]
        r = measure(paths, args.crop_size, args.test_crops, args.repeats)
        print(
            f"{suffix:6} {len(paths):4d} {w:4d}x{h:<4d} {r['decode_cv2']:11.1f} {r['decode_pil']:11.1f} "
            f"{r['train_item']:11.1f} {r['test_item']:10.1f}   (images/s, one worker)"
        )


if __name__ == "__main__":
    main()
