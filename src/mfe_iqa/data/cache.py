"""A one-off cache of images resized to a short side (for large photos, e.g. SPAQ's 4000x3000 JPEGs).

Each image is decoded once, resized so its shorter side is ``short_side`` (area interpolation), and
written losslessly as PNG under ``<cache_dir>/short<short_side>/<path relative to the database
root>.png`` (temp file + atomic rename, so parallel jobs never see half-written files). Later runs
reuse the cached file when it is newer than its source.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2

from mfe_iqa.data.images import load_rgb
from mfe_iqa.data.items import IQAItem

log = logging.getLogger(__name__)


def cached_path(item_path: str, root: Path, cache_dir: Path, short_side: int) -> Path:
    try:
        rel = Path(item_path).relative_to(root)
    except ValueError:
        rel = Path(Path(item_path).name)
    return Path(cache_dir) / f"short{short_side}" / rel.with_name(rel.name + ".png")


def _build_one(src: str, dst: Path, short_side: int) -> None:
    if dst.is_file() and dst.stat().st_mtime >= os.path.getmtime(src):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    image = load_rgb(src, short_side=short_side)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp.png")
    if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write the resized copy {tmp} (data.cache_dir={dst.parents[1]})")
    os.replace(tmp, dst)


def build_resize_cache(
    items: Sequence[IQAItem], root: Path, cache_dir: Path, short_side: int, num_threads: int = 4
) -> dict[str, str]:
    """Make (or reuse) the resized copy of every item; returns item path -> cached path."""
    mapping = {
        item.path: str(cached_path(item.path, Path(root), Path(cache_dir), short_side)) for item in items
    }
    todo = [(src, Path(dst)) for src, dst in mapping.items()]
    log.info("resize cache: %d images at short side %d under %s", len(todo), short_side, cache_dir)
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        list(pool.map(lambda job: _build_one(job[0], job[1], short_side), todo))
    return mapping
