"""The embedded demo database: synthetic, generated from photographs shipped inside scikit-image.

What it is for: running the whole pipeline (pre-training, training, testing) with no download, on
CPU, in minutes. It is NOT a benchmark: its scores are a full-reference metric, not human opinion.

How it is made (deterministic for a seed):
- references: the natural photographs that scikit-image ships as files in ``skimage/data`` (no
  download), gray ones replicated to RGB, resized so the short side is ``short_side`` (area);
- each reference is distorted by the bank ``mfe_iqa.data.distortions.apply_distortion`` with every
  type in ``dist_types`` at every level in ``levels``;
- pseudo-MOS (0..100, higher = better) = 100 * (0.75 * SSIM + 0.25 * clip((PSNR - 10) / 30, 0, 1)),
  SSIM on the RGB channels (skimage defaults: 7x7 uniform window) and PSNR against the pristine image:
  SSIM follows structure (blur, blocking, noise), the PSNR term keeps colour and contrast changes
  (to which SSIM is less sensitive) in the score.

On disk it has the form of a real database, read by the generic CSV reader::

    <root>/images/<ref>_<type:02d>_<level:02d>.png   (type = KADID 1-based id)
    <root>/pristine/<ref>.png                      (the references: DAN pre-training's default source)
    <root>/labels.csv                              (image, reference, dist_type, dist_level, mos)
    <root>/demo.json                               (the generation parameters)

Generation writes into a temporary sibling folder and renames it into place, so parallel processes
never see (or corrupt) a half-written demo; a cache with other parameters is replaced.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mfe_iqa.data.images import load_rgb, resize_short_side

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Natural photographs stored as files inside scikit-image (no pooch download); gray ones included.
DEMO_REFERENCES: tuple[str, ...] = (
    "astronaut.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "hubble_deep_field.jpg",
    "moon.png",
    "motorcycle_left.png",
    "rocket.jpg",
    "grass.png",
    "gravel.png",
    "brick.png",
)
# Types that also change gray references (6 of the 12 are gray: a pure colour distortion would leave
# them untouched).
DEFAULT_DIST_TYPES: tuple[str, ...] = (
    "gaussian_blur",
    "motion_blur",
    "jpeg2000",
    "jpeg",
    "white_noise",
    "contrast_change",
)
LABEL_FILE = "labels.csv"
MOS_RANGE = (0.0, 100.0)


def skimage_data_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def pseudo_mos(pristine: np.ndarray, distorted: np.ndarray) -> float:
    """Full-reference pseudo-MOS in [0, 100] (see the module docstring)."""
    ssim = structural_similarity(pristine, distorted, channel_axis=2, data_range=255)
    if np.array_equal(pristine, distorted):
        psnr_term = 1.0
    else:
        psnr = peak_signal_noise_ratio(pristine, distorted, data_range=255)
        psnr_term = float(np.clip((psnr - 10.0) / 30.0, 0.0, 1.0))
    return float(np.clip(100.0 * (0.75 * max(ssim, 0.0) + 0.25 * psnr_term), *MOS_RANGE))


def _parameters(num_refs, dist_types, levels, short_side, seed) -> dict:
    from mfe_iqa.data.distortions import NUM_LEVELS, type_indices

    refs = list(DEMO_REFERENCES if num_refs is None else DEMO_REFERENCES[: int(num_refs)])
    if not 1 <= len(refs) <= len(DEMO_REFERENCES):
        raise ValueError(f"demo num_refs must be in 1..{len(DEMO_REFERENCES)}, got {num_refs}")
    type_indices(dist_types, "demo dist_types")
    bad_levels = [lv for lv in levels if not 1 <= int(lv) <= NUM_LEVELS]
    if bad_levels or not levels:
        raise ValueError(f"demo levels must be in 1..{NUM_LEVELS}, got {list(levels)}")
    return {
        "format": FORMAT_VERSION,
        "references": refs,
        "dist_types": list(dist_types),
        "levels": sorted(int(lv) for lv in levels),
        "short_side": int(short_side),
        "seed": int(seed),
    }


def _generate(folder: Path, params: dict) -> None:
    from mfe_iqa.data.distortions import DISTORTION_NAMES, apply_distortion

    (folder / "images").mkdir(parents=True)
    (folder / "pristine").mkdir()
    rows = []
    for r, ref_file in enumerate(params["references"]):
        pristine = resize_short_side(load_rgb(skimage_data_dir() / ref_file), params["short_side"])
        ref = Path(ref_file).stem
        cv2.imwrite(str(folder / "pristine" / f"{ref}.png"), cv2.cvtColor(pristine, cv2.COLOR_RGB2BGR))
        for name in params["dist_types"]:
            t = DISTORTION_NAMES.index(name)
            for level in params["levels"]:
                rng = np.random.default_rng([params["seed"], r, t, level])
                distorted = apply_distortion(pristine, t, level, rng)
                image = f"{ref}_{t + 1:02d}_{level:02d}.png"
                cv2.imwrite(str(folder / "images" / image), cv2.cvtColor(distorted, cv2.COLOR_RGB2BGR))
                rows.append([image, ref, name, level, f"{pseudo_mos(pristine, distorted):.4f}"])
    with open(folder / LABEL_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "reference", "dist_type", "dist_level", "mos"])
        writer.writerows(rows)
    (folder / "demo.json").write_text(json.dumps(params, indent=2))


def _read_params(root: Path) -> dict | None:
    try:
        return json.loads((root / "demo.json").read_text())
    except (OSError, ValueError):
        return None


def ensure_demo(
    root: str | os.PathLike,
    num_refs: int | None = None,
    dist_types: Sequence[str] = DEFAULT_DIST_TYPES,
    levels: Sequence[int] = (1, 2, 3, 4, 5),
    short_side: int = 224,
    seed: int = 0,
) -> Path:
    """Generate the demo under ``root`` unless an identical one is already there; return its folder.

    ``num_refs``: the first N of DEMO_REFERENCES (None: all 12). Safe to call from parallel processes.
    A cache is never replaced (a running job may be reading it): when ``root`` holds a demo with other
    parameters, this one lives next to it in ``<root>-<hash of the parameters>``, which is returned.
    """
    root = Path(os.path.expanduser(str(root)))
    params = _parameters(num_refs, list(dist_types), list(levels), short_side, seed)
    existing = _read_params(root)
    if existing == params:
        return root
    if existing is not None or (root.exists() and any(root.iterdir())):
        digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
        root = root.parent / f"{root.name}-{digest}"
        if _read_params(root) == params:
            return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    log.info("generating the demo database under %s (%s)", root, params)
    try:
        _generate(tmp, params)
        try:
            os.rename(tmp, root)  # atomic; fails if root exists (and is not empty)
        except OSError:
            if _read_params(root) != params:  # not another process that finished first
                raise OSError(
                    f"could not move the generated demo database into {root}: the folder exists but holds "
                    "no complete demo; delete it and run again"
                ) from None
        return root
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def demo_pristine_dir(root: str | os.PathLike, **kwargs) -> Path:
    """The demo's pristine reference folder (generating the demo if needed)."""
    return ensure_demo(root, **kwargs) / "pristine"
