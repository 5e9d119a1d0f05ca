"""The linear probe (`mfe_iqa.probe`, `mfe-iqa-probe`): ridge against least squares, alpha chosen on val only,
content-grouped CV, feature pooling by hand, and the CLI's files against scipy and the split it wrote."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from torch import nn

from mfe_iqa.cli.common import ConfigError
from mfe_iqa.data.items import IQAItem
from mfe_iqa.probe import (
    ProbeError,
    extract_features,
    fit_ridge,
    grouped_folds,
    init_stats_head_ridge,
    pooled_features,
    predict_ridge,
    probe_split,
)
from train_run_helpers import demo_data_overrides, shared_tiny_demo


def _ridge_by_augmented_lstsq(x, y, alpha):
    """Independent truth: ridge as ordinary least squares on [Z; sqrt(alpha) I] w = [y - mean; 0]."""
    mean, sd = x.mean(0), x.std(0)
    sd[sd < 1e-12] = 1.0
    z = (x - mean) / sd
    d = z.shape[1]
    a = np.vstack([z, np.sqrt(alpha) * np.eye(d)])
    b = np.concatenate([y - y.mean(), np.zeros(d)])
    w = np.linalg.lstsq(a, b, rcond=None)[0]
    return lambda q: ((q - mean) / sd) @ w + y.mean()


@pytest.mark.parametrize("n,d", [(40, 6), (8, 30)])  # primal (D <= N) and dual (D > N) forms
@pytest.mark.parametrize("alpha", [0.01, 3.0, 1e4])
def test_ridge_matches_least_squares_on_the_augmented_system(n, d, alpha):
    rng = np.random.default_rng(n * d)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=d) + rng.normal(size=d)
    x[:, 0] = 2.5  # a constant feature: standardized to 0, no division by zero
    y = rng.normal(size=n)
    q = rng.normal(size=(5, d))
    model = fit_ridge(x, y, alpha)
    np.testing.assert_allclose(predict_ridge(model, q), _ridge_by_augmented_lstsq(x, y, alpha)(q), atol=1e-9)
    assert model.intercept == pytest.approx(y.mean())


def test_ridge_rejects_bad_input():
    with pytest.raises(ProbeError, match="alpha"):
        fit_ridge(np.ones((3, 2)), np.ones(3), 0.0)
    with pytest.raises(ProbeError, match="at least 2"):
        fit_ridge(np.ones((1, 2)), np.ones(1), 1.0)


def _items(n, contents=None):
    rng = np.random.default_rng(0)
    contents = contents or [f"c{i}" for i in range(n)]
    return [
        IQAItem(f"img_{i}.png", float(m), float(m), contents[i]) for i, m in enumerate(rng.uniform(size=n))
    ]


def test_alpha_is_chosen_on_val_srcc_and_never_on_test():
    rng = np.random.default_rng(1)
    items = _items(90)
    mos = np.array([it.mos for it in items])
    x = np.column_stack([mos + rng.normal(scale=0.1, size=90), rng.normal(size=(90, 20))])  # 1 useful of 21
    parts = {"train": list(range(50)), "val": list(range(50, 70)), "test": list(range(70, 90))}
    alphas = [0.1, 10.0, 1000.0]
    res = probe_split(x, items, parts, alphas)
    # the val SRCC of every alpha, by scipy, from a ridge refitted here on the train rows
    expected = [
        spearmanr(predict_ridge(fit_ridge(x[:50], mos[:50], a), x[50:70]), mos[50:70])[0] for a in alphas
    ]
    np.testing.assert_allclose([c["val_srcc"] for c in res.alpha_curve], expected, atol=1e-6)
    assert res.alpha == alphas[int(np.argmax(expected))] and res.selection == "val"
    pred = predict_ridge(fit_ridge(x[:50], mos[:50], res.alpha), x[70:])
    assert res.test["srcc"] == pytest.approx(spearmanr(pred, mos[70:])[0], abs=1e-6)
    assert res.test["plcc"] == pytest.approx(pearsonr(pred, mos[70:])[0], abs=1e-6)
    assert res.test["srcc"] > 0.5  # the useful feature is found
    # scrambling the test rows changes nothing about the choice
    x2 = x.copy()
    x2[70:] = rng.normal(size=(20, 21))
    assert probe_split(x2, items, parts, alphas).alpha_curve == res.alpha_curve


def test_without_val_alpha_comes_from_content_grouped_folds():
    contents = [f"ref{i // 3}" for i in range(60)]  # 20 contents x 3 images (a synthetic database)
    folds = grouped_folds(contents, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(60))
    for f in folds:
        others = {contents[i] for g in folds if g is not f for i in g}
        assert not {contents[i] for i in f} & others
    items = _items(60, contents)
    x = np.column_stack([[it.mos for it in items], np.random.default_rng(2).normal(size=(60, 3))])
    res = probe_split(
        x, items, {"train": list(range(45)), "val": [], "test": list(range(45, 60))}, [1.0, 10.0]
    )
    assert res.selection == "cv5" and res.val is None
    with pytest.raises(ProbeError, match="cv_folds"):
        grouped_folds(["a", "b"], 5, seed=0)
    with pytest.raises(ProbeError, match="no test"):
        probe_split(x, items, {"train": list(range(60)), "val": [], "test": []})


class _MeanMaps(nn.Module):
    """Stage 0: the image itself; stage 1: its square. Pooled by hand in the test."""

    def forward(self, x):
        return [x, x * x], None


def test_pooled_features_by_hand_and_every_item_once():
    img = torch.rand(2, 3, 8, 8)
    f = pooled_features(_MeanMaps(), img, scales=[1.0], stages=[0, -1])
    np.testing.assert_allclose(
        f.numpy(), torch.cat([img.mean((2, 3)), (img * img).mean((2, 3))], 1).numpy(), 1e-6
    )
    g = pooled_features(_MeanMaps(), img, scales=[1.0], stages=[0], pooling=["mean", "std"])
    by_hand = img.numpy().reshape(2, 3, 64)
    np.testing.assert_allclose(g.numpy(), np.hstack([by_hand.mean(2), by_hand.std(2)]), atol=1e-6)
    with pytest.raises(ProbeError, match="pooling"):
        pooled_features(_MeanMaps(), img, [1.0], [0], pooling=["max"])
    const = torch.full((1, 3, 8, 8), 0.25)
    assert torch.allclose(pooled_features(_MeanMaps(), const, [0.5], [0]), torch.full((1, 3), 0.25))
    # two items of three views each: the views are averaged per item, in index order
    batch = {"image": torch.rand(2, 3, 3, 4, 4), "index": torch.tensor([1, 0])}
    rows = extract_features(_MeanMaps(), [batch], 2, scales=[1.0], stages=[0])
    np.testing.assert_allclose(rows[1], batch["image"][0].mean((0, 2, 3)).numpy(), atol=1e-6)
    with pytest.raises(RuntimeError, match="missing"):
        extract_features(_MeanMaps(), [batch], 3, scales=[1.0], stages=[0])


@pytest.fixture
def demo_root(tmp_path_factory):
    return shared_tiny_demo(tmp_path_factory)


def _demo_overrides(demo_root):
    return [
        *demo_data_overrides(demo_root),
        "split.ratios=[0.5,0.25,0.25]",
        "alphas=[0.1,10,1000]",
        "device=cpu",
    ]


def test_probe_cli_over_three_splits_matches_scipy(compose_cfg, demo_root, tmp_path):
    from mfe_iqa.cli.probe import probe

    cfg = compose_cfg("probe", [*_demo_overrides(demo_root), "backbone=resnet10t", "split_indices=[0,1,2]"])
    summary = probe(cfg)
    out = tmp_path / "run"
    srccs = []
    for i in (0, 1, 2):
        metrics = json.loads((out / f"split_{i}" / "metrics.json").read_text())
        table = pd.read_csv(out / f"split_{i}" / "predictions_test.csv")
        assert metrics["split_index"] == i and metrics["model"] == "probe:resnet10t:random"
        assert len(table) == summary["splits"][i]["counts"]["test"] > 0
        rho = spearmanr(table["prediction"], table["mos"])[0]
        assert metrics["test"]["demo"]["srcc"] == pytest.approx(rho, abs=1e-6)
        srccs.append(rho)
    assert summary["aggregate"]["srcc"]["median"] == pytest.approx(np.median(srccs), abs=1e-6)
    assert summary["aggregate"]["srcc"]["std"] == pytest.approx(np.std(srccs), abs=1e-6)
    # resnet10t: 64 + 128 + 256 + 512 channels, mean and std, at two scales
    assert summary["feature_dim"] == (64 + 128 + 256 + 512) * 2 * 2
    curve = pd.read_csv(out / "alpha_curve.csv")
    assert len(curve) == 3 * 3 and set(curve["split"]) == {0, 1, 2}


def test_probe_refuses_a_dan_pretrained_on_test_images(demo_root, tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    from conftest import compose_config
    from mfe_iqa.cli.probe import probe
    from mfe_iqa.models.dan import DistortionAwareNetwork

    runs = iter(range(10))

    def compose_cfg(name, overrides):
        GlobalHydra.instance().clear()
        return compose_config(name, overrides, tmp_path / f"run{next(runs)}")

    # a first run writes the split; then a dan.pt whose pre-training list holds one test content's reference
    cfg = compose_cfg("probe", [*_demo_overrides(demo_root), "backbone=resnet10t"])
    probe(cfg)
    split = pd.read_csv(tmp_path / "run0" / "split.csv")
    test_content = split.loc[split["part"] == "test", "content_id"].iloc[0]
    train_content = split.loc[split["part"] == "train", "content_id"].iloc[0]
    dan_dir = tmp_path / "dan_run"
    dan_dir.mkdir()
    torch.save(DistortionAwareNetwork("resnet10t").export_state(), dan_dir / "dan.pt")
    listing = pd.DataFrame(
        {"role": ["train"], "path": [str(demo_root / "pristine" / f"{train_content}.png")]}
    )
    listing.to_csv(dan_dir / "pretrain_images.csv", index=False)
    ok = probe(compose_cfg("probe", [*_demo_overrides(demo_root), f"dan_ckpt={dan_dir / 'dan.pt'}"]))
    assert ok["pretrain_images_checked"].endswith("pretrain_images.csv")
    listing.loc[1] = ["train", str(demo_root / "pristine" / f"{test_content}.png")]
    listing.to_csv(dan_dir / "pretrain_images.csv", index=False)
    with pytest.raises(ConfigError, match=f"content '{test_content}'"):
        probe(compose_cfg("probe", [*_demo_overrides(demo_root), f"dan_ckpt={dan_dir / 'dan.pt'}"]))
    with pytest.raises(ConfigError, match="holds a 'resnet10t'"):
        probe(
            compose_cfg(
                "probe", [*_demo_overrides(demo_root), f"dan_ckpt={dan_dir / 'dan.pt'}", "backbone=resnet18"]
            )
        )
    with pytest.raises(ConfigError, match="give dan_ckpt"):
        probe(compose_cfg("probe", _demo_overrides(demo_root)))


# --------------------------------------------------------------------------------------------------------------
# LP-FT: the DAN-statistics head started at the ridge probe's solution
# --------------------------------------------------------------------------------------------------------------
class _TwoStageDAN(nn.Module):
    """A stand-in DAN: stage 0 a 4x4 map, stage 1 a 1x1 map (its spatial std is 0: constant features)."""

    channels = [3, 2]

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 3, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.proj = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        a = torch.relu(self.bn(self.conv(x)))  # (B, 3, 4, 4) for 8-px crops
        return [a, self.proj(a).mean(dim=(2, 3), keepdim=True)], None


def _crop_db(n: int, k: int, seed: int):
    """n items of k 8-px crops whose noise amplitude falls with the MOS; loader batches of 3 items."""
    g = torch.Generator().manual_seed(seed)
    mos = torch.rand(n, generator=g)
    views = 0.5 + (1.2 - mos).view(n, 1, 1, 1, 1) * 0.3 * torch.randn(n, k, 3, 8, 8, generator=g)
    items = [IQAItem(f"x{seed}_{i}.png", float(m), float(m), f"c{seed}_{i}") for i, m in enumerate(mos)]
    batches = [{"image": views[i : i + 3], "index": torch.arange(i, min(i + 3, n))} for i in range(0, n, 3)]
    return items, batches, views


def _stats_by_hand(dan, views) -> np.ndarray:
    """(n, k, 3, h, w) -> (n, k, D): per stage, the channel means then the channel (population) stds, in numpy."""
    n, k = views.shape[:2]
    with torch.no_grad():
        maps = [m.numpy().reshape(n, k, m.shape[1], -1) for m in dan(views.flatten(0, 1))[0]]
    return np.concatenate([np.concatenate([m.mean(-1), m.std(-1)], axis=-1) for m in maps], axis=-1)


def test_ridge_head_init_reproduces_the_probe_by_hand():
    from mfe_iqa.models.heads import StatsLinearHead

    dan, head = _TwoStageDAN().train(), StatsLinearHead(_TwoStageDAN.channels)
    tr_items, tr_batches, tr_views = _crop_db(30, 4, seed=1)
    va_items, va_batches, va_views = _crop_db(12, 4, seed=2)
    alphas = [0.3, 3.0, 30.0, 300.0]
    result = init_stats_head_ridge(head, dan, tr_batches, tr_items, va_batches, va_items, alphas=alphas)
    assert dan.training  # its mode is restored; the features were taken in eval mode
    dan.eval()
    # independent truth: crop statistics in numpy, standardized with the training crops' mean and variance (the
    # head's BatchNorm, eps included), constant features dropped, ridge as least squares on the augmented system
    f_tr, f_va = _stats_by_hand(dan, tr_views), _stats_by_hand(dan, va_views)
    crops = f_tr.reshape(-1, f_tr.shape[-1])
    mean, var = crops.mean(0), crops.var(0)
    dead = var < 1e-12
    assert dead.sum() == 2 and result.dead_features == 2  # the 1x1 stage's two stds
    z_tr = (f_tr.mean(1) - mean) / np.sqrt(var + head.norm.eps)
    z_va = (f_va.mean(1) - mean) / np.sqrt(var + head.norm.eps)
    z_tr[:, dead], z_va[:, dead] = 0.0, 0.0
    y_tr, y_va = np.array([it.mos for it in tr_items]), np.array([it.mos for it in va_items])
    val_srcc = [spearmanr(_ridge_by_augmented_lstsq(z_tr, y_tr, a)(z_va), y_va)[0] for a in alphas]
    best = max(range(len(alphas)), key=lambda j: (round(val_srcc[j], 12), j))  # ties: the larger alpha
    assert result.alpha == alphas[best] and result.selection == "val"
    assert result.val_srcc == pytest.approx(val_srcc[best], abs=1e-6)
    # the head in eval mode, averaged over each item's crops, IS the probe's prediction
    truth = _ridge_by_augmented_lstsq(z_tr, y_tr, alphas[best])(z_va)
    head.eval()
    with torch.no_grad():
        pred = head(dan(va_views.flatten(0, 1))[0]).view(12, 4).mean(1).double().numpy()
    np.testing.assert_allclose(pred, truth, atol=1e-5)
    assert result.val_srcc > 0.5  # the noise amplitude is learnable: the probe ranks the held-out items
    assert head.weight[0, -2:].abs().sum() == 0  # constant features get no weight
    np.testing.assert_allclose(head.norm.running_mean.numpy(), mean, rtol=1e-5, atol=1e-6)


def test_ridge_head_init_refuses_a_mismatched_head_and_bad_alphas():
    from mfe_iqa.models.heads import StatsLinearHead

    items, batches, _ = _crop_db(6, 2, seed=4)
    with pytest.raises(ValueError, match="reads 8 features"):
        init_stats_head_ridge(StatsLinearHead([2, 2]), _TwoStageDAN(), batches, items)
    with pytest.raises(ProbeError, match="alphas"):
        init_stats_head_ridge(StatsLinearHead([3, 2]), _TwoStageDAN(), batches, items, alphas=[0.0])
    with pytest.raises(TypeError, match="StatsLinearHead"):
        init_stats_head_ridge(nn.Linear(10, 1), _TwoStageDAN(), batches, items)


def test_ridge_head_init_by_cv_ignores_val_for_the_choice_and_reports_it():
    from mfe_iqa.models.heads import StatsLinearHead

    dan, head = _TwoStageDAN().eval(), StatsLinearHead(_TwoStageDAN.channels)
    tr_items, tr_batches, tr_views = _crop_db(30, 4, seed=1)
    va_items, va_batches, va_views = _crop_db(12, 4, seed=2)
    alphas = [0.3, 3.0, 30.0, 300.0]
    result = init_stats_head_ridge(
        head, dan, tr_batches, tr_items, va_batches, va_items, alphas=alphas, cv_folds=3, selection="cv"
    )
    f_tr, f_va = _stats_by_hand(dan, tr_views), _stats_by_hand(dan, va_views)
    crops = f_tr.reshape(-1, f_tr.shape[-1])
    mean, var = crops.mean(0), crops.var(0)
    dead = var < 1e-12
    z_tr = (f_tr.mean(1) - mean) / np.sqrt(var + head.norm.eps)
    z_va = (f_va.mean(1) - mean) / np.sqrt(var + head.norm.eps)
    z_tr[:, dead], z_va[:, dead] = 0.0, 0.0
    y_tr, y_va = np.array([it.mos for it in tr_items]), np.array([it.mos for it in va_items])
    # the folds: 3 disjoint parts covering the 30 training items (one content each here)
    folds = grouped_folds([it.content_id for it in tr_items], 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(30)) and len(folds) == 3
    cv_srcc = []
    for a in alphas:
        scores = []
        for held in folds:
            keep = np.setdiff1d(np.arange(30), held)
            scores.append(
                spearmanr(_ridge_by_augmented_lstsq(z_tr[keep], y_tr[keep], a)(z_tr[held]), y_tr[held])[0]
            )
        cv_srcc.append(np.mean(scores))
    best = max(range(len(alphas)), key=lambda j: (round(cv_srcc[j], 12), j))
    assert result.alpha == alphas[best] and result.selection == "cv3"
    assert [c["val_srcc"] for c in result.alpha_curve] == pytest.approx(cv_srcc, abs=1e-6)
    # val did not choose, but it reports: the SRCC of the chosen head on the val items
    truth = spearmanr(_ridge_by_augmented_lstsq(z_tr, y_tr, alphas[best])(z_va), y_va)[0]
    assert result.val_srcc == pytest.approx(truth, abs=1e-6) and result.counts == {"train": 30, "val": 12}
    with pytest.raises(ProbeError, match=r"alpha selection must be one of \('val', 'cv'\), got 'test'"):
        init_stats_head_ridge(head, dan, tr_batches, tr_items, selection="test")


def test_the_log_transform_by_hand_and_its_errors():
    from mfe_iqa.probe import transform_features

    x = np.array([[0.0, 1.0], [0.5, 2.0]])
    np.testing.assert_allclose(transform_features(x, "log", 0.01), np.log(x + 0.01))
    np.testing.assert_array_equal(transform_features(x, "none"), x)
    with pytest.raises(ProbeError, match=r"row 1, column 0 is -0.5 \(1 such values\)"):
        transform_features(np.array([[0.0, 1.0], [-0.5, 2.0]]), "log", 0.01)
    with pytest.raises(ProbeError, match="one of"):
        transform_features(x, "exp")
    with pytest.raises(ProbeError, match="eps must be > 0"):
        transform_features(x, "log", 0.0)
