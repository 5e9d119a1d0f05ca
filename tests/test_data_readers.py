"""Readers against fixture trees in each database's distributed layout, and the real LIVE Challenge labels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio

from data_layouts import (
    CSIQ_REFS,
    build_csiq,
    build_kadid,
    build_koniq,
    build_live,
    build_livec,
    build_pipal,
    build_pyiqa_fr,
    build_pyiqa_nr,
    build_spaq,
    build_tid2013,
    livec_names,
)
from mfe_iqa.data.checks import DatabaseNotFoundError, LabelFileError, find_bad_items
from mfe_iqa.data.readers import (
    read_csiq,
    read_csv_database,
    read_kadid10k,
    read_koniq10k,
    read_live,
    read_livec,
    read_pipal,
    read_pyiqa_meta,
    read_spaq,
    read_tid2013,
)

LIVEC_SAMPLE = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "livec-sample" / "ChallengeDB_release"
)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("live") / "databaserelease2"
    return root, build_live(root)


def test_live_779_items_29_refs_dmos_flipped(live):
    root, truth = live
    db = read_live(root)
    assert len(db.items) == 779
    assert len({i.content_id for i in db.items}) == 29
    per_type = Counter(db.info.dist_type_names[i.dist_type] for i in db.items)
    assert per_type == {"jp2k": 169, "jpeg": 175, "wn": 145, "gblur": 145, "fastfading": 145}
    assert db.info.lower_better and db.info.kind == "synthetic"
    # entry 59 of the 982 (0-based 58) is jp2k/img59: the first non-copy entry of jp2k in the fixture
    item = next(i for i in db.items if i.path.endswith("jp2k/img59.bmp"))
    assert truth["orgs"][58] == 0
    assert item.mos_raw == pytest.approx(truth["dmos_new"][58])
    assert item.content_id == Path(truth["refnames"][58]).stem
    assert item.mos == pytest.approx(1 - (truth["dmos_new"][58] + 3) / 115)  # DMOS flipped: low DMOS = good
    offsets = {"jp2k": 0, "jpeg": 227, "wn": 460, "gblur": 634, "fastfading": 808}
    entries = [offsets[Path(i.path).parent.name] + int(Path(i.path).stem[3:]) - 1 for i in db.items]
    assert sorted(entries) == [k for k in range(982) if truth["orgs"][k] == 0]  # exactly the non-copies
    kept = {Path(i.path).parent.name + "/" + Path(i.path).name for i in db.items}
    assert "jp2k/img1.bmp" not in kept and "wn/img29.bmp" not in kept and "wn/img30.bmp" in kept
    assert find_bad_items(db.items, db.info) == []


def test_live_dmos_mat_option(live):
    root, truth = live
    db = read_live(root, label_file="dmos.mat")
    item = next(i for i in db.items if i.path.endswith("jpeg/img100.bmp"))
    assert item.mos_raw == pytest.approx(truth["dmos"][227 + 99])
    with pytest.raises(ValueError, match="label_file"):
        read_live(root, label_file="scores.mat")


def test_live_missing_label_file_names_path_and_key(tmp_path):
    (tmp_path / "databaserelease2").mkdir()
    with pytest.raises(DatabaseNotFoundError) as err:
        read_live(tmp_path / "databaserelease2")
    msg = str(err.value)
    assert "dmos_realigned.mat" in msg and "data.root" in msg and "live.ece.utexas.edu" in msg


def test_csiq_xlsx_and_flat_txt(tmp_path):
    root = tmp_path / "CSIQ"
    truth = build_csiq(root, with_txt=True)
    db = read_csiq(root)
    assert len(db.items) == 866 and not db.problems
    assert len({i.content_id for i in db.items}) == 30
    counts = Counter(db.info.dist_type_names[i.dist_type] for i in db.items)
    assert counts == {"awgn": 150, "jpeg": 150, "jpeg2000": 150, "fnoise": 150, "blur": 150, "contrast": 116}
    first = db.items[0]  # row 1 of the sheet: 1600 (stored as a number), noise, level 1
    assert first.path.endswith("dst_imgs/awgn/1600.AWGN.1.png") and first.content_id == "1600"
    assert first.mos_raw == pytest.approx(truth["rows"][0][5])
    assert first.mos == pytest.approx(1 - truth["rows"][0][5])
    assert find_bad_items(db.items, db.info) == []
    flat = read_csiq(root, label_file="csiq_label.txt")
    assert len(flat.items) == 866 and flat.items[0].path.endswith("dst_imgs_all/1600.AWGN.1.png")
    assert [i.mos_raw for i in flat.items] == pytest.approx([i.mos_raw for i in db.items], abs=1e-6)
    assert {i.content_id for i in flat.items} == set(CSIQ_REFS)


def test_csiq_xlsx_without_header_row_is_a_label_file_error(tmp_path):
    from openpyxl import Workbook

    root = tmp_path / "CSIQ"
    root.mkdir()
    wb = Workbook()
    wb.active.title = "all_by_image"
    wb.active.append(["picture", "type", "score"])
    wb.save(root / "csiq.DMOS.xlsx")
    with pytest.raises(LabelFileError, match="image.*dmos"):
        read_csiq(root)


def test_tid2013_case_insensitive_files(tmp_path):
    root = tmp_path / "tid2013"
    truth = build_tid2013(root)["truth"]
    db = read_tid2013(root)
    assert len(db.items) == 3000 and len({i.content_id for i in db.items}) == 25
    assert find_bad_items(db.items, db.info) == []  # upper-case files were found
    by_name = {Path(i.path).name: i for i in db.items}
    upper = next(n for n in truth if n != n.lower())
    mos, ref, t, level = truth[upper]
    item = by_name[upper]
    assert (item.mos_raw, item.content_id, item.dist_type, item.dist_level) == (
        mos,
        f"i{ref:02d}",
        t - 1,
        level,
    )
    assert item.mos == pytest.approx(mos / 9)
    assert db.info.num_dist_types == 24


def test_kadid_labels_and_types(tmp_path):
    from mfe_iqa.data.distortions import DISTORTION_NAMES

    root = tmp_path / "kadid10k"
    rows = build_kadid(root, refs=4)["rows"]
    db = read_kadid10k(root)
    assert len(db.items) == 4 * 125 and len({i.content_id for i in db.items}) == 4
    item = db.items[126]  # I02_01_02.png
    assert Path(item.path).name == rows[126][0] == "I02_01_02.png"
    assert (item.content_id, item.dist_type, item.dist_level) == ("I02", 0, 2)
    assert item.mos == pytest.approx((rows[126][2] - 1) / 4)  # quality-oriented despite "dmos"
    assert db.info.dist_type_names == DISTORTION_NAMES  # the bank and the reader agree on KADID order


def test_kadid_wrong_columns(tmp_path):
    root = tmp_path / "kadid10k"
    root.mkdir()
    (root / "dmos.csv").write_text("image,score\nI01_01_01.png,3.2\n")
    with pytest.raises(LabelFileError) as err:
        read_kadid10k(root)
    assert "dist_img" in str(err.value) and "dmos.csv" in str(err.value)


def test_livec_fixture_drops_7_training_images(tmp_path):
    root = tmp_path / "ChallengeDB_release"
    truth = build_livec(root)
    db = read_livec(root)
    assert len(db.items) == 1162
    assert Path(db.items[0].path).name == truth["names"][7] == "100.bmp"
    assert not any(Path(i.path).name.startswith("t") for i in db.items)
    assert db.items[-1].mos_raw == pytest.approx(truth["mos"][-1])
    assert db.items[5].mos == pytest.approx(truth["mos"][12] / 100)
    assert find_bad_items(db.items, db.info) == []


def test_livec_real_label_files():
    if not (LIVEC_SAMPLE / "Data" / "AllMOS_release.mat").is_file():
        pytest.skip(f"real LIVE Challenge sample absent at {LIVEC_SAMPLE}")
    db = read_livec(LIVEC_SAMPLE)
    assert len(db.items) == 1162
    names = [
        str(x[0][0])
        for x in sio.loadmat(LIVEC_SAMPLE / "Data" / "AllImages_release.mat")["AllImages_release"]
    ]
    mos = sio.loadmat(LIVEC_SAMPLE / "Data" / "AllMOS_release.mat")["AllMOS_release"].reshape(-1)
    by_name = {Path(i.path).name: i for i in db.items}
    for k in (7, 300, 1168):
        assert by_name[names[k]].mos_raw == pytest.approx(mos[k])
    # pyiqa's published meta-info lists 100.bmp with MOS 32.56107532210109
    assert by_name["100.bmp"].mos_raw == pytest.approx(32.56107532210109)
    assert by_name["100.bmp"].mos == pytest.approx(0.3256107532210109)
    assert not any(n in by_name for n in names[:7])


def test_koniq_columns_and_official_split(tmp_path):
    root = tmp_path / "koniq10k"
    truth = build_koniq(root)
    db = read_koniq10k(root)
    assert len(db.items) == 40 and db.info.kind == "authentic"
    assert db.items[3].mos == pytest.approx((truth["mos"][3] - 1) / 4, abs=1e-6)
    z = read_koniq10k(root, mos_column="MOS_zscore")
    assert z.items[3].mos == pytest.approx(truth["z"][3] / 100, abs=1e-6)
    assert db.official_split == {
        str(root / "1024x768" / n): {"training": "train", "validation": "val"}.get(s, s)
        for n, s in truth["sets"].items()
    }
    with pytest.raises(ValueError, match="mos_column"):
        read_koniq10k(root, mos_column="mos")


def test_spaq_xlsx_names_match_by_stem(tmp_path):
    root = tmp_path / "SPAQ"
    truth = build_spaq(root)["mos"]
    db = read_spaq(root)
    assert len(db.items) == 30 and find_bad_items(db.items, db.info) == []
    assert {Path(i.path).name: i.mos_raw for i in db.items} == truth


def test_pipal_elo_labels(tmp_path):
    root = tmp_path / "PIPAL"
    truth = build_pipal(root)["truth"]
    db = read_pipal(root)
    assert len(db.items) == 4 * 116 and len({i.content_id for i in db.items}) == 4
    assert find_bad_items(db.items, db.info) == []
    assert {Path(i.path).name: i.mos_raw for i in db.items} == truth
    assert all(0 < i.mos < 1 for i in db.items)


def test_generic_csv_reader(tmp_path):
    from data_layouts import write_image

    lines = ["file,score,scene,kind,lvl"]
    for i in range(6):
        write_image(tmp_path / "imgs" / f"{i}.png", seed=i)
        lines.append(f"{i}.png,{10 * i + 5},s{i // 2},{'blur' if i % 2 else 'noise'},{1 + i % 3}")
    (tmp_path / "my.csv").write_text("\n".join(lines) + "\n")
    db = read_csv_database(
        tmp_path,
        label_file="my.csv",
        image_dir="imgs",
        image_column="file",
        mos_column="score",
        content_column="scene",
        dist_type_column="kind",
        dist_level_column="lvl",
        mos_min=0,
        mos_max=100,
        lower_better=True,
        dist_type_names=["noise", "blur"],
    )
    assert db.info.kind == "synthetic" and db.info.dist_type_names == ("noise", "blur")
    assert [i.dist_type for i in db.items] == [0, 1, 0, 1, 0, 1]
    assert [i.content_id for i in db.items] == ["s0", "s0", "s1", "s1", "s2", "s2"]
    assert db.items[2].mos == pytest.approx(1 - 0.25)
    auto = read_csv_database(
        tmp_path, label_file="my.csv", image_dir="imgs", image_column="file", mos_column="score"
    )
    assert auto.info.kind == "authentic" and (auto.info.mos_min, auto.info.mos_max) == (5.0, 55.0)
    with pytest.raises(LabelFileError, match="lacks column"):
        read_csv_database(tmp_path, label_file="my.csv", image_column="path")


def test_pyiqa_meta_nr_with_split_column_and_fr_with_pickle(tmp_path):
    nr = tmp_path / "nr"
    rows = build_pyiqa_nr(nr)["rows"]
    db = read_pyiqa_meta(nr / "images", "../meta_info_X.csv", mos_min=0, mos_max=100)
    assert len(db.items) == 20 and db.items[4].mos_raw == rows[4][1]
    assert Counter(db.official_split.values()) == {"train": 14, "val": 2, "test": 4}
    fr = tmp_path / "fr"
    truth = build_pyiqa_fr(fr)
    db = read_pyiqa_meta(fr, "meta_info_FR.csv", split_file="split.pkl", split_index=1, lower_better=True)
    assert len(db.items) == 24 and db.items[0].path.endswith("jp2k/img1.bmp")  # extension found on disk
    assert find_bad_items(db.items, db.info) == []
    assert db.items[0].content_id == "ref0" and db.info.lower_better
    assert [db.official_split[db.items[i].path] for i in truth["split"][1]["val"]] == ["val"] * 4


def test_missing_roots_name_the_config_key(tmp_path):
    for reader in (read_csiq, read_tid2013, read_kadid10k, read_livec, read_koniq10k, read_spaq, read_pipal):
        with pytest.raises(DatabaseNotFoundError) as err:
            reader(tmp_path / "nowhere")
        assert str(tmp_path / "nowhere") in str(err.value) and "data.root" in str(err.value)


def test_livec_names_fixture_matches_the_documented_structure():
    names = livec_names()
    assert len(names) == 1169 and names[:7] == [f"t{i}.bmp" for i in range(1, 8)]
    assert np.unique(names).size == 1169
