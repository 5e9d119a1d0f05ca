"""Builders of tiny fixture trees in the exact on-disk layout of each IQA database (tests of the data package).

Images are 8x8..16x16 so that whole databases (LIVE's 982 entries, TID2013's 3000 images) cost
well under a second to write. Label files use the official formats: .mat via scipy.io.savemat,
.xlsx via openpyxl, CSV / text as distributed. Each builder returns the truth the tests check.
"""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import cv2
import numpy as np
import scipy.io as sio
from openpyxl import Workbook

LIVE_REFS = [
    "bikes",
    "building2",
    "buildings",
    "caps",
    "carnivaldolls",
    "cemetry",
    "churchandcapitol",
    "coinsinfountain",
    "dancers",
    "flowersonih35",
    "house",
    "lighthouse",
    "lighthouse2",
    "manfishing",
    "monarch",
    "ocean",
    "paintedhouse",
    "parrots",
    "plane",
    "rapids",
    "sailing1",
    "sailing2",
    "sailing3",
    "sailing4",
    "statue",
    "stream",
    "studentsculpture",
    "woman",
    "womanhat",
]
LIVE_FOLDERS = (
    ("jp2k", 227, 58),
    ("jpeg", 233, 58),
    ("wn", 174, 29),
    ("gblur", 174, 29),
    ("fastfading", 174, 29),
)
CSIQ_REFS = ["1600"] + [f"scene{i:02d}" for i in range(29)]
CSIQ_TYPES = (("noise", "awgn", "AWGN"), ("jpeg", "jpeg", "JPEG"), ("jpeg 2000", "jpeg2000", "jpeg2000"))
CSIQ_TYPES += (("fnoise", "fnoise", "fnoise"), ("blur", "blur", "BLUR"), ("contrast", "contrast", "contrast"))


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (8, 8)) -> None:
    """A small random RGB image at ``path`` (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image), path


def cell_array(names) -> np.ndarray:
    """A MATLAB 1xN cell array of strings for savemat."""
    arr = np.empty((1, len(names)), dtype=object)
    arr[0, :] = list(names)
    return arr


def build_live(root: Path) -> dict:
    """databaserelease2/: 982 entries, orgs flags on 203 reference copies, 29 references."""
    rng = np.random.default_rng(1)
    refnames, orgs, dmos = [], [], []
    for folder, count, copies in LIVE_FOLDERS:
        (root / folder).mkdir(parents=True)
        lines = []
        for k in range(count):
            ref = LIVE_REFS[k % 29]
            is_copy = k < copies  # each reference has copies // 29 copies in this folder
            refnames.append(f"{ref}.bmp")
            orgs.append(1 if is_copy else 0)
            dmos.append(0.0 if is_copy else float(rng.uniform(10, 90)))
            write_image(root / folder / f"img{k + 1}.bmp", seed=len(dmos))
            lines.append(f"{ref}.bmp img{k + 1}.bmp {rng.uniform(0.1, 3):.3f}")
        (root / folder / "info.txt").write_text("\n".join(lines) + "\n")
    for i, ref in enumerate(LIVE_REFS):
        write_image(root / "refimgs" / f"{ref}.bmp", seed=1000 + i)
    dmos = np.array(dmos)
    dmos_new = np.where(np.array(orgs) == 1, 0.0, dmos * 1.1 - 2.5)
    orgs_arr = np.array(orgs, dtype=float)[None, :]
    sio.savemat(root / "dmos.mat", {"dmos": dmos[None, :], "orgs": orgs_arr})
    sio.savemat(
        root / "dmos_realigned.mat",
        {"dmos_new": dmos_new[None, :], "orgs": orgs_arr, "dmos_std": np.ones((1, 982))},
    )
    sio.savemat(root / "refnames_all.mat", {"refnames_all": cell_array(refnames)})
    (root / "readme.txt").write_text("LIVE Image Quality Assessment Database Release 2\n")
    return {"dmos": dmos, "dmos_new": dmos_new, "orgs": np.array(orgs), "refnames": refnames}


def build_csiq(root: Path, with_txt: bool = False) -> dict:
    """CSIQ/: 866 images (5 types x 30 refs x 5 levels, contrast 116), csiq.DMOS.xlsx as distributed."""
    rng = np.random.default_rng(2)
    rows = []
    for t, (xlsx_type, folder, token) in enumerate(CSIQ_TYPES):
        for r, ref in enumerate(CSIQ_REFS):
            levels = 5 if folder != "contrast" else (4 if r < 26 else 3)
            for level in range(1, levels + 1):
                write_image(root / "dst_imgs" / folder / f"{ref}.{token}.{level}.png", seed=len(rows))
                rows.append((ref, t + 1, xlsx_type, level, 0.1, float(rng.uniform(0, 1))))
    for i, ref in enumerate(CSIQ_REFS):
        write_image(root / "src_imgs" / f"{ref}.png", seed=5000 + i)
    wb = Workbook()
    ws = wb.active
    ws.title = "all_by_image"
    ws["A1"] = "CSIQ DMOS"
    header = ["image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos"]
    for c, name in enumerate(header):
        ws.cell(row=4, column=4 + c, value=name)  # header at row 4, columns D..I
    for i, row in enumerate(rows):
        ref = int(row[0]) if row[0].isdigit() else row[0]  # Excel stores '1600' as a number
        for c, value in enumerate((ref, *row[1:])):
            ws.cell(row=5 + i, column=4 + c, value=value)
    wb.create_sheet("all_by_distortion")
    wb.save(root / "csiq.DMOS.xlsx")
    if with_txt:
        flat = root / "dst_imgs_all"
        lines = []
        for ref, t, _, level, _, dmos in rows:
            token = CSIQ_TYPES[t - 1][2]
            name = f"{ref}.{token}.{level}.png"
            write_image(flat / name, seed=len(lines))
            lines.append(f"{name} {dmos:.6f}")
        (root / "csiq_label.txt").write_text("\n".join(lines) + "\n")
    return {"rows": rows}


def build_tid2013(root: Path) -> dict:
    """tid2013/: 25 refs x 24 types x 5 levels; file-name case mixed as distributed."""
    rng = np.random.default_rng(3)
    lines, truth = [], {}
    for ref in range(1, 26):
        for t in range(1, 25):
            for level in range(1, 6):
                listed = f"i{ref:02d}_{t:02d}_{level}.bmp"
                # the distributed files mix 'I'/'i' and '.BMP'/'.bmp'
                on_disk = listed.upper() if (ref + t) % 7 == 0 else listed
                write_image(root / "distorted_images" / on_disk, seed=len(lines))
                mos = float(rng.uniform(0.3, 7.1))
                lines.append(f"{mos:.5f} {listed}")
                truth[on_disk] = (round(mos, 5), ref, t, level)
    for ref in range(1, 26):
        write_image(root / "reference_images" / (f"I{ref:02d}.BMP" if ref < 25 else "i25.bmp"), seed=ref)
    (root / "mos_with_names.txt").write_text("\n".join(lines) + "\n")
    return {"truth": truth}


def build_kadid(root: Path, refs: int = 10) -> dict:
    """kadid10k/: images/ (refs and distorted together) + dmos.csv; ``refs`` of the 81 references."""
    rng = np.random.default_rng(4)
    rows = []
    for r in range(1, refs + 1):
        write_image(root / "images" / f"I{r:02d}.png", seed=r)
        for t in range(1, 26):
            for level in range(1, 6):
                name = f"I{r:02d}_{t:02d}_{level:02d}.png"
                write_image(root / "images" / name, seed=len(rows))
                rows.append((name, f"I{r:02d}.png", round(float(rng.uniform(1, 4.9)), 2), 0.5))
    with open(root / "dmos.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dist_img", "ref_img", "dmos", "var"])
        writer.writerows(rows)
    return {"rows": rows}


def livec_names() -> list[str]:
    """1169 names: the 7 training images first, then 1162 test images (.bmp and .JPG)."""
    tests = [f"{i}.bmp" if i < 130 else f"{i}.JPG" for i in range(100, 1262)]
    return [f"t{i}.bmp" for i in range(1, 8)] + tests


def build_livec(root: Path, write_images: bool = True) -> dict:
    """ChallengeDB_release/: Images/, Images/trainingImages/, Data/*.mat (1169 entries)."""
    names = livec_names()
    mos = np.random.default_rng(5).uniform(3.4, 92.4, len(names))
    (root / "Data").mkdir(parents=True)
    sio.savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": cell_array(names).T})  # 1169x1
    sio.savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos[None, :]})
    sio.savemat(root / "Data" / "AllStdDev_release.mat", {"AllStdDev_release": np.ones((1, len(names)))})
    if write_images:
        for i, name in enumerate(names):
            folder = root / "Images" / "trainingImages" if name.startswith("t") else root / "Images"
            write_image(folder / name, seed=i)
    (root / "README.txt").write_text("LIVE In the Wild Image Quality Challenge Database\n")
    return {"names": names, "mos": mos}


def build_koniq(root: Path, n: int = 40) -> dict:
    """koniq10k/: 1024x768/ + scores CSV + official sets CSV (set column)."""
    rng = np.random.default_rng(6)
    names = [f"{10004473376 + 7919 * i}.jpg" for i in range(n)]
    mos = rng.uniform(1.1, 4.3, n)
    z = (mos - 1) / 4 * 100
    sets = ["training"] * (n * 7 // 10) + ["validation"] * (n // 10)
    sets += ["test"] * (n - len(sets))
    for i, name in enumerate(names):
        write_image(root / "1024x768" / name, seed=i)
    with open(root / "koniq10k_scores_and_distributions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"])
        for name, m, zz in zip(names, mos, z):
            w.writerow([name, 0.1, 0.2, 0.4, 0.2, 0.1, 100, f"{m:.6f}", 0.5, f"{zz:.6f}"])
    with open(root / "koniq10k_distributions_sets.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "set"])
        for name, zz, s in zip(names, z, sets):
            w.writerow([name, 0.1, 0.2, 0.4, 0.2, 0.1, 100, f"{zz:.6f}", 0.5, s])
    return {"names": names, "mos": mos, "z": z, "sets": dict(zip(names, sets))}


def build_spaq(root: Path, n: int = 30) -> dict:
    """SPAQ/: TestImage/00001.jpg.. + Annotations/MOS and Image attribute scores.xlsx."""
    rng = np.random.default_rng(7)
    wb = Workbook()
    ws = wb.active
    ws.append(["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"])
    mos = {}
    for i in range(1, n + 1):
        write_image(root / "TestImage" / f"{i:05d}.jpg", seed=i, size=(16, 12))
        m = round(float(rng.uniform(2, 96)), 2)
        listed = f"{i:05d}.png" if i % 3 == 0 else f"{i:05d}.jpg"  # copies of the sheet differ in extension
        ws.append([listed, m, 50, 50, 50, 50, 50])
        mos[f"{i:05d}.jpg"] = m
    (root / "Annotations").mkdir(parents=True)
    wb.save(root / "Annotations" / "MOS and Image attribute scores.xlsx")
    return {"mos": mos}


def build_pipal(root: Path, refs: int = 4) -> dict:
    """PIPAL/: Train_Ref/, Distortion_1..2/, Train_Label/A0001.txt.. (116 images per reference)."""
    rng = np.random.default_rng(8)
    truth = {}
    for r in range(1, refs + 1):
        ref = f"A{r:04d}"
        write_image(root / "Train_Ref" / f"{ref}.bmp", seed=r)
        lines = []
        for k in range(116):
            name = f"{ref}_{k // 10:02d}_{k % 10:02d}.bmp"
            write_image(root / f"Distortion_{1 + k % 2}" / name, seed=k)
            elo = round(float(rng.uniform(920, 1830)), 4)
            lines.append(f"{name},{elo}")
            truth[name] = elo
        (root / "Train_Label").mkdir(parents=True, exist_ok=True)
        (root / "Train_Label" / f"{ref}.txt").write_text("\n".join(lines) + "\n")
    return {"truth": truth}


def build_pyiqa_nr(root: Path, n: int = 20) -> dict:
    """A pyiqa NR folder: images + meta_info CSV with a split column (KonIQ style)."""
    rng = np.random.default_rng(9)
    parts = ["training"] * 14 + ["validation"] * 2 + ["test"] * (n - 16)
    rows = []
    for i in range(n):
        name = f"img{i:03d}.jpg"
        write_image(root / "images" / name, seed=i)
        rows.append((name, round(float(rng.uniform(5, 95)), 4), 0.5, parts[i]))
    with open(root / "meta_info_X.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["img_name", "mos", "std", "split"])
        w.writerows(rows)
    return {"rows": rows}


def build_pyiqa_fr(root: Path) -> dict:
    """A pyiqa FR folder in pyiqa's LIVE style (dist names without extension) + a split pickle."""
    rng = np.random.default_rng(10)
    rows = []
    for r in range(6):
        for k in range(4):
            dist = f"jp2k/img{r * 4 + k + 1}"
            write_image(root / f"{dist}.bmp", seed=len(rows))
            rows.append((f"ref{r}.bmp", dist, round(float(rng.uniform(10, 90)), 3)))
    with open(root / "meta_info_FR.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ref_name", "dist_name", "mos"])
        w.writerows(rows)
    # rows of refs 0..3 train, ref 4 val, ref 5 test
    split = {1: {"train": list(range(16)), "val": list(range(16, 20)), "test": list(range(20, 24))}}
    with open(root / "split.pkl", "wb") as f:
        pickle.dump(split, f)
    return {"rows": rows, "split": split}
