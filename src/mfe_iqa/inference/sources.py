"""Turn a prediction input (folder, glob, list file or single image) into the ordered list of files to score."""

from __future__ import annotations

import glob
from pathlib import Path

# A file with one of these suffixes is read as a list of image paths, one per line, not as an image.
LIST_SUFFIXES = (".txt", ".lst", ".list")
_GLOB_CHARS = ("*", "?", "[")


def _read_path_list(list_file: Path) -> list[str]:
    """Lines of a path list: blank lines and ``#`` comments skipped; relative paths resolved against its folder."""
    paths = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        paths.append(str(p if p.is_absolute() else list_file.parent / p))
    return paths


def resolve_inputs(spec: str | Path) -> list[str]:
    """Every file named by ``spec``, in a stable order.

    - a folder: every regular file below it, recursively, sorted (hidden files and folders skipped);
      non-image files are kept so that the prediction run reports them rather than dropping them;
    - a ``.txt``/``.lst``/``.list`` file: the paths it lists, in its order (missing ones are kept and reported);
    - a pattern with ``*``, ``?`` or ``[``: the files it matches (``**`` recurses), sorted;
    - any other existing file: that file alone.
    """
    spec_str = str(spec)
    path = Path(spec_str).expanduser()
    if path.is_dir():
        files = [
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
        return sorted(str(p) for p in files)
    if path.is_file():
        if path.suffix.lower() in LIST_SUFFIXES:
            return _read_path_list(path)
        return [str(path)]
    if any(c in spec_str for c in _GLOB_CHARS):
        matches = sorted(p for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not matches:
            raise FileNotFoundError(
                f"input pattern '{spec_str}' matches no file: check the pattern and quote it"
            )
        return matches
    raise FileNotFoundError(
        f"input '{spec_str}' is neither a folder, an image, a list file ({', '.join(LIST_SUFFIXES)}) "
        "nor a glob pattern: give an existing path"
    )
