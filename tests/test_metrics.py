"""Image-level metrics against scipy, crop averaging and duplicates by hand, and the logistic fits."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau, pearsonr, spearmanr

from mfe_iqa.metrics import (
    KRCC,
    PLCC,
    RMSE,
    SRCC,
    FittedPLCC,
    ImagePredictions,
    best_tracker,
    build_iqa_metrics,
    fit_logistic,
    logistic_4,
    logistic_5,
    read_run_metrics,
    write_run_metrics,
)


def _scipy_all(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    return {
        "srcc": spearmanr(p, t)[0],
        "plcc": pearsonr(p, t)[0],
        "krcc": kendalltau(p, t)[0],
        "rmse": float(np.sqrt(np.mean((p - t) ** 2))),
    }


def _collection_values(preds, target, index, **kw) -> dict[str, float]:
    mc = build_iqa_metrics(**kw)
    mc.update(preds, target, index=index)
    return {k: float(v) for k, v in mc.compute().items()}


def test_equal_scipy_on_random_data():
    rng = np.random.default_rng(0)
    t = rng.random(200)
    p = t + 0.3 * rng.standard_normal(200)
    got = _collection_values(torch.tensor(p), torch.tensor(t), torch.arange(200))
    for k, v in _scipy_all(p, t).items():
        assert got[k] == pytest.approx(v, abs=1e-5), k


def test_equal_scipy_with_ties():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 5, 150).astype(np.float64) / 4  # heavy ties in the target
    p = np.round(t + 0.4 * rng.standard_normal(150), 1)  # and ties in the predictions
    got = _collection_values(torch.tensor(p), torch.tensor(t), torch.arange(150))
    ref = _scipy_all(p, t)
    assert got["srcc"] == pytest.approx(ref["srcc"], abs=1e-5)
    assert got["krcc"] == pytest.approx(ref["krcc"], abs=1e-5)  # tau-b, scipy's default
    assert got["plcc"] == pytest.approx(ref["plcc"], abs=1e-5)


def test_fp16_inputs_match_scipy_on_the_same_values():
    rng = np.random.default_rng(2)
    t = rng.random(300)
    p16 = torch.tensor(t * 60.0 + 100.0 + 5 * rng.standard_normal(300)).half()  # large fp16 values
    got = _collection_values(p16, torch.tensor(t, dtype=torch.float16), torch.arange(300))
    p_ref = p16.double().numpy()
    t_ref = torch.tensor(t, dtype=torch.float16).double().numpy()
    ref = _scipy_all(p_ref, t_ref)
    for k in ("srcc", "plcc", "krcc"):
        assert np.isfinite(got[k])
        assert got[k] == pytest.approx(ref[k], abs=1e-5), k


def test_crops_are_averaged_per_image_by_hand():
    # 3 images, K = 2 crops given as (B, K) in two batches
    preds1 = torch.tensor([[0.1, 0.3], [0.9, 0.5]])  # image 0 -> 0.2, image 1 -> 0.7
    preds2 = torch.tensor([[0.4, 0.4]])  # image 2 -> 0.4
    target1, target2 = torch.tensor([0.0, 1.0]), torch.tensor([0.5])
    m = ImagePredictions()
    r = RMSE()
    for metric in (m, r):
        metric.update(preds1, target1, torch.tensor([0, 1]))
        metric.update(preds2, target2, torch.tensor([2]))
    out = m.compute()
    assert out["index"].tolist() == [0, 1, 2]
    assert out["prediction"].tolist() == pytest.approx([0.2, 0.7, 0.4])
    assert out["mos"].tolist() == pytest.approx([0.0, 1.0, 0.5])
    # per image, not per crop: sqrt(((0.2-0)^2 + (0.7-1)^2 + (0.4-0.5)^2) / 3)
    assert float(r.compute()) == pytest.approx(np.sqrt((0.04 + 0.09 + 0.01) / 3), abs=1e-6)


def test_padded_duplicates_are_counted_once():
    rng = np.random.default_rng(3)
    t = rng.random(20)
    p = t + 0.2 * rng.standard_normal(20)
    ref = _scipy_all(p, t)
    # DistributedSampler-style padding: images 0..4 appear a second time
    idx = torch.cat([torch.arange(20), torch.arange(5)])
    pp = torch.tensor(np.concatenate([p, p[:5]]))
    tt = torch.tensor(np.concatenate([t, t[:5]]))
    got = _collection_values(pp, tt, idx)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-5), k
    # the duplicate-inflated per-sample value differs, so the test can tell the two apart
    assert spearmanr(pp.numpy(), tt.numpy())[0] != pytest.approx(ref["srcc"], abs=1e-5)


def test_conflicting_targets_for_one_index_raise():
    m = SRCC()
    m.update(torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.9]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="image index 0"):
        m.compute()


@pytest.mark.parametrize("metric_cls", [SRCC, PLCC, KRCC, FittedPLCC])
def test_constant_predictions_give_zero_and_warn(metric_cls):
    m = metric_cls()
    m.update(torch.full((10,), 0.5), torch.linspace(0, 1, 10), torch.arange(10))
    with pytest.warns(UserWarning, match="constant predictions"):
        value = float(m.compute())
    assert value == 0.0


def test_constant_predictions_keep_rmse_defined():
    m = RMSE()
    m.update(torch.full((4,), 0.5), torch.tensor([0.0, 0.5, 0.5, 1.0]), torch.arange(4))
    assert float(m.compute()) == pytest.approx(np.sqrt(0.5 / 4))


def test_single_image_gives_zero_with_warning():
    m = SRCC()
    m.update(torch.tensor([0.3]), torch.tensor([0.4]), torch.tensor([7]))
    with pytest.warns(UserWarning, match="fewer than 2 images"):
        assert float(m.compute()) == 0.0


def test_logistic_4_recovers_known_parameters():
    rng = np.random.default_rng(4)
    x = rng.uniform(-2, 3, 400)
    true = (8.0, 1.0, 0.5, 0.7)  # b1 (upper), b2 (lower), b3 (centre), b4 (slope scale)
    y = logistic_4(x, *true) + 0.02 * rng.standard_normal(400)
    fit = fit_logistic(x, y, kind="4")
    assert fit.ok
    assert fit.params == pytest.approx(true, rel=0.03, abs=0.03)


def test_logistic_5_recovers_known_parameters():
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 100, 500)  # a MOS-like scale: the fit standardizes internally
    true = (40.0, 0.1, 50.0, 0.2, 30.0)
    y = logistic_5(x, *true) + 0.05 * rng.standard_normal(500)
    fit = fit_logistic(x, y, kind="5")
    assert fit.ok
    assert fit.params == pytest.approx(true, rel=0.03, abs=0.03)
    assert np.allclose(fit(x), logistic_5(x, *true), atol=0.1)


def test_fitted_plcc_of_a_monotone_nonlinear_mapping_is_higher_than_raw():
    x = torch.linspace(-3, 3, 100, dtype=torch.float64)
    y = torch.from_numpy(logistic_4(x.numpy(), 1.0, 0.0, 0.0, 0.3))
    raw = PLCC()
    fitted = FittedPLCC(kind="4")
    for m in (raw, fitted):
        m.update(x, y, torch.arange(100))
    assert float(fitted.compute()) == pytest.approx(1.0, abs=1e-4)
    assert float(raw.compute()) < 0.97


def test_logistic_fit_failure_falls_back_to_a_line_with_a_warning():
    x = np.array([0.0, 0.0, 0.0, 1.0, 1.0])
    y = np.array([0.1, 0.1, 0.1, 0.1, 0.1])  # constant target: no fit possible
    with pytest.warns(UserWarning, match="straight line"):
        fit = fit_logistic(x, y, kind="4")
    assert not fit.ok
    assert np.allclose(fit(x), 0.1)


def test_negative_correlation_fit():
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 1, 200)
    y = 1.0 - x**2 + 0.01 * rng.standard_normal(200)
    m = FittedPLCC()
    m.update(torch.tensor(x), torch.tensor(y), torch.arange(200))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good fit: no fallback warning
        value = float(m.compute())
    assert value < -0.99


def test_best_tracker_keeps_the_maximum():
    best = best_tracker()
    for v in (0.3, 0.8, 0.5):
        best.update(torch.tensor(v))
    assert float(best.compute()) == pytest.approx(0.8)


def test_collection_prefix_and_optional_five_parameter():
    mc = build_iqa_metrics(prefix="test/csiq/", fit_5_parameter=True)
    assert sorted(mc.keys(keep_base=False)) == sorted(
        f"test/csiq/{k}" for k in ("srcc", "plcc", "krcc", "rmse", "plcc_fit", "plcc_fit5")
    )


def test_run_metrics_file_round_trip(tmp_path):
    path = write_run_metrics(
        tmp_path,
        train_db="csiq",
        split_index=3,
        model="mfenet_tiny",
        experiment="exp",
        val={"srcc": torch.tensor(0.9)},
        test={"csiq": {"srcc": 0.8, "plcc": np.float32(0.7)}},
    )
    data = read_run_metrics(path)
    assert data["test"]["csiq"] == {"srcc": 0.8, "plcc": pytest.approx(0.7)}
    assert data["val"] == {"srcc": pytest.approx(0.9)}
    assert data["split_index"] == 3
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not an mfe-iqa run metrics file"):
        read_run_metrics(bad)


def test_logistic_fit_with_fewer_points_than_parameters_falls_back():
    with pytest.warns(UserWarning, match="too few"):
        fit = fit_logistic([0.1, 0.5, 0.7, 0.9], [0.2, 0.4, 0.9, 1.0], kind="4")  # 4 points, 4 parameters
    assert not fit.ok
    m = FittedPLCC(kind="5")
    m.update(torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.2, 0.4, 1.0]), torch.arange(3))
    with pytest.warns(UserWarning, match="too few"):
        assert float(m.compute()) == pytest.approx(pearsonr([0.1, 0.5, 0.9], [0.2, 0.4, 1.0])[0], abs=1e-6)
