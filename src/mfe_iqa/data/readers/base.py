"""What every reader returns, and the small file helpers the readers share."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mfe_iqa.data.checks import BadItem, LabelFileError, missing_path_error
from mfe_iqa.data.items import DatabaseInfo, IQAItem

PART_NAMES = ("train", "val", "test")


@dataclass
class Database:
    """A parsed database: its info, its items (label-file order), and what the parse found.

    ``problems`` holds label rows that could not become items (reported with the other bad items);
    ``official_split`` maps item path -> "train" | "val" | "test" where the database ships one.
    """

    info: DatabaseInfo
    items: list[IQAItem]
    root: Path
    problems: list[BadItem] = field(default_factory=list)
    official_split: dict[str, str] | None = None


def require_dir(path: Path, what: str, database: str, download: str) -> Path:
    if not Path(path).is_dir():
        raise missing_path_error(Path(path), what, database, download)
    return Path(path)


def require_file(path: Path, what: str, database: str, download: str) -> Path:
    if not Path(path).is_file():
        raise missing_path_error(Path(path), what, database, download)
    return Path(path)


class CaseInsensitiveDir:
    """Finds a file in one folder by name regardless of case (TID2013 mixes 'I01' and 'i01').

    ``by_stem`` also matches on the name without its extension (SPAQ lists names whose extension
    differs from the files'). A name that matches nothing resolves to ``folder/name`` so the
    missing file is reported by the checks with its expected path.
    """

    def __init__(self, folder: Path, by_stem: bool = False):
        self.folder = Path(folder)
        names = os.listdir(self.folder) if self.folder.is_dir() else []
        self._names = set(names)
        self._lower = {n.lower(): n for n in names}
        self._stems: dict[str, str] = {}
        if by_stem:
            for n in names:
                self._stems.setdefault(os.path.splitext(n)[0].lower(), n)

    def resolve(self, name: str) -> Path:
        if name in self._names:
            return self.folder / name
        hit = self._lower.get(name.lower()) or self._stems.get(os.path.splitext(name)[0].lower())
        return self.folder / (hit or name)


def read_table(path: Path, **kwargs) -> pd.DataFrame:
    """A CSV (any delimiter pandas sniffs) or an Excel sheet, as a DataFrame of raw cells."""
    if path.suffix.lower() in (".xlsx", ".xlsm", ".xls"):
        return pd.read_excel(path, **kwargs)
    return pd.read_csv(path, sep=None, engine="python", **kwargs)


def require_columns(df: pd.DataFrame, columns: Sequence[str], path: Path, database: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise LabelFileError(
            f"{database}: label file {path} lacks column(s) {missing}; found columns {list(df.columns)}. "
            f"Expected the columns {list(columns)} of the official distribution."
        )


def to_float(value) -> float:
    """A label cell as float; NaN for anything non-numeric (flagged by the checks)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x


def cell_to_name(value) -> str:
    """An image-name cell as text; Excel stores names like '1600' as numbers."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def make_item(
    info: DatabaseInfo,
    path: Path,
    mos_raw: float,
    content_id: str,
    dist_type: int = -1,
    dist_level: int = -1,
) -> IQAItem:
    mos = info.normalize(mos_raw) if math.isfinite(mos_raw) else math.nan
    return IQAItem(
        path=str(path),
        mos=float(mos),
        mos_raw=float(mos_raw),
        content_id=str(content_id),
        dist_type=int(dist_type),
        dist_level=int(dist_level),
    )
