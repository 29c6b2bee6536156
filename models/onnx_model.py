"""A user's ONNX network run with onnxruntime, shaped like a TorchScript module for its callers.

``OnnxNetwork(path, device, what, input_rank)`` takes a torch tensor batch (B, ...) and returns a torch
tensor on the batch's device. onnxruntime is an optional import (like scipy): only this module needs it.

Safety: the model is read as bytes (the caller bounds its size) and parsed by onnxruntime, which runs a
fixed set of built-in operators; no custom-op library is ever registered, so an operator of an unknown
domain fails to load. External tensor data is resolved inside a fresh empty folder, so a model cannot
read files next to it or in the working directory. Nothing is written: no optimised-model file, no
profile. Only the CPU and CUDA execution providers are used (never a remote one).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import onnxruntime

DEFAULT_BATCH = 1024
_MESSAGE_CHARS = 300


class NetworkFileError(ValueError):
    """A model file that cannot be used; ``problem`` reads after the file's name and holds no path."""

    def __init__(self, what: str, path: str, problem: str) -> None:
        super().__init__(f"{what}: {path} {problem}")
        self.problem = problem


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:  # an optional dependency, named in pyproject.toml
        raise ImportError("ONNX models need onnxruntime (pip install onnxruntime)") from error
    return onnxruntime


def _session_options(ort: Any, external_data_dir: str) -> onnxruntime.SessionOptions:
    options = ort.SessionOptions()
    # The worker sized torch's thread pool for its machine share; onnxruntime gets the same.
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_profiling = False
    options.optimized_model_filepath = ""  # never write the optimised graph
    options.log_severity_level = 3  # errors only; a refused model is reported by the exception
    options.add_session_config_entry("session.load_model_format", "ONNX")
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared machines
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     external_data_dir)  # fmt: skip
    return options


def _providers(ort: Any, device: torch.device) -> list[str]:
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _dims(shape: Any) -> tuple[int | None, ...] | None:
    """Declared dims (None for a symbolic or unknown one); None when even the rank is unknown."""
    if not isinstance(shape, list | tuple) or not shape:
        return None
    return tuple(dim if isinstance(dim, int) and dim > 0 else None for dim in shape)


def _describe(dims: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if dim is None else str(dim) for dim in dims) + ")"


class OnnxNetwork:
    """One-input, one-output float ONNX network; batches of any size are cut to what it accepts."""

    def __init__(self, path: str, device: torch.device | str, what: str, input_rank: int) -> None:
        ort = _onnxruntime()
        self.what, self.path, self.device = what, path, torch.device(device)
        data = Path(path).read_bytes()
        with tempfile.TemporaryDirectory(prefix="memaudit-onnx-") as empty:
            try:
                session = ort.InferenceSession(data, _session_options(ort, empty),
                                               providers=_providers(ort, self.device))  # fmt: skip
            except Exception as error:  # onnxruntime raises its own exception classes
                # No server path in the message: the empty folder is named by what it is.
                detail = str(error).split("\n")[0].replace(empty, "<no external data>")
                detail = detail.replace(str(Path(empty).parent), "<tmp>")[:_MESSAGE_CHARS]
                raise self._error(f"is not a TorchScript file or a loadable ONNX model ({detail})") from None
        self.session = session
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise self._error(f"is an ONNX model with {len(inputs)} inputs and {len(outputs)} outputs; "
                              "it must take one tensor and return one")  # fmt: skip
        if inputs[0].type != "tensor(float)":
            raise self._error(f"is an ONNX model whose input is {inputs[0].type}; it must take tensor(float)")
        input_dims = _dims(inputs[0].shape)
        if input_dims is None or len(input_dims) != input_rank:
            got = "an unknown rank" if input_dims is None else f"rank {len(input_dims)}"
            raise self._error(f"is an ONNX model whose input has {got}; it must have rank {input_rank}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_dims = input_dims  # (B, ...) with None where the model accepts any size
        self.output_dims = _dims(outputs[0].shape)  # None when the rank is unknown until it runs
        self.fixed_batch = input_dims[0]  # a model exported for exactly k samples gets chunks of k

    def _error(self, problem: str) -> NetworkFileError:
        return NetworkFileError(self.what, self.path, problem)

    def check_output_rank(self, rank: int) -> None:
        """Refuse a declared output rank other than ``rank`` (an unknown one is checked when it runs)."""
        if self.output_dims is not None and len(self.output_dims) != rank:
            raise self._error(f"is an ONNX model whose output {_describe(self.output_dims)} has rank "
                              f"{len(self.output_dims)}; it must have rank {rank}")  # fmt: skip

    def check_input(self, sample_shape: tuple[int, ...]) -> None:
        """Refuse inputs (B, *sample_shape) that the model's declared input shape cannot take."""
        declared = self.input_dims[1:]
        fits = len(declared) == len(sample_shape) and all(
            dim is None or dim == size for dim, size in zip(declared, sample_shape, strict=True)
        )
        if not fits:
            want = _describe(self.input_dims)
            raise self._error(f"is an ONNX model that takes inputs {want}, not (B, "
                              f"{', '.join(map(str, sample_shape))})")  # fmt: skip

    def eval(self) -> OnnxNetwork:
        return self  # like a module in eval mode: an ONNX graph has no training mode

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """batch (B, ...) -> output (B, ...) float32 on the batch's device."""
        self.check_input(tuple(batch.shape[1:]))
        values = batch.detach().float().cpu().numpy()
        step = self.fixed_batch or DEFAULT_BATCH
        parts = [self._run(values[start : start + step]) for start in range(0, values.shape[0], step)]
        out = np.concatenate(parts) if parts else np.zeros((0,), dtype=np.float32)
        return torch.from_numpy(out).to(batch.device)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        count = chunk.shape[0]
        if self.fixed_batch is not None and count < self.fixed_batch:  # pad the last chunk, drop the padding
            padding = np.zeros((self.fixed_batch - count, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, padding])
        (out,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(chunk)})
        out = np.asarray(out, dtype=np.float32)
        if out.ndim == 0 or out.shape[0] != chunk.shape[0]:
            raise self._error(f"returned an output of shape {tuple(out.shape)} for {chunk.shape[0]} inputs; "
                              "its first axis must be the batch")  # fmt: skip
        return out[:count]
