"""Train / val / test splits by content, so that no scene is in two parts.

``content_aware_split`` shuffles the distinct ``content_id``s (the reference image for synthetic
databases, the image itself for authentic ones) with a generator seeded by ``(seed, index)`` and
cuts the shuffled list by the ratios: items follow their content, so a leak between parts is
impossible by construction (and ``check_no_leak`` verifies every split, whatever its source).
``split.index`` 0..9 with one seed gives the standard 10 splits. The split used is written as
``split.csv`` (path relative to the database root, content_id, part) and can be read back.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mfe_iqa.data.items import IQAItem
from mfe_iqa.errors import UserError

PARTS = ("train", "val", "test")
SPLIT_CSV_HEADER = ("path", "content_id", "part")


class SplitError(UserError, ValueError):
    """A split that cannot be made or does not fit the database."""


@dataclass(frozen=True)
class SplitSpec:
    """The ``split`` config: which of the seeded splits, its ratios, or a split.csv to reload."""

    index: int = 0
    seed: int = 20241111
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    file: str | None = None

    @classmethod
    def from_config(cls, cfg: Mapping | SplitSpec | None) -> SplitSpec:
        if cfg is None:
            return cls()
        if isinstance(cfg, SplitSpec):
            return cfg
        unknown = set(cfg) - {"index", "seed", "ratios", "file"}
        if unknown:
            raise SplitError(f"unknown split key(s) {sorted(unknown)}; allowed: index, seed, ratios, file")
        spec = cls(
            index=int(cfg.get("index", 0)),
            seed=int(cfg.get("seed", cls.seed)),
            ratios=tuple(float(r) for r in cfg.get("ratios", cls.ratios)),
            file=cfg.get("file") or None,
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        r = self.ratios
        if len(r) != 3 or any(not math.isfinite(x) or x < 0 for x in r) or abs(sum(r) - 1.0) > 1e-6:
            raise SplitError(
                f"split.ratios must be three non-negative numbers (train, val, test) summing to 1, got {list(r)}"
            )
        if r[0] <= 0:
            raise SplitError(f"split.ratios needs a positive train part, got {list(r)}")
        if self.index < 0:
            raise SplitError(f"split.index must be >= 0, got {self.index}")


@dataclass
class Split:
    """Items per part and where the split came from (for logs and the report)."""

    train: list[IQAItem]
    val: list[IQAItem]
    test: list[IQAItem]
    source: str = ""
    unused: list[IQAItem] = field(default_factory=list)

    def parts(self) -> dict[str, list[IQAItem]]:
        return {"train": self.train, "val": self.val, "test": self.test}


def _part_sizes(n: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    """Content counts per part: rounded, each non-zero ratio gets at least one content when n >= 3."""
    n_val = round(ratios[1] * n)
    n_test = round(ratios[2] * n)
    if n >= 3:
        n_val = max(n_val, 1) if ratios[1] > 0 else 0
        n_test = max(n_test, 1) if ratios[2] > 0 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        raise SplitError(
            f"{n} content ids cannot be split by ratios {list(ratios)} with a non-empty train part"
        )
    return n_train, n_val, n_test


def content_aware_split(items: Sequence[IQAItem], spec: SplitSpec) -> Split:
    """Split ``items`` by content id with the seeded shuffle of ``spec`` (see module docstring)."""
    spec.validate()
    contents = sorted({item.content_id for item in items})
    order = np.random.default_rng([spec.seed, spec.index]).permutation(len(contents))
    n_train, n_val, _ = _part_sizes(len(contents), spec.ratios)
    part_of = {}
    for rank, idx in enumerate(order):
        part_of[contents[idx]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    parts: dict[str, list[IQAItem]] = {p: [] for p in PARTS}
    for item in items:
        parts[part_of[item.content_id]].append(item)
    source = f"random by content (index {spec.index}, seed {spec.seed}, ratios {list(spec.ratios)})"
    return Split(parts["train"], parts["val"], parts["test"], source=source)


def official_split(items: Sequence[IQAItem], mapping: Mapping[str, str], source: str = "official") -> Split:
    """Split by a database's own part labels (``path -> train|val|test|unused``)."""
    parts: dict[str, list[IQAItem]] = {p: [] for p in (*PARTS, "unused")}
    for item in items:
        part = mapping.get(item.path)
        if part is None:
            raise SplitError(f"{item.path} has no part in the official split")
        parts[part].append(item)
    return Split(parts["train"], parts["val"], parts["test"], source=source, unused=parts["unused"])


def check_no_leak(split: Split) -> None:
    """Raise if one content id or one image path is in two parts."""
    seen: dict[str, str] = {}
    for part, items in split.parts().items():
        for key in {i.content_id for i in items} | {"path:" + i.path for i in items}:
            if key in seen and seen[key] != part:
                raise SplitError(f"split leak: {key} is in both {seen[key]} and {part} ({split.source})")
            seen[key] = part


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def write_split_csv(path: str | os.PathLike, split: Split, root: str | os.PathLike) -> Path:
    """Write ``path,content_id,part`` rows (paths relative to the database root); atomic replace."""
    path, root = Path(path), Path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SPLIT_CSV_HEADER)
        for part, items in split.parts().items():
            for item in items:
                writer.writerow([_relative(item.path, root), item.content_id, part])
    os.replace(tmp, path)
    return path


def _check_header(path: Path, fieldnames) -> None:
    if fieldnames is None or not set(SPLIT_CSV_HEADER) <= set(fieldnames):
        raise SplitError(f"{path}: expected the header {','.join(SPLIT_CSV_HEADER)}; found {fieldnames}")


def count_split_csv(path: str | os.PathLike) -> dict[str, int]:
    """Images per part of a ``split.csv`` (train, val, test), without the database at hand: what a run had,
    for reports. ``read_split_csv`` is what checks the rows against a database."""
    path = Path(path)
    counts = dict.fromkeys(PARTS, 0)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        _check_header(path, reader.fieldnames)
        for line, row in enumerate(reader, start=2):
            if row["part"] not in counts:
                raise SplitError(
                    f"{path} line {line}: unknown part {row['part']!r} (expected one of {PARTS})"
                )
            counts[row["part"]] += 1
    return counts


def read_split_csv(path: str | os.PathLike, items: Sequence[IQAItem], root: str | os.PathLike) -> Split:
    """Reload a ``split.csv``; error when its items are not exactly the database's items."""
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise SplitError(
            f"split.file not found: {path} (config key split.file; a split.csv written by an earlier run)"
        )
    by_rel = {_relative(item.path, root): item for item in items}
    parts: dict[str, list[IQAItem]] = {p: [] for p in PARTS}
    listed, problems = set(), []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        _check_header(path, reader.fieldnames)
        for line, row in enumerate(reader, start=2):
            rel, part = row["path"], row["part"]
            item = by_rel.get(rel)
            if part not in PARTS:
                problems.append(f"line {line}: unknown part {part!r}")
            elif item is None:
                problems.append(f"line {line}: {rel} is not an item of this database")
            elif item.content_id != row["content_id"]:
                problems.append(
                    f"line {line}: {rel} has content_id {item.content_id!r}, file says {row['content_id']!r}"
                )
            elif rel in listed:
                problems.append(f"line {line}: {rel} listed twice")
            else:
                listed.add(rel)
                parts[part].append(item)
    absent = sorted(set(by_rel) - listed)
    problems += [f"{rel} is in the database but not in the split file" for rel in absent]
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise SplitError(
            f"split.file {path} does not match the database under {root} ({len(problems)} problem(s)):\n  {shown}{more}"
        )
    split = Split(parts["train"], parts["val"], parts["test"], source=f"file {path}")
    check_no_leak(split)
    return split
