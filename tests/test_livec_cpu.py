"""experiments/livec_cpu.yaml (issue 9): it composes, a fast dev run completes on the shared LIVE Challenge
sample, and its DAN pre-training never sees a validation or test image. Plus the wall-clock schedule and the
`livec_table` runner's bookkeeping (no training there)."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import LIVEC_SAMPLE
from train_run_helpers import REPO, run_train

needs_sample = pytest.mark.skipif(
    not LIVEC_SAMPLE.is_dir(),
    reason=f"the shared LIVE Challenge sample is absent ({LIVEC_SAMPLE}); see ../shared/data/README.md",
)


@pytest.mark.parametrize("model", ["mfenet_tiny", "plain", "no_hfen", "no_dan"])
def test_experiment_composes(compose_cfg, model):
    from hydra.utils import instantiate

    cfg = compose_cfg("train", ["experiment=livec_cpu", f"model={model}"])
    assert cfg.data._target_.endswith("LiveChallengeDataModule")
    assert Path(cfg.data.root) == REPO / ".." / "shared" / "data" / "livec-sample" / "ChallengeDB_release"
    assert cfg.data.present_only is True
    assert list(cfg.split.ratios) == [0.7, 0.1, 0.2] and cfg.optimized_metric == "val/srcc_best"
    assert cfg.pretrain_dan.enabled is True and cfg.pretrain_dan.train_split_only is True
    assert dict(cfg.trainer.max_time) == {"minutes": 20} and cfg.data.crop_size == 128
    assert cfg.callbacks.model_checkpoint.monitor == "val/srcc"
    assert cfg.callbacks.ema._target_ == "mfe_iqa.callbacks.EMAWeights"  # validation scores the EMA weights
    assert cfg.callbacks.early_stopping is None  # the budget ends the fit
    # no selection while the EMA is mostly its first-step weights: decay^n > 1/2 for n < ln 0.5 / ln decay
    assert cfg.callbacks.model_checkpoint.select_after_steps >= math.log(0.5) / math.log(
        cfg.callbacks.ema.decay
    )
    # the scheduler partial builds (wall-clock cosine) with the composed values
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = instantiate(cfg.system.scheduler)(optimizer=opt)
    assert opt.param_groups[0]["lr"] <= 1.0 and sched is not None
    # LP-FT: the DAN-statistics head where there is a DAN, started at the ridge probe (auto); none elsewhere
    net = instantiate(cfg.model)
    has_dan = model in ("mfenet_tiny", "no_hfen")
    assert (getattr(net, "dan_stats", None) is not None) == has_dan
    assert cfg.system.stats_head_init == "auto"
    # the whole-image read-out (log features, blend weight 0.9) where there is a pre-trained DAN to read
    assert cfg.readout.enabled is has_dan
    assert (
        cfg.readout.weight == 0.9 and cfg.readout.transform == "log" and cfg.readout.data.short_side is None
    )
    # a second DAN for the read-out, pre-trained only where the read-out runs (the models with a DAN)
    assert cfg.readout.extra_dans == 1 and list(cfg.readout.extra_dan_ckpts) == []


def test_budget_cosine_schedule_follows_the_clock():
    from mfe_iqa.systems.schedules import budget_cosine_schedule

    now = [0.0]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = budget_cosine_schedule(
        opt, budget_min=1, warmup_steps=2, min_lr_ratio=0.0, end_fraction=1.0, clock=lambda: now[0]
    )
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)  # warm-up step 1 of 2
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    now[0] = 30.0  # half the budget
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    now[0] = 90.0  # past the budget: flat at the minimum
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="warmup_fraction"):
        budget_cosine_schedule(opt, budget_min=1, warmup_fraction=0.05)


PRETRAIN_FDR = [
    "debug=fdr",
    "logger=csv_only",
    "pretrain_data.num_val_images=4",
    "pretrain_data.val_crops=1",
    "pretrain_data.bank_crops=0",
    "pretrain_data.batch_size=16",
    "pretrain_data.short_side=96",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
]


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@needs_sample
def test_fast_dev_run_on_the_sample_pretrains_on_training_images_only(tmp_path):
    run = tmp_path / "run"
    args = [
        "experiment=livec_cpu",
        "debug=fdr",
        "logger=csv_only",
        f"hydra.run.dir={run}",
        "data.limit_items=60",  # 60 of the 300 images, evenly spread: 42 train / 6 val / 12 test
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.short_side=96",
        "data.crop_size=64",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        "data.test_crops=2",
        "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null",
        # the nested pre-training is composed from its own overrides: make it a fast dev run too
        "pretrain_dan.overrides=[" + ",".join(f'"{o}"' for o in PRETRAIN_FDR) + "]",
        # appended to the preset's list: the training images are also CONTRIQUE-style instance classes
        'pretrain_dan.extra_overrides=["pretrain_data.authentic_from_train=true","pretrain_data.authentic_per_batch=4"]',
    ]
    proc = run_train(args, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    metrics = json.loads((run / "metrics.json").read_text())
    assert "srcc" in metrics["test"][metrics["train_db"]]
    assert (run / "dan_pretrain" / "dan.pt").is_file()

    split = _read_csv(run / "split.csv")
    parts: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for row in split:
        parts[row["part"]].add(Path(row["path"]).name)
    assert parts["val"] and parts["test"] and len(parts["train"]) >= 30
    used = _read_csv(run / "dan_pretrain" / "pretrain_images.csv")
    seen = {Path(row["path"]).name for row in used}
    assert seen, "the pre-training wrote no image list"
    assert not seen & (parts["val"] | parts["test"]), "DAN pre-training saw a validation or test image"
    assert seen == parts["train"]  # every training image, held-out k-NN images included, and nothing else
    # the read-out's extra DAN (readout.extra_dans: 1) is pre-trained the same way, on the same images only
    extra = {Path(row["path"]).name for row in _read_csv(run / "dan_pretrain_2" / "pretrain_images.csv")}
    assert extra == parts["train"], "the read-out's extra DAN saw other images than the training split's"
    assert (run / "dan_pretrain_2" / "dan.pt").is_file()
    roles: dict[str, set[str]] = {}
    for row in used:
        roles.setdefault(row["role"], set()).add(Path(row["path"]).name)
    # extra_overrides reached the pre-training: its training images are its authentic instance classes,
    # and no held-out k-NN query is among them
    assert roles["authentic"] == roles["train"] and not roles["authentic"] & roles["val"]
    # LP-FT's linear-probe stage ran before the fit, on the training images (alpha on the val images)
    log_text = proc.stdout + proc.stderr
    assert f"head set to the ridge fit on {len(parts['train'])} training images" in log_text
    assert "chosen by val" in log_text
    # the whole-image read-out is on for the full model, and says why it does not blend a one-batch test
    assert "Read-out skipped: the test scored" in log_text
    assert "readout" not in metrics.get("extra", {})


def _write_split_csv(path, counts):
    rows = [f"Images/{part}{i}.bmp,{part}{i}.bmp,{part}" for part, n in counts.items() for i in range(n)]
    path.write_text("path,content_id,part\n" + "\n".join(rows) + "\n")


def test_livec_table_rows_and_markdown(tmp_path):
    from mfe_iqa.cli.livec_table import format_markdown, read_row, train_command, write_csv

    run = tmp_path / "mfenet_tiny"
    (run / "csv").mkdir(parents=True)
    (run / "metrics.json").write_text(
        json.dumps(
            {"train_db": "livec", "val": {"srcc_best": 0.5}, "test": {"livec": {"srcc": 0.61, "plcc": 0.63}}}
        )
    )
    (run / "csv" / "metrics.csv").write_text(
        "epoch,step,val/srcc,train/loss\n0,5,0.1,\n0,5,,0.3\n1,10,0.5,\n"
    )
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("split:\n  index: 0\n  ratios: [0.7, 0.1, 0.2]\n")
    full = read_row("mfenet_tiny", run, 4, 300.0, 0)
    assert full["test_srcc"] == 0.61 and full["epochs"] == 2 and full["wall_min"] == 5.0
    plain = read_row("plain", tmp_path / "absent", 4, 60.0, 1)
    assert plain["status"].startswith("failed")
    text = format_markdown([plain, full], split_index=0, budget_min=4, overrides=[])
    assert "| mfenet_tiny | 0.610 | 0.630 | - | - | 0.500 | 2 | 4 |" in text and "split 0" in text
    assert "split 0 (70/10/20, by image)" in text and "tested: checkpoint selected on val SRCC" in text
    write_csv(tmp_path / "t.csv", [full], 0)
    written = _read_csv(tmp_path / "t.csv")[0]
    assert written["test_srcc"] == "0.61" and written["split_ratios"] == "70/10/20"

    # no validation split (split.ratios=[0.8,0,0.2]): the header says so, and the epochs are the trained ones
    # (end-of-epoch train/loss rows: epochs 0, 1, 2; step rows without an epoch do not count)
    nv = tmp_path / "plain_nv"
    (nv / "csv").mkdir(parents=True)
    (nv / ".hydra").mkdir()
    (nv / ".hydra" / "config.yaml").write_text("split:\n  index: 0\n  ratios: [0.8, 0.0, 0.2]\n")
    (nv / "metrics.json").write_text(
        json.dumps({"train_db": "livec", "val": None, "test": {"livec": {"srcc": 0.4, "plcc": 0.45}}})
    )
    (nv / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss,lr-AdamW/head\n,4,,0.001\n0,14,0.5,\n1,29,0.45,\n,34,,0.001\n2,44,0.4,\n"
    )
    row = read_row("plain", nv, 4, 60.0, 0)
    assert row["epochs"] == 3 and row["val_srcc_best"] is None
    assert row["tested"] == "last epoch (no validation split)"
    text = format_markdown([row], split_index=0, budget_min=4, overrides=["split.ratios=[0.8,0,0.2]"])
    assert "split 0 (80/0/20, by image)" in text and "tested: last epoch (no validation split)" in text

    # the run's own split.csv, when it wrote one, is what the header states: here a split.file of 12 images,
    # 9 train / 0 val / 3 test, whatever split.ratios the config still carries (counted by hand: 75/0/25)
    _write_split_csv(nv / "split.csv", {"train": 9, "val": 0, "test": 3})
    row = read_row("plain", nv, 4, 60.0, 0)
    assert (row["split_ratios"], row["tested"]) == (
        "75/0/25 (9/0/3 images)",
        "last epoch (no validation split)",
    )
    _write_split_csv(run / "split.csv", {"train": 7, "test": 2, "val": 1})
    assert read_row("mfenet_tiny", run, 4, 300.0, 0)["split_ratios"] == "70/10/20 (7/1/2 images)"
    # a damaged split.csv is named in the row's status; the run's results are still read
    (nv / "split.csv").write_text("path,content_id,part\nImages/1.bmp,1.bmp,holdout\n")
    row = read_row("plain", nv, 4, 60.0, 0)
    assert row["test_srcc"] == 0.4 and row["split_ratios"] is None
    assert f"{nv / 'split.csv'} line 2: unknown part 'holdout'" in row["status"]
    (nv / "split.csv").unlink()
    row = read_row("plain", nv, 4, 60.0, 0)
    assert "| plain | 0.400 | 0.450 | - | - | - | 3 | 4 |" in text
    # a full run with the whole-image read-out (extra.readout of its metrics.json): its two columns and the notes
    payload = json.loads((run / "metrics.json").read_text())
    payload["extra"] = {
        "readout": {"test": {"blend": {"srcc": 0.66}, "readout": {"srcc": 0.64}, "network": {}}}
    }
    (run / "metrics.json").write_text(json.dumps(payload))
    with_ro = read_row("mfenet_tiny", run, 4, 300.0, 0)
    assert (with_ro["blend_srcc"], with_ro["readout_srcc"]) == (0.66, 0.64)
    text = format_markdown([row, with_ro], split_index=0, budget_min=4, overrides=[])
    assert "| mfenet_tiny | 0.610 | 0.630 | 0.660 | 0.640 | 0.500 | 2 | 4 |" in text
    assert "full with the whole-image read-out of its DAN - plain test SRCC: +0.260" in text
    assert "full - plain test SRCC: +0.210" in text
    # runs with different protocols in one table: both are named
    mixed = format_markdown([full, row], split_index=0, budget_min=4, overrides=[])
    assert "the runs differ" in mixed and "70/10/20" in mixed and "80/0/20" in mixed
    cmd = train_command("plain", run, 4, 3, ["data.short_side=192"])
    assert cmd[3:] == [
        "experiment=livec_cpu",
        "model=plain",
        "budget_min=4",
        "split.index=3",
        f"hydra.run.dir={run}",
        "data.short_side=192",
    ]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_bench_livec_hands_overrides_to_every_run(capsys):
    from mfe_iqa.cli.livec_table import main as livec_table

    # a clean make environment: under `make test` the parent's MAKEFLAGS / MAKELEVEL would make the child print
    # "Entering/Leaving directory" lines around the recipe
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    stdout = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-n",
            "bench-livec",
            "BUDGET_MIN=3",
            "SPLIT=2",
            "OVERRIDES='split.ratios=[0.8,0,0.2]' seed=7",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    recipe = [ln for ln in stdout.splitlines() if "mfe_iqa.cli.livec_table" in ln]
    assert len(recipe) == 1, stdout
    assert recipe[0].endswith(
        "livec_table --budget-min 3 --split-index 2 -- 'split.ratios=[0.8,0,0.2]' seed=7"
    ), recipe[0]
    # the runner puts them after the preset's own keys, in every model's command
    assert (
        livec_table(
            [
                "--budget-min",
                "3",
                "--split-index",
                "2",
                "--models",
                "plain,mfenet_tiny",
                "--dry-run",
                "--",
                "split.ratios=[0.8,0,0.2]",
                "seed=7",
            ]
        )
        == 0
    )
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[livec-table]")]
    assert len(lines) == 2 and all(ln.endswith("split.ratios=[0.8,0,0.2] seed=7") for ln in lines)
    assert "model=plain" in lines[0] and "model=mfenet_tiny" in lines[1]


def test_pretrain_extra_overrides_come_after_the_presets():
    from mfe_iqa.cli.common import ConfigError
    from mfe_iqa.cli.train import pretrain_overrides

    pre = {
        "overrides": ["trainer.max_epochs=6", "pretrain_data.batch_size=64"],
        "extra_overrides": ["seed=3"],
    }
    assert pretrain_overrides(pre) == ["trainer.max_epochs=6", "pretrain_data.batch_size=64", "seed=3"]
    assert pretrain_overrides({}) == []
    with pytest.raises(ConfigError, match="pretrain_dan.extra_overrides must be a list"):
        pretrain_overrides({"extra_overrides": "seed=3"})


def test_livec_table_probe_row_reads_the_full_runs_dan_split_and_data(tmp_path, compose_cfg, monkeypatch):
    from mfe_iqa.cli import livec_table

    out = tmp_path / "table"
    full, plain = out / "mfenet_tiny", out / "plain"
    (full / "dan_pretrain").mkdir(parents=True)
    (full / ".hydra").mkdir()
    plain.mkdir(parents=True)
    (full / "dan_pretrain" / "dan.pt").write_bytes(b"weights")
    _write_split_csv(full / "split.csv", {"train": 7, "val": 1, "test": 2})
    (full / "config_resolved.yaml").write_text(
        "data:\n  root: /somewhere/ChallengeDB_release\n  present_only: true\n  short_side: 160\n"
        "  cache_dir: /cache/livec\n  crop_size: 128\n"
    )
    (full / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n      data: livec\n")
    assert livec_table.probe_command(plain, out / "probe_plain") is None  # no DAN in a plain run
    cmd = livec_table.probe_command(full, out / "probe_mfenet_tiny")
    assert cmd[1:3] == ["-m", "mfe_iqa.cli.probe"] and cmd[3:] == [
        "data=livec",
        "data.root=/somewhere/ChallengeDB_release",
        "data.present_only=True",
        "data.short_side=160",
        "data.cache_dir=/cache/livec",
        f"dan_ckpt={full / 'dan_pretrain' / 'dan.pt'}",
        f"split.file={full / 'split.csv'}",
        f"hydra.run.dir={out / 'probe_mfenet_tiny'}",
    ]
    cfg = compose_cfg("probe", cmd[3:])  # every key exists in the probe's config
    assert cfg.data.short_side == 160 and cfg.split.file == str(full / "split.csv")

    def fake_probe(cmd, cwd, env, stdout, stderr):  # what mfe-iqa-probe leaves in its run dir
        run = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        run.mkdir(parents=True)
        _write_split_csv(run / "split.csv", {"train": 7, "val": 1, "test": 2})
        payload = {"train_db": "livec", "val": {"srcc": 0.7}, "test": {"livec": {"srcc": 0.45, "plcc": 0.5}}}
        (run / "metrics.json").write_text(json.dumps(payload))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(livec_table.subprocess, "run", fake_probe)
    rows = [
        {"model": "plain", "test_srcc": 0.40, "test_plcc": 0.4},
        {"model": "mfenet_tiny", "test_srcc": 0.50, "test_plcc": 0.5},
    ]
    row = livec_table.run_probe(rows, out, env={})
    assert row["model"] == "probe:mfenet_tiny" and row["status"] == "ok"
    assert (row["test_srcc"], row["val_srcc_best"], row["epochs"], row["budget_min"]) == (
        0.45,
        0.7,
        None,
        None,
    )
    assert (
        row["tested"] == "ridge alpha chosen on val SRCC" and row["split_ratios"] == "70/10/20 (7/1/2 images)"
    )
    full_row = livec_table.read_row("mfenet_tiny", full, 20, 60.0, 1)  # (its own metrics are not needed here)
    full_row.update(test_srcc=0.5, test_plcc=0.5, status="ok")
    text = livec_table.format_markdown([full_row, row], split_index=0, budget_min=20, overrides=[])
    assert "| probe:mfenet_tiny | 0.450 | 0.500 | - | - | 0.700 | - | - |" in text
    assert "the runs differ" not in text  # the probe row states its run's split, it is not another protocol
    assert "full - linear probe of its pre-trained DAN (probe:mfenet_tiny): +0.050" in text
