"""Networks of mfe-iqa: MFENet (QEN on VAN, DAN, HFEN, AFF/FFM fusion), its parts, and a plain baseline."""

from mfe_iqa.models.dan import DistortionAwareNetwork
from mfe_iqa.models.fusion import AFF, FFM, IAFF, MSCAM, AddFusion, ConcatFusion
from mfe_iqa.models.heads import RegressionHead
from mfe_iqa.models.high_frequency import (
    HighFrequencyExtractionNetwork,
    HighFrequencyModule,
    HighFrequencyTarget,
)
from mfe_iqa.models.mfenet import MFENet, PlainIQANet
from mfe_iqa.models.outputs import MFENetOutput
from mfe_iqa.models.van import VAN, VAN_VARIANTS

__all__ = [
    "AFF",
    "FFM",
    "IAFF",
    "MSCAM",
    "VAN",
    "VAN_VARIANTS",
    "AddFusion",
    "ConcatFusion",
    "DistortionAwareNetwork",
    "HighFrequencyExtractionNetwork",
    "HighFrequencyModule",
    "HighFrequencyTarget",
    "MFENet",
    "MFENetOutput",
    "PlainIQANet",
    "RegressionHead",
]
