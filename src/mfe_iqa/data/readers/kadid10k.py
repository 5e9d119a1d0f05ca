"""KADID-10k (``kadid10k/``): 81 references x 25 types x 5 levels = 10,125 images.

Labels: ``dmos.csv`` with header ``dist_img,ref_img,dmos,var``. Despite its name ``dmos`` is
quality-oriented (1..5, higher = better). Distorted and reference images share ``images/``;
``I01_02_03.png`` is reference I01, type 2, level 3.
"""

from __future__ import annotations

import re
from pathlib import Path

from mfe_iqa.data.checks import BadItem
from mfe_iqa.data.distortions import DISTORTION_NAMES
from mfe_iqa.data.items import DatabaseInfo
from mfe_iqa.data.readers.base import (
    CaseInsensitiveDir,
    Database,
    make_item,
    read_table,
    require_columns,
    require_dir,
    require_file,
    to_float,
)

NAME = "KADID-10k"
DOWNLOAD = (
    "Download it from http://database.mmsp-kn.de/kadid-10k-database.html and unpack kadid10k/ "
    "(images/, dmos.csv)."
)
# The 25 KADID-10k distortion types, 0-based, in KADID order: the distortion bank is built in that order.
DIST_TYPE_NAMES = DISTORTION_NAMES
COLUMNS = ("dist_img", "ref_img", "dmos")
FILE_NAME = re.compile(r"^(?P<ref>I\d+)_(?P<type>\d+)_(?P<level>\d+)\.\w+$", re.IGNORECASE)


def read_kadid10k(root: str | Path, label_file: str = "dmos.csv") -> Database:
    """Read KADID-10k from ``root`` (the folder holding ``images/`` and ``dmos.csv``)."""
    root = require_dir(Path(root), "database folder", NAME, DOWNLOAD)
    label_path = require_file(root / label_file, "label file", NAME, DOWNLOAD)
    table = read_table(label_path, dtype=str)
    table.columns = [c.strip() for c in table.columns]
    require_columns(table, COLUMNS, label_path, NAME)
    images = CaseInsensitiveDir(root / "images")
    info = DatabaseInfo(NAME, "synthetic", 1.0, 5.0, lower_better=False, dist_type_names=DIST_TYPE_NAMES)
    items, problems = [], []
    for row_no, rec in enumerate(table.to_dict("records"), start=2):
        name = str(rec["dist_img"]).strip()
        match = FILE_NAME.match(name)
        if match is None or not 1 <= int(match["type"]) <= 25:
            problems.append(BadItem(f"{label_path} line {row_no}", f"cannot parse dist_img {name!r}"))
            continue
        ref = Path(str(rec["ref_img"]).strip()).stem
        items.append(
            make_item(
                info,
                images.resolve(name),
                to_float(rec["dmos"]),
                ref,
                int(match["type"]) - 1,
                int(match["level"]),
            )
        )
    return Database(info=info, items=items, root=root, problems=problems)
