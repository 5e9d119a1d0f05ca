"""KonIQ-10k (``koniq10k/``): 10,073 authentic images.

Labels: ``koniq10k_scores_and_distributions.csv`` (``image_name, c1..c5, c_total, MOS, SD,
MOS_zscore``): ``MOS`` is on 1..5, ``MOS_zscore`` on 0..100, both higher = better. The official
split is the ``set`` column (training / validation / test) of ``koniq10k_distributions_sets.csv``.
Images: ``1024x768/`` (or the ``512x384/`` release, via ``image_dir``).
"""

from __future__ import annotations

from pathlib import Path

from mfe_iqa.data.checks import BadItem, LabelFileError
from mfe_iqa.data.items import DatabaseInfo
from mfe_iqa.data.readers.base import (
    Database,
    make_item,
    read_table,
    require_columns,
    require_dir,
    require_file,
    to_float,
)

NAME = "KonIQ-10k"
DOWNLOAD = (
    "Download it from http://database.mmsp-kn.de/koniq-10k-database.html and unpack koniq10k/ "
    "(1024x768/, koniq10k_scores_and_distributions.csv; koniq10k_distributions_sets.csv from "
    "https://github.com/subpic/koniq for the official split)."
)
SCORES_FILE = "koniq10k_scores_and_distributions.csv"
SETS_FILE = "koniq10k_distributions_sets.csv"
MOS_RANGES = {"MOS": (1.0, 5.0), "MOS_zscore": (0.0, 100.0)}
SET_TO_PART = {"training": "train", "validation": "val", "test": "test"}


def read_koniq10k(
    root: str | Path,
    mos_column: str = "MOS",
    image_dir: str = "1024x768",
    label_file: str = SCORES_FILE,
    sets_file: str | None = SETS_FILE,
) -> Database:
    """Read KonIQ-10k; ``mos_column`` is ``MOS`` (1..5) or ``MOS_zscore`` (0..100).

    ``sets_file``: the official split, read when the file exists (None: do not look for it).
    """
    root = require_dir(Path(root), "database folder", NAME, DOWNLOAD)
    if mos_column not in MOS_RANGES:
        raise ValueError(f"{NAME}: data.mos_column must be one of {list(MOS_RANGES)}, got {mos_column!r}")
    label_path = require_file(root / label_file, "label file", NAME, DOWNLOAD)
    table = read_table(label_path, dtype=str)
    require_columns(table, ("image_name", mos_column), label_path, NAME)
    lo, hi = MOS_RANGES[mos_column]
    info = DatabaseInfo(NAME, "authentic", lo, hi, lower_better=False)
    images = root / image_dir
    items = [
        make_item(info, images / str(name).strip(), to_float(value), str(name).strip())
        for name, value in zip(table["image_name"], table[mos_column])
    ]
    problems: list[BadItem] = []
    official = None
    if sets_file is not None and (root / sets_file).is_file():
        sets_path = root / sets_file
        sets = read_table(sets_path, dtype=str)
        require_columns(sets, ("image_name", "set"), sets_path, NAME)
        by_name = {}
        for name, part in zip(sets["image_name"], sets["set"]):
            part = str(part).strip().lower()
            if part not in SET_TO_PART:
                raise LabelFileError(
                    f"{NAME}: {sets_path} image {name}: unknown set {part!r} (expected {list(SET_TO_PART)})."
                )
            by_name[str(name).strip()] = SET_TO_PART[part]
        official = {}
        for item in items:
            name = Path(item.path).name
            if name in by_name:
                official[item.path] = by_name[name]
            else:
                problems.append(BadItem(item.path, f"not listed in the official split file {sets_path}"))
    return Database(info=info, items=items, root=root, problems=problems, official_split=official)
