"""Python API: ``load_model(ckpt).score(paths_or_tensors)``.

>>> from mfe_iqa import load_model
>>> model = load_model("best.ckpt", mode="crops", crops=25, crop_size=224)
>>> model.score(["a.jpg", "b.png"])       # array of quality on [0, 1], higher = better
>>> model.score_mos(["a.jpg"])            # the same on the training database's MOS scale
>>> blended = load_model("best.ckpt", mode="crops", crops=5, crop_size=128, short_side=160,
...                      readout="<run>/readout/readout.pt")  # the job's blend with its whole-image read-out
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mfe_iqa.data.images import resize_short_side
from mfe_iqa.inference.images import IN_MEMORY_KEY, float_tensor_views
from mfe_iqa.inference.scoring import Scorer, ViewSpec, database_info, iter_file_scores, make_file_loader
from mfe_iqa.systems.iqa import load_net_from_checkpoint

log = logging.getLogger("mfe_iqa.inference")

ImageLike = str | Path | torch.Tensor | np.ndarray | Image.Image


class IQAModel:
    """A trained network with its view policy (crops / full / resize) and the training database's MOS scale.

    With ``readout`` (a ``mfe_iqa.readout.ReadoutModel``) an image's score is the read-out's blend of the
    network's score and its own (the read-out reads the image its own way, e.g. whole at its own resolution).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        database: dict | None = None,
        device: str | torch.device = "auto",
        precision: str = "32-true",
        mode: str = "full",
        crops: int = 1,
        crop_size: int = 224,
        crop_seed: int = 0,
        short_side: int | None = None,
        channels_last: bool = False,
        readout=None,
    ) -> None:
        self.scorer = Scorer(net, device=device, precision=precision, channels_last=channels_last)
        self.views = ViewSpec(mode, int(crops), int(crop_size), int(crop_seed), short_side)
        self._transform = self.views.transform()
        self.readout = readout.to(self.scorer.device) if readout is not None else None
        self.database = dict(database or {})
        self._info = database_info(self.database)

    @property
    def net(self) -> torch.nn.Module:
        return self.scorer.net

    @property
    def device(self) -> torch.device:
        return self.scorer.device

    def _memory_views(
        self, image: torch.Tensor | np.ndarray | Image.Image, views: ViewSpec | None = None
    ) -> torch.Tensor:
        """(K, 3, h, w) float views of one in-memory image, placed as evaluation places them (``views``: the
        network's, or the read-out's).

        uint8 images ((H, W, 3) arrays, PIL, uint8 (3, H, W) tensors) take the file path exactly
        (``short_side`` resize, then ``EvalTransform``); float (3, H, W) tensors in [0, 1] are used at their size.
        """
        spec = views or self.views
        transform = self._transform if views is None else views.transform()
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"), dtype=np.uint8)
        if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
            image = image.permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"numpy images must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
            if spec.short_side is not None:
                image = resize_short_side(image, spec.short_side)
            return transform(np.ascontiguousarray(image), IN_MEMORY_KEY)
        if image.min() < 0 or image.max() > 1:
            raise ValueError(
                "float image tensors must lie in [0, 1] (the networks normalize their own input)"
            )
        return float_tensor_views(image, transform)

    def score(
        self,
        images: ImageLike | Sequence[ImageLike],
        batch_size: int = 16,
        num_workers: int = 0,
        on_error: str = "raise",
    ) -> np.ndarray:
        """Quality on [0, 1] (higher = better), one float per image, K crops averaged.

        ``images``: a path, a (3, H, W) or (B, 3, H, W) tensor in [0, 1] (or uint8), a uint8 (H, W, 3)
        array, a PIL image, or a list of these. A file that cannot be decoded raises a ``ValueError``
        naming it, or gives NaN with ``on_error="nan"``.
        """
        if on_error not in ("raise", "nan"):
            raise ValueError(f"on_error must be 'raise' or 'nan', got '{on_error}'")
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            items: list[ImageLike] = list(images.unbind(0))
        elif isinstance(images, (str, Path, torch.Tensor, np.ndarray, Image.Image)):
            items = [images]
        else:
            items = list(images)
        out = np.full(len(items), np.nan, dtype=np.float64)
        file_pos = [i for i, x in enumerate(items) if isinstance(x, (str, Path))]
        if file_pos:
            scores, errors = self.score_files([str(items[i]) for i in file_pos], batch_size, num_workers)
            if errors and on_error == "raise":
                raise ValueError(f"cannot score image: {next(iter(errors.values()))}")
            out[file_pos] = scores
        mem_pos = [i for i, x in enumerate(items) if not isinstance(x, (str, Path))]
        for start in range(0, len(mem_pos), batch_size):
            chunk = mem_pos[start : start + batch_size]
            views = [self._memory_views(items[i]) for i in chunk]  # each (K, 3, h, w)
            scores = self.scorer.score_views(views).double().numpy()
            if self.readout is not None:
                read = self.readout.score_views(
                    [self._memory_views(items[i], self.readout.views) for i in chunk]
                )
                scores = self.readout.blend(scores, read)
            out[chunk] = scores
        return out

    def score_files(
        self, paths: Sequence[str], batch_size: int = 16, num_workers: int = 0, progress: bool = False
    ) -> tuple[np.ndarray, dict[str, str]]:
        """Scores of files (NaN where a file failed) and ``{path: reason}`` for each failure."""
        from tqdm.auto import tqdm

        scores = np.full(len(paths), np.nan, dtype=np.float64)
        errors: dict[str, str] = {}
        loader = make_file_loader(
            paths, self.views, batch_size, num_workers, self.device.type == "cuda",
            readout_views=self.readout.views if self.readout is not None else None,
        )  # fmt: skip
        with tqdm(
            total=len(paths), desc="score", unit="img", disable=not progress, dynamic_ncols=True
        ) as bar:
            for rows in iter_file_scores(self.scorer, loader, self.readout):
                for row in rows:
                    if row.score is None:
                        errors[paths[row.index]] = row.error
                    else:
                        scores[row.index] = row.score
                bar.update(len(rows))
        return scores, errors

    def to_mos(self, scores: np.ndarray | float) -> np.ndarray:
        """[0, 1] scores on the training database's raw MOS scale (DMOS databases flipped back)."""
        if self._info is None:
            raise ValueError(
                "this checkpoint carries no database MOS range (checkpoint['mfe_iqa']['database']): "
                "only [0, 1] scores are available"
            )
        return np.asarray(self._info.denormalize(np.asarray(scores, dtype=np.float64)))

    def score_mos(self, images: ImageLike | Sequence[ImageLike], **kwargs) -> np.ndarray:
        """``score`` on the training database's MOS scale."""
        return self.to_mos(self.score(images, **kwargs))

    __call__ = score


def load_model(
    ckpt_path: str | Path,
    device: str = "auto",
    precision: str = "32-true",
    mode: str = "full",
    crops: int = 1,
    crop_size: int = 224,
    crop_seed: int = 0,
    short_side: int | None = None,
    channels_last: bool = False,
    readout: str | Path | None = None,
    readout_weight: float | None = None,
    readout_check: bool = True,
) -> IQAModel:
    """An ``IQAModel`` rebuilt from an mfe-iqa training checkpoint alone (network config and weights).

    ``mode``/``crops``/``crop_size``/``crop_seed``/``short_side`` mean what ``data.test_mode``/``test_crops``/
    ``crop_size``/``crop_seed``/``short_side`` mean in evaluation; use the training run's values to score as it did.
    ``readout``: the job's ``<run>/readout/readout.pt`` (a read-out of its pre-trained DAN, ``readout.enabled``):
    scores become its blend with the network, with the weight it was written with or ``readout_weight``. It must
    come from the checkpoint's own run (``ReadoutModel.check_pairing``: the same pre-trained DAN; a mismatch is a
    ``ReadoutError``); ``readout_check=False`` blends any pair.
    """
    from mfe_iqa.readout import ReadoutModel

    net, database = load_net_from_checkpoint(ckpt_path, map_location="cpu")
    read = ReadoutModel.load(readout, weight=readout_weight) if readout else None
    if read is not None and readout_check:
        warning = read.check_pairing(net, f"checkpoint '{ckpt_path}'", f"read-out '{readout}'")
        if warning:
            log.warning(warning)
    return IQAModel(
        net,
        database=database,
        device=device,
        precision=precision,
        mode=mode,
        crops=crops,
        crop_size=crop_size,
        crop_seed=crop_seed,
        short_side=short_side,
        channels_last=channels_last,
        readout=read,
    )
