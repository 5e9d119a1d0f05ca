"""MFENet: QEN (VAN) enhanced by DAN features through AFF and by HFEN features through FFM; and a plain baseline.

Data flow (x in [0, 1], (B, 3, H, W)):

    DAN(x)  -> [d_1..d_4] at 1/4..1/32, dist_logits
    HFEN(x) -> [f_1..f_k] at 1/4..1/2^(k+1), hf_pred (B, 1, H, W)
    QEN:  q = norm(x);  for stage i: q = VAN stage i(q)
                        if i in fuse_stages: q = AFF(q, P(d_i)); q = FFM(q, P(f_i))
          score = head(q)                                     (B,)

P is a 1x1 conv + BN to the QEN width plus a bilinear resize to the QEN resolution when they differ.
The fused map is what the next VAN stage consumes, so the auxiliary branches steer every later stage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from torch import nn

from mfe_iqa.models.dan import DistortionAwareNetwork
from mfe_iqa.models.fusion import FUSION_KINDS, HF_FUSION_KINDS, BranchProjection, build_fusion
from mfe_iqa.models.heads import RegressionHead, StatsLinearHead
from mfe_iqa.models.high_frequency import HighFrequencyExtractionNetwork, HighFrequencyTarget
from mfe_iqa.models.outputs import MFENetOutput
from mfe_iqa.models.van import VAN

QEN_DEFAULTS: dict[str, Any] = {"variant": "van_b2", "pretrained_path": None, "drop_path_rate": 0.1}
DAN_DEFAULTS: dict[str, Any] = {
    "backbone": "resnet50",
    "out_indices": [1, 2, 3, 4],
    "pretrained_ckpt": None,
    "pretrained_path": None,
    "freeze": False,
    "num_dist_types": 0,
}
HFEN_DEFAULTS: dict[str, Any] = {"stem_channels": 16, "channels": [32, 64, 128, 256], "target_sigma": 1.5}
HEAD_DEFAULTS: dict[str, Any] = {"hidden_dims": [512], "dropout": 0.1, "pooling": "avg"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def merge_options(name: str, given: Mapping | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults updated by ``given`` (a dict or an OmegaConf DictConfig); an unknown key is an error naming it."""
    if given is None:
        return dict(defaults)
    given = _to_container(given)
    if not isinstance(given, Mapping):
        raise TypeError(f"model.{name} must be a mapping of options, got {type(given).__name__}.")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"Unknown option(s) model.{name}.{unknown}; valid keys are {sorted(defaults)}.")
    return {**defaults, **given}


def _to_container(obj: Any) -> Any:
    """Plain Python containers from an OmegaConf node (resolved), anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf ships with hydra, a hard dependency
        return obj
    if isinstance(obj, DictConfig | ListConfig):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def _nearest_reduction(reductions: Sequence[int], target: int) -> int:
    """Index of the feature whose stride is closest to ``target`` on a log scale."""
    return min(range(len(reductions)), key=lambda j: abs(math.log2(reductions[j]) - math.log2(target)))


class MFENet(nn.Module):
    """Multi-task Feature Enhancement Network for no-reference IQA.

    Options (each also a key under ``conf/model/*.yaml``):
      qen:  variant (van_b0..van_b3), pretrained_path (official VAN checkpoint), drop_path_rate
      dan:  backbone (timm name), out_indices, pretrained_ckpt (our dan.pt), pretrained_path (timm weights),
            freeze, num_dist_types (0 = no distortion head)
      hfen: stem_channels, channels (per stage), target_sigma (Gaussian of the high-frequency target)
      head: hidden_dims, dropout, pooling (avg | avgmax)
      use_hfen, use_dan: switch the auxiliary branches off (their outputs become None)
      fusion: how DAN features enter QEN (aff | iaff | add | concat)
      hf_fusion: how HFEN features enter QEN (ffm | add | concat)
      fuse_stages: QEN stage indices (0..3) after which the branches are fused
      fusion_reduction: channel bottleneck ratio of MS-CAM and FFM
      hf_gate_init: None, or the initial value of a learnable per-channel scale on what FFM adds
                    (0.0: the HFEN path starts closed and opens as it learns; needs hf_fusion=ffm)
      dan_stats_head: add a linear score from the DAN's pooled stage statistics (mean and std per channel,
                    standardized) to the head's score; starts at zero (``StatsLinearHead``); needs use_dan
    """

    def __init__(
        self,
        qen: Mapping | None = None,
        dan: Mapping | None = None,
        hfen: Mapping | None = None,
        head: Mapping | None = None,
        use_hfen: bool = True,
        use_dan: bool = True,
        fusion: str = "aff",
        hf_fusion: str = "ffm",
        fuse_stages: Sequence[int] = (0, 1, 2, 3),
        fusion_reduction: int = 4,
        hf_gate_init: float | None = None,
        dan_stats_head: bool = False,
    ) -> None:
        super().__init__()
        qen_opts = merge_options("qen", qen, QEN_DEFAULTS)
        dan_opts = merge_options("dan", dan, DAN_DEFAULTS)
        hfen_opts = merge_options("hfen", hfen, HFEN_DEFAULTS)
        head_opts = merge_options("head", head, HEAD_DEFAULTS)
        fuse_stages = sorted({int(i) for i in _to_container(fuse_stages)})
        if any(i < 0 or i > 3 for i in fuse_stages):
            raise ValueError(f"model.fuse_stages={fuse_stages}: QEN stage indices must be in 0..3.")
        if fusion not in FUSION_KINDS:
            raise ValueError(f"model.fusion='{fusion}': choose one of {FUSION_KINDS}.")
        if hf_fusion not in HF_FUSION_KINDS:
            raise ValueError(f"model.hf_fusion='{hf_fusion}': choose one of {HF_FUSION_KINDS}.")
        if hf_gate_init is not None and hf_fusion != "ffm":
            raise ValueError(
                f"model.hf_gate_init={hf_gate_init} gates FFM, but model.hf_fusion='{hf_fusion}'; "
                "set model.hf_fusion=ffm or model.hf_gate_init=null."
            )
        self.use_hfen = bool(use_hfen)
        self.use_dan = bool(use_dan)
        self.fuse_stages = fuse_stages
        self.fusion_kind = fusion
        self.hf_fusion_kind = hf_fusion

        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.qen = VAN(
            qen_opts["variant"],
            num_classes=0,
            drop_path_rate=float(qen_opts["drop_path_rate"]),
            pretrained_path=qen_opts["pretrained_path"],
        )
        widths = self.qen.embed_dims

        self.dan: DistortionAwareNetwork | None = None
        self.dan_projs = nn.ModuleDict()
        self.dan_fusions = nn.ModuleDict()
        self.dan_stage_index: dict[int, int] = {}
        if self.use_dan:
            self.dan = DistortionAwareNetwork(
                backbone=dan_opts["backbone"],
                out_indices=tuple(dan_opts["out_indices"]),
                pretrained_ckpt=dan_opts["pretrained_ckpt"],
                pretrained_path=dan_opts["pretrained_path"],
                freeze=bool(dan_opts["freeze"]),
                num_dist_types=int(dan_opts["num_dist_types"] or 0),
            )
            for i in fuse_stages:
                j = _nearest_reduction(self.dan.reductions, self.qen.reductions[i])
                self.dan_stage_index[i] = j
                self.dan_projs[str(i)] = BranchProjection(self.dan.channels[j], widths[i])
                self.dan_fusions[str(i)] = build_fusion(fusion, widths[i], fusion_reduction)

        self.hfen: HighFrequencyExtractionNetwork | None = None
        self.hf_target: HighFrequencyTarget | None = None
        self.hf_projs = nn.ModuleDict()
        self.hf_fusions = nn.ModuleDict()
        if self.use_hfen:
            channels = list(hfen_opts["channels"])
            num_stages = max(fuse_stages, default=0) + 1
            if num_stages > len(channels):
                raise ValueError(
                    f"model.hfen.channels has {len(channels)} entries but fuse_stages needs {num_stages}."
                )
            self.hfen = HighFrequencyExtractionNetwork(int(hfen_opts["stem_channels"]), channels, num_stages)
            self.hf_target = HighFrequencyTarget(float(hfen_opts["target_sigma"]))
            for i in fuse_stages:
                self.hf_projs[str(i)] = BranchProjection(self.hfen.channels[i], widths[i])
                self.hf_fusions[str(i)] = build_fusion(
                    hf_fusion, widths[i], fusion_reduction, gate_init=hf_gate_init
                )

        self.head = RegressionHead(
            widths[-1],
            hidden_dims=list(head_opts["hidden_dims"]),
            dropout=float(head_opts["dropout"]),
            pooling=head_opts["pooling"],
        )
        self.dan_stats: StatsLinearHead | None = None
        if dan_stats_head:
            if self.dan is None:
                raise ValueError(
                    "model.dan_stats_head=true reads the DAN's features: it needs model.use_dan=true."
                )
            self.dan_stats = StatsLinearHead(self.dan.channels)  # built last and draws no random numbers

    def forward(self, x: torch.Tensor) -> MFENetOutput:
        """x: (B, 3, H, W) in [0, 1], any H and W >= 32 -> MFENetOutput."""
        dan_feats, dist_logits = None, None
        if self.dan is not None:
            if self.dan.frozen:
                with torch.no_grad():
                    dan_feats, _ = self.dan(x)  # [(B, C_j, H/r_j, W/r_j)], no graph for a frozen backbone
                if self.dan.dist_head is not None:
                    dist_logits = self.dan.dist_head(dan_feats[-1].mean(dim=(2, 3)))  # (B, num_dist_types)
            else:
                dan_feats, dist_logits = self.dan(x)
        hf_feats, hf_pred, hf_target = None, None, None
        if self.hfen is not None and self.hf_target is not None:
            hf_feats, hf_pred = self.hfen(x)  # [(B, c_i, H/r_i, W/r_i)], (B, 1, H, W)
            hf_target = self.hf_target(x)  # (B, 1, H, W), fixed

        q = (x - self.mean) / self.std
        for i in range(self.qen.num_stages):
            q = self.qen.forward_stage(i, q)  # (B, C_i, ceil(H/r_i), ceil(W/r_i))
            key = str(i)
            size = (q.shape[-2], q.shape[-1])
            if dan_feats is not None and key in self.dan_fusions:
                d = self.dan_projs[key](dan_feats[self.dan_stage_index[i]], size)
                q = self.dan_fusions[key](q, d)
            if hf_feats is not None and key in self.hf_fusions:
                q = self.hf_fusions[key](q, self.hf_projs[key](hf_feats[i], size))
        score = self.head(q).float()  # (B,), float32 even under autocast (metrics overflow in half precision)
        if self.dan_stats is not None and dan_feats is not None:
            score = score + self.dan_stats(dan_feats)
        return MFENetOutput(score=score, hf_pred=hf_pred, hf_target=hf_target, dist_logits=dist_logits)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split for per-module learning rates.

        backbone: the QEN VAN; dan: the DAN backbone (the branch that arrives pre-trained by contrastive
        learning, ``system.dan_lr_mult``); stats_head: the DAN-statistics head (``dan_stats_head``; the path
        the linear-probe stage of LP-FT starts, ``system.stats_head_lr_mult``); head: fusion modules,
        projections, HFEN, regression head and distortion head (new modules). Frozen parameters are left out.
        """
        qen_ids = {id(p) for p in self.qen.parameters()}
        dan_ids = {id(p) for p in self.dan.backbone.parameters()} if self.dan is not None else set()
        stats_ids = {id(p) for p in self.dan_stats.parameters()} if self.dan_stats is not None else set()
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "dan": [], "stats_head": [], "head": []}
        for p in self.parameters():
            if p.requires_grad:
                key = (
                    "backbone" if id(p) in qen_ids
                    else "dan" if id(p) in dan_ids
                    else "stats_head" if id(p) in stats_ids
                    else "head"
                )  # fmt: skip
                groups[key].append(p)
        return groups


class PlainIQANet(nn.Module):
    """Plain baseline: one timm backbone (from scratch unless ``pretrained_path``) + the MFENet regression head.

    No DAN, no HFEN, no fusion: the reference point that shows what the multi-task branches add.
    ``dan_stats_head`` is accepted so that one preset can set MFENet's option for every model it trains (e.g.
    ``${oc.select:model.use_dan,false}``); it must be false here: there is no DAN to read.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained_path: str | None = None,
        head: Mapping | None = None,
        dan_stats_head: bool = False,
    ) -> None:
        super().__init__()
        if dan_stats_head:
            raise ValueError(
                "model.dan_stats_head=true reads a DAN's features: the plain model has none (use model=mfenet_tiny)."
            )
        head_opts = merge_options("head", head, HEAD_DEFAULTS)
        self.backbone_name = backbone
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="")
        if pretrained_path:
            self._load_weights(pretrained_path)
        cfg = timm.data.resolve_model_data_config(self.backbone)
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.head = RegressionHead(
            self.backbone.num_features,
            hidden_dims=list(head_opts["hidden_dims"]),
            dropout=float(head_opts["dropout"]),
            pooling=head_opts["pooling"],
        )

    def _load_weights(self, path: str) -> None:
        """A local timm weight file; the classifier is dropped, every other key must match."""
        from mfe_iqa.models.van import extract_state_dict

        obj = torch.load(path, map_location="cpu", weights_only=False)
        state = extract_state_dict(obj, path)
        own = self.backbone.state_dict()
        state = {
            k: v for k, v in state.items() if k in own or not k.startswith(("fc.", "head", "classifier"))
        }
        result = self.backbone.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise RuntimeError(
                f"'{path}' does not fit timm backbone '{self.backbone_name}': missing {result.missing_keys[:8]}, "
                f"unexpected {result.unexpected_keys[:8]}. Change model.backbone or the weight file."
            )

    def forward(self, x: torch.Tensor) -> MFENetOutput:
        """x: (B, 3, H, W) in [0, 1] -> MFENetOutput with only ``score`` (B,) set."""
        feats = self.backbone.forward_features((x - self.mean) / self.std)  # (B, C, h, w)
        return MFENetOutput(score=self.head(feats).float())  # (B,)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """backbone: the timm network; head: the regression head (trainable parameters only)."""
        return {
            "backbone": [p for p in self.backbone.parameters() if p.requires_grad],
            "head": [p for p in self.head.parameters() if p.requires_grad],
        }
