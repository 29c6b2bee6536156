"""Feature spaces for nearest-neighbour distances (SPEC §3–5).

Three kinds, all offline: raw pixels; a small autoencoder trained on the training set itself (seeded, a few
epochs, so features are semantic-ish without downloading weights); and a user-supplied feature extractor
file, TorchScript (loaded with ``torch.jit.load`` only, never unpickled) or ONNX (run with onnxruntime), told
apart by content (models.model_files). Every embedder maps images (N, C, H, W) to features (N, F) in float32
on its device, without gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch import nn

from models.model_files import Network, load_network, model_format

EmbeddingKind = Literal["pixels", "autoencoder", "torchscript", "onnx"]
EMBEDDING_KINDS: tuple[EmbeddingKind, ...] = ("pixels", "autoencoder", "torchscript", "onnx")
# A model file: TorchScript or ONNX by the file's content; the two kind names are synonyms.
FILE_KINDS: tuple[EmbeddingKind, ...] = ("torchscript", "onnx")
EMBED_BATCH = 1024


@dataclass(frozen=True)
class EmbeddingConfig:
    """Which feature space to use; autoencoder fields only matter for ``kind="autoencoder"``."""

    kind: EmbeddingKind = "pixels"
    torchscript_path: str | None = None  # the model file of a file kind (TorchScript or ONNX)
    latent_dim: int = 32
    hidden_dim: int = 256
    epochs: int = 8
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in EMBEDDING_KINDS:
            known = ", ".join(EMBEDDING_KINDS)
            raise ValueError(f"embedding: unknown kind {self.kind!r}; use one of {known}")
        if self.kind in FILE_KINDS and not self.torchscript_path:
            raise ValueError(f"embedding: kind {self.kind!r} needs a path to a TorchScript or ONNX file")
        if self.latent_dim < 1 or self.hidden_dim < 1 or self.epochs < 0 or self.batch_size < 1:
            raise ValueError("embedding: latent_dim, hidden_dim, batch_size must be >= 1 and epochs >= 0")

    @staticmethod
    def parse(spec: str, **overrides: int | float) -> EmbeddingConfig:
        """``pixels`` | ``autoencoder`` | ``torchscript:PATH`` | ``onnx:PATH`` (the CLI's ``--embedding``)."""
        kind, colon, path = spec.partition(":")
        if colon and kind in FILE_KINDS:
            return EmbeddingConfig(kind=kind, torchscript_path=path, **overrides)  # type: ignore[arg-type]
        if spec not in ("pixels", "autoencoder"):
            raise ValueError(
                f"embedding: unknown kind {spec!r}; use pixels, autoencoder, torchscript:PATH or onnx:PATH"
            )
        return EmbeddingConfig(kind=spec, **overrides)  # type: ignore[arg-type]


class Embedder(Protocol):
    """Maps images to feature vectors."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, C, H, W) on the embedder's device -> features (N, F) float32."""
        ...


class PixelEmbedder:
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).float()


class _MlpAutoencoder(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, input_dim)
        )

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.encoder(flat)))  # (N, D) in [0, 1]


class ModuleEmbedder:
    """Runs a feature module (the trained encoder) in eval mode, batched."""

    def __init__(
        self,
        module: nn.Module | torch.jit.ScriptModule,
        flatten_input: bool,
        offset: torch.Tensor | None = None,
    ) -> None:
        self.module = module.eval()
        self.flatten_input = flatten_input
        self.offset = offset  # (F,) subtracted from every feature vector

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        parts = []
        for start in range(0, images.shape[0], EMBED_BATCH):
            batch = images[start : start + EMBED_BATCH].float()
            if self.flatten_input:
                batch = batch.flatten(1)
            parts.append(self.module(batch).flatten(1).float())
        if not parts:
            return images.new_zeros((0, 0))
        features = torch.cat(parts)  # (N, F)
        return features if self.offset is None else features - self.offset


def train_autoencoder(train_images: torch.Tensor, cfg: EmbeddingConfig) -> nn.Module:
    """Fit an MLP autoencoder on the training images (values in [0, 1]); return its encoder.

    Seeded and deterministic on a given device: the shuffling uses its own generator and the initial
    weights come from ``cfg.seed``.
    """
    device = train_images.device
    flat = train_images.flatten(1).float()  # (N, D)
    torch.manual_seed(cfg.seed)
    model = _MlpAutoencoder(flat.shape[1], cfg.hidden_dim, cfg.latent_dim).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    # Binary cross-entropy fits [0, 1] pixels and trains faster than MSE on mostly-dark digits.
    loss_fn = nn.BCELoss()
    for _epoch in range(cfg.epochs):
        order = torch.randperm(flat.shape[0], generator=order_gen).to(device)
        for start in range(0, flat.shape[0], cfg.batch_size):
            batch = flat[order[start : start + cfg.batch_size]]
            loss = loss_fn(model(batch), batch.clamp(0.0, 1.0))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return model.encoder


def check_feature_output(embedder: Embedder, probe: torch.Tensor, what: str) -> int:
    """Run the embedder on a few images and check it returns finite (batch, F) features; return F."""
    try:
        features = embedder.embed(probe)
    except ValueError:
        raise
    except Exception as error:  # a user's module can fail in any way; report it, don't crash
        shape = tuple(probe.shape)
        raise ValueError(f"{what}: calling it on images of shape {shape} failed: {error}") from error
    if features.shape[1] == 0 or not torch.isfinite(features).all():
        raise ValueError(f"{what}: features must be non-empty and finite")
    return int(features.shape[1])


def build_embedder(cfg: EmbeddingConfig, train_images: torch.Tensor) -> Embedder:
    """The embedder described by ``cfg``, on the device of ``train_images`` (N, C, H, W)."""
    if cfg.kind == "pixels":
        return PixelEmbedder()
    if cfg.kind == "autoencoder":
        encoder = ModuleEmbedder(train_autoencoder(train_images, cfg), flatten_input=True)
        # Centre the codes on the training mean: raw codes share a large common offset, which would make
        # every cosine distance tiny and the rejection threshold meaningless.
        return ModuleEmbedder(encoder.module, flatten_input=True, offset=encoder.embed(train_images).mean(0))
    assert cfg.torchscript_path is not None
    path = cfg.torchscript_path
    what = f"embedding {model_format(path)}" if Path(path).is_file() else "embedding"
    embedder = FileEmbedder(load_network(path, train_images.device, what, 4, 2), what)
    check_feature_output(embedder, train_images[: min(2, train_images.shape[0])], what)
    return embedder


def embedder_state(embedder: Embedder) -> dict[str, torch.Tensor]:
    """The trained tensors of an embedder, on the CPU (what :func:`restore_embedder` needs): the
    autoencoder's encoder weights and feature offset; nothing for pixels or a model file."""
    if not isinstance(embedder, ModuleEmbedder):
        return {}
    state = {f"encoder.{key}": value.detach().cpu() for key, value in embedder.module.state_dict().items()}
    if embedder.offset is not None:
        state["offset"] = embedder.offset.detach().cpu()
    return state


def restore_embedder(
    cfg: EmbeddingConfig, state: dict[str, torch.Tensor], train_images: torch.Tensor
) -> Embedder:
    """The embedder ``build_embedder(cfg, train_images)`` made, rebuilt from ``embedder_state`` without
    training anything; on the device of ``train_images`` (N, C, H, W)."""
    if cfg.kind != "autoencoder":
        return build_embedder(cfg, train_images)  # pixels / a model file: nothing was trained
    input_dim = int(train_images[0].numel())
    encoder = _MlpAutoencoder(input_dim, cfg.hidden_dim, cfg.latent_dim).encoder
    prefix = "encoder."
    weights = {key.removeprefix(prefix): tensor for key, tensor in state.items() if key.startswith(prefix)}
    encoder.load_state_dict(weights)  # raises on a state of another shape
    device = train_images.device
    offset = state["offset"].to(device) if "offset" in state else None
    return ModuleEmbedder(encoder.to(device), flatten_input=True, offset=offset)


class FileEmbedder:
    """A user's extractor (TorchScript or ONNX): its raw output must already be (batch, F); anything
    else is reported."""

    def __init__(self, network: Network, what: str) -> None:
        self.network = network
        self.what = what

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        parts = []
        for start in range(0, images.shape[0], EMBED_BATCH):
            batch = images[start : start + EMBED_BATCH].float()
            out = self.network(batch)
            if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != batch.shape[0]:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(
                    f"{self.what}: expected features of shape (batch, F) = ({batch.shape[0]}, F) "
                    f"for input {tuple(batch.shape)}, got {shape}"
                )
            parts.append(out.float())
        return torch.cat(parts)  # (N, F)


def embed_all(embedder: Embedder, *image_sets: torch.Tensor) -> list[torch.Tensor]:
    """Embed several image sets with the same embedder (features (N_i, F) each)."""
    return [embedder.embed(images) for images in image_sets]
