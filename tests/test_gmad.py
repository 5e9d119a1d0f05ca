"""gMAD: the pair selection against a hand computation, and the CLI end to end with two known "models"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference_helpers import ChannelMeanNet, target_of, write_image, write_iqa_checkpoint
from mfe_iqa.inference.gmad import select_gmad_pairs

# Defender A's scores; sorted: .10 .19 .20 .21 .50 .55 .60 .79 .80 .81 .95 (11 finite values).
A = [0.10, 0.20, 0.21, 0.19, 0.50, 0.55, 0.60, 0.80, 0.81, 0.79, 0.95, 0.20]
# Model B's scores; sorted: .1 .2 .3 .31 .32 .33 .4 .5 .6 .7 .9. Image 11 is unreadable for B (NaN).
B = [0.50, 0.90, 0.10, 0.40, 0.30, 0.32, 0.31, 0.20, 0.60, 0.70, 0.33, np.nan]


def test_pair_selection_matches_hand_computation():
    entries = select_gmad_pairs(A, B, names=("A", "B"), levels=(0.2, 0.8), tolerance=0.015)
    got = [
        (e["defender"], e["level"], e["pair"] and (e["pair"]["better"], e["pair"]["worse"])) for e in entries
    ]
    # A defends q=0.2: level score = sorted[0.2 * 10] = 0.20; band {1: .20, 2: .21, 3: .19} (11 is NaN for B);
    #   B rates them .9, .1, .4 -> better 1, worse 2, gap 0.8.
    # A defends q=0.8: level = sorted[8] = 0.80; band {7: .80, 8: .81, 9: .79}; B: .2, .6, .7 -> 9 vs 7, gap 0.5.
    # B defends q=0.2: level = 0.30; band {4: .30, 6: .31} (.32 is 0.02 away); A: .50, .60 -> 6 vs 4, gap 0.1.
    # B defends q=0.8: level = 0.60; only image 8 within 0.015 -> no pair.
    assert got == [("A", 0.2, (1, 2)), ("A", 0.8, (9, 7)), ("B", 0.2, (6, 4)), ("B", 0.8, None)]
    assert [e["level_score"] for e in entries] == pytest.approx([0.20, 0.80, 0.30, 0.60])
    assert [e["num_candidates"] for e in entries] == [3, 3, 2, 1]
    assert [e.get("attacker_gap") for e in entries[:3]] == pytest.approx([0.8, 0.5, 0.1])
    assert "only 1 image(s)" in entries[3]["reason"]


def test_pair_selection_rejects_bad_arguments():
    with pytest.raises(ValueError, match="equal length"):
        select_gmad_pairs([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="quantile"):
        select_gmad_pairs([0.1, 0.2], [0.1, 0.3], levels=(1.5,))


def test_gmad_cli_with_two_known_models(tmp_path, compose_cfg):
    """Model A scores the red channel's mean, model B the green one's: uniform images make both known."""
    from mfe_iqa.cli.gmad import gmad

    ckpt_a = write_iqa_checkpoint(
        tmp_path / "red.ckpt", ChannelMeanNet((0,)), {"_target_": target_of(ChannelMeanNet), "channels": [0]}
    )
    ckpt_b = write_iqa_checkpoint(
        tmp_path / "green.ckpt",
        ChannelMeanNet((1,)),
        {"_target_": target_of(ChannelMeanNet), "channels": [1]},
    )
    red = [26, 51, 54, 48, 128, 140, 153, 204, 207, 201, 242]
    green = [128, 230, 26, 102, 77, 82, 79, 51, 153, 179, 84]
    folder = tmp_path / "unlabeled"
    for i, (r, g) in enumerate(zip(red, green)):
        write_image(
            folder / f"img{i:02d}.png", np.dstack([np.full((20, 24), v, np.uint8) for v in (r, g, 0)])
        )
    (folder / "broken.png").write_bytes(b"not a png")

    cfg = compose_cfg(
        "gmad",
        [
            f"ckpt_a={ckpt_a}",
            f"ckpt_b={ckpt_b}",
            "name_a=red",
            "name_b=green",
            f"input={folder}",
            "levels=[0.2,0.8]",
            "tolerance=0.015",
            "device=cpu",
            "num_workers=0",
            "mode=full",
            "progress=false",
            "thumb_size=32",
            "dpi=50",
        ],
    )
    gmad(cfg)
    out = Path(cfg.paths.output_dir)
    report = json.loads((out / "gmad.json").read_text())
    assert report["num_images"] == 12 and report["num_scored"] == 11
    assert list(report["skipped"]) == [str(folder / "broken.png")]
    # By hand, on the 255 scale (tolerance 0.015 = 3.8/255): red defends q=0.2 at level 51 -> band {48, 51, 54}
    # = img03, img01, img02, whose green is 102, 230, 26 -> better img01, worse img02.
    first = report["pairs"][0]
    assert (first["defender"], first["attacker"]) == ("red", "green")
    assert Path(first["pair"]["better"]["path"]).name == "img01.png"
    assert Path(first["pair"]["worse"]["path"]).name == "img02.png"
    assert first["pair"]["better"]["green"] == pytest.approx(230 / 255, abs=1e-6)
    assert first["pair"]["better"]["red"] == pytest.approx(51 / 255, abs=1e-6)
    # Every entry agrees with the pure selection on the known scores.
    names = sorted(p.name for p in folder.glob("img*.png"))
    expected = select_gmad_pairs(
        np.array(red) / 255, np.array(green) / 255, ("red", "green"), (0.2, 0.8), 0.015
    )
    for e, want in zip(report["pairs"], expected):
        if want["pair"] is None:
            assert e["pair"] is None
            continue
        assert Path(e["pair"]["better"]["path"]).name == names[want["pair"]["better"]]
        assert Path(e["pair"]["worse"]["path"]).name == names[want["pair"]["worse"]]
    with Image.open(out / "gmad.png") as im:
        assert im.size[0] > im.size[1] > 100
