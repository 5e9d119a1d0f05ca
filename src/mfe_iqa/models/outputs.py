"""The typed output of MFENet's forward pass."""

from __future__ import annotations

from typing import NamedTuple

import torch


class MFENetOutput(NamedTuple):
    """What the losses need from one forward pass.

    score:      (B,) predicted quality, trained towards the normalized MOS in [0, 1]
    hf_pred:    (B, 1, H, W) HFEN decoder's reconstruction of the input's high-frequency component, or None
    hf_target:  (B, 1, H, W) the fixed (non-learned) high-frequency component of the input, or None
    dist_logits:(B, num_dist_types) DAN distortion-type logits, or None when the head is off
    """

    score: torch.Tensor
    hf_pred: torch.Tensor | None = None
    hf_target: torch.Tensor | None = None
    dist_logits: torch.Tensor | None = None
