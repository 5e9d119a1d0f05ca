"""LIVE In the Wild Image Quality Challenge (``ChallengeDB_release/``): 1,162 authentic images, MOS 0..100.

Labels: ``Data/AllImages_release.mat`` (``AllImages_release``, 1169 names) and
``Data/AllMOS_release.mat`` (``AllMOS_release``, 1169 MOS). The first 7 entries are the subject
training images (``Images/trainingImages/t1.bmp`` ..) and are dropped, as in every published
protocol, leaving 1,162 images under ``Images/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io as sio

from mfe_iqa.data.checks import LabelFileError
from mfe_iqa.data.items import DatabaseInfo
from mfe_iqa.data.readers.base import Database, make_item, require_dir, require_file

NAME = "LIVE Challenge"
DOWNLOAD = (
    "Request it at https://live.ece.utexas.edu/research/ChallengeDB/index.html and unpack "
    "ChallengeDB_release/ (Images/, Data/AllImages_release.mat, Data/AllMOS_release.mat)."
)
NUM_ENTRIES = 1169
NUM_TRAINING = 7  # the first 7 entries: images shown to train the subjects


def _load_vector(path: Path, key: str) -> np.ndarray:
    mat = sio.loadmat(path)
    if key not in mat:
        found = [k for k in mat if not k.startswith("__")]
        raise LabelFileError(f"{NAME}: {path} has no variable {key!r} (found {found}).")
    arr = np.asarray(mat[key]).reshape(-1)
    if arr.size != NUM_ENTRIES:
        raise LabelFileError(f"{NAME}: {path}:{key} has {arr.size} entries, expected {NUM_ENTRIES}.")
    return arr


def read_livec(root: str | Path) -> Database:
    """Read the LIVE Challenge database from ``root`` (the ``ChallengeDB_release`` folder)."""
    root = require_dir(Path(root), "database folder", NAME, DOWNLOAD)
    names_path = require_file(root / "Data" / "AllImages_release.mat", "label file", NAME, DOWNLOAD)
    mos_path = require_file(root / "Data" / "AllMOS_release.mat", "label file", NAME, DOWNLOAD)
    names = [str(np.asarray(x).reshape(-1)[0]) for x in _load_vector(names_path, "AllImages_release")]
    mos = _load_vector(mos_path, "AllMOS_release").astype(float)
    info = DatabaseInfo(NAME, "authentic", 0.0, 100.0, lower_better=False)
    items = [
        make_item(info, root / "Images" / name, value, name)
        for name, value in zip(names[NUM_TRAINING:], mos[NUM_TRAINING:])
    ]
    return Database(info=info, items=items, root=root)
