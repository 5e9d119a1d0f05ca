"""PIPAL training set (``PIPAL/``): 200 references, 23,200 restored/distorted images, Elo scores.

Labels: ``Train_Label/A0001.txt`` ... (also distributed as ``MOS_Scores_train/``), one
``A0001_00_00.bmp,1520.0648`` line per image. Images: ``Train_Dist/`` or ``Distortion_1..4/``.
Elo is higher = better; the raw range used for normalization is 850..1900 (the training labels
span 916.7..1836.0). Content id = the reference (``A0001``).
"""

from __future__ import annotations

import os
from pathlib import Path

from mfe_iqa.data.checks import BadItem, missing_path_error
from mfe_iqa.data.items import DatabaseInfo
from mfe_iqa.data.readers.base import Database, make_item, require_dir, to_float

NAME = "PIPAL"
DOWNLOAD = (
    "Request it at https://github.com/HaomingCai/PIPAL-dataset and unpack the training set "
    "(Train_Ref/, Train_Dist/ or Distortion_1..4/, Train_Label/)."
)
LABEL_DIRS = ("Train_Label", "MOS_Scores_train")
IMAGE_DIRS = ("Train_Dist", "Distortion_1", "Distortion_2", "Distortion_3", "Distortion_4")
ELO_RANGE = (850.0, 1900.0)


def read_pipal(root: str | Path) -> Database:
    """Read the PIPAL training set from ``root``."""
    root = require_dir(Path(root), "database folder", NAME, DOWNLOAD)
    label_dir = next((root / d for d in LABEL_DIRS if (root / d).is_dir()), None)
    if label_dir is None:
        raise missing_path_error(
            root / LABEL_DIRS[0], f"label folder ({' or '.join(LABEL_DIRS)})", NAME, DOWNLOAD
        )
    location: dict[str, Path] = {}
    for d in IMAGE_DIRS:
        if (root / d).is_dir():
            for name in os.listdir(root / d):
                location.setdefault(name.lower(), root / d / name)
    info = DatabaseInfo(NAME, "synthetic", *ELO_RANGE, lower_better=False)
    items, problems = [], []
    for label_file in sorted(label_dir.glob("*.txt")):
        for line_no, line in enumerate(label_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 2 or "_" not in parts[0]:
                problems.append(
                    BadItem(f"{label_file} line {line_no}", f"expected '<image>,<elo>', got {line!r}")
                )
                continue
            name = parts[0]
            path = location.get(name.lower(), root / IMAGE_DIRS[0] / name)
            items.append(make_item(info, path, to_float(parts[1]), name.split("_")[0]))
    return Database(info=info, items=items, root=root, problems=problems)
