"""Strict input checks (every kind of bad item), image-mode conversion and the small-image rule."""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image

from data_layouts import write_image
from mfe_iqa.data.checks import BadItemsError, apply_bad_item_policy, find_bad_items
from mfe_iqa.data.images import check_image, load_rgb
from mfe_iqa.data.items import DatabaseInfo, IQAItem
from mfe_iqa.data.readers import read_csv_database
from mfe_iqa.data.transforms import EvalTransform, TrainTransform, upscale_to_min_side

INFO = DatabaseInfo("toy", "authentic", 0.0, 100.0)


def _item(path, raw=50.0):
    return IQAItem(str(path), INFO.normalize(raw) if math.isfinite(raw) else math.nan, raw, str(path))


@pytest.fixture
def bad_tree(tmp_path):
    """One good image and one of every kind of bad entry."""
    good = tmp_path / "good.jpg"
    write_image(good, size=(32, 32))
    zero = tmp_path / "zero.png"
    zero.write_bytes(b"")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all" * 10)
    trunc_jpg = tmp_path / "trunc.jpg"
    trunc_jpg.write_bytes(good.read_bytes()[:-200])
    png = tmp_path / "full.png"
    write_image(png, size=(32, 32))
    trunc_png = tmp_path / "trunc.png"
    trunc_png.write_bytes(png.read_bytes()[:-30])
    bmp = tmp_path / "full.bmp"
    write_image(bmp, size=(32, 32))
    trunc_bmp = tmp_path / "trunc.bmp"
    trunc_bmp.write_bytes(bmp.read_bytes()[:-500])
    items = [
        _item(good),
        _item(tmp_path / "missing.jpg"),
        _item(zero),
        _item(garbage),
        _item(trunc_jpg),
        _item(trunc_png),
        _item(trunc_bmp),
        _item(png, raw=math.nan),
        _item(bmp, raw=140.0),
        _item(good, raw=60.0),  # duplicate of the first entry
    ]
    expected = {
        "missing.jpg": "file not found",
        "zero.png": "zero-byte file",
        "garbage.jpg": "unreadable image header",
        "trunc.jpg": "truncated JPEG",
        "trunc.png": "truncated PNG",
        "trunc.bmp": "truncated BMP",
        "full.png": "MOS is not a finite number",
        "full.bmp": "outside the toy range",
        "good.jpg": "duplicate entry",
    }
    return items, expected


def test_every_bad_item_is_found_and_listed_in_one_error(bad_tree):
    items, expected = bad_tree
    bad = find_bad_items(items, INFO)
    found = {b.path.rsplit("/", 1)[-1]: b.reason for b in bad}
    assert set(found) == set(expected)
    for name, reason in expected.items():
        assert reason in found[name], (name, found[name])
    with pytest.raises(BadItemsError) as err:
        apply_bad_item_policy("toy", items, bad, "error")
    msg = str(err.value)
    assert "9 bad item(s) out of 10" in msg and "data.on_bad_item=skip" in msg and "present_only" in msg
    for b in bad:
        assert f"{b.path}: {b.reason}" in msg
    assert len(err.value.bad_items) == 9


def test_skip_warns_with_count_and_keeps_the_good(bad_tree):
    items, _ = bad_tree
    bad = find_bad_items(items, INFO)
    with pytest.warns(UserWarning, match=r"Skipped 9 entries .* 1 items remain"):
        kept = apply_bad_item_policy("toy", items, bad, "skip")
    assert [k.path for k in kept] == [items[0].path]  # first occurrence of the duplicate kept


def test_decode_check_is_also_available(bad_tree):
    items, _ = bad_tree
    assert check_image(items[0].path, deep=True) is None
    assert check_image(items[3].path, deep=True) is not None


def test_unparseable_label_rows_are_bad_items(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    (tmp_path / "labels.csv").write_text("image,mos,kind\na.png,10,blur\nb.png,abc,blur\nc.png,30,warp\n")
    db = read_csv_database(
        tmp_path, dist_type_column="kind", mos_min=0, mos_max=100, dist_type_names=["blur"]
    )
    bad = db.problems + find_bad_items(db.items, db.info)
    reasons = sorted(b.reason.split(" (")[0] for b in bad)
    assert reasons == ["MOS is not a finite number", "unknown distortion type 'warp'"]
    with pytest.raises(BadItemsError, match="line 4"):
        apply_bad_item_policy("custom", db.items, bad, "error")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = apply_bad_item_policy("custom", db.items, bad, "skip")
    assert [k.path.rsplit("/", 1)[-1] for k in kept] == ["a.png"]
    assert "Skipped 2 entries" in str(caught[0].message)


def test_on_bad_item_choice_is_checked():
    with pytest.raises(ValueError, match="on_bad_item"):
        apply_bad_item_policy("toy", [], [], "ignore")


# --- image modes -----------------------------------------------------------------------------------------
RGB = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)


def test_gray_rgba_palette_la_bw_become_rgb(tmp_path):
    cases = {
        "gray.png": (Image.fromarray(RGB[..., 0]), np.repeat(RGB[..., :1], 3, axis=2)),
        "rgba.png": (Image.fromarray(np.dstack([RGB, RGB[..., 0]]), "RGBA"), RGB),  # alpha dropped
        "la.png": (Image.fromarray(RGB[..., 1]).convert("LA"), np.repeat(RGB[..., 1:2], 3, axis=2)),
    }
    pal = Image.fromarray(RGB).convert("P")
    cases["palette.png"] = (pal, np.asarray(pal.convert("RGB")))
    cases["palette.gif"] = (pal, np.asarray(pal.convert("RGB")))
    bw = Image.fromarray(RGB[..., 0] > 127)
    cases["bw.png"] = (bw, np.repeat(np.asarray(bw, dtype=np.uint8)[..., None] * 255, 3, axis=2))
    for name, (im, truth) in cases.items():
        im.save(tmp_path / name)
        out = load_rgb(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == (12, 20, 3), name
        np.testing.assert_array_equal(out, truth, err_msg=name)


def test_16_bit_keeps_the_high_byte(tmp_path):
    gray16 = np.random.default_rng(1).integers(0, 65536, (10, 14), dtype=np.uint16)
    rgb16 = np.random.default_rng(2).integers(0, 65536, (10, 14, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])  # cv2 writes BGR
    np.testing.assert_array_equal(load_rgb(tmp_path / "g16.png"), np.repeat((gray16 >> 8)[..., None], 3, 2))
    np.testing.assert_array_equal(load_rgb(tmp_path / "c16.png"), (rgb16 >> 8).astype(np.uint8))


def test_cmyk_jpeg_matches_pil_conversion(tmp_path):
    Image.fromarray(RGB).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    truth = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB")).astype(int)
    out = load_rgb(tmp_path / "cmyk.jpg").astype(int)
    assert out.shape == (12, 20, 3) and np.abs(out - truth).max() <= 2
    assert np.abs(out - RGB.astype(int)).mean() < 8  # still the original colours, not inverted


def test_short_side_resize_keeps_aspect(tmp_path):
    write_image(tmp_path / "big.jpg", size=(120, 200))
    assert load_rgb(tmp_path / "big.jpg", short_side=30).shape == (30, 50, 3)  # via the 1/4 DCT decode
    assert load_rgb(tmp_path / "big.jpg", short_side=160).shape == (160, 267, 3)
    solid = np.zeros((160, 240, 3), np.uint8)
    solid[:] = (200, 30, 10)  # RGB
    Image.fromarray(solid).save(tmp_path / "solid.jpg", quality=95)
    reduced = load_rgb(tmp_path / "solid.jpg", short_side=40)  # decoded at 1/4 scale: channel order kept
    assert reduced.shape == (40, 60, 3) and np.abs(reduced.astype(int) - (200, 30, 10)).max() <= 4


# --- images smaller than the crop ---------------------------------------------------------------------------
def test_small_images_are_upscaled_on_the_short_side():
    small = RGB  # 12 x 20
    up = upscale_to_min_side(small, 48)
    assert up.shape == (48, 80, 3)  # short side -> 48, aspect 20/12 kept
    assert upscale_to_min_side(up, 48) is up  # large enough: untouched
    assert TrainTransform(48)(small).shape == (3, 48, 48)
    views = EvalTransform("crops", 48, 4)(small, "x/small.png")
    assert views.shape == (4, 3, 48, 48) and views.dtype.is_floating_point
    assert float(views.min()) >= 0 and float(views.max()) <= 1
