"""`mfe-iqa-report`: turn run / multirun directories into the tables IQA papers report.

Every training (or eval) run writes ``<run dir>/metrics.json`` (``mfe_iqa.metrics.write_run_metrics``). This
command finds them under the given directories and aggregates, per (experiment, model, train database, test
database), over the splits: median, mean and standard deviation (population, ddof=0) of SRCC, PLCC (raw and
after the logistic fit), KRCC and RMSE, with the number of splits n. It also builds the cross-dataset matrix
(train databases as rows, test databases as columns, median SRCC by default). A run with the whole-image read-out
of its DAN (``extra.readout``) adds two models on its own test split: ``<model>+readout`` (the blend) and
``<model>:readout`` (the read-out alone).

Outputs in ``--out``: ``summary.csv`` (one row per group), ``runs.csv`` (every run x test database),
``report.md`` (Markdown tables), ``cross_dataset_<metric>[_<group>].csv`` and ``.png`` (heatmap).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mfe_iqa.metrics import RUN_METRICS_FILE, read_run_metrics

log = logging.getLogger("mfe_iqa.report")

REPORT_METRICS = ("srcc", "plcc", "plcc_fit", "krcc", "rmse")
GROUP_KEYS = ("experiment", "model", "train_db", "test_db")


def find_metric_files(paths: Iterable[str | Path]) -> list[Path]:
    """Every run metrics file under the given run dirs, multirun dirs or files (sorted, no duplicates)."""
    found: set[Path] = set()
    for p in paths:
        p = Path(p)
        if p.is_file():
            found.add(p.resolve())
        elif p.is_dir():
            found.update(f.resolve() for f in p.rglob(RUN_METRICS_FILE))
        else:
            raise FileNotFoundError(f"'{p}' does not exist: give run or multirun directories")
    return sorted(found)


def load_runs(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Long table: one row per (run, test database) with the run's labels and metrics.

    Unreadable files are skipped with a warning (and counted). When two files describe the same
    (experiment, model, train_db, split_index), e.g. a rerun, the newer file wins and the count is reported.
    """
    files = find_metric_files(paths)
    if not files:
        raise FileNotFoundError(f"no {RUN_METRICS_FILE} under {', '.join(map(str, paths))}")
    records: list[dict] = []
    skipped: list[str] = []
    for f in files:
        try:
            run = read_run_metrics(f)
        except ValueError as err:
            skipped.append(f"{f}: {err}")
            continue
        base = {
            "experiment": run.get("experiment") or "-",
            "model": run.get("model") or "-",
            "train_db": run["train_db"],
            "split_index": run.get("split_index"),
            "file": str(f),
            "mtime": f.stat().st_mtime,
        }
        for test_db, metrics in run["test"].items():
            records.append(
                {**base, "test_db": test_db, **{m: metrics.get(m, np.nan) for m in REPORT_METRICS}}
            )
        # a run with the whole-image read-out of its DAN (mfe_iqa.readout): its blend and the read-out alone on
        # the own test split, as two more models of the same experiment ("<model>+readout", "<model>:readout")
        readout = ((run.get("extra") or {}).get("readout") or {}).get("test") or {}
        for part, suffix in (("blend", "+readout"), ("readout", ":readout")):
            if readout.get(part):
                records.append(
                    {**base, "model": f"{base['model']}{suffix}", "test_db": run["train_db"],
                     **{m: readout[part].get(m, np.nan) for m in REPORT_METRICS}}
                )  # fmt: skip
    if skipped:
        log.warning(
            "skipped %d file(s) that are not run metrics files:\n  %s", len(skipped), "\n  ".join(skipped)
        )
    if not records:
        raise ValueError(f"none of the {len(files)} metrics files holds a test result")
    df = pd.DataFrame.from_records(records)
    keyed = df[df["split_index"].notna()]
    run_keys = ["experiment", "model", "train_db", "split_index", "test_db"]
    dup = keyed.duplicated(run_keys, keep=False)
    if dup.any():
        before = len(df)
        df = df.sort_values("mtime")
        keep = df["split_index"].isna() | ~df.duplicated(run_keys, keep="last")
        df = df[keep]
        log.warning(
            "%d result row(s) repeat a (experiment, model, train_db, split_index, test_db) already seen; "
            "kept the newest file's",
            before - len(df),
        )
    return df.drop(columns=["mtime"]).reset_index(drop=True)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, model, train_db, test_db): n and <metric>_{median,mean,std} (std with ddof=0)."""
    rows = []
    for key, group in runs.groupby(list(GROUP_KEYS), sort=True, dropna=False):
        row = dict(zip(GROUP_KEYS, key))
        row["n"] = len(group)
        row["splits"] = " ".join(str(int(s)) for s in sorted(group["split_index"].dropna()))
        for m in REPORT_METRICS:
            v = group[m].to_numpy(dtype=np.float64)
            v = v[np.isfinite(v)]
            row[f"{m}_median"] = float(np.median(v)) if v.size else np.nan
            row[f"{m}_mean"] = float(np.mean(v)) if v.size else np.nan
            row[f"{m}_std"] = float(np.std(v, ddof=0)) if v.size else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def cross_dataset_matrices(
    summary: pd.DataFrame, metric: str = "srcc", stat: str = "median"
) -> dict[str, pd.DataFrame]:
    """{"<experiment> / <model>": matrix (rows: train_db, columns: test_db)} of ``<metric>_<stat>``."""
    col = f"{metric}_{stat}"
    out: dict[str, pd.DataFrame] = {}
    for (exp, model), group in summary.groupby(["experiment", "model"], sort=True):
        mat = group.pivot(index="train_db", columns="test_db", values=col)
        out[f"{exp} / {model}"] = mat.sort_index().sort_index(axis=1)
    return out


def _cell(summary_row: pd.Series, m: str) -> str:
    med, mean, std = summary_row[f"{m}_median"], summary_row[f"{m}_mean"], summary_row[f"{m}_std"]
    if not np.isfinite(med):
        return "-"
    return f"{med:.4f} ({mean:.4f} ± {std:.4f})"


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def to_markdown(summary: pd.DataFrame, matrices: dict[str, pd.DataFrame], metric: str, stat: str) -> str:
    parts = [
        "# IQA report",
        "",
        "Cells: median over splits (mean ± std, population std). n = number of splits (runs).",
        "PLCC is without a mapping; PLCC fit is after the 4-parameter VQEG logistic.",
        "",
    ]
    metric_titles = {"srcc": "SRCC", "plcc": "PLCC", "plcc_fit": "PLCC fit", "krcc": "KRCC", "rmse": "RMSE"}
    for (exp, model), group in summary.groupby(["experiment", "model"], sort=True):
        parts += [f"## {exp} / {model}", ""]
        header = ["train", "test", "n", *[metric_titles[m] for m in REPORT_METRICS]]
        rows = [
            [str(r.train_db), str(r.test_db), str(r.n), *[_cell(r, m) for m in REPORT_METRICS]]
            for _, r in group.iterrows()
        ]
        parts += [_markdown_table(header, rows), ""]
        mat = matrices.get(f"{exp} / {model}")
        if mat is not None and mat.size > 1:
            parts += [
                f"Cross-dataset {stat} {metric_titles.get(metric, metric)} (rows: trained on, columns: tested on)",
                "",
            ]
            rows = [
                [str(tr), *[f"{v:.4f}" if np.isfinite(v) else "-" for v in mat.loc[tr]]] for tr in mat.index
            ]
            parts += [_markdown_table(["train \\ test", *map(str, mat.columns)], rows), ""]
    return "\n".join(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def write_report(
    paths: Iterable[str | Path], out_dir: str | Path, metric: str = "srcc", stat: str = "median"
) -> dict[str, Path]:
    """Aggregate the runs under ``paths`` and write the tables and heatmaps into ``out_dir``; returns the files."""
    from mfe_iqa.plots import heatmap

    if metric not in REPORT_METRICS:
        raise ValueError(f"--metric {metric!r}: choose one of {', '.join(REPORT_METRICS)}")
    if stat not in ("median", "mean"):
        raise ValueError(f"--stat {stat!r}: choose median or mean")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(paths)
    summary = aggregate(runs)
    matrices = cross_dataset_matrices(summary, metric, stat)
    files = {"runs": out / "runs.csv", "summary": out / "summary.csv", "markdown": out / "report.md"}
    runs.to_csv(files["runs"], index=False)
    summary.to_csv(files["summary"], index=False)
    files["markdown"].write_text(to_markdown(summary, matrices, metric, stat) + "\n")
    single = len(matrices) == 1
    for name, mat in matrices.items():
        stem = f"cross_dataset_{metric}" + ("" if single else f"_{_slug(name)}")
        mat.to_csv(out / f"{stem}.csv")
        fig = heatmap(
            mat.to_numpy(dtype=np.float64),
            list(mat.index),
            list(mat.columns),
            title=f"{stat} {metric}: {name}",
        )
        fig.savefig(out / f"{stem}.png")
        files[f"{stem}.csv"] = out / f"{stem}.csv"
        files[f"{stem}.png"] = out / f"{stem}.png"
    return files


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``mfe-iqa-report DIR [DIR ...] [--out DIR] [--metric srcc] [--stat median]``."""
    parser = argparse.ArgumentParser(
        prog="mfe-iqa-report",
        description="Aggregate mfe-iqa runs (metrics.json under run or multirun dirs) into paper tables.",
    )
    parser.add_argument("paths", nargs="+", help="run dirs, multirun dirs or metrics.json files")
    parser.add_argument("--out", default="report", help="output folder (default: ./report)")
    parser.add_argument(
        "--metric", default="srcc", choices=REPORT_METRICS, help="metric of the cross-dataset matrix"
    )
    parser.add_argument(
        "--stat", default="median", choices=("median", "mean"), help="statistic of the matrix"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        files = write_report(args.paths, args.out, args.metric, args.stat)
    except (FileNotFoundError, ValueError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    print(files["markdown"].read_text())
    print("Wrote: " + ", ".join(str(p) for p in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
