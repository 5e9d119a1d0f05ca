"""Scoring machinery shared by prediction, the Python API, gMAD and the benchmark.

Files are decoded and cropped in DataLoader workers (the evaluation pipeline's ``EvalTransform``, so an
image gets the same views as in evaluation), batches are scored on the device
under the configured precision, and the scores of an image's K views are averaged into one score.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mfe_iqa.data.datasets import image_key
from mfe_iqa.data.images import ImageDecodeError, load_rgb
from mfe_iqa.data.items import DatabaseInfo
from mfe_iqa.data.transforms import EvalTransform

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


@dataclass(frozen=True)
class ViewSpec:
    """How an image becomes network inputs, as in evaluation (``data.test_*`` keys):

    ``mode`` crops | full | resize, ``num_crops`` K, ``crop_size``, ``crop_seed`` (crop positions), and
    ``short_side`` (resize every image so its shorter side is this, as ``data.short_side``; None = native).
    """

    mode: str = "full"
    num_crops: int = 1
    crop_size: int = 224
    crop_seed: int = 0
    short_side: int | None = None

    def transform(self) -> EvalTransform:
        return EvalTransform(
            mode=self.mode, crop_size=self.crop_size, num_crops=self.num_crops, crop_seed=self.crop_seed
        )


@dataclass(frozen=True)
class ScoredFile:
    """One prediction row: the file's position in the input list, its [0, 1] score or None, and why not."""

    index: int
    score: float | None
    error: str = ""
    # with a read-out (``mfe_iqa.readout.ReadoutModel``): ``score`` is the blend of these two
    network: float | None = None
    readout: float | None = None


def database_info(database: dict | None) -> DatabaseInfo | None:
    """The checkpoint's database dict as a ``DatabaseInfo`` (for ``denormalize``), None when it lacks the MOS range."""
    if not database or database.get("mos_min") is None or database.get("mos_max") is None:
        return None
    return DatabaseInfo(
        name=str(database.get("name", "")),
        kind=str(database.get("kind", "")),
        mos_min=float(database["mos_min"]),
        mos_max=float(database["mos_max"]),
        lower_better=bool(database.get("lower_better", False)),
    )


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a Lightning precision name: bf16 / fp16 autocast, disabled for 32-true."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision='{precision}' is not supported: use one of {PRECISIONS}")
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device='{device}' asked for CUDA but none is available: use device=cpu or device=auto"
        )
    return dev


class Scorer:
    """A network on its device, scoring (B, K, 3, h, w) views in [0, 1] into (B,) float32 CPU scores."""

    def __init__(
        self,
        net: nn.Module,
        device: str | torch.device = "auto",
        precision: str = "32-true",
        channels_last: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        autocast_context(self.device, precision)  # rejects an unknown precision name now, not mid-run
        self.precision = precision
        self.channels_last = channels_last
        self.net = net.to(self.device).eval()
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of the configured precision (disabled for 32-true)."""
        return autocast_context(self.device, self.precision)

    @torch.inference_mode()
    def forward_flat(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) already on the device, float [0, 1] -> (N,) float32 scores on the device."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            out = self.net(images)
        score = out.score if hasattr(out, "score") else out
        return score.reshape(images.shape[0]).float()

    def score_views(self, views: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, K, 3, h, w) tensor, or a list of B (K_i, 3, h_i, w_i) tensors -> (B,) CPU scores, crops averaged."""
        if isinstance(views, torch.Tensor):
            b, k = views.shape[:2]
            x = views.to(self.device, non_blocking=True).float().flatten(0, 1)  # (B*K, 3, h, w)
            return self.forward_flat(x).view(b, k).mean(dim=1).cpu()
        # Views of different sizes (full-image mode): group equal shapes into one forward each.
        out = torch.empty(len(views))
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, v in enumerate(views):
            groups.setdefault(tuple(v.shape), []).append(i)
        for idx in groups.values():
            out[idx] = self.score_views(torch.stack([views[i] for i in idx]))
        return out


class ImageFileDataset(Dataset):
    """Decodes one file into its views; a file that fails gives its error message instead of raising.

    With ``readout_views`` each file also gives the views a read-out reads (``readout_views``: e.g. the whole
    image at its own resolution), each decoded the way its own evaluation decodes it."""

    def __init__(self, paths: Sequence[str], views: ViewSpec, readout_views: ViewSpec | None = None) -> None:
        self.paths = list(paths)
        self.views = views
        self.transform = views.transform()
        self.readout_views = readout_views
        self.readout_transform = readout_views.transform() if readout_views is not None else None

    def _views(self, path: str, spec: ViewSpec, transform: EvalTransform, decoded: dict) -> torch.Tensor:
        if spec.short_side not in decoded:  # one decode per size
            decoded[spec.short_side] = load_rgb(path, short_side=spec.short_side)  # (H, W, 3) uint8 RGB
        return transform(decoded[spec.short_side], image_key(path))  # (K, 3, h, w) float32 in [0, 1]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        try:
            path = self.paths[index]
            decoded: dict = {}
            sample = {
                "index": index,
                "views": self._views(path, self.views, self.transform, decoded),
                "error": "",
            }
            if self.readout_views is not None:
                sample["readout_views"] = self._views(
                    path, self.readout_views, self.readout_transform, decoded
                )
            return sample
        except (ImageDecodeError, OSError) as exc:
            return {"index": index, "views": None, "error": str(exc)}
        except (ValueError, RuntimeError, MemoryError) as exc:
            return {
                "index": index,
                "views": None,
                "error": f"{self.paths[index]}: {type(exc).__name__}: {exc}",
            }


def _stack_if_equal(views: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    return torch.stack(views) if views and all(v.shape == views[0].shape for v in views) else views


def collate_views(samples: list[dict]) -> dict:
    """Good samples stacked to (B, K, 3, h, w) when their shapes agree (else a list); failures kept aside."""
    good = [s for s in samples if s["views"] is not None]
    batch = {
        "index": [s["index"] for s in good],
        "views": _stack_if_equal([s["views"] for s in good]),
        "failed": [(s["index"], s["error"]) for s in samples if s["views"] is None],
    }
    if good and "readout_views" in good[0]:
        batch["readout_views"] = _stack_if_equal([s["readout_views"] for s in good])
    return batch


def make_file_loader(
    paths: Sequence[str],
    views: ViewSpec,
    batch_size: int,
    num_workers: int,
    pin_memory: bool = False,
    readout_views: ViewSpec | None = None,
) -> DataLoader:
    """An ordered DataLoader over files; workers decode and crop while the device scores the previous batch."""
    return DataLoader(
        ImageFileDataset(paths, views, readout_views),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_views,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers > 0 else None,
    )


def iter_file_scores(scorer: Scorer, loader: DataLoader, readout=None) -> Iterator[list[ScoredFile]]:
    """Per batch, one ``ScoredFile`` per input file in input order: nothing is kept between batches.

    With ``readout`` (a ``ReadoutModel``; the loader made with its ``views``) the score is its blend of the
    network's score and the read-out's, both kept in the row."""
    for batch in loader:
        rows = [ScoredFile(i, None, err) for i, err in batch["failed"]]
        if batch["index"]:
            scores = scorer.score_views(batch["views"]).double().numpy()
            if readout is None:
                rows += [ScoredFile(i, float(s)) for i, s in zip(batch["index"], scores)]
            else:
                read = readout.score_views(batch["readout_views"])
                blended = readout.blend(scores, read)
                rows += [
                    ScoredFile(i, float(b), network=float(n), readout=float(r))
                    for i, b, n, r in zip(batch["index"], blended, scores, read)
                ]
        rows.sort(key=lambda r: r.index)
        yield rows
