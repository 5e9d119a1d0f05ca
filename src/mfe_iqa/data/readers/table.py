"""Databases described by one table: a generic CSV of your own, and pyiqa-style meta-info CSVs.

Generic CSV (``read_csv_database``): one row per image with configurable column names; a
``content_column`` (the reference / scene id) makes the database "synthetic" (split by content),
without one every image is its own content ("authentic"). MOS range: given, or the data's own
min..max. This is also the path the embedded demo database is read through.

pyiqa meta-info (``read_pyiqa_meta``): the folders prepared for the IQA-PyTorch toolbox, unchanged.
NR files: ``<image>, <mos>, ...`` (first two columns, e.g. ``img_name,mos,std,split``); FR files:
``ref_name, dist_name, <mos>``. The split comes from a ``split`` column (``train|training``,
``val|validation``, ``test``) or from a pyiqa ``*.pkl`` split file
(``{split_index: {"train": [rows], "val": [rows], "test": [rows]}}``).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mfe_iqa.data.checks import BadItem, LabelFileError
from mfe_iqa.data.images import IMAGE_SUFFIXES
from mfe_iqa.data.items import DatabaseInfo, IQAItem
from mfe_iqa.data.readers.base import (
    Database,
    make_item,
    read_table,
    require_columns,
    require_dir,
    require_file,
    to_float,
)

CSV_DOWNLOAD = "Point data.root at the folder holding your images and data.label_file at your CSV."
PYIQA_DOWNLOAD = (
    "Point data.root at the pyiqa dataroot_target folder and data.meta_info_file at its meta_info CSV "
    "(see https://github.com/chaofengc/IQA-PyTorch/blob/main/docs/Dataset_Preparation.md)."
)
PART_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "validation": "val",
    "valid": "val",
    "test": "test",
}


def _mos_range(values: Sequence[float], mos_min: float | None, mos_max: float | None, label: Path, name: str):
    finite = [v for v in values if math.isfinite(v)]
    if (mos_min is None or mos_max is None) and (len(finite) < 2 or min(finite) == max(finite)):
        raise LabelFileError(
            f"{name}: cannot infer the MOS range from {label} (fewer than two distinct finite values); "
            "set data.mos_min and data.mos_max."
        )
    lo = min(finite) if mos_min is None else float(mos_min)
    hi = max(finite) if mos_max is None else float(mos_max)
    if not hi > lo:
        raise ValueError(f"{name}: data.mos_max ({hi}) must be greater than data.mos_min ({lo}).")
    return lo, hi


def _resolve_image(folder: Path, name: str) -> Path:
    """``folder/name``; names without an extension (pyiqa's LIVE: ``jp2k/img2``) get the one that exists."""
    path = folder / name
    if path.suffix.lower() in IMAGE_SUFFIXES or path.exists():
        return path
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        if path.with_name(path.name + suffix).exists():
            return path.with_name(path.name + suffix)
    return path


def _parts_from_column(values, items: list[IQAItem], label: Path, name: str) -> dict[str, str]:
    split = {}
    for item, value in zip(items, values):
        part = PART_ALIASES.get(str(value).strip().lower())
        if part is None:
            raise LabelFileError(
                f"{name}: {label}: image {item.path} has split value {value!r}; expected one of {sorted(PART_ALIASES)}."
            )
        split[item.path] = part
    return split


def read_csv_database(
    root: str | Path,
    label_file: str = "labels.csv",
    image_dir: str = "",
    name: str = "custom",
    image_column: str = "image",
    mos_column: str = "mos",
    content_column: str | None = None,
    dist_type_column: str | None = None,
    dist_level_column: str | None = None,
    split_column: str | None = None,
    mos_min: float | None = None,
    mos_max: float | None = None,
    lower_better: bool = False,
    dist_type_names: Sequence[str] | None = None,
) -> Database:
    """Read a database described by one CSV (or xlsx) with the given column names.

    ``dist_type_column`` holds 0-based integers or names; names are looked up in
    ``dist_type_names`` (when not given: the sorted distinct names of the column).
    """
    root = require_dir(Path(root), "database folder", name, CSV_DOWNLOAD)
    label_path = require_file(root / label_file, "label file", name, CSV_DOWNLOAD)
    table = read_table(label_path, dtype=str, keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    wanted = [image_column, mos_column] + [
        c for c in (content_column, dist_type_column, dist_level_column, split_column) if c
    ]
    require_columns(table, wanted, label_path, name)
    values = [to_float(v) for v in table[mos_column]]
    lo, hi = _mos_range(values, mos_min, mos_max, label_path, name)

    type_names: tuple[str, ...] = tuple(dist_type_names or ())
    type_cells = [str(v).strip() for v in table[dist_type_column]] if dist_type_column else []
    if dist_type_column and not type_names:
        if all(c.lstrip("-").isdigit() for c in type_cells):
            type_names = tuple(f"type_{i}" for i in range(max(int(c) for c in type_cells) + 1))
        else:
            type_names = tuple(sorted(set(type_cells)))
    type_index = {n: i for i, n in enumerate(type_names)}

    kind = "synthetic" if content_column else "authentic"
    info = DatabaseInfo(name, kind, lo, hi, lower_better=bool(lower_better), dist_type_names=type_names)
    folder = root / image_dir
    items, problems, item_rows = [], [], []
    for row, (image, value) in enumerate(zip(table[image_column], values)):
        image = str(image).strip()
        where = f"{label_path} line {row + 2}"
        dist_type = dist_level = -1
        if dist_type_column:
            cell = type_cells[row]
            if cell.lstrip("-").isdigit():
                dist_type = int(cell)
            elif cell in type_index:
                dist_type = type_index[cell]
            else:
                problems.append(
                    BadItem(where, f"unknown distortion type {cell!r} (known: {list(type_names)})")
                )
                continue
            if not -1 <= dist_type < len(type_names):
                problems.append(
                    BadItem(where, f"distortion type {dist_type} outside 0..{len(type_names) - 1}")
                )
                continue
        if dist_level_column:
            level = to_float(table[dist_level_column].iloc[row])
            dist_level = int(level) if math.isfinite(level) else -1
        content = str(table[content_column].iloc[row]).strip() if content_column else image
        items.append(make_item(info, folder / image, value, content, dist_type, dist_level))
        item_rows.append(row)
    official = None
    if split_column:
        official = _parts_from_column(table[split_column].iloc[item_rows], items, label_path, name)
    return Database(info=info, items=items, root=root, problems=problems, official_split=official)


def read_pyiqa_meta(
    root: str | Path,
    meta_info_file: str,
    name: str = "pyiqa",
    split_file: str | None = None,
    split_index: int = 1,
    mos_min: float | None = None,
    mos_max: float | None = None,
    lower_better: bool = False,
) -> Database:
    """Read a pyiqa-prepared database: images under ``root`` (pyiqa's ``dataroot_target``).

    ``meta_info_file`` and ``split_file`` are paths (absolute, or relative to ``root``).
    """
    root = require_dir(Path(root), "image folder (pyiqa dataroot_target)", name, PYIQA_DOWNLOAD)
    meta_path = require_file(root / meta_info_file, "meta-info file", name, PYIQA_DOWNLOAD)
    table = pd.read_csv(meta_path, dtype=str, keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    columns = list(table.columns)
    if "dist_name" in columns:  # full-reference layout: ref_name, dist_name, mos
        require_columns(table, ("ref_name", "dist_name"), meta_path, name)
        image_col, content_col = "dist_name", "ref_name"
        rest = [c for c in columns if c not in ("ref_name", "dist_name")]
        if not rest:
            raise LabelFileError(f"{name}: {meta_path} has no score column after ref_name, dist_name.")
        mos_col = next((c for c in rest if c.lower() in ("mos", "dmos", "elo_score")), rest[0])
    else:
        if len(columns) < 2:
            raise LabelFileError(
                f"{name}: {meta_path} needs at least the columns <image>, <mos>; found {columns}."
            )
        image_col, mos_col, content_col = columns[0], columns[1], None
    values = [to_float(v) for v in table[mos_col]]
    lo, hi = _mos_range(values, mos_min, mos_max, meta_path, name)
    info = DatabaseInfo(
        name, "synthetic" if content_col else "authentic", lo, hi, lower_better=bool(lower_better)
    )
    items = [
        make_item(
            info,
            _resolve_image(root, str(image).strip()),
            value,
            Path(str(table[content_col].iloc[i]).strip()).stem if content_col else str(image).strip(),
        )
        for i, (image, value) in enumerate(zip(table[image_col], values))
    ]
    official = None
    if split_file:
        split_path = require_file(root / split_file, "split file", name, PYIQA_DOWNLOAD)
        with open(split_path, "rb") as f:
            splits = pickle.load(f)
        if split_index not in splits:
            raise LabelFileError(
                f"{name}: {split_path} has no split index {split_index} (has {sorted(splits)})."
            )
        official = {item.path: "unused" for item in items}
        for part, rows in splits[split_index].items():
            key = PART_ALIASES.get(str(part).lower())
            if key is None:
                raise LabelFileError(f"{name}: {split_path}[{split_index}] has an unknown part {part!r}.")
            for row in rows:
                if not 0 <= int(row) < len(items):
                    raise LabelFileError(
                        f"{name}: {split_path}[{split_index}][{part!r}] row {row} outside the meta file."
                    )
                official[items[int(row)].path] = key
    elif "split" in columns:
        official = _parts_from_column(table["split"], items, meta_path, name)
    return Database(info=info, items=items, root=root, official_split=official)
