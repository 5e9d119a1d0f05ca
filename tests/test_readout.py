"""The whole-image read-out of the pre-trained DAN (`mfe_iqa.readout`, `readout.*` in `mfe-iqa-train`): the blend
by hand, the network's predictions put in item order, settings checked before any fit, a training run whose
read-out equals `mfe-iqa-probe` on the same DAN, split, views and feature transform, blended as the formula says,
and its `readout.pt` scoring new images through `load_model`, `mfe-iqa-predict` and `mfe-iqa-eval` exactly as the
run's blend scored its test images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from mfe_iqa.cli.common import ConfigError
from mfe_iqa.data.items import IQAItem
from mfe_iqa.readout import ReadoutError, ReadoutModel, ReadoutSettings, blend, network_predictions_by_item
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
        ({"transform": "exp"}, "readout.transform"),
        ({"log_eps": 0.0}, "readout.log_eps"),
        ({"data": {"root": "/elsewhere"}}, r"readout.data may set .*got \['root'\]"),
        ({"extra_dans": -1}, "readout.extra_dans must be a whole number"),
        ({"extra_dans": "two"}, "readout.extra_dans must be a whole number"),
        ({"extra_dan_ckpts": "a.pt"}, "readout.extra_dan_ckpts must be a list"),
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


ALPHAS = "[0.1,10,1000]"


@pytest.fixture(scope="module")
def readout_run(tmp_path_factory):
    """A one-epoch demo run with a (random, saved) DAN and its read-out (weight 0.25, log features)."""
    demo_root = shared_tiny_demo(tmp_path_factory)
    tmp_path = tmp_path_factory.mktemp("readout_run")
    dan = _dan_file(tmp_path)
    run = tmp_path / "run"
    args = [
        *tiny_overrides(demo_root, run),
        "model.use_dan=true",
        f"model.dan.pretrained_ckpt={dan}",
        "trainer.max_epochs=1",
        "logger=csv_only",
        "readout.enabled=true",
        "readout.weight=0.25",
        "readout.transform=log",
        f"readout.alphas={ALPHAS}",
    ]
    proc = run_train(args, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return demo_root, run, dan


def test_training_run_blends_the_probe_of_its_dan_with_its_test_predictions(readout_run, tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    from conftest import compose_config
    from mfe_iqa.cli.probe import probe

    demo_root, run, dan = readout_run
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
    assert ro["transform"] == "log" and ro["log_eps"] == 0.01
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

    # the read-out is mfe-iqa-probe (transform=log) of the same DAN on the job's split with the same views and
    # alphas; the probe without the transform predicts otherwise
    predictions = {}
    for transform in ("log", "none"):
        GlobalHydra.instance().clear()
        pcfg = compose_config(
            "probe",
            [
                *demo_data_overrides(demo_root),
                "data.limit_items=33",
                f"split.file={run / 'split.csv'}",
                f"dan_ckpt={dan}",
                f"alphas={ALPHAS}",
                f"transform={transform}",
                "device=cpu",
            ],
            tmp_path / transform,
        )
        summary = probe(pcfg)
        probed = pd.read_csv(tmp_path / transform / "predictions_test.csv").set_index("path")
        predictions[transform] = probed.loc[table["path"], "prediction"].to_numpy()
        assert summary["transform"] == transform
    assert summary["splits"][0]["alpha"] is not None
    np.testing.assert_allclose(predictions["log"], table["readout"], atol=1e-9)
    assert np.abs(predictions["none"] - table["readout"]).max() > 1e-4


def _best_checkpoint(run):
    ckpts = [p for p in (run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(ckpts) == 1, ckpts  # one epoch: the one selected checkpoint the test scored
    return ckpts[0]


def test_the_saved_readout_scores_new_images_as_the_run_did(readout_run, tmp_path, monkeypatch):
    """readout.pt alone reproduces the read-out column; load_model(..., readout=) and mfe-iqa-predict reproduce
    the blend (the network with the run's test views: 2 crops of 32 px, crop seed 0)."""
    from mfe_iqa.cli.predict import main as predict_main
    from mfe_iqa.inference.api import load_model
    from test_predict import run_console_main

    _, run, _ = readout_run
    table = pd.read_csv(run / "readout" / "predictions_test.csv")
    paths = table["path"].tolist()
    model_file = run / "readout" / "readout.pt"
    assert read_metrics(run)["extra"]["readout"]["model_file"] == str(model_file)

    readout = ReadoutModel.load(model_file)
    assert readout.weight == 0.25 and readout.transform == "log"
    assert readout.views.mode == "full" and readout.views.short_side is None  # whole images, own resolution
    np.testing.assert_allclose(readout.score_files(paths), table["readout"], atol=1e-6)

    views = dict(mode="crops", crops=2, crop_size=32, crop_seed=0, device="cpu")
    model = load_model(_best_checkpoint(run), readout=model_file, **views)
    scores, errors = model.score_files(paths)
    assert not errors
    np.testing.assert_allclose(scores, table["blend"], atol=1e-5)
    # another blend weight: 0 is the network alone, 1 the read-out alone, also for in-memory uint8 images (whole,
    # at their own size: no crop positions keyed by a file name)
    alone = load_model(_best_checkpoint(run), readout=model_file, readout_weight=0.0, **views)
    np.testing.assert_allclose(alone.score_files(paths)[0], table["network"], atol=1e-5)
    from mfe_iqa.data.images import load_rgb

    only = load_model(_best_checkpoint(run), readout=model_file, readout_weight=1.0, **views)
    np.testing.assert_allclose(only.score([load_rgb(p) for p in paths[:3]]), table["readout"][:3], atol=1e-6)

    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(paths) + "\n")
    out = tmp_path / "pred.csv"
    argv = [
        f"ckpt_path={_best_checkpoint(run)}", f"input={listing}", f"output={out}", f"readout={model_file}",
        "mode=crops", "crops=2", "crop_size=32", "device=cpu", "num_workers=0", "progress=false",
        f"hydra.run.dir={tmp_path / 'predict'}",
    ]  # fmt: skip
    assert run_console_main(predict_main, argv, monkeypatch) == 0
    got = pd.read_csv(out)
    assert list(got.columns) == ["path", "score", "score_mos", "status", "error", "network", "readout"]
    assert (got["status"] == "ok").all() and got["path"].tolist() == paths
    np.testing.assert_allclose(got["readout"], table["readout"], atol=2e-6)
    np.testing.assert_allclose(got["network"], table["network"], atol=2e-5)
    np.testing.assert_allclose(got["score"], table["blend"], atol=2e-5)


def test_eval_blends_the_readout_on_the_runs_test_split(readout_run, tmp_path, compose_cfg):
    from mfe_iqa.cli.eval import evaluate

    demo_root, run, _ = readout_run
    table = pd.read_csv(run / "readout" / "predictions_test.csv").set_index("path")
    cfg = compose_cfg(
        "eval",
        [
            *demo_data_overrides(demo_root),
            "data.limit_items=33",
            "data.crop_size=32",
            "data.test_crops=2",
            "data.eval_batch_size=4",
            f"split.file={run / 'split.csv'}",
            "eval_split=test",
            f"ckpt_path={_best_checkpoint(run)}",
            f"readout={run / 'readout' / 'readout.pt'}",
            "trainer.accelerator=cpu",
        ],
    )
    results = evaluate(cfg)
    got = pd.read_csv(tmp_path / "run" / "predictions_demo.csv").set_index("path").loc[table.index]
    np.testing.assert_allclose(got["prediction"], table["blend"], atol=1e-5)
    np.testing.assert_allclose(got["readout"], table["readout"], atol=1e-6)
    assert results["demo"]["srcc"] == pytest.approx(spearmanr(table["blend"], table["mos"])[0], abs=1e-6)
    parts = read_metrics(tmp_path / "run")["extra"]["readout_parts"]["demo"]
    assert parts["network"]["srcc"] == pytest.approx(spearmanr(table["network"], table["mos"])[0], abs=1e-5)
    assert parts["readout"]["srcc"] == pytest.approx(spearmanr(table["readout"], table["mos"])[0], abs=1e-6)


def test_an_extra_dan_adds_its_features_and_travels_in_the_readout_file(readout_run, tmp_path, compose_cfg):
    """readout.extra_dan_ckpts: the read-out is the mean of one ridge per DAN, each the probe of that DAN (its own
    alpha); readout.pt carries both DANs and ridges, reproduces the column and still pairs with the run's
    checkpoint (its first DAN is the run's); the DANs must share a backbone."""
    from mfe_iqa.models.dan import DistortionAwareNetwork, dan_fingerprint, load_dan_file
    from mfe_iqa.probe import extract_features, probe_split, transform_features
    from mfe_iqa.readout import run_readout
    from mfe_iqa.systems.iqa import load_net_from_checkpoint

    demo_root, run, dan = readout_run
    torch.manual_seed(5)
    dan2 = tmp_path / "dan2.pt"
    torch.save(DistortionAwareNetwork("resnet10t").export_state(), dan2)
    cfg = compose_cfg(
        "probe",
        [
            *demo_data_overrides(demo_root),
            "data.limit_items=33",
            f"split.file={run / 'split.csv'}",
            "device=cpu",
        ],
    )
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    dm.setup("fit")
    job = pd.read_csv(run / "readout" / "predictions_test.csv").set_index("path")
    parts = {p: list(getattr(dm, f"{p}_items")) for p in ("train", "val", "test")}
    network = {
        "index": np.arange(len(parts["test"])),
        "prediction": job.loc[[it.path for it in parts["test"]], "network"].to_numpy(),
        "mos": np.array([it.mos for it in parts["test"]]),
    }
    settings = ReadoutSettings.from_config(
        {"weight": 0.25, "transform": "log", "alphas": [0.1, 10, 1000], "extra_dan_ckpts": [str(dan2)]}
    )
    out = tmp_path / "two"
    summary = run_readout([dan, *settings.extra_dan_ckpts], dm, parts, network, settings, out, seed=0)
    got = pd.read_csv(out / "predictions_test.csv")
    assert (
        summary["extra_dan_ckpts"] == [str(dan2)] and summary["feature_dim"] == 2 * (64 + 128 + 256 + 512) * 4
    )

    # by hand: each DAN's features as the probe extracts them, log, its own ridge and alpha choice; their mean
    items = [*parts["train"], *parts["val"], *parts["test"]]
    n_tr, n_va = len(parts["train"]), len(parts["val"])
    rows = {"train": range(n_tr), "val": range(n_tr, n_tr + n_va), "test": range(n_tr + n_va, len(items))}
    probes = [
        probe_split(
            transform_features(
                extract_features(
                    DistortionAwareNetwork("resnet10t", pretrained_ckpt=str(d)),
                    dm.eval_dataloader(items),
                    len(items),
                    (1.0, 0.5),
                    range(4),
                    ("mean", "std"),
                ),
                "log",
            ),
            items,
            rows,
            [0.1, 10, 1000],
            5,
            0,
        )
        for d in (dan, dan2)
    ]
    np.testing.assert_allclose(got["readout"], (probes[0].test_pred + probes[1].test_pred) / 2, atol=1e-9)
    assert summary["alphas"] == [p.alpha for p in probes]
    assert np.abs(got["readout"].to_numpy() - job.loc[got["path"], "readout"].to_numpy()).max() > 1e-4
    np.testing.assert_allclose(got["blend"], 0.75 * got["network"] + 0.25 * got["readout"], atol=1e-12)

    model = ReadoutModel.load(out / "readout.pt")
    assert len(model.dans) == 2
    assert model.fingerprints == [dan_fingerprint(load_dan_file(d)["state_dict"]) for d in (dan, dan2)]
    np.testing.assert_allclose(model.score_files(got["path"].tolist()), got["readout"], atol=1e-6)
    assert model.check_pairing(load_net_from_checkpoint(_best_checkpoint(run))[0]) is None

    other = tmp_path / "r18.pt"
    torch.save(DistortionAwareNetwork("resnet18").export_state(), other)
    with pytest.raises(
        ReadoutError, match=r"r18.pt' \(readout.extra_dan_ckpts\) holds a 'resnet18'.*share one"
    ):
        run_readout([dan, other], dm, parts, network, settings, tmp_path / "bad", seed=0)


def _foreign_readout(src, dst, keep_record=False):
    """A copy of ``src`` (a readout.pt) whose DAN differs in one weight: another run's read-out, or, keeping the
    fingerprint it was written with (``keep_record``), a damaged file."""
    from mfe_iqa.models.dan import dan_fingerprint

    obj = torch.load(src, weights_only=False)
    sd = obj["dans"][0]["state_dict"]
    name = next(k for k, v in sd.items() if v.is_floating_point() and v.ndim == 4)
    sd[name] = sd[name].clone()
    sd[name].view(-1)[0] += 0.5
    if not keep_record:
        obj["info"]["dan_fingerprints"] = [dan_fingerprint(d["state_dict"]) for d in obj["dans"]]
    torch.save(obj, dst)
    return dst


def test_a_readout_is_paired_with_its_own_runs_checkpoint(readout_run, tmp_path, compose_cfg, caplog):
    """The checkpoint records the pre-trained DAN its fit started from, readout.pt the DAN it reads with: the same
    weights (the dan.pt the job was given) give the same fingerprint in both; another run's read-out is refused by
    load_model, mfe-iqa-predict and mfe-iqa-eval (readout_check=false blends it anyway); a checkpoint without the
    record is scored with a warning; a network without a DAN is refused."""
    from omegaconf import OmegaConf

    from mfe_iqa.cli.eval import evaluate
    from mfe_iqa.cli.predict import load_model_from_cfg
    from mfe_iqa.inference.api import load_model
    from mfe_iqa.models.dan import dan_fingerprint, load_dan_file
    from mfe_iqa.systems.iqa import load_net_from_checkpoint

    demo_root, run, dan = readout_run
    ckpt, own = _best_checkpoint(run), run / "readout" / "readout.pt"
    truth = dan_fingerprint(load_dan_file(dan)["state_dict"])
    assert len(truth) == 16 and int(truth, 16) >= 0
    assert torch.load(ckpt, weights_only=False)["mfe_iqa"]["pretrained_dan"]["fingerprint"] == truth
    assert torch.load(own, weights_only=False)["info"]["dan_fingerprints"] == [truth]
    assert load_net_from_checkpoint(ckpt)[0].dan.pretrained_fingerprint == truth
    assert ReadoutModel.load(own).check_pairing(load_net_from_checkpoint(ckpt)[0]) is None

    foreign = _foreign_readout(own, tmp_path / "foreign.pt")
    assert ReadoutModel.load(foreign).fingerprint != truth
    views = dict(mode="crops", crops=2, crop_size=32, device="cpu")
    with pytest.raises(ReadoutError, match=f"different runs.*{truth}.*readout_check=false"):
        load_model(ckpt, readout=foreign, **views)
    paths = pd.read_csv(run / "readout" / "predictions_test.csv")["path"].tolist()[:2]
    scores, errors = load_model(ckpt, readout=foreign, readout_check=False, **views).score_files(paths)
    assert not errors and np.isfinite(scores).all()
    settings = dict(
        device="cpu", precision="32-true", mode="crops", crops=2, crop_size=32, ckpt_path=str(ckpt)
    )
    with pytest.raises(ConfigError, match="readout: .*different runs"):
        load_model_from_cfg(OmegaConf.create({**settings, "readout": str(foreign)}))
    cfg = compose_cfg(
        "eval",
        [
            *demo_data_overrides(demo_root),
            "data.limit_items=33",
            f"split.file={run / 'split.csv'}",
            "eval_split=test",
            f"ckpt_path={ckpt}",
            f"readout={foreign}",
            "trainer.accelerator=cpu",
        ],
    )
    with pytest.raises(ConfigError, match="readout: .*different runs"):
        evaluate(cfg)

    with pytest.raises(ReadoutError, match="altered or damaged"):
        ReadoutModel.load(_foreign_readout(own, tmp_path / "damaged.pt", keep_record=True))

    old = torch.load(ckpt, weights_only=False)
    del old["mfe_iqa"]["pretrained_dan"]
    torch.save(old, tmp_path / "old.ckpt")
    with caplog.at_level("WARNING", logger="mfe_iqa.inference"):
        model = load_model(tmp_path / "old.ckpt", readout=own, **views)
    assert "cannot check" in caplog.text and model.readout is not None
    with pytest.raises(ReadoutError, match="has no DAN"):
        ReadoutModel.load(own).check_pairing(torch.nn.Linear(2, 1))


def test_a_foreign_file_is_not_a_readout(tmp_path):
    with pytest.raises(ReadoutError, match="does not exist"):
        ReadoutModel.load(tmp_path / "missing.pt")
    torch.save({"format": "something else"}, tmp_path / "x.pt")
    with pytest.raises(ReadoutError, match="not a read-out file"):
        ReadoutModel.load(tmp_path / "x.pt")
