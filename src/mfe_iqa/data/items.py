"""The one table every database reader produces, and the batch layout every data module yields."""

from __future__ import annotations

from dataclasses import dataclass, field

# Keys of the batch dictionaries yielded by every IQA data loader.
#   image:      float32 in [0, 1]; train: (B, 3, h, w); val/test/predict: (B, K, 3, h, w) with K crops per image
#   mos:        (B,) float32, normalized MOS in [0, 1], higher = better
#   dist_type:  (B,) int64, 0-based distortion type, -1 where the database has no label
#   index:      (B,) int64, position of the image in its dataset (per-image metrics group by it)
BATCH_IMAGE = "image"
BATCH_MOS = "mos"
BATCH_DIST_TYPE = "dist_type"
BATCH_INDEX = "index"
BATCH_IMAGE_DEGRADED = "image_degraded"  # the crop's degraded twin (data.degraded_twin)

NO_LABEL = -1


@dataclass(frozen=True)
class IQAItem:
    """One rated image of an IQA database.

    ``mos`` is normalized to [0, 1] with higher = better (DMOS databases are flipped);
    ``mos_raw`` keeps the value exactly as the label file gives it.
    ``content_id`` names the scene: the reference image for synthetic databases,
    the image itself for authentic ones. Splits never put one content id in two parts.
    """

    path: str
    mos: float
    mos_raw: float
    content_id: str
    dist_type: int = NO_LABEL  # 0-based index into DatabaseInfo.dist_type_names
    dist_level: int = NO_LABEL  # 1-based severity level where the database has one


@dataclass(frozen=True)
class DatabaseInfo:
    """What a reader knows about its database beyond the items."""

    name: str
    kind: str  # "synthetic" (split by reference content) or "authentic" (split by image)
    mos_min: float  # raw-scale range used for normalization: mos = (raw - min) / (max - min), flipped if lower_better
    mos_max: float
    lower_better: bool = False
    dist_type_names: tuple[str, ...] = field(default_factory=tuple)

    @property
    def num_dist_types(self) -> int:
        return len(self.dist_type_names)

    def normalize(self, raw: float) -> float:
        x = (raw - self.mos_min) / (self.mos_max - self.mos_min)
        return 1.0 - x if self.lower_better else x

    def denormalize(self, mos: float) -> float:
        x = 1.0 - mos if self.lower_better else mos
        return self.mos_min + x * (self.mos_max - self.mos_min)
