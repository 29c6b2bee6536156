"""A user's network stored as a file (feature extractor or generator): TorchScript or ONNX.

The format is decided by the file's content, never by its suffix: torch.jit.save writes a zip archive
(it starts with ``PK\\x03\\x04``); anything else is handed to onnxruntime as an ONNX protobuf. So a
TorchScript file named ``.onnx`` runs as TorchScript and vice versa. TorchScript is loaded with
``torch.jit.load`` only (never unpickled); ONNX with :class:`models.onnx_model.OnnxNetwork`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from models.onnx_model import NetworkFileError, OnnxNetwork

ModelFormat = Literal["torchscript", "onnx"]
Network = Callable[[torch.Tensor], torch.Tensor]
_ZIP_MAGIC = b"PK\x03\x04"


def model_format(path: str) -> ModelFormat:
    """``torchscript`` for a zip archive, ``onnx`` for anything else (onnxruntime then parses it)."""
    with open(path, "rb") as file:
        return "torchscript" if file.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC else "onnx"


def load_torchscript(path: str, device: torch.device | str, what: str) -> torch.jit.ScriptModule:
    """Load a TorchScript module, with a clear error when the file is not one. Never unpickles."""
    if not Path(path).is_file():
        raise ValueError(f"{what}: file not found: {path}")
    try:
        module = torch.jit.load(path, map_location=device)
    except (RuntimeError, ValueError) as error:
        raise NetworkFileError(
            what, path, "is not a TorchScript file (save it with torch.jit.script/trace and .save)"
        ) from error
    return module


def load_network(path: str, device: torch.device | str, what: str, input_rank: int,
                 output_rank: int) -> Network:  # fmt: skip
    """The network in ``path`` (format by content) in eval mode; an ONNX model's declared input and
    output ranks are checked here (TorchScript declares none: its output is checked when it runs)."""
    if not Path(path).is_file():
        raise ValueError(f"{what}: file not found: {path}")
    if model_format(path) == "torchscript":
        module: Network = load_torchscript(path, device, what).eval()
        return module
    network = OnnxNetwork(path, device, what, input_rank)
    network.check_output_rank(output_rank)
    return network
