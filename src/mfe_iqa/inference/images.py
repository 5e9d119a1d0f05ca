"""Views of in-memory float tensors, placed exactly as the evaluation pipeline places them.

Files and uint8 images go through the data package's ``EvalTransform`` (so prediction scores an image
with the same views as evaluation does); float tensors in [0, 1] would lose precision as uint8, so
they are cropped here with the same crop positions (``EvalTransform.crop_boxes``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mfe_iqa.data.transforms import EvalTransform

# Crop positions of in-memory images are seeded with this key (files use their ``image_key``).
IN_MEMORY_KEY = ""


def float_tensor_views(
    image: torch.Tensor, transform: EvalTransform, key: str = IN_MEMORY_KEY
) -> torch.Tensor:
    """(3, H, W) float in [0, 1] -> (K, 3, h, w) views following ``transform``'s mode, size and crop positions."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected one RGB image of shape (3, H, W), got {tuple(image.shape)}")
    image = image.float()
    if transform.mode == "full":
        return image[None]
    c = transform.crop_size
    if transform.mode == "resize":
        return F.interpolate(image[None], size=(c, c), mode="area")  # (1, 3, c, c)
    h, w = image.shape[1:]
    if min(h, w) < c:  # as EvalTransform: bicubic upscale of the shorter side to the crop size
        scale = c / min(h, w)
        size = (max(c, int(-(-h * scale // 1))), max(c, int(-(-w * scale // 1))))
        image = F.interpolate(image[None], size=size, mode="bicubic", align_corners=False)[0].clamp_(0, 1)
        h, w = size
    return torch.stack([image[:, y : y + c, x : x + c] for y, x in transform.crop_boxes(h, w, key)])
