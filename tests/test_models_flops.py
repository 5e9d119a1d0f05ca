"""FLOP and parameter counting used by the model card."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mfe_iqa.models.flops import count_flops, count_params, format_table, main

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def test_conv_flops_equal_hand_formula() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    # 2 FLOPs per multiply-add: 2 * C_out * C_in * k * k * H * W (bias adds are not counted by torch)
    assert count_flops(conv, (10, 12)) == 2 * 8 * 3 * 3 * 3 * 10 * 12
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 5, 7))
    assert count_flops(lin, (4, 5), batch=2) == 2 * 2 * 60 * 7
    assert count_params(conv) == 8 * 3 * 9 + 8
    conv.bias.requires_grad_(False)
    assert count_params(conv, trainable_only=True) == 8 * 3 * 9


def test_preset_table_and_cli(capsys) -> None:
    main(["--size", "48", "48", "--presets", "no_dan", "--conf-dir", str(CONF_DIR)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "GFLOPs @48x48" in lines[0] and lines[2].startswith("| no_dan |")
    params_m, gflops, gmacs = (float(v) for v in lines[2].strip("|").split("|")[1:])
    assert 3.5 < params_m < 6  # VAN-B0 without head (3.4M) + HFEN + FFMs + head
    assert abs(gflops - 2 * gmacs) < 0.02
    rows = [{"preset": "a", "params_M": 1.0, "gflops": 2.0, "gmacs": 1.0}]
    assert format_table(rows, (8, 8)).splitlines()[2] == "| a | 1.00 | 2.00 | 1.00 |"
