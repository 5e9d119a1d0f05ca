"""mfe-iqa-report on two fake multirun trees written by write_run_metrics: medians and means by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mfe_iqa.cli.report import load_runs, main
from mfe_iqa.metrics import write_run_metrics

# train csiq, splits 0..2: own test split and cross-dataset on tid2013
CSIQ = {
    0: {"csiq": 0.90, "tid2013": 0.50},
    1: {"csiq": 0.80, "tid2013": 0.60},
    2: {"csiq": 0.95, "tid2013": 0.40},
}
# train tid2013, splits 0..1 (even count: the median is the mean of the two)
TID = {0: {"tid2013": 0.70, "csiq": 0.60}, 1: {"tid2013": 0.80, "csiq": 0.65}}


def _metrics(srcc: float) -> dict[str, float]:
    # every metric derived from srcc so that each column has its own known values
    return {"srcc": srcc, "plcc": srcc - 0.01, "plcc_fit": srcc + 0.01, "krcc": srcc - 0.2, "rmse": 1 - srcc}


def _fake_multirun(root, train_db: str, table: dict) -> None:
    for split, tests in table.items():
        write_run_metrics(
            root / str(split),  # multirun/<job num>/metrics.json
            train_db=train_db,
            split_index=split,
            model="mfenet_tiny",
            experiment="paper",
            val={"srcc": 0.99},
            test={db: _metrics(v) for db, v in tests.items()},
        )


@pytest.fixture
def trees(tmp_path):
    a = tmp_path / "multiruns" / "2024-01-01_00-00-00_000001"
    b = tmp_path / "multiruns" / "2024-01-02_00-00-00_000002"
    _fake_multirun(a, "csiq", CSIQ)
    _fake_multirun(b, "tid2013", TID)
    (a / "0" / "wandb").mkdir()  # unrelated content in a run dir is ignored
    return a, b


def test_report_medians_and_means_by_hand(trees, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(trees[0]), str(trees[1]), "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4

    def row(train, test):
        r = summary[(summary.train_db == train) & (summary.test_db == test)]
        assert len(r) == 1
        return r.iloc[0]

    r = row("csiq", "csiq")
    assert r.n == 3 and r.splits == "0 1 2"
    assert r.srcc_median == pytest.approx(0.90)
    assert r.srcc_mean == pytest.approx((0.90 + 0.80 + 0.95) / 3)
    m = (0.90 + 0.80 + 0.95) / 3
    assert r.srcc_std == pytest.approx(math.sqrt(((0.90 - m) ** 2 + (0.80 - m) ** 2 + (0.95 - m) ** 2) / 3))
    assert r.plcc_median == pytest.approx(0.89) and r.plcc_fit_median == pytest.approx(0.91)
    assert r.krcc_mean == pytest.approx(m - 0.2) and r.rmse_median == pytest.approx(0.10)

    r = row("tid2013", "tid2013")
    assert r.n == 2
    assert r.srcc_median == pytest.approx(0.75) and r.srcc_mean == pytest.approx(0.75)
    assert r.srcc_std == pytest.approx(0.05)
    assert row("csiq", "tid2013").srcc_median == pytest.approx(0.50)
    assert row("tid2013", "csiq").srcc_median == pytest.approx(0.625)

    matrix = pd.read_csv(out / "cross_dataset_srcc.csv", index_col=0)
    assert list(matrix.index) == ["csiq", "tid2013"] and list(matrix.columns) == ["csiq", "tid2013"]
    assert np.allclose(matrix.to_numpy(), [[0.90, 0.50], [0.625, 0.75]])
    assert (out / "cross_dataset_srcc.png").stat().st_size > 1000

    md = (out / "report.md").read_text()
    assert "| csiq | csiq | 3 | 0.9000 (0.8833 ± 0.0624) |" in md
    assert "| tid2013 | 0.6250 | 0.7500 |" in md
    assert "IQA report" in capsys.readouterr().out


def test_rerun_of_a_split_counts_once(trees, tmp_path):
    import os
    import time

    rerun = tmp_path / "rerun"
    write_run_metrics(
        rerun,
        train_db="csiq",
        split_index=1,
        model="mfenet_tiny",
        experiment="paper",
        val=None,
        test={"csiq": _metrics(0.70)},
    )
    future = time.time() + 10
    os.utime(rerun / "metrics.json", (future, future))
    runs = load_runs([trees[0], rerun])
    own = runs[(runs.train_db == "csiq") & (runs.test_db == "csiq")]
    assert sorted(own.srcc) == pytest.approx([0.70, 0.90, 0.95])  # split 1 replaced by the newer file


def test_bad_files_are_skipped_and_no_files_is_an_error(tmp_path, trees):
    (trees[0] / "9").mkdir()
    (trees[0] / "9" / "metrics.json").write_text('{"something": "else"}')
    runs = load_runs([trees[0]])
    assert len(runs) == 6  # the 3 good runs x 2 test sets
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--out", str(tmp_path / "r")]) == 2


def test_runs_with_the_readout_add_the_blend_and_the_readout_as_models(tmp_path):
    # three splits of a livec run whose metrics.json carries extra.readout (mfe_iqa.readout's summary)
    net, blend, alone = [0.30, 0.50, 0.40], [0.45, 0.60, 0.50], [0.50, 0.55, 0.35]
    for split in range(3):
        write_run_metrics(
            tmp_path / "multirun" / str(split),
            train_db="livec",
            split_index=split,
            model="mfenet_tiny",
            experiment="livec_cpu",
            test={"livec": _metrics(net[split])},
            extra={"readout": {"test": {"network": _metrics(net[split]), "blend": _metrics(blend[split]),
                                        "readout": _metrics(alone[split])}}},
        )  # fmt: skip
    out = tmp_path / "report"
    assert main([str(tmp_path / "multirun"), "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv").set_index("model")
    assert sorted(summary.index) == ["mfenet_tiny", "mfenet_tiny+readout", "mfenet_tiny:readout"]
    assert (summary["test_db"] == "livec").all() and (summary["n"] == 3).all()
    assert summary.loc["mfenet_tiny", "srcc_median"] == pytest.approx(0.40)
    assert summary.loc["mfenet_tiny+readout", "srcc_median"] == pytest.approx(0.50)
    assert summary.loc["mfenet_tiny+readout", "srcc_mean"] == pytest.approx((0.45 + 0.60 + 0.50) / 3)
    assert summary.loc["mfenet_tiny:readout", "srcc_median"] == pytest.approx(0.50)
    assert summary.loc["mfenet_tiny:readout", "rmse_median"] == pytest.approx(0.50)
