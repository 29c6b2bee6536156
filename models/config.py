"""Frozen configuration dataclasses of an audit; defaults are the paper's (SPEC §1-2).

Every config validates itself on construction and raises ``ValueError`` naming the offending
field, so the service can turn it into a 4xx without knowing the rules. ``to_dict``/``from_dict``
round-trip through JSON-safe values (tuples become lists) so configs can be stored in the DB and
inside artifacts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

Arch = Literal["mlp", "conv"]
Likelihood = Literal["bernoulli", "gaussian_diag", "gaussian_const", "logistic"]
EvalNoise = Literal["fixed", "redraw"]
Strategy = Literal["batched", "sequential"]

ARCHS: tuple[str, ...] = get_args(Arch)
LIKELIHOODS: tuple[str, ...] = get_args(Likelihood)
EVAL_NOISES: tuple[str, ...] = get_args(EvalNoise)
STRATEGIES: tuple[str, ...] = get_args(Strategy)

_ConfigT = TypeVar("_ConfigT", bound="_JsonConfig")


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{field}: {message}")


def _require_choice(value: object, field: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, field, f"must be one of {', '.join(choices)}; got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _JsonConfig:
    """Mixin: JSON-safe round trip for the frozen config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[_ConfigT], data: dict[str, Any]) -> _ConfigT:
        names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        _require(not unknown, cls.__name__, f"unknown fields {unknown}")
        kwargs = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
        return cls(**kwargs)


@dataclass(frozen=True)
class ModelConfig(_JsonConfig):
    """The VAE recipe: architecture, widths, latent size and decoder likelihood."""

    arch: Arch = "mlp"
    hidden: tuple[int, ...] = (512, 256)  # MLP encoder widths; the decoder mirrors them
    latent: int = 16
    likelihood: Likelihood = "bernoulli"
    base_filters: int = 32  # conv only: filters of the first DCGAN stage, doubled per stage
    pad_to: int | None = None  # zero-pad the data, centred, to pad_to x pad_to (paper: MNIST 28 -> 32)

    def __post_init__(self) -> None:
        _require_choice(self.arch, "arch", ARCHS)
        _require_choice(self.likelihood, "likelihood", LIKELIHOODS)
        _require(
            isinstance(self.hidden, tuple)
            and len(self.hidden) >= 1
            and all(_is_int(w) and w >= 1 for w in self.hidden),
            "hidden",
            "must be a non-empty list of positive integers",
        )
        _require(_is_int(self.latent) and 1 <= self.latent <= 4096, "latent", "must be an integer in 1..4096")
        _require(
            _is_int(self.base_filters) and 1 <= self.base_filters <= 1024,
            "base_filters",
            "must be an integer in 1..1024",
        )
        _require(
            self.pad_to is None or (_is_int(self.pad_to) and 1 <= self.pad_to <= 1024),
            "pad_to",
            "must be empty or an integer in 1..1024",
        )


@dataclass(frozen=True)
class TrainConfig(_JsonConfig):
    """Optimisation of every fold model: Adam (PyTorch defaults otherwise), minibatches."""

    epochs: int = 100
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0  # Adam's L2 term (torch.optim.Adam semantics), not AdamW

    def __post_init__(self) -> None:
        _require(_is_int(self.epochs) and self.epochs >= 1, "epochs", "must be an integer >= 1")
        _require(isinstance(self.lr, int | float) and 0 < self.lr <= 10, "lr", "must be in (0, 10]")
        _require(_is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "must be an integer >= 1")
        _require(
            isinstance(self.weight_decay, int | float) and self.weight_decay >= 0,
            "weight_decay",
            "must be >= 0",
        )


@dataclass(frozen=True)
class AuditConfig(_JsonConfig):
    """Cross-validation layout, importance sampling and execution knobs.

    ``is_chunk_bytes`` bounds the memory one importance-sampling chunk may use (None: 256 MiB on
    CPU, a quarter of the free memory on CUDA). ``n_generated`` is the number of images drawn from
    the fold models for the nearest-neighbour comparison (None: as many as the held-out set has,
    0 without one). ``stop_when_stable`` (off by default): stop adding repetitions once the top-k
    overlap of consecutive repetitions reaches this value twice in a row (SPEC §7); the scores are
    then those of the repetitions used.
    """

    folds: int = 10
    repeats: int = 10
    is_samples: int = 256
    eval_every: int | None = None
    seed: int = 0
    eval_noise: EvalNoise = "fixed"
    strategy: Strategy = "batched"
    device: str = "auto"
    models_per_unit: int | None = None
    is_chunk_bytes: int | None = None
    n_generated: int | None = None
    stop_when_stable: float | None = None  # SPEC §7 adaptive stop: top-k overlap for two repetitions in a row

    def __post_init__(self) -> None:
        _require(_is_int(self.folds) and self.folds >= 2, "folds", "must be an integer >= 2")
        _require(_is_int(self.repeats) and self.repeats >= 1, "repeats", "must be an integer >= 1")
        _require(_is_int(self.is_samples) and self.is_samples >= 1, "is_samples", "must be an integer >= 1")
        _require(
            self.eval_every is None or (_is_int(self.eval_every) and self.eval_every >= 1),
            "eval_every",
            "must be empty or an integer >= 1",
        )
        _require(_is_int(self.seed) and 0 <= self.seed < 2**63, "seed", "must be an integer in [0, 2^63)")
        _require_choice(self.eval_noise, "eval_noise", EVAL_NOISES)
        _require_choice(self.strategy, "strategy", STRATEGIES)
        _require(
            isinstance(self.device, str)
            and (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")),
            "device",
            f"must be auto, cpu, cuda or cuda:N; got {self.device!r}",
        )
        for name in ("models_per_unit", "is_chunk_bytes"):
            value = getattr(self, name)
            _require(
                value is None or (_is_int(value) and value >= 1), name, "must be empty or an integer >= 1"
            )
        _require(
            self.n_generated is None or (_is_int(self.n_generated) and self.n_generated >= 0),
            "n_generated",
            "must be empty or an integer >= 0",
        )
        _require(
            self.stop_when_stable is None
            or (
                isinstance(self.stop_when_stable, int | float)
                and not isinstance(self.stop_when_stable, bool)
                and 0 < self.stop_when_stable <= 1
            ),
            "stop_when_stable",
            "must be empty or a top-k overlap in (0, 1]",
        )

    @property
    def n_models(self) -> int:
        return self.folds * self.repeats


# ------------------------------------------------------------------------------------------------ presets

Preset = Literal["mnist", "cifar10", "celeba"]
PRESET_NAMES: tuple[str, ...] = get_args(Preset)
PRESET_SECTIONS = ("model", "train", "audit")

# The paper's settings per data set (SPEC §1-2, the reference Makefile): the only home of this table.
# Fields equal to the configs' defaults are spelled out anyway, so a preset does not change meaning
# when a default does. CIFAR-10 and CelebA are 32x32 in the paper (CelebA cropped and resized; we
# never resize), so only MNIST's 28x28 -> 32x32 padding is part of a preset.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "mnist": {
        "model": {"arch": "mlp", "hidden": (512, 256), "latent": 16, "likelihood": "bernoulli", "pad_to": 32},
        "train": {"epochs": 100, "lr": 1e-3, "batch_size": 64, "weight_decay": 0.0},
        "audit": {"folds": 10, "repeats": 10, "is_samples": 256},
    },
    "cifar10": {
        "model": {
            "arch": "conv",
            "base_filters": 32,
            "latent": 64,
            "likelihood": "gaussian_diag",
            "pad_to": None,
        },
        "train": {"epochs": 100, "lr": 1e-3, "batch_size": 64, "weight_decay": 0.0},
        "audit": {"folds": 10, "repeats": 10, "is_samples": 128},
    },
    "celeba": {
        "model": {
            "arch": "conv",
            "base_filters": 32,
            "latent": 32,
            "likelihood": "gaussian_const",
            "pad_to": None,
        },
        "train": {"epochs": 50, "lr": 1e-3, "batch_size": 64, "weight_decay": 0.0},
        "audit": {"folds": 10, "repeats": 10, "is_samples": 128},
    },
}


def preset_section(preset: str | None, section: str) -> dict[str, Any]:
    """The fields a preset sets in one section ("model", "train" or "audit"); {} without a preset."""
    _require(section in PRESET_SECTIONS, "section", f"must be one of {', '.join(PRESET_SECTIONS)}")
    if preset is None:
        return {}
    _require_choice(preset, "preset", PRESET_NAMES)
    return dict(PRESETS[preset][section])


def configs_from_preset(
    preset: str | None,
    model: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    audit: dict[str, Any] | None = None,
) -> tuple[ModelConfig, TrainConfig, AuditConfig]:
    """The three configs: defaults, then the preset's fields, then the explicitly given ones."""
    return (
        ModelConfig.from_dict({**preset_section(preset, "model"), **(model or {})}),
        TrainConfig.from_dict({**preset_section(preset, "train"), **(train or {})}),
        AuditConfig.from_dict({**preset_section(preset, "audit"), **(audit or {})}),
    )
