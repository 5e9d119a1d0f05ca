"""mfe-iqa-predict and the Python API: rows for every file, scores checked against hand computation."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inference_helpers import ChannelMeanNet, target_of, write_image, write_iqa_checkpoint
from mfe_iqa.data.transforms import EvalTransform
from mfe_iqa.inference.api import load_model
from mfe_iqa.inference.images import float_tensor_views
from mfe_iqa.inference.sources import resolve_inputs

DATABASE = {"name": "livec", "mos_min": 3.42, "mos_max": 92.43, "lower_better": False}


def gradient_image(h: int, w: int, seed: int) -> np.ndarray:
    """A non-uniform image, so that which crops are taken changes the score."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def hand_crop_score(image: np.ndarray, key: str, crops: int = 4, size: int = 32) -> float:
    """Mean over the evaluation pipeline's crops (positions seeded by the key) of their mean intensity in [0, 1]."""
    corners = EvalTransform("crops", size, crops, crop_seed=0).crop_boxes(*image.shape[:2], key)
    assert len(set(corners)) > 1  # the crops differ, so averaging them is actually tested
    return float(np.mean([image[y : y + size, x : x + size].mean() / 255.0 for y, x in corners]))


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return write_iqa_checkpoint(
        tmp_path / "model.ckpt", ChannelMeanNet(), {"_target_": target_of(ChannelMeanNet)}, DATABASE
    )


@pytest.fixture
def image_folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Good PNG/BMP images (one in a subfolder), a corrupt JPEG and a text file."""
    folder = tmp_path / "images"
    good = {
        "a.png": gradient_image(40, 48, 0),
        "b.bmp": gradient_image(36, 36, 1),
        "sub/c.png": gradient_image(50, 40, 2),
    }
    for rel, arr in good.items():
        write_image(folder / rel, arr)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (folder / "notes.txt").write_text("not an image\n")
    return folder, good


def test_float_tensor_views_follow_the_eval_transform():
    img = gradient_image(40, 60, 3)
    transform = EvalTransform("crops", 32, 4, crop_seed=0)
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
    torch.testing.assert_close(float_tensor_views(x, transform, "k"), transform(img, "k"))
    assert float_tensor_views(x, EvalTransform("full", 32, 1), "k").shape == (1, 3, 40, 60)
    assert float_tensor_views(x, EvalTransform("resize", 24, 1), "k").shape == (1, 3, 24, 24)
    small = float_tensor_views(x[:, :20, :30], transform, "k")  # shorter side upscaled to the crop size
    assert small.shape == (4, 3, 32, 32) and float(small.min()) >= 0 and float(small.max()) <= 1


def test_resolve_inputs_folder_list_glob(image_folder, tmp_path):
    folder, _ = image_folder
    found = resolve_inputs(folder)
    names = [str(Path(p).relative_to(folder)) for p in found]
    assert names == ["a.png", "b.bmp", "corrupt.jpg", "notes.txt", "sub/c.png"]
    listing = tmp_path / "list.txt"
    listing.write_text("# my images\nimages/sub/c.png\n\nimages/a.png\nimages/missing.png\n")
    assert resolve_inputs(listing) == [
        str(tmp_path / "images/sub/c.png"),
        str(tmp_path / "images/a.png"),
        str(tmp_path / "images/missing.png"),
    ]
    assert resolve_inputs(str(folder / "**" / "*.png")) == [str(folder / "a.png"), str(folder / "sub/c.png")]
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        resolve_inputs(tmp_path / "nope")


def test_api_scores_paths_and_tensors(ckpt, image_folder):
    folder, good = image_folder
    model = load_model(ckpt, device="cpu", mode="crops", crops=4, crop_size=32)
    scores = model.score([folder / "a.png", folder / "sub/c.png"])
    expected = [
        hand_crop_score(good["a.png"], "images/a.png"),
        hand_crop_score(good["sub/c.png"], "sub/c.png"),
    ]
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    # In memory, crops are seeded by the empty key: a float tensor and a uint8 array agree with the hand score.
    in_memory = hand_crop_score(good["a.png"], "")
    as_tensor = torch.from_numpy(good["a.png"]).permute(2, 0, 1).float() / 255.0
    np.testing.assert_allclose(model.score(as_tensor), [in_memory], atol=1e-6)
    np.testing.assert_allclose(model.score([good["a.png"], as_tensor]), [in_memory] * 2, atol=1e-6)
    np.testing.assert_allclose(model.score(as_tensor[None].expand(3, -1, -1, -1)), [in_memory] * 3, atol=1e-6)
    # MOS scale: LIVE Challenge range, higher = better.
    np.testing.assert_allclose(
        model.score_mos(folder / "a.png"), [3.42 + expected[0] * (92.43 - 3.42)], atol=1e-4
    )
    with pytest.raises(ValueError, match="corrupt.jpg"):
        model.score([folder / "corrupt.jpg"])
    mixed = model.score([folder / "notes.txt", folder / "a.png"], on_error="nan")
    assert np.isnan(mixed[0]) and mixed[1] == pytest.approx(expected[0], abs=1e-6)


def test_api_mos_scale_of_a_dmos_database(tmp_path):
    db = {"name": "csiq", "mos_min": 0.0, "mos_max": 1.0, "lower_better": True}
    path = write_iqa_checkpoint(
        tmp_path / "m.ckpt", ChannelMeanNet(), {"_target_": target_of(ChannelMeanNet)}, db
    )
    model = load_model(path, device="cpu")
    np.testing.assert_allclose(model.to_mos(np.array([0.0, 0.25, 1.0])), [1.0, 0.75, 0.0])


def test_load_model_rejects_a_foreign_file(tmp_path):
    bad = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(ValueError, match="not an mfe-iqa IQA training checkpoint"):
        load_model(bad)


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def run_console_main(main, argv: list[str], monkeypatch) -> int:
    """Run a Hydra console entry in-process (as the installed script would) and return its exit code."""
    monkeypatch.setattr(sys, "argv", ["mfe-iqa-predict", *argv])
    try:
        main()
    except SystemExit as exc:
        return 0 if exc.code is None else int(exc.code) if isinstance(exc.code, int) else 1
    return 0


def test_predict_cli_folder_reports_bad_files_and_exits_0(ckpt, image_folder, tmp_path, monkeypatch):
    from mfe_iqa.cli.predict import main

    folder, good = image_folder
    out = tmp_path / "pred.csv"
    argv = [
        f"ckpt_path={ckpt}",
        f"input={folder}",
        f"output={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "device=cpu",
        "batch_size=2",
        "num_workers=1",
        "mode=crops",
        "crops=4",
        "crop_size=32",
        "progress=false",
    ]
    assert run_console_main(main, argv, monkeypatch) == 0
    rows = {str(Path(r["path"]).relative_to(folder)): r for r in _read_csv(out)}
    assert set(rows) == {"a.png", "b.bmp", "sub/c.png", "corrupt.jpg", "notes.txt"}
    for rel, arr in good.items():
        expected = hand_crop_score(arr, f"{Path(folder / rel).parent.name}/{Path(rel).name}")
        assert rows[rel]["status"] == "ok" and rows[rel]["error"] == ""
        assert float(rows[rel]["score"]) == pytest.approx(expected, abs=1e-5)
        assert float(rows[rel]["score_mos"]) == pytest.approx(3.42 + expected * (92.43 - 3.42), abs=1e-3)
    for rel in ("corrupt.jpg", "notes.txt"):
        assert rows[rel]["status"] == "error" and rows[rel]["score"] == ""
        assert rel in rows[rel]["error"] and "cannot decode" in rows[rel]["error"]
    assert (tmp_path / "run" / "predict_summary.json").is_file()
    # A user error (no such input) exits with status 2 and a message, not a traceback.
    assert run_console_main(main, [*argv[:1], f"input={tmp_path / 'nowhere'}", *argv[2:]], monkeypatch) == 2


def test_predict_from_list_file_in_process(ckpt, image_folder, tmp_path, compose_cfg):
    from mfe_iqa.cli.predict import predict

    folder, good = image_folder
    listing = tmp_path / "list.txt"
    listing.write_text(f"{folder / 'b.bmp'}\n{folder / 'missing.png'}\n{folder / 'a.png'}\n")
    out = tmp_path / "list.csv"
    cfg = compose_cfg(
        "predict",
        [
            f"ckpt_path={ckpt}",
            f"input={listing}",
            f"output={out}",
            "device=cpu",
            "num_workers=0",
            "mode=full",
        ],
    )
    summary = predict(cfg)
    assert (summary["num_files"], summary["num_scored"], summary["num_failed"]) == (3, 2, 1)
    rows = _read_csv(out)
    assert [Path(r["path"]).name for r in rows] == ["b.bmp", "missing.png", "a.png"]  # the list's order
    assert float(rows[0]["score"]) == pytest.approx(good["b.bmp"].mean() / 255.0, abs=1e-5)
    assert rows[1]["status"] == "error" and "missing.png" in rows[1]["error"]
