"""Export a trained network's score output to TorchScript and ONNX, and check both against PyTorch.

The exported graph takes (B, 3, H, W) float32 RGB in [0, 1] (the network normalizes its own input,
so deployments feed the same tensors as prediction) and returns (B,) scores on [0, 1]; the batch axis
is dynamic. Verification runs the exports (TorchScript in PyTorch, ONNX in onnxruntime) on sample
views at a batch size other than the example's, and records the largest absolute score difference.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

TORCHSCRIPT_METHODS = ("trace", "script")
# dynamo: torch.export-based (PyTorch's recommended path); torchscript: the older tracer, several times faster
ONNX_EXPORTERS = ("dynamo", "torchscript")
INPUT_NAME = "image"
OUTPUT_NAME = "score"


class ExportMismatchError(RuntimeError):
    """An exported model whose scores differ from PyTorch's by more than the tolerance."""


class ScoreOnly(nn.Module):
    """The network reduced to its deployable output: (B, 3, H, W) in [0, 1] -> (B,) score."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out.score if hasattr(out, "score") else out


def export_torchscript(
    net: nn.Module, example: torch.Tensor, path: str | Path, method: str = "trace"
) -> Path:
    """Write a TorchScript file of ``ScoreOnly(net)``; ``trace`` runs ``example`` (B, 3, H, W) through it."""
    if method not in TORCHSCRIPT_METHODS:
        raise ValueError(f"torchscript method '{method}' is not one of {TORCHSCRIPT_METHODS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = ScoreOnly(net).eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated.*")
        if method == "trace":
            with torch.no_grad():
                scripted = torch.jit.trace(model, example, check_trace=False)
        else:
            scripted = torch.jit.script(model)
        scripted.save(str(path))
    return path


def export_onnx(
    net: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    opset: int | None = None,
    dynamic_hw: bool = False,
    exporter: str = "dynamo",
) -> Path:
    """Write an ONNX file of ``ScoreOnly(net)`` with a dynamic batch axis (and dynamic H, W if asked)."""
    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"onnx exporter '{exporter}' is not one of {ONNX_EXPORTERS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = ScoreOnly(net).eval()
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: {0: "batch"}},
                **names,
            )
            return path
        dims = {0: torch.export.Dim("batch", min=1)}
        if dynamic_hw:
            dims.update({2: torch.export.Dim("height", min=32), 3: torch.export.Dim("width", min=32)})
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            dynamic_shapes=(dims,),
            external_data=False,
            verbose=False,
            **names,
        )
    program.save(str(path), external_data=False)
    return path


def _onnx_session(path: Path):
    try:
        import onnxruntime as ort
    except ImportError as err:  # an optional dependency: pip install 'mfe-iqa[export]'
        raise ImportError("checking an ONNX export needs onnxruntime: pip install 'mfe-iqa[export]'") from err
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@torch.no_grad()
def compare_exports(
    net: nn.Module,
    images: torch.Tensor,
    torchscript_path: str | Path | None = None,
    onnx_path: str | Path | None = None,
) -> dict[str, float]:
    """Max |score_export - score_pytorch| over ``images`` (N, 3, H, W) in [0, 1], per export that exists."""
    net = net.eval()
    reference = ScoreOnly(net)(images).float().cpu().numpy()  # (N,)
    diffs: dict[str, float] = {}
    if torchscript_path is not None:
        loaded = torch.jit.load(str(torchscript_path), map_location="cpu")
        diffs["torchscript"] = float(np.abs(loaded(images).float().numpy() - reference).max())
    if onnx_path is not None:
        session = _onnx_session(Path(onnx_path))
        got = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy().astype(np.float32)})[0]
        diffs["onnx"] = float(np.abs(got.reshape(-1) - reference).max())
    return diffs
