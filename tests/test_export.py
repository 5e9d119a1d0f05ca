"""TorchScript and ONNX exports score as PyTorch does (checked with onnxruntime), on mfenet_tiny."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from inference_helpers import TinyConvNet, torch_threads, write_image, write_iqa_checkpoint
from mfe_iqa.inference.export import compare_exports, export_onnx, export_torchscript

ort = pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def mfenet_tiny_cfg() -> dict:
    """The mfenet_tiny preset, resolved as a training run stores it in its checkpoint (no data config)."""
    cfg = OmegaConf.load(REPO / "conf" / "model" / "mfenet_tiny.yaml")
    cfg.dan.num_dist_types = 0
    return OmegaConf.to_container(cfg, resolve=True)


def test_export_mfenet_tiny_matches_pytorch(tmp_path, compose_cfg):
    from hydra.utils import instantiate

    from mfe_iqa.cli.export import export

    torch.manual_seed(0)
    model_cfg = mfenet_tiny_cfg()
    net = instantiate(model_cfg).eval()
    ckpt = write_iqa_checkpoint(tmp_path / "tiny.ckpt", net, model_cfg)
    rng = np.random.default_rng(0)
    for i in range(3):
        write_image(tmp_path / "samples" / f"{i}.png", rng.integers(0, 256, (40, 44, 3), dtype=np.uint8))
    (tmp_path / "samples" / "broken.png").write_bytes(b"no png")

    cfg = compose_cfg(
        "export",
        [
            f"ckpt_path={ckpt}",
            "input_size=32",
            "example_batch=2",
            "onnx_exporter=torchscript",  # the dynamo exporter is exercised below on a small net (faster)
            f"verify.samples={tmp_path / 'samples'}",
        ],
    )
    report = export(cfg)
    out = Path(cfg.paths.output_dir)
    assert json.loads((out / "export_report.json").read_text())["verify"]["passed"] is True
    assert report["verify"]["num_images"] == 3 and len(report["verify"]["skipped"]) == 1
    assert set(report["verify"]["max_abs_diff"]) == {"torchscript", "onnx"}
    assert max(report["verify"]["max_abs_diff"].values()) <= 1e-4

    # Independently of the report: the exports accept another batch size and match the network.
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x).score.numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    np.testing.assert_allclose(session.run(["score"], {"image": x.numpy()})[0], expected, atol=1e-4)
    scripted = torch.jit.load(str(out / "model.ts"))
    with torch.no_grad():
        np.testing.assert_allclose(scripted(x).numpy(), expected, atol=1e-4)


def test_compare_exports_detects_a_different_model(tmp_path):
    torch.manual_seed(0)
    net, other = TinyConvNet().eval(), TinyConvNet().eval()
    x = torch.rand(4, 3, 32, 32)
    path = export_torchscript(other, x[:2], tmp_path / "other.ts")
    with torch.no_grad():
        truth = float((net(x).score - other(x).score).abs().max())
    diffs = compare_exports(net, x, torchscript_path=path)
    assert diffs["torchscript"] == pytest.approx(truth, abs=1e-6) and truth > 1e-4


def test_dynamo_onnx_export_has_a_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    net = TinyConvNet().eval()
    path = export_onnx(net, torch.rand(2, 3, 32, 32), tmp_path / "tiny.onnx", exporter="dynamo")
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = net(x).score.numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["score"], {"image": x.numpy()})[0], expected, atol=1e-5)
    assert compare_exports(net, x, onnx_path=path)["onnx"] <= 1e-5
