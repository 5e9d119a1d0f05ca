"""TID2013 (``tid2013/``): 25 references x 24 distortion types x 5 levels = 3000 images, MOS 0..9 (higher = better).

Labels: ``mos_with_names.txt``, one ``<MOS> <file name>`` per line. Images:
``distorted_images/i<ref>_<type>_<level>.bmp``; the distributed names mix 'i' and 'I' and '.bmp'
and '.BMP', so files are matched case-insensitively. Content id = the reference number (``i01``).
"""

from __future__ import annotations

import re
from pathlib import Path

from mfe_iqa.data.checks import BadItem
from mfe_iqa.data.items import DatabaseInfo
from mfe_iqa.data.readers.base import (
    CaseInsensitiveDir,
    Database,
    make_item,
    require_dir,
    require_file,
    to_float,
)

NAME = "TID2013"
DOWNLOAD = (
    "Download it from https://www.ponomarenko.info/tid2013.htm and unpack tid2013/ "
    "(distorted_images/, reference_images/, mos_with_names.txt)."
)
DIST_TYPE_NAMES = (
    "additive_gaussian_noise",
    "additive_noise_color",
    "spatially_correlated_noise",
    "masked_noise",
    "high_frequency_noise",
    "impulse_noise",
    "quantization_noise",
    "gaussian_blur",
    "image_denoising",
    "jpeg",
    "jpeg2000",
    "jpeg_transmission_errors",
    "jpeg2000_transmission_errors",
    "non_eccentricity_pattern_noise",
    "local_block_wise_distortions",
    "mean_shift",
    "contrast_change",
    "color_saturation_change",
    "multiplicative_gaussian_noise",
    "comfort_noise",
    "lossy_compression_of_noisy_images",
    "color_quantization_with_dither",
    "chromatic_aberrations",
    "sparse_sampling_and_reconstruction",
)
FILE_NAME = re.compile(r"^i(?P<ref>\d{2})_(?P<type>\d{2})_(?P<level>\d)\.bmp$", re.IGNORECASE)


def read_tid2013(root: str | Path, label_file: str = "mos_with_names.txt") -> Database:
    """Read TID2013 from ``root`` (the folder holding ``distorted_images/`` and ``mos_with_names.txt``)."""
    root = require_dir(Path(root), "database folder", NAME, DOWNLOAD)
    label_path = require_file(root / label_file, "label file", NAME, DOWNLOAD)
    images = CaseInsensitiveDir(root / "distorted_images")
    info = DatabaseInfo(NAME, "synthetic", 0.0, 9.0, lower_better=False, dist_type_names=DIST_TYPE_NAMES)
    items, problems = [], []
    for line_no, line in enumerate(label_path.read_text(errors="replace").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        match = FILE_NAME.match(parts[-1]) if len(parts) == 2 else None
        if match is None or not 1 <= int(match["type"]) <= 24 or not 1 <= int(match["level"]) <= 5:
            problems.append(
                BadItem(f"{label_path} line {line_no}", f"expected '<MOS> iXX_YY_Z.bmp', got {line!r}")
            )
            continue
        items.append(
            make_item(
                info,
                images.resolve(parts[1]),
                to_float(parts[0]),
                f"i{match['ref']}",
                int(match["type"]) - 1,
                int(match["level"]),
            )
        )
    return Database(info=info, items=items, root=root, problems=problems)
