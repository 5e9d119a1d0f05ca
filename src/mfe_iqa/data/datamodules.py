"""LightningDataModules: one shared base ``IQADataModule`` and a thin subclass per database.

``setup()`` reads the database with its reader, checks every item (see ``checks``), applies the
split (seeded by content, the official one, or a reloaded ``split.csv``), writes
``<output_dir>/split.csv``, and builds the datasets. Batches: see ``mfe_iqa.data.items``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from mfe_iqa.data.cache import build_resize_cache
from mfe_iqa.data.checks import apply_bad_item_policy, find_bad_items
from mfe_iqa.data.datasets import IQAEvalDataset, IQATrainDataset, seed_worker
from mfe_iqa.data.demo import DEFAULT_DIST_TYPES, LABEL_FILE, ensure_demo
from mfe_iqa.data.demo import MOS_RANGE as DEMO_MOS_RANGE
from mfe_iqa.data.items import DatabaseInfo, IQAItem
from mfe_iqa.data.readers import (
    Database,
    read_csiq,
    read_csv_database,
    read_kadid10k,
    read_koniq10k,
    read_live,
    read_livec,
    read_pipal,
    read_pyiqa_meta,
    read_spaq,
    read_tid2013,
)
from mfe_iqa.data.splits import (
    Split,
    SplitError,
    SplitSpec,
    check_no_leak,
    content_aware_split,
    official_split,
    read_split_csv,
    write_split_csv,
)
from mfe_iqa.data.transforms import DegradedTwin, EvalTransform, TrainTransform
from mfe_iqa.errors import UserError

log = logging.getLogger(__name__)


class BatchSizeError(UserError, ValueError):
    """A batch size that cannot be shared evenly by the training processes."""


def _is_rank_zero() -> bool:
    """True in the main process (and without DDP); Lightning reads the rank from the launcher's env vars."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0) == 0


def limit_evenly(items: Sequence[IQAItem], limit: int | None) -> list[IQAItem]:
    """At most ``limit`` items, evenly spaced over the reader's order (so many contents stay in)."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ValueError(f"data.limit_items must be >= 1 or null, got {limit}")
    picks = np.unique(np.linspace(0, len(items) - 1, int(limit)).round().astype(int))
    return [items[i] for i in picks]


def _twin_spec(spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``data.degraded_twin`` -> DegradedTwin keywords (checked now, not in a loader worker), or None when off.

    ``null`` or ``enabled: false``: off. Otherwise ``types`` (default: the quality-lowering bank types) and
    ``levels`` (default 2..5).
    """
    if spec is None:
        return None
    from omegaconf import DictConfig, OmegaConf

    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"data.degraded_twin must be a mapping (enabled, types, levels) or null, got {spec!r}"
        )
    unknown = set(spec) - {"enabled", "types", "levels"}
    if unknown:
        raise ValueError(
            f"data.degraded_twin: unknown key(s) {sorted(unknown)}; known: enabled, types, levels"
        )
    if not spec.get("enabled", True):
        return None
    kwargs = {k: spec[k] for k in ("types", "levels") if spec.get(k) is not None}
    DegradedTwin(**kwargs)  # raises on a bad type name or level, naming the key
    return kwargs


class IQADataModule(LightningDataModule):
    """Shared base: reading, checking, splitting and loading for any database a reader can parse.

    Subclasses implement ``read_database()``. Constructor keywords come from ``conf/data/<name>.yaml``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: Mapping[str, Any] | SplitSpec | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        crop_size: int = 224,
        train_crops: int = 1,
        test_crops: int = 25,
        test_mode: str = "crops",
        num_dist_types: int = 0,
        on_bad_item: str = "error",
        output_dir: str | os.PathLike | None = None,
        limit_items: int | None = None,
        present_only: bool = False,
        check_images: str = "header",
        short_side: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        hflip: bool = True,
        crop_seed: int = 0,
        use_official_split: bool = False,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        degraded_twin: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.root = Path(os.path.expanduser(str(root)))
        self.split_spec = SplitSpec.from_config(split)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.crop_size = int(crop_size)
        self.train_crops = int(train_crops)
        self.num_dist_types = int(num_dist_types)
        self.on_bad_item = on_bad_item
        self.output_dir = Path(output_dir) if output_dir else None
        self.limit_items = limit_items
        self.present_only = bool(present_only)
        self.check_images = check_images
        self.short_side = int(short_side) if short_side else None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.hflip = bool(hflip)
        self.use_official_split = bool(use_official_split)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.eval_transform = EvalTransform(test_mode, self.crop_size, int(test_crops), int(crop_seed))
        self.degraded_twin = _twin_spec(degraded_twin)
        if self.cache_dir is not None and self.short_side is None:
            raise ValueError(
                "data.cache_dir needs data.short_side (the size the cached copies are resized to)"
            )
        self._database: Database | None = None
        self._items: list[IQAItem] = []
        self._split: Split | None = None
        self._path_map: dict[str, str] = {}
        self.left_out: list[IQAItem] = []  # absent files left out with present_only

    # --- to implement per database ---------------------------------------------------------------
    def read_database(self) -> Database:
        raise NotImplementedError(f"{type(self).__name__} must implement read_database()")

    # --- set-up ---------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._split is not None:
            return
        db = self.read_database()
        info = db.info
        if self.num_dist_types != info.num_dist_types:
            raise ValueError(
                f"{info.name}: data.num_dist_types={self.num_dist_types} but the database has "
                f"{info.num_dist_types} distortion types {list(info.dist_type_names)}; set data.num_dist_types="
                f"{info.num_dist_types}."
            )
        items = db.items
        if self.present_only:
            present = [item for item in items if os.path.isfile(item.path)]
            self.left_out = [item for item in items if not os.path.isfile(item.path)]
            if self.left_out:
                msg = (
                    f"{info.name}: data.present_only=true: using the {len(present)} of {len(items)} listed images "
                    f"present under {db.root}; {len(self.left_out)} absent images left out "
                    f"(first: {', '.join(Path(i.path).name for i in self.left_out[:5])})."
                )
                warnings.warn(msg, stacklevel=2)
                log.warning(msg)
            if not present:
                raise FileNotFoundError(
                    f"{info.name}: none of the {len(items)} listed images exists under {db.root}"
                )
            items = present
        bad = list(db.problems) + find_bad_items(items, info, self.check_images)
        items = apply_bad_item_policy(info.name, items, bad, self.on_bad_item)
        items = limit_evenly(items, self.limit_items)
        if not items:
            raise ValueError(f"{info.name}: no usable items under {db.root}")

        spec = self.split_spec
        if spec.file:
            split = read_split_csv(spec.file, items, db.root)
        elif self.use_official_split:
            if db.official_split is None:
                raise SplitError(
                    f"{info.name}: data.use_official_split=true but this database ships no official split "
                    "(or its split file is missing)."
                )
            split = official_split(items, db.official_split, source=f"official split of {info.name}")
        else:
            split = content_aware_split(items, spec)
        check_no_leak(split)
        if not split.train:
            raise SplitError(f"{info.name}: the split has no training items ({split.source})")
        if self.output_dir is not None and _is_rank_zero():  # DDP ranks compute the same split
            write_split_csv(self.output_dir / "split.csv", split, db.root)
        if self.cache_dir is not None:
            self._path_map = build_resize_cache(items, db.root, self.cache_dir, self.short_side)
        self._database, self._items, self._split = db, items, split
        log.info(
            "%s: %d items -> train %d / val %d / test %d (%s)",
            info.name,
            len(items),
            len(split.train),
            len(split.val),
            len(split.test),
            split.source,
        )

    def _require_setup(self) -> Split:
        if self._split is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() first")
        return self._split

    # --- properties -------------------------------------------------------------------------------
    @property
    def info(self) -> DatabaseInfo:
        self._require_setup()
        return self._database.info

    @property
    def database(self) -> Database:
        self._require_setup()
        return self._database

    @property
    def items(self) -> list[IQAItem]:
        self._require_setup()
        return self._items

    @property
    def train_items(self) -> list[IQAItem]:
        return self._require_setup().train

    @property
    def val_items(self) -> list[IQAItem]:
        return self._require_setup().val

    @property
    def test_items(self) -> list[IQAItem]:
        return self._require_setup().test

    @property
    def has_val(self) -> bool:
        return len(self._require_setup().val) > 0

    @property
    def split_source(self) -> str:
        return self._require_setup().source

    # --- loaders ----------------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        """Processes the attached trainer runs (DDP devices x nodes); 1 without a trainer."""
        trainer = getattr(self, "trainer", None)
        return int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1

    @property
    def per_process_batch_size(self) -> int:
        """``batch_size`` is GLOBAL (images per optimizer step over all processes): each process loads
        ``batch_size // world_size``; a size the world size does not divide is an error."""
        world = self.world_size
        if self.batch_size % world:
            raise BatchSizeError(
                f"data.batch_size={self.batch_size} is the global batch size (all processes together) and must be "
                f"divisible by the number of processes, {world} (trainer.devices x trainer.num_nodes). "
                f"Use e.g. data.batch_size={max(world, self.batch_size // world * world)} or "
                f"{(self.batch_size // world + 1) * world}."
            )
        return self.batch_size // world

    @property
    def per_process_eval_batch_size(self) -> int:
        """``eval_batch_size`` is global too, rounded up per process (it does not change any result)."""
        return max(1, -(-self.eval_batch_size // self.world_size))

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            worker_init_fn=seed_worker,
            # Training drops the incomplete last batch (a different random remainder each epoch): a batch of
            # one breaks BatchNorm in training mode. Evaluation never drops an image.
            drop_last=shuffle and len(dataset) > batch_size,
        )

    def eval_dataloader(self, items: Sequence[IQAItem]) -> DataLoader:
        """An evaluation loader (the test crops / whole images, in order) over any of this module's items, e.g. the
        training items for a linear probe; batches hold ``index`` = the position in ``items``."""
        dataset = IQAEvalDataset(
            items, self.eval_transform, short_side=self.short_side, path_map=self._path_map
        )
        # Whole images differ in size between images: they cannot share a batch.
        batch = 1 if self.eval_transform.mode == "full" else self.per_process_eval_batch_size
        return self._loader(dataset, batch, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        dataset = IQATrainDataset(
            self.train_items,
            TrainTransform(self.crop_size, self.hflip),
            self.train_crops,
            twin=DegradedTwin(**self.degraded_twin) if self.degraded_twin is not None else None,
            short_side=self.short_side,
            path_map=self._path_map,
        )
        return self._loader(dataset, self.per_process_batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """The val loader; an empty list (Lightning then skips validation) when the split has no val part."""
        return self.eval_dataloader(self.val_items) if self.has_val else []

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.test_items)

    def pretrain_images(self) -> list[Path]:
        """The images DAN contrastive pre-training may use when restricted to the training split: the training
        split's own images (one file each, sorted). Databases that ship their pristine references override this
        to give the references of the training contents instead (synthetic distortions go on clean images)."""
        return sorted({Path(it.path) for it in self.train_items})

    def whole_dataloader(self) -> DataLoader:
        """Every usable item of the database (cross-dataset tests)."""
        self._require_setup()
        return self.eval_dataloader(self._items)


class LiveDataModule(IQADataModule):
    """LIVE R2; ``label_file``: ``dmos_realigned.mat`` (default, most papers) or ``dmos.mat`` (pyiqa)."""

    def __init__(self, root, label_file: str = "dmos_realigned.mat", **kwargs):
        super().__init__(root, **kwargs)
        self.label_file = label_file

    def read_database(self) -> Database:
        return read_live(self.root, self.label_file)


class CsiqDataModule(IQADataModule):
    """CSIQ; ``label_file``: ``csiq.DMOS.xlsx`` (official) or ``csiq_label.txt`` (flattened)."""

    def __init__(self, root, label_file: str = "csiq.DMOS.xlsx", **kwargs):
        super().__init__(root, **kwargs)
        self.label_file = label_file

    def read_database(self) -> Database:
        return read_csiq(self.root, self.label_file)


class Tid2013DataModule(IQADataModule):
    def read_database(self) -> Database:
        return read_tid2013(self.root)


class Kadid10kDataModule(IQADataModule):
    def read_database(self) -> Database:
        return read_kadid10k(self.root)


class LiveChallengeDataModule(IQADataModule):
    """LIVE Challenge; with ``present_only=true`` a partial copy (e.g. the shared sample) is usable."""

    def read_database(self) -> Database:
        return read_livec(self.root)


class Koniq10kDataModule(IQADataModule):
    """KonIQ-10k; ``mos_column`` MOS | MOS_zscore; ``use_official_split`` reads the sets CSV."""

    def __init__(self, root, mos_column: str = "MOS", image_dir: str = "1024x768", **kwargs):
        super().__init__(root, **kwargs)
        self.mos_column, self.image_dir = mos_column, image_dir

    def read_database(self) -> Database:
        return read_koniq10k(self.root, mos_column=self.mos_column, image_dir=self.image_dir)


class SpaqDataModule(IQADataModule):
    def read_database(self) -> Database:
        return read_spaq(self.root)


class PipalDataModule(IQADataModule):
    def read_database(self) -> Database:
        return read_pipal(self.root)


class CsvDataModule(IQADataModule):
    """Any database described by one CSV: see ``readers.table.read_csv_database`` for the columns."""

    def __init__(
        self,
        root,
        label_file: str = "labels.csv",
        image_dir: str = "",
        name: str = "custom",
        image_column: str = "image",
        mos_column: str = "mos",
        content_column: str | None = None,
        dist_type_column: str | None = None,
        dist_level_column: str | None = None,
        split_column: str | None = None,
        mos_min: float | None = None,
        mos_max: float | None = None,
        lower_better: bool = False,
        dist_type_names: Sequence[str] | None = None,
        **kwargs,
    ):
        super().__init__(root, **kwargs)
        self.table_options = dict(
            label_file=label_file,
            image_dir=image_dir,
            name=name,
            image_column=image_column,
            mos_column=mos_column,
            content_column=content_column,
            dist_type_column=dist_type_column,
            dist_level_column=dist_level_column,
            split_column=split_column,
            mos_min=mos_min,
            mos_max=mos_max,
            lower_better=lower_better,
            dist_type_names=list(dist_type_names) if dist_type_names else None,
        )

    def read_database(self) -> Database:
        return read_csv_database(self.root, **self.table_options)


class PyiqaDataModule(IQADataModule):
    """A folder prepared for pyiqa: ``root`` = dataroot_target, plus its meta-info CSV and split pkl."""

    def __init__(
        self,
        root,
        meta_info_file: str,
        split_file: str | None = None,
        split_index: int = 1,
        name: str = "pyiqa",
        mos_min: float | None = None,
        mos_max: float | None = None,
        lower_better: bool = False,
        **kwargs,
    ):
        super().__init__(root, **kwargs)
        self.meta_options = dict(
            meta_info_file=meta_info_file,
            split_file=split_file,
            split_index=split_index,
            name=name,
            mos_min=mos_min,
            mos_max=mos_max,
            lower_better=lower_better,
        )

    def read_database(self) -> Database:
        return read_pyiqa_meta(self.root, **self.meta_options)


class DemoDataModule(CsvDataModule):
    """The embedded synthetic demo (``mfe_iqa.data.demo``): generated under ``root`` on first use,
    then read through the generic CSV reader like any user database.
    """

    def __init__(
        self,
        root,
        num_refs: int | None = None,
        dist_types: Sequence[str] = DEFAULT_DIST_TYPES,
        levels: Sequence[int] = (1, 2, 3, 4, 5),
        demo_short_side: int = 224,
        demo_seed: int = 0,
        **kwargs,
    ):
        self.demo_options = dict(
            num_refs=num_refs,
            dist_types=list(dist_types),
            levels=list(levels),
            short_side=int(demo_short_side),
            seed=int(demo_seed),
        )
        super().__init__(
            root,
            label_file=LABEL_FILE,
            image_dir="images",
            name="demo",
            content_column="reference",
            dist_type_column="dist_type",
            dist_level_column="dist_level",
            mos_min=DEMO_MOS_RANGE[0],
            mos_max=DEMO_MOS_RANGE[1],
            lower_better=False,
            dist_type_names=list(dist_types),
            **kwargs,
        )

    @property
    def pristine_dir(self) -> Path:
        return ensure_demo(self.root, **self.demo_options) / "pristine"

    def pretrain_images(self) -> list[Path]:
        """The pristine references of the training split's contents (never a val or test reference)."""
        contents = sorted({str(it.content_id) for it in self.train_items})
        paths = [self.pristine_dir / f"{c}.png" for c in contents]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"demo pristine references missing: {missing}; delete {self.root} and rerun"
            )
        return paths

    def prepare_data(self) -> None:
        ensure_demo(self.root, **self.demo_options)

    def read_database(self) -> Database:
        ensure_demo(self.root, **self.demo_options)
        return super().read_database()
