"""mfe-iqa-eval on a tiny CSV database written here, with a checkpoint of the toy network."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import pearsonr, spearmanr
from torch.utils.data import DataLoader

from mfe_iqa.cli.common import ConfigError
from training_helpers import NoiseDB, one_torch_thread, tiny_system  # noqa: F401 (autouse fixture)

N_IMAGES = 10
TRAIN_DB = {"name": "toy", "kind": "authentic", "mos_min": 1.0, "mos_max": 5.0, "lower_better": False}


@pytest.fixture
def checkpoint(tmp_path):
    """A real Lightning checkpoint of IQATrainingModule after a few training steps."""
    system = tiny_system(2e-2, TRAIN_DB)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(system, DataLoader(NoiseDB(48, seed=1), batch_size=16, shuffle=True))
    path = tmp_path / "toy.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture
def csv_database(tmp_path):
    """<data_dir>/custom/labels.csv + images/: raw MOS on 0..100, each image of the toy kind."""
    root = tmp_path / "data" / "custom"
    (root / "images").mkdir(parents=True)
    ds = NoiseDB(N_IMAGES, seed=7)
    rows = []
    for i in range(N_IMAGES):
        img = (ds.image(i).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (36, 36, 3)
        name = f"img_{i:02d}.png"
        Image.fromarray(img).save(root / "images" / name)
        rows.append({"image": f"images/{name}", "mos": round(float(ds.mos[i]) * 100, 3)})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root, pd.DataFrame(rows)


COMMON = [
    "data.crop_size=32",
    "data.test_crops=2",
    "data.num_workers=0",
    "data.eval_batch_size=4",
    "trainer.accelerator=cpu",
    "+trainer.enable_progress_bar=false",
    "logger=csv",
]


def test_eval_writes_predictions_metrics_and_scatter(compose_cfg, checkpoint, csv_database, tmp_path):
    from mfe_iqa.cli.eval import PREDICTION_COLUMNS, evaluate

    root, labels = csv_database
    cfg = compose_cfg(
        "eval",
        [
            f"ckpt_path={checkpoint}",
            "datasets=[csv]",
            f"paths.data_dir={tmp_path / 'data'}",
            "test_set_inherit=[crop_size,test_mode,test_crops,crop_seed,num_workers,eval_batch_size]",
            *COMMON,
        ],
    )
    results = evaluate(cfg)
    out = tmp_path / "run"
    table = pd.read_csv(out / "predictions_csv.csv")
    assert tuple(table.columns) == PREDICTION_COLUMNS
    assert len(table) == N_IMAGES
    # dataset order, every image once, raw labels as in the file
    assert [p.split("/")[-1] for p in table.path] == [r.split("/")[-1] for r in labels.image]
    assert np.allclose(table.mos_raw, labels.mos)
    assert np.allclose(table.mos, (labels.mos - labels.mos.min()) / (labels.mos.max() - labels.mos.min()))
    # the training database's scale (1..5) for prediction_mos
    assert np.allclose(table.prediction_mos, 1.0 + 4.0 * table.prediction)
    # metrics equal scipy on the written per-image columns
    assert results["csv"]["srcc"] == pytest.approx(spearmanr(table.prediction, table.mos)[0], abs=1e-5)
    assert results["csv"]["plcc"] == pytest.approx(pearsonr(table.prediction, table.mos)[0], abs=1e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_db"] == "toy" and metrics["extra"]["source"] == "eval"
    assert metrics["test"]["csv"]["srcc"] == pytest.approx(results["csv"]["srcc"])
    assert (out / "scatter_csv.png").stat().st_size > 1000
    # the composed test set wrote its split.csv aside, not over the run's own
    assert (out / "eval_sets" / "csv" / "split.csv").is_file() and not (out / "split.csv").exists()


def test_eval_on_the_data_group_test_split(compose_cfg, checkpoint, csv_database, tmp_path):
    from mfe_iqa.cli.eval import evaluate

    cfg = compose_cfg(
        "eval",
        [f"ckpt_path={checkpoint}", "data=csv", f"data.root={csv_database[0]}", "eval_split=test", *COMMON],
    )
    results = evaluate(cfg)
    (label,) = results  # the data group's choice in a Hydra app, else the database's own name
    table = pd.read_csv(tmp_path / "run" / f"predictions_{label}.csv")
    assert 0 < len(table) < N_IMAGES  # the test part of split 0 only
    assert results[label]["n_images"] == len(table)


def test_eval_requires_a_checkpoint(compose_cfg, tmp_path):
    from mfe_iqa.cli.eval import evaluate

    with pytest.raises(ConfigError, match="ckpt_path is required"):
        evaluate(compose_cfg("eval", []))
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()  # compose again in the same test
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(ConfigError, match="not an mfe-iqa IQA training checkpoint"):
        evaluate(compose_cfg("eval", [f"ckpt_path={bad}"]))


def test_compose_data_config_inherits_the_eval_protocol(compose_cfg, tmp_path):
    from mfe_iqa.cli.common_data import compose_data_config

    cfg = compose_cfg("eval", ["data.crop_size=48", "data.test_crops=3", f"paths.data_dir={tmp_path}"])
    node = compose_data_config("csiq", cfg)
    assert node._target_ == "mfe_iqa.data.datamodules.CsiqDataModule"
    assert node.crop_size == 48 and node.test_crops == 3  # from cfg.data
    assert node.root == f"{tmp_path}/CSIQ"  # the run's paths
    assert node.output_dir == str(tmp_path / "run" / "test_sets" / "csiq")
    assert node.split.index == cfg.split.index
    with pytest.raises(ConfigError, match="no data config named 'nope'"):
        compose_data_config("nope", cfg)
