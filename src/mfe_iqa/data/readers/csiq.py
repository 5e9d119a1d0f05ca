"""CSIQ (``CSIQ/``): 30 references, 866 distorted images, 6 distortion types, DMOS in [0, 1] (0 = best).

Official labels: ``csiq.DMOS.xlsx``, sheet ``all_by_image``, whose header row (row 4 in the
distributed file; located here by its column names) holds ``image, dst_idx, dst_type, dst_lev,
dmos_std, dmos``. Images: ``dst_imgs/<folder>/<ref>.<TOKEN>.<level>.png``. The third-party
flattening ``csiq_label.txt`` (``<name> <dmos>`` per line, images in ``dst_imgs_all/``) is read too.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mfe_iqa.data.checks import BadItem, LabelFileError
from mfe_iqa.data.items import DatabaseInfo
from mfe_iqa.data.readers.base import (
    CaseInsensitiveDir,
    Database,
    cell_to_name,
    make_item,
    require_dir,
    require_file,
    to_float,
)

NAME = "CSIQ"
DOWNLOAD = (
    "Download it from https://s2.smu.edu/~eclarson/csiq.html and unpack CSIQ/ "
    "(src_imgs/, dst_imgs/<type>/, csiq.DMOS.xlsx)."
)
# xlsx dst_type value -> (folder, file token); list order = dst_idx 1..6 = our 0-based dist_type.
DIST_TYPES = (
    ("noise", "awgn", "AWGN"),
    ("jpeg", "jpeg", "JPEG"),
    ("jpeg 2000", "jpeg2000", "jpeg2000"),
    ("fnoise", "fnoise", "fnoise"),
    ("blur", "blur", "BLUR"),
    ("contrast", "contrast", "contrast"),
)
TYPE_BY_XLSX = {name: i for i, (name, _, _) in enumerate(DIST_TYPES)}
TYPE_BY_TOKEN = {token.lower(): i for i, (_, _, token) in enumerate(DIST_TYPES)}
XLSX_COLUMNS = ("image", "dst_type", "dst_lev", "dmos")
LABEL_FILES = ("csiq.DMOS.xlsx", "csiq_label.txt")


def _info() -> DatabaseInfo:
    return DatabaseInfo(
        NAME, "synthetic", 0.0, 1.0, lower_better=True, dist_type_names=tuple(f for _, f, _ in DIST_TYPES)
    )


def _xlsx_table(path: Path) -> pd.DataFrame:
    """The ``all_by_image`` sheet with its header row located by column names."""
    try:
        raw = pd.read_excel(path, sheet_name="all_by_image", header=None)
    except ValueError as err:
        raise LabelFileError(f"{NAME}: {path} has no sheet 'all_by_image' ({err}).") from err
    for r in range(min(len(raw), 20)):
        names = [str(v).strip().lower() for v in raw.iloc[r].tolist()]
        if all(c in names for c in XLSX_COLUMNS):
            table = raw.iloc[r + 1 :].copy()
            table.columns = [n if n not in ("", "nan") else f"_unnamed{i}" for i, n in enumerate(names)]
            return table.dropna(how="all")
    raise LabelFileError(
        f"{NAME}: no header row with columns {list(XLSX_COLUMNS)} in the first 20 rows of {path}, "
        "sheet 'all_by_image'."
    )


def read_csiq(root: str | Path, label_file: str = "csiq.DMOS.xlsx") -> Database:
    """Read CSIQ from ``root``; ``label_file`` is ``csiq.DMOS.xlsx`` (official) or ``csiq_label.txt``."""
    root = require_dir(Path(root), "database folder", NAME, DOWNLOAD)
    if label_file not in LABEL_FILES:
        raise ValueError(f"{NAME}: data.label_file must be one of {list(LABEL_FILES)}, got {label_file!r}")
    label_path = require_file(root / label_file, "label file", NAME, DOWNLOAD)
    info = _info()
    items, problems = [], []
    folders: dict[str, CaseInsensitiveDir] = {}

    def folder(name: str) -> CaseInsensitiveDir:
        if name not in folders:
            folders[name] = CaseInsensitiveDir(root / name)
        return folders[name]

    if label_file.endswith(".xlsx"):
        table = _xlsx_table(label_path)
        for row_no, rec in enumerate(table.to_dict("records"), start=1):
            ref = cell_to_name(rec["image"])
            kind = str(rec["dst_type"]).strip().lower()
            level = to_float(rec["dst_lev"])
            where = f"{label_path} data row {row_no} ({ref})"
            if kind not in TYPE_BY_XLSX or level != level:
                problems.append(
                    BadItem(where, f"unknown dst_type {rec['dst_type']!r} or dst_lev {rec['dst_lev']!r}")
                )
                continue
            t = TYPE_BY_XLSX[kind]
            _, sub, token = DIST_TYPES[t]
            path = folder(f"dst_imgs/{sub}").resolve(f"{ref}.{token}.{int(level)}.png")
            items.append(make_item(info, path, to_float(rec["dmos"]), ref, t, int(level)))
    else:
        flat = root / "dst_imgs_all"
        lines = label_path.read_text().splitlines()
        for line_no, line in enumerate(lines, start=1):
            parts = line.replace(",", " ").split()
            if not parts:
                continue
            name = parts[0] if parts[0].lower().endswith(".png") else parts[0] + ".png"
            tokens = name.split(".")
            if (
                len(parts) < 2
                or len(tokens) != 4
                or tokens[1].lower() not in TYPE_BY_TOKEN
                or not tokens[2].isdigit()
            ):
                problems.append(BadItem(f"{label_path} line {line_no}", f"cannot parse {line!r}"))
                continue
            t = TYPE_BY_TOKEN[tokens[1].lower()]
            sub = flat if flat.is_dir() else root / "dst_imgs" / DIST_TYPES[t][1]
            path = folder(str(sub.relative_to(root))).resolve(name)
            items.append(make_item(info, path, to_float(parts[1]), tokens[0], t, int(tokens[2])))
    return Database(info=info, items=items, root=root, problems=problems)
