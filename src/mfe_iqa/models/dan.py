"""DAN: the Distortion-Aware Network, a timm CNN returning multi-stage features.

The same class serves MFENet and the contrastive pre-training system, so a pre-trained DAN loads by key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import timm
import torch
from torch import nn

from mfe_iqa.errors import UserError

DAN_CKPT_FORMAT = "mfe_iqa.dan/1"


class DANCheckpointError(UserError, RuntimeError):
    """A DAN weight file that does not fit the configured backbone."""


def dan_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """16 hex digits of the SHA-256 of a DAN's weights (names, dtypes, shapes and values, in name order).

    It names a pre-trained DAN independently of the file that holds it: the ``dan.pt`` a job pre-trained, the
    copy of it inside ``readout.pt`` and the provenance an IQA checkpoint records for the DAN it started from
    all give the same fingerprint, whatever their paths.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def load_dan_file(path: str | Path) -> dict:
    """Read a DAN checkpoint: our own ``dan.pt`` export, or a Lightning checkpoint of ``DANPretrainModule``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"DAN checkpoint '{path}' does not exist. Run `mfe-iqa-pretrain` first, or set "
            "model.dan.pretrained_ckpt=null to train DAN from its initial weights."
        )
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and obj.get("format") == DAN_CKPT_FORMAT:
        return obj
    if isinstance(obj, dict) and "state_dict" in obj and "mfe_iqa_dan" in obj:
        prefix = "dan.backbone."
        sd = {k[len(prefix) :]: v for k, v in obj["state_dict"].items() if k.startswith(prefix)}
        return {"format": DAN_CKPT_FORMAT, "backbone": obj["mfe_iqa_dan"]["backbone"], "state_dict": sd}
    raise DANCheckpointError(
        f"'{path}' is not a DAN checkpoint: expected a `dan.pt` written by `mfe-iqa-pretrain` "
        f"(format '{DAN_CKPT_FORMAT}') or a DANPretrainModule Lightning checkpoint."
    )


class DistortionAwareNetwork(nn.Module):
    """Any timm backbone through ``features_only=True``; input in [0, 1], normalized with the backbone's own stats.

    ``forward`` returns the list of stage features and the distortion-type logits (None without a head).
    ``freeze=True`` stops gradients and keeps batch-norm statistics fixed (the module stays in eval mode).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        out_indices: Sequence[int] = (1, 2, 3, 4),
        pretrained_ckpt: str | None = None,
        pretrained_path: str | None = None,
        freeze: bool = False,
        num_dist_types: int = 0,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.backbone = timm.create_model(
            backbone, pretrained=False, features_only=True, out_indices=tuple(out_indices)
        )
        self.channels: list[int] = list(self.backbone.feature_info.channels())
        self.reductions: list[int] = list(self.backbone.feature_info.reduction())
        cfg = timm.data.resolve_model_data_config(self.backbone)
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        # the pre-trained DAN this one started from (``dan_fingerprint`` of its weights), None if none was loaded;
        # IQA checkpoints record it, and a read-out checks it is paired with the network of its own run
        self.pretrained_fingerprint: str | None = None
        if pretrained_path:
            self._load_timm_weights(pretrained_path)
        if pretrained_ckpt:
            self.load_pretrained(pretrained_ckpt)
        self.dist_head = nn.Linear(self.channels[-1], num_dist_types) if num_dist_types > 0 else None
        self.frozen = bool(freeze)
        if self.frozen:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            # Lightning (>= 2.2) no longer calls model.train() when fitting starts; it keeps and restores each
            # module's own mode, so a frozen backbone must be put in eval mode here, not only in train()
            self.backbone.eval()

    def _load_timm_weights(self, path: str) -> None:
        """Load a local timm classification weight file (e.g. resnet50 ImageNet) into the feature extractor."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(
                f"model.dan.pretrained_path='{path}' does not exist: give a local timm weight file."
            )
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
            sd = sd.get("state_dict", sd)
        own = self.backbone.state_dict()
        kept = {k: v for k, v in sd.items() if k in own}
        missing = sorted(set(own) - set(kept))
        if missing:
            raise DANCheckpointError(
                f"'{path}' does not fit timm backbone '{self.backbone_name}': {len(missing)} missing keys, "
                f"e.g. {missing[:5]}. Give weights of the same architecture or change model.dan.backbone."
            )
        self.backbone.load_state_dict(kept, strict=True)

    def load_pretrained(self, path: str | Path) -> None:
        """Load DAN weights from our contrastive pre-training, with a clear error when the backbone differs."""
        ckpt = load_dan_file(path)
        if ckpt["backbone"] != self.backbone_name:
            raise DANCheckpointError(
                f"DAN checkpoint '{path}' was pre-trained with backbone '{ckpt['backbone']}', but "
                f"model.dan.backbone is '{self.backbone_name}'. Set model.dan.backbone={ckpt['backbone']} "
                "or pre-train again with the backbone you want."
            )
        result = self.backbone.load_state_dict(ckpt["state_dict"], strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise DANCheckpointError(
                f"DAN checkpoint '{path}' does not match backbone '{self.backbone_name}': "
                f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        self.pretrained_fingerprint = dan_fingerprint(ckpt["state_dict"])

    def export_state(self) -> dict:
        """The ``dan.pt`` payload that ``load_pretrained`` reads back."""
        return {
            "format": DAN_CKPT_FORMAT,
            "backbone": self.backbone_name,
            "state_dict": {k: v.detach().cpu() for k, v in self.backbone.state_dict().items()},
        }

    def train(self, mode: bool = True) -> DistortionAwareNetwork:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # frozen: batch-norm running statistics stay as pre-trained
        return self

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        feats = self.backbone((x - self.mean) / self.std)  # list of (B, C_i, H/r_i, W/r_i)
        logits = None
        if self.dist_head is not None:
            logits = self.dist_head(feats[-1].mean(dim=(2, 3)))
        return feats, logits
