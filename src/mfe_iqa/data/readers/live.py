"""LIVE Image Quality Assessment Database Release 2 (``databaserelease2/``).

The 982 label entries are ordered jp2k(227) jpeg(233) wn(174) gblur(174) fastfading(174); entry k
of a folder is ``<folder>/img<k>.bmp``. Entries with ``orgs == 1`` are copies of the reference
(DMOS 0) and are dropped, leaving 779 distorted images. Scores are DMOS (lower = better).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io as sio

from mfe_iqa.data.checks import LabelFileError
from mfe_iqa.data.items import DatabaseInfo
from mfe_iqa.data.readers.base import Database, make_item, require_dir, require_file

NAME = "LIVE"
DOWNLOAD = (
    "Request it at https://live.ece.utexas.edu/research/quality/subjective.htm and unpack "
    "databaserelease2/ (with refimgs/, jp2k/, jpeg/, wn/, gblur/, fastfading/, dmos*.mat, refnames_all.mat)."
)
FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
NUM_ENTRIES = sum(n for _, n in FOLDERS)  # 982
# label file -> the key of the DMOS array inside it
LABEL_KEYS = {"dmos_realigned.mat": "dmos_new", "dmos.mat": "dmos"}
# Raw range used for normalization: realigned DMOS lies in -2.64..111.78, "nominally 1..100".
MOS_RANGE = (-3.0, 112.0)


def _vector(mat: dict, key: str, path: Path) -> np.ndarray:
    if key not in mat:
        found = [k for k in mat if not k.startswith("__")]
        raise LabelFileError(f"{NAME}: {path} has no variable {key!r} (found {found}).")
    arr = np.asarray(mat[key]).reshape(-1)
    if arr.size != NUM_ENTRIES:
        raise LabelFileError(f"{NAME}: {path}:{key} has {arr.size} entries, expected {NUM_ENTRIES}.")
    return arr


def read_live(root: str | Path, label_file: str = "dmos_realigned.mat") -> Database:
    """Read LIVE R2 from ``root`` (the ``databaserelease2`` folder): 779 items, 29 references.

    ``label_file``: ``dmos_realigned.mat`` (variable ``dmos_new``, used by most papers) or
    ``dmos.mat`` (variable ``dmos``, used by pyiqa).
    """
    root = require_dir(Path(root), "database folder", NAME, DOWNLOAD)
    if label_file not in LABEL_KEYS:
        raise ValueError(f"{NAME}: data.label_file must be one of {list(LABEL_KEYS)}, got {label_file!r}")
    label_path = require_file(root / label_file, "label file", NAME, DOWNLOAD)
    names_path = require_file(root / "refnames_all.mat", "reference-name file", NAME, DOWNLOAD)
    labels = sio.loadmat(label_path)
    dmos = _vector(labels, LABEL_KEYS[label_file], label_path).astype(float)
    orgs = _vector(labels, "orgs", label_path).astype(int)
    refnames = [
        str(np.asarray(x).reshape(-1)[0])
        for x in _vector(sio.loadmat(names_path), "refnames_all", names_path)
    ]

    info = DatabaseInfo(
        name=NAME,
        kind="synthetic",
        mos_min=MOS_RANGE[0],
        mos_max=MOS_RANGE[1],
        lower_better=True,
        dist_type_names=tuple(f for f, _ in FOLDERS),
    )
    items = []
    entry = 0
    for dist_type, (folder, count) in enumerate(FOLDERS):
        for k in range(1, count + 1):
            if orgs[entry] == 0:
                items.append(
                    make_item(
                        info,
                        root / folder / f"img{k}.bmp",
                        dmos[entry],
                        Path(refnames[entry]).stem,
                        dist_type,
                    )
                )
            entry += 1
    return Database(info=info, items=items, root=root)
