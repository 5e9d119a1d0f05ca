"""Batch prediction to a streaming CSV: one row per input file, scored or with the reason it was not."""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mfe_iqa.inference.scoring import Scorer, ViewSpec, database_info, iter_file_scores, make_file_loader

log = logging.getLogger(__name__)

CSV_COLUMNS = ("path", "score", "score_mos", "status", "error")
# with a read-out: the two scores the blend (``score``) is made of, on the same [0, 1] scale
READOUT_COLUMNS = ("network", "readout")
STATUS_OK = "ok"
STATUS_ERROR = "error"


@dataclass(frozen=True)
class PredictSummary:
    """Counts and throughput of one prediction run."""

    output: str
    num_files: int
    num_scored: int
    num_failed: int
    seconds: float
    images_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def predict_to_csv(
    scorer: Scorer,
    paths: Sequence[str],
    output: str | Path,
    views: ViewSpec,
    database: dict | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
    readout=None,
) -> PredictSummary:
    """Score ``paths`` and stream one CSV row per file (columns ``CSV_COLUMNS``) as each batch finishes.

    Files that cannot be read or decoded get ``status=error`` and the reason; the run goes on.
    Memory stays flat: rows are written and flushed per batch, nothing is accumulated.
    With ``readout`` (a ``ReadoutModel``) ``score`` is its blend with the network, and the columns
    ``READOUT_COLUMNS`` give the network's and the read-out's own scores.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    loader = make_file_loader(
        paths, views, batch_size, num_workers, pin_memory=scorer.device.type == "cuda",
        readout_views=readout.views if readout is not None else None,
    )  # fmt: skip
    extra = READOUT_COLUMNS if readout is not None else ()
    info = database_info(database)
    n_ok = n_failed = 0
    start = time.perf_counter()
    with (
        output.open("w", newline="", encoding="utf-8") as fh,
        tqdm(total=len(paths), desc="predict", unit="img", disable=not progress, dynamic_ncols=True) as bar,
    ):
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS + extra)
        for rows in iter_file_scores(scorer, loader, readout):
            for row in rows:
                path = paths[row.index]
                if row.score is None or not math.isfinite(row.score):
                    reason = row.error or f"{path}: the network returned a non-finite score"
                    writer.writerow((path, "", "", STATUS_ERROR, reason) + ("",) * len(extra))
                    n_failed += 1
                    continue
                mos = "" if info is None else f"{info.denormalize(row.score):.6f}"
                parts = tuple(f"{getattr(row, c):.6f}" for c in extra)
                writer.writerow((path, f"{row.score:.6f}", mos, STATUS_OK, "") + parts)
                n_ok += 1
            fh.flush()
            bar.update(len(rows))
    seconds = time.perf_counter() - start
    summary = PredictSummary(
        output=str(output),
        num_files=len(paths),
        num_scored=n_ok,
        num_failed=n_failed,
        seconds=seconds,
        images_per_s=n_ok / seconds if seconds > 0 else float("nan"),
    )
    if n_failed:
        log.warning(
            "%d of %d files could not be scored; their rows in %s say why", n_failed, len(paths), output
        )
    return summary
