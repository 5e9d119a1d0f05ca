"""SPAQ (``SPAQ/``): 11,125 smartphone photographs, MOS 0..100 (higher = better).

Labels: ``Annotations/MOS and Image attribute scores.xlsx`` (columns ``Image name``, ``MOS``, ...).
Images: ``TestImage/00001.jpg`` ... The names in the sheet are matched to the files by stem,
case-insensitively, since copies of the sheet differ in the extension they list. The full-size
photos are large: the data module's ``short_side`` / ``cache_dir`` options resize them (once).
"""

from __future__ import annotations

from pathlib import Path

from mfe_iqa.data.items import DatabaseInfo
from mfe_iqa.data.readers.base import (
    CaseInsensitiveDir,
    Database,
    cell_to_name,
    make_item,
    read_table,
    require_columns,
    require_dir,
    require_file,
    to_float,
)

NAME = "SPAQ"
DOWNLOAD = (
    "Download it as described at https://github.com/h4nwei/SPAQ and unpack SPAQ/ (TestImage/, Annotations/)."
)
LABEL_FILE = "Annotations/MOS and Image attribute scores.xlsx"


def read_spaq(root: str | Path, label_file: str = LABEL_FILE, image_dir: str = "TestImage") -> Database:
    """Read SPAQ from ``root``."""
    root = require_dir(Path(root), "database folder", NAME, DOWNLOAD)
    label_path = require_file(root / label_file, "label file", NAME, DOWNLOAD)
    table = read_table(label_path)
    table.columns = [str(c).strip() for c in table.columns]
    require_columns(table, ("Image name", "MOS"), label_path, NAME)
    images = CaseInsensitiveDir(root / image_dir, by_stem=True)
    info = DatabaseInfo(NAME, "authentic", 0.0, 100.0, lower_better=False)
    items = []
    for name, value in zip(table["Image name"], table["MOS"]):
        name = cell_to_name(name)
        items.append(make_item(info, images.resolve(name), to_float(value), Path(name).stem))
    return Database(info=info, items=items, root=root)
