"""Strict input checks run at set-up: every bad item is found, then reported in one error or skipped.

What is checked per item (cheaply, see ``images.check_image``): the file exists, is not empty, has a
parseable image header and is not truncated; the MOS is a finite number inside the database's
declared raw range; the path is listed only once. Problems found while parsing the label file
(unparseable rows) arrive from the readers as ``BadItem`` entries and are reported the same way.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mfe_iqa.data.images import check_image
from mfe_iqa.data.items import DatabaseInfo, IQAItem
from mfe_iqa.errors import UserError

log = logging.getLogger(__name__)

ON_BAD_ITEM_CHOICES = ("error", "skip")
CHECK_IMAGES_CHOICES = ("header", "decode", "none")


@dataclass(frozen=True)
class BadItem:
    """One unusable entry: the image path (or label-file location) and why it is unusable."""

    path: str
    reason: str


class DatabaseNotFoundError(UserError, FileNotFoundError):
    """The database folder or one of its label files is not where the config says."""


class LabelFileError(UserError, ValueError):
    """A label file whose structure (columns, keys, entry count) is not the documented one."""


class BadItemsError(UserError, ValueError):
    """One or more items of a database are unusable; the message lists every one."""

    def __init__(self, message: str, bad_items: Sequence[BadItem]):
        super().__init__(message)
        self.bad_items = list(bad_items)


def missing_path_error(path: Path, what: str, database: str, download: str) -> DatabaseNotFoundError:
    """The one error for a missing database folder or label file: names the path, the key and the fix."""
    return DatabaseNotFoundError(
        f"{database}: {what} not found: {path}\n"
        f"Set `data.root=<folder>` (config key data.root) to the unpacked {database} download. {download}"
    )


def find_bad_items(
    items: Sequence[IQAItem],
    info: DatabaseInfo,
    check_images: str = "header",
    num_threads: int = 8,
) -> list[BadItem]:
    """Every problem among ``items`` (duplicates, bad MOS, bad files), in item order."""
    if check_images not in CHECK_IMAGES_CHOICES:
        raise ValueError(f"check_images must be one of {CHECK_IMAGES_CHOICES}, got {check_images!r}")
    bad: list[BadItem] = []
    first_seen: dict[str, int] = {}
    lo, hi = min(info.mos_min, info.mos_max), max(info.mos_min, info.mos_max)
    tol = 1e-9 * max(1.0, abs(hi - lo))
    for i, item in enumerate(items):
        if item.path in first_seen:
            bad.append(BadItem(item.path, f"duplicate entry (first listed at item {first_seen[item.path]})"))
            continue
        first_seen[item.path] = i
        if not math.isfinite(item.mos_raw):
            bad.append(BadItem(item.path, f"MOS is not a finite number ({item.mos_raw})"))
        elif not lo - tol <= item.mos_raw <= hi + tol:
            bad.append(BadItem(item.path, f"MOS {item.mos_raw} outside the {info.name} range [{lo}, {hi}]"))
    if check_images != "none":
        unique = list(first_seen)
        deep = check_images == "decode"
        # File checks are I/O bound: threads overlap the reads.
        with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
            reasons = list(pool.map(lambda p: check_image(p, deep=deep), unique))
        bad.extend(BadItem(p, r) for p, r in zip(unique, reasons) if r is not None)
    return bad


def format_bad_items(database: str, bad: Sequence[BadItem], total: int) -> str:
    """A readable listing: a count per reason, then every bad item with its reason."""
    counts: dict[str, int] = {}
    for b in bad:
        key = b.reason.split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    summary = ", ".join(f"{n} {reason}" for reason, n in counts.items())
    lines = [f"  {b.path}: {b.reason}" for b in bad]
    return f"{database}: {len(bad)} bad item(s) out of {total} ({summary}):\n" + "\n".join(lines)


def apply_bad_item_policy(
    database: str,
    items: Sequence[IQAItem],
    bad: Iterable[BadItem],
    on_bad_item: str,
) -> list[IQAItem]:
    """``error``: raise one BadItemsError listing all; ``skip``: warn with the count and list, drop them.

    Duplicates are dropped from their second occurrence on; the first entry stays.
    """
    if on_bad_item not in ON_BAD_ITEM_CHOICES:
        raise ValueError(f"data.on_bad_item must be one of {ON_BAD_ITEM_CHOICES}, got {on_bad_item!r}")
    bad = list(bad)
    if not bad:
        return list(items)
    item_paths = {item.path for item in items}
    unparsed = sum(1 for b in bad if b.path not in item_paths)  # label rows that never became items
    message = format_bad_items(database, bad, len(items) + unparsed)
    if on_bad_item == "error":
        hint = "\nFix or remove these files/rows, or set `data.on_bad_item=skip` to leave them out"
        if any(b.reason == "file not found" for b in bad):
            hint += " (or `data.present_only=true` to use only the listed images that exist)"
        raise BadItemsError(message + hint + ".", bad)
    dup_paths = {b.path for b in bad if b.reason.startswith("duplicate entry")}
    drop = {b.path for b in bad if not b.reason.startswith("duplicate entry")}
    kept, seen = [], set()
    for item in items:
        if item.path in drop or (item.path in dup_paths and item.path in seen):
            continue
        seen.add(item.path)
        kept.append(item)
    skipped = len(items) - len(kept) + unparsed
    text = f"{message}\nSkipped {skipped} entries (data.on_bad_item=skip); {len(kept)} items remain."
    warnings.warn(text, stacklevel=2)
    log.warning(text)
    return kept
