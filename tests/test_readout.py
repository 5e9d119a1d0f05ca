"""The whole-image read-out of the pre-trained DAN (`mfe_iqa.readout`, `readout.*` in `mfe-iqa-train`): the blend
by hand, the network's predictions put in item order, settings checked before any fit, and a training run whose
read-out equals `mfe-iqa-probe` on the same DAN, split and views, blended as the formula says."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from mfe_iqa.cli.common import ConfigError
from mfe_iqa.data.items import IQAItem
from mfe_iqa.readout import ReadoutError, ReadoutSettings, blend, network_predictions_by_item
from train_run_helpers import demo_data_overrides, read_metrics, run_train, shared_tiny_demo, tiny_overrides


@pytest.fixture
def demo_root(tmp_path_factory):
    return shared_tiny_demo(tmp_path_factory)


def test_blend_is_the_weighted_mean_by_hand():
    net, ro = np.array([0.2, 0.8, 0.5]), np.array([0.6, 0.4, 0.5])
    np.testing.assert_allclose(blend(net, ro, 0.25), [0.3, 0.7, 0.5])
    np.testing.assert_allclose(blend(net, ro, 0.0), net)
    np.testing.assert_allclose(blend(net, ro, 1.0), ro)


def test_network_predictions_come_back_in_item_order_and_every_item_once():
    items = [
        IQAItem(path=f"{k}.png", mos=m, mos_raw=m, content_id=str(k)) for k, m in enumerate([0.1, 0.5, 0.9])
    ]
    rows = {
        "index": np.array([2, 0, 1]),
        "prediction": np.array([0.7, 0.2, 0.4]),
        "mos": np.array([0.9, 0.1, 0.5]),
    }
    np.testing.assert_allclose(network_predictions_by_item(rows, items, "t"), [0.2, 0.4, 0.7])
    with pytest.raises(RuntimeError, match="2 predictions for 3 test images"):
        network_predictions_by_item({k: v[:2] for k, v in rows.items()}, items, "t")
    with pytest.raises(RuntimeError, match="index order"):
        network_predictions_by_item({**rows, "mos": np.array([0.1, 0.9, 0.5])}, items, "t")


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"weight": 1.5}, "readout.weight must be in"),
        ({"scales": [1.0, 0.0]}, "readout.scales"),
        ({"pooling": ["max"]}, "readout.pooling"),
        ({"alphas": [1.0, -1.0]}, "readout.alphas"),
        ({"data": {"root": "/elsewhere"}}, r"readout.data may set .*got \['root'\]"),
    ],
)
def test_bad_settings_name_their_key(setting, match):
    with pytest.raises(ReadoutError, match=match):
        ReadoutSettings.from_config(setting)


def _dan_file(tmp_path):
    from mfe_iqa.models.dan import DistortionAwareNetwork

    torch.manual_seed(3)
    path = tmp_path / "dan.pt"
    torch.save(DistortionAwareNetwork("resnet10t").export_state(), path)
    return path


def test_a_model_without_a_pretrained_dan_is_refused_before_the_fit(demo_root, tmp_path, compose_cfg):
    from hydra.core.global_hydra import GlobalHydra

    from mfe_iqa.cli.train import _readout_settings

    cfg = compose_cfg("train", [*tiny_overrides(demo_root, tmp_path / "run"), "readout.enabled=true"])
    with pytest.raises(ConfigError, match="needs one"):
        _readout_settings(cfg)
    GlobalHydra.instance().clear()
    cfg = compose_cfg(
        "train", [*tiny_overrides(demo_root, tmp_path / "run"), "readout.enabled=true", "test=false"]
    )
    assert _readout_settings(cfg) is None  # nothing to blend without a test


def test_training_run_blends_the_probe_of_its_dan_with_its_test_predictions(demo_root, tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    from conftest import compose_config
    from mfe_iqa.cli.probe import probe

    dan = _dan_file(tmp_path)
    run = tmp_path / "run"
    alphas = "[0.1,10,1000]"
    args = [
        *tiny_overrides(demo_root, run),
        "model.use_dan=true",
        f"model.dan.pretrained_ckpt={dan}",
        "trainer.max_epochs=1",
        "logger=csv_only",
        "readout.enabled=true",
        "readout.weight=0.25",
        f"readout.alphas={alphas}",
    ]
    proc = run_train(args, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    table = pd.read_csv(run / "readout" / "predictions_test.csv")
    split = pd.read_csv(run / "split.csv")
    # every test image of the job's own split, once, and nothing else
    assert sorted(table["path"].map(lambda p: p.split("/")[-1])) == sorted(
        split.loc[split["part"] == "test", "path"].map(lambda p: p.split("/")[-1])
    )
    np.testing.assert_allclose(table["blend"], 0.75 * table["network"] + 0.25 * table["readout"], atol=1e-12)

    metrics = read_metrics(run)
    own = metrics["test"][metrics["train_db"]]
    # the network's own test metrics are the job's, unchanged by the read-out
    assert own["srcc"] == pytest.approx(spearmanr(table["network"], table["mos"])[0], abs=1e-5)
    ro = metrics["extra"]["readout"]
    assert ro["test"]["blend"]["srcc"] == pytest.approx(spearmanr(table["blend"], table["mos"])[0], abs=1e-6)
    assert ro["test"]["blend"]["plcc"] == pytest.approx(pearsonr(table["blend"], table["mos"])[0], abs=1e-6)
    assert ro["test"]["readout"]["srcc"] == pytest.approx(
        spearmanr(table["readout"], table["mos"])[0], abs=1e-6
    )
    assert ro["weight"] == 0.25 and ro["counts"]["test"] == len(table) and ro["selection"] == "val"
    # the loggers got the read-out's and the blend's test metrics beside the network's
    logged = pd.read_csv(run / "csv" / "metrics.csv")
    assert logged["test/demo/blend/srcc"].dropna().iloc[-1] == pytest.approx(
        ro["test"]["blend"]["srcc"], abs=1e-6
    )
    assert logged["test/demo/readout/plcc"].dropna().iloc[-1] == pytest.approx(
        ro["test"]["readout"]["plcc"], abs=1e-6
    )
    # resnet10t: (64 + 128 + 256 + 512) channels, mean and std, full and half scale
    assert ro["feature_dim"] == (64 + 128 + 256 + 512) * 2 * 2

    # the read-out is mfe-iqa-probe of the same DAN on the job's split with the same views and alphas
    GlobalHydra.instance().clear()
    pcfg = compose_config(
        "probe",
        [
            *demo_data_overrides(demo_root),
            "data.limit_items=33",
            f"split.file={run / 'split.csv'}",
            f"dan_ckpt={dan}",
            f"alphas={alphas}",
            "device=cpu",
        ],
        tmp_path / "probe",
    )
    summary = probe(pcfg)
    probed = pd.read_csv(tmp_path / "probe" / "predictions_test.csv").set_index("path")
    assert summary["splits"][0]["alpha"] == ro["alpha"]
    np.testing.assert_allclose(
        probed.loc[table["path"], "prediction"].to_numpy(), table["readout"], atol=1e-9
    )
