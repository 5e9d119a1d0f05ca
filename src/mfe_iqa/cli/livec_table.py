"""`python -m mfe_iqa.cli.livec_table` (`make bench-livec`): plain vs ablations vs full MFENet on LIVE Challenge.

Runs `mfe-iqa-train experiment=livec_cpu` once per model config, one after the other, each in its own process,
all with the same split, the same wall-clock training budget (`budget_min`, trainer.max_time) and the same crops,
then reads each run's metrics.json and prints and writes one table (Markdown and CSV):

    model | test SRCC | test PLCC | val SRCC (best) | epochs | fit budget | wall time (whole job)

The header line states the split (percent and images per part, counted in each run's own split.csv) and what
was tested (with `split.ratios=[0.8,0,0.2]` there is no validation: the last epoch is tested and "epochs" counts
trained epochs).

    python -m mfe_iqa.cli.livec_table --budget-min 20                 # the issue's 20-minute setting
    python -m mfe_iqa.cli.livec_table --budget-min 4 --split-index 1 -- data.short_side=192  # extra overrides

After the models, unless ``--no-probe``: the linear probe (``mfe-iqa-probe``) of the DAN that the first model with
DAN pre-training (full, no_hfen) pre-trained in its own run, on that run's split and data settings, as one more
row, ``probe:<model>``: a ridge regressor on the frozen DAN's pooled features, alpha on val, no IQA fit (about
20 s). It says how much of the full model's score a linear read-out of the pre-trained DAN already gets.

The budget bounds each IQA fit (validation included). DAN pre-training (full and no_hfen only) and the final test
come on top of it: the wall-time column shows the whole job, so the difference is visible. A benchmark, not a
test: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from mfe_iqa.cli.common import REPO_ROOT
from mfe_iqa.data.splits import count_split_csv

# (row label, model config) in table order: the baseline first, the full model last.
DEFAULT_MODELS = ("plain", "no_hfen", "no_dan", "mfenet_tiny")
COLUMNS = (
    "model",
    "test_srcc",
    "test_plcc",
    # models with a pre-trained DAN (readout.enabled): the blend of the network with the whole-image read-out of
    # that DAN, and the read-out alone (extra.readout of metrics.json; "-" for the models without one)
    "blend_srcc",
    "readout_srcc",
    "val_srcc_best",
    "epochs",
    "budget_min",
    "wall_min",
    "status",
)
# CSV only (the Markdown table states them once, above the rows): the run's split ratios and what was tested
CSV_EXTRA = ("split_ratios", "tested")


def _epochs_done(run_dir: Path) -> int | None:
    """Completed epochs of the fit, from the CSV logger (<run>/csv/metrics.csv); None when there is no log.

    With a validation split: the validated epochs (rows with ``val/srcc``). Without one (``split.ratios`` with
    a zero val part) nothing is validated, so the epochs whose end-of-epoch ``train/loss`` was logged count.
    The epoch the wall-clock budget cut short is in neither."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    validated, trained = set(), set()
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("epoch") in (None, ""):
                continue
            epoch = int(float(row["epoch"]))
            if row.get("val/srcc") not in (None, ""):
                validated.add(epoch)
            if row.get("train/loss") not in (None, ""):
                trained.add(epoch)
    return len(validated) if validated else len(trained)


def _protocol(run_dir: Path) -> tuple[str | None, str | None]:
    """(split as "70/10/20 (210/30/60 images)", what was tested) for one run.

    From the run's own ``split.csv`` when it wrote one: the images it really had in each part, whatever set
    them (``split.ratios``, ``split.file``, the images present under ``data.root``). Otherwise from the ratios
    of its saved config (<run>/.hydra/config.yaml; a run that stopped before its data module wrote the split);
    (None, None) when there is neither."""
    split_csv = run_dir / "split.csv"
    if split_csv.is_file():
        counts = count_split_csv(split_csv)
        total = sum(counts.values())
        if total:
            pct = "/".join(f"{100 * n / total:.0f}" for n in counts.values())
            images = "/".join(str(n) for n in counts.values())
            return f"{pct} ({images} images)", _tested(counts["val"] > 0)
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None, None
    from omegaconf import OmegaConf

    ratios = OmegaConf.select(OmegaConf.load(path), "split.ratios")
    if ratios is None:
        return None, None
    return "/".join(f"{100 * float(r):g}" for r in ratios), _tested(float(ratios[1]) > 0)


def _tested(has_val: bool) -> str:
    return "checkpoint selected on val SRCC" if has_val else "last epoch (no validation split)"


def read_row(model: str, run_dir: Path, budget_min: int, wall_s: float, returncode: int) -> dict:
    """One table row from a finished run dir (metrics.json written by mfe-iqa-train or mfe-iqa-probe)."""
    row: dict = {c: None for c in (*COLUMNS, *CSV_EXTRA)}
    row.update(model=model, budget_min=budget_min, wall_min=round(wall_s / 60.0, 2))
    try:
        row["split_ratios"], row["tested"] = _protocol(run_dir)
    except ValueError as err:  # a damaged split.csv: say so in the row, keep the other runs' results
        unreadable = f"split unknown: {err}"
    else:
        unreadable = None
    path = run_dir / "metrics.json"
    if returncode != 0 or not path.is_file():
        row["status"] = f"failed (exit {returncode}; see {run_dir}/train.log)"
        return row
    payload = json.loads(path.read_text())
    test = payload.get("test") or {}
    own = test.get(str(payload.get("train_db"))) or (next(iter(test.values())) if test else {})
    val = payload.get("val") or {}
    readout = ((payload.get("extra") or {}).get("readout") or {}).get("test") or {}
    row.update(
        blend_srcc=(readout.get("blend") or {}).get("srcc"),
        readout_srcc=(readout.get("readout") or {}).get("srcc"),
        test_srcc=own.get("srcc"),
        test_plcc=own.get("plcc"),
        # a fit's best validation; a probe has one val score (the chosen alpha's)
        val_srcc_best=val.get("srcc_best", val.get("srcc")),
        epochs=_epochs_done(run_dir),
        status=unreadable or "ok",
    )
    return row


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _is_probe(row: dict) -> bool:
    return str(row["model"]).startswith("probe:")


def format_markdown(rows: list[dict], *, split_index: int, budget_min: int, overrides: list[str]) -> str:
    # the protocol as the runs used it (their saved configs), not as the preset states it: an extra override
    # such as split.ratios=[0.8,0,0.2] changes both the split and what is tested
    # (the probe row, an alpha and no checkpoint, states the split of the run it probes)
    protocols = sorted(
        {(r["split_ratios"], r["tested"]) for r in rows if r.get("split_ratios") and not _is_probe(r)}
    )
    if len(protocols) == 1:
        ((ratios, tested),) = protocols
        split_text, tested_text = f"{ratios}, by image", f", tested: {tested}."
    elif protocols:
        split_text = "by image; the runs differ: " + "; ".join(f"{a}: {b}" for a, b in protocols)
        tested_text = "."
    else:
        split_text, tested_text = "by image", "; no run left its config."
    head = [
        f"LIVE Challenge (images present under data.root), split {split_index} ({split_text}), "
        f"IQA fit budget {budget_min} min each (trainer.max_time){tested_text}"
    ]
    if overrides:
        head.append(f"Extra overrides: `{' '.join(overrides)}`")
    lines = [
        "| model | test SRCC | test PLCC | with read-out: SRCC | read-out alone: SRCC | val SRCC (best) | epochs "
        "| budget (min) | wall, whole job (min) | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r[c]:.1f}" if c == "wall_min" and r[c] is not None else _fmt(r[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    full = next((r for r in rows if r["model"] == "mfenet_tiny"), None)
    plain = next((r for r in rows if r["model"] == "plain"), None)
    notes = []
    if full and plain and full["test_srcc"] is not None and plain["test_srcc"] is not None:
        gap = full["test_srcc"] - plain["test_srcc"]
        notes.append(f"full - plain test SRCC: {gap:+.3f} (issue target: >= +0.10)")
    probe = next((r for r in rows if _is_probe(r)), None)
    if full and probe and full["test_srcc"] is not None and probe["test_srcc"] is not None:
        notes.append(
            f"full - linear probe of its pre-trained DAN ({probe['model']}): {full['test_srcc'] - probe['test_srcc']:+.3f}"
        )
    if full and plain and full["blend_srcc"] is not None and plain["test_srcc"] is not None:
        notes.append(
            f"full with the whole-image read-out of its DAN - plain test SRCC: "
            f"{full['blend_srcc'] - plain['test_srcc']:+.3f} (network alone above)"
        )
    if full and full["test_srcc"] is not None:
        notes.append(f"full test SRCC: {full['test_srcc']:.3f} (issue target: >= 0.60 at a 20-min budget)")
    if full and full["blend_srcc"] is not None:
        notes.append(
            f"full test SRCC with the read-out: {full['blend_srcc']:.3f}; the read-out alone: {full['readout_srcc']:.3f}"
        )
    return "\n".join([*head, "", *lines, "", *notes]) + "\n"


def write_csv(path: Path, rows: list[dict], split_index: int) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["split_index", *COLUMNS, *CSV_EXTRA])
        w.writeheader()
        for r in rows:
            w.writerow({"split_index": split_index, **r})


def train_command(
    model: str, run_dir: Path, budget_min: int, split_index: int, overrides: list[str]
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mfe_iqa.cli.train",
        "experiment=livec_cpu",
        f"model={model}",
        f"budget_min={budget_min}",
        f"split.index={split_index}",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


# The data settings a probe takes over from the run whose DAN it reads (its saved, resolved config).
PROBE_DATA_KEYS = ("root", "present_only", "short_side", "cache_dir")


def probe_command(run_dir: Path, probe_dir: Path) -> list[str] | None:
    """The ``mfe-iqa-probe`` command for the DAN pre-trained in ``run_dir`` (its ``dan_pretrain/dan.pt``), on that
    run's own split (``split.csv``) and data settings (``config_resolved.yaml``); None when the run has no DAN."""
    dan = run_dir / "dan_pretrain" / "dan.pt"
    config = run_dir / "config_resolved.yaml"
    if not (dan.is_file() and (run_dir / "split.csv").is_file() and config.is_file()):
        return None
    from omegaconf import OmegaConf

    data_cfg = OmegaConf.select(OmegaConf.load(config), "data") or {}
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"  # which conf/data file the run composed
    choice = (
        OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices.data")
        if hydra_yaml.is_file()
        else None
    )
    choice = choice or "livec"
    data = [f"data.{k}={data_cfg[k]}" for k in PROBE_DATA_KEYS if data_cfg.get(k) is not None]
    return [
        sys.executable,
        "-m",
        "mfe_iqa.cli.probe",
        f"data={choice}",
        *data,
        f"dan_ckpt={dan}",
        f"split.file={run_dir / 'split.csv'}",
        f"hydra.run.dir={probe_dir}",
    ]


def run_probe(rows: list[dict], out: Path, env: dict) -> dict | None:
    """The probe row for the first model run (table order) that pre-trained a DAN; None when none did."""
    for model in [r["model"] for r in rows]:
        cmd = probe_command(out / model, out / f"probe_{model}")
        if cmd is None:
            continue
        label = f"probe:{model}"
        print(f"[livec-table] {label}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        with open(out / f"probe_{model}.out", "w") as log_file:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        row = read_row(label, out / f"probe_{model}", None, time.monotonic() - t0, proc.returncode)
        if row["tested"] is not None:  # no checkpoint: the ridge strength is what val chose
            row["tested"] = (
                "ridge alpha chosen on val SRCC" if row["val_srcc_best"] is not None else "ridge alpha by CV"
            )
        if row["status"].startswith("failed"):
            row["status"] = f"failed (exit {proc.returncode}; see {out / f'probe_{model}.out'})"
        print(f"[livec-table] {label}: {row}", flush=True)
        return row
    return None


def run_table(
    models: list[str],
    budget_min: int,
    split_index: int,
    out: Path,
    overrides: list[str],
    dry_run: bool = False,
    probe: bool = True,
) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    env = dict(os.environ)
    env.setdefault("WANDB_SILENT", "true")
    for model in models:
        run_dir = out / model
        cmd = train_command(model, run_dir, budget_min, split_index, overrides)
        print(f"[livec-table] {model}: {' '.join(cmd[1:])}", flush=True)
        if dry_run:
            continue
        t0 = time.monotonic()
        with open(out / f"{model}.out", "w") as log_file:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        row = read_row(model, run_dir, budget_min, time.monotonic() - t0, proc.returncode)
        print(f"[livec-table] {model}: {row}", flush=True)
        rows.append(row)
    if probe and not dry_run:
        probe_row = run_probe(rows, out, env)
        if probe_row is not None:
            rows.append(probe_row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mfe_iqa.cli.livec_table",
        description="plain vs no_hfen vs no_dan vs full MFENet-tiny on LIVE Challenge, same split, budget, crops",
    )
    parser.add_argument("--budget-min", type=int, default=20, help="IQA fit budget per model, whole minutes")
    parser.add_argument("--split-index", type=int, default=0)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated conf/model names")
    parser.add_argument("--out", default=None, help="output folder (default logs/livec_table/<time>)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument(
        "--no-probe", action="store_true", help="no linear-probe row for the full model's pre-trained DAN"
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (after --)")
    args = parser.parse_args(argv)

    if args.budget_min < 1:
        parser.error("--budget-min must be >= 1")
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(args.out).resolve() if args.out else REPO_ROOT / "logs" / "livec_table" / stamp
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    rows = run_table(
        models,
        args.budget_min,
        args.split_index,
        out,
        list(args.overrides),
        args.dry_run,
        probe=not args.no_probe,
    )
    if args.dry_run:
        return 0
    text = format_markdown(
        rows, split_index=args.split_index, budget_min=args.budget_min, overrides=args.overrides
    )
    (out / "livec_table.md").write_text(text)
    write_csv(out / "livec_table.csv", rows, args.split_index)
    print()
    print(text)
    print(f"written: {out / 'livec_table.md'}, {out / 'livec_table.csv'}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
