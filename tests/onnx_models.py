"""Small networks saved both as TorchScript and as ONNX, and hostile ONNX files, for the ONNX tests.

torch.onnx.export (the TorchScript-based exporter, dynamo=False) needs the ``onnx`` package, a test
dependency; hostile graphs are written with onnx.helper.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn


class ConvFeatures(nn.Module):
    """images (B, 1, H, W) -> features (B, 6): a conv, ReLU, global mean pool and a linear map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.conv = nn.Conv2d(1, 4, kernel_size=3, padding=1)
        self.linear = nn.Linear(4, 6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.relu(self.conv(images)).mean(dim=(2, 3)))


class SpatialFeatures(nn.Module):
    """images (B, 1, H, W) -> (B, 4, H, W): the wrong rank for an embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)


class LinearGenerator(nn.Module):
    """z (B, latent) -> images (B, 1, side, side) in [0, 1]."""

    def __init__(self, latent_dim: int = 4, side: int = 8) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.side = side
        self.linear = nn.Linear(latent_dim, side * side)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(z)).view(z.shape[0], 1, self.side, self.side)


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, *, dynamic_batch: bool = True) -> Path:
    """``module`` as an ONNX file (one input ``x``, one output ``y``; batch axis dynamic unless told)."""
    axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter warns that it is legacy
        torch.onnx.export(module.eval(), (example,), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes=axes, dynamo=False)  # fmt: skip
    return path


def save_torchscript(module: nn.Module, path: Path) -> Path:
    torch.jit.script(module.eval()).save(str(path))
    return path


def _image_to_features() -> tuple[list[Any], list[Any]]:
    """Declared input x (b, 1, 8, 8) and output y (b, 6) of a hand-written graph."""
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, 8, 8])
    return [image], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 6])]


def custom_op_model(path: Path) -> Path:
    """A graph whose only node is an operator of a domain onnxruntime does not know (a custom op)."""
    from onnx import helper

    node = helper.make_node("Exfiltrate", ["x"], ["y"], domain="com.example.evil")
    graph = helper.make_graph([node], "custom", *_image_to_features())
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example.evil", 1)]
    path.write_bytes(helper.make_model(graph, opset_imports=opsets).SerializeToString())
    return path


def external_data_model(path: Path, location: str) -> Path:
    """A flatten + matmul extractor whose weight lives in an external file at ``location``."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [64, 6], [0.0] * (64 * 6))
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    nodes = [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["y"])]
    graph = helper.make_graph(nodes, "external", *_image_to_features(), [weight])
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    return path


def not_a_model(path: Path) -> Path:
    """A valid protobuf message that is not a ModelProto (an ONNX tensor)."""
    from onnx import TensorProto, helper

    path.write_bytes(helper.make_tensor("t", TensorProto.FLOAT, [2], [1.0, 2.0]).SerializeToString())
    return path
