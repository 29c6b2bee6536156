"""Request sections of the GAN job kinds (`mrgan`, `copy_test`) and their translation to science configs.

`mrgan`: one unit per tau (explicit taus first, then tau quantiles, each resolved inside its unit from the
held-out set); `copy_test`: one unit evaluating uploaded generated samples (`generated`, a dataset ref) or a
generator file (TorchScript or ONNX, told apart by content) under the data root (`copy_test.generator_path` +
`latent_dim`). Both need
`heldout` (the held-out / test set). Every check raises ``Invalid`` naming the field before the job exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonDict
from sqlalchemy.orm import Session

from app.services import patterns
from app.services.dataset_facts import dataset_facts
from app.services.datasets import data_root_file
from app.services.errors import Invalid
from app.settings import Settings

if TYPE_CHECKING:
    # The GAN science modules import torch; the API process imports them only when a GAN job is
    # validated, so an API that never sees one does not pay torch's memory and start-up time.
    from models.copying import CopyTestConfig
    from models.embeddings import EmbeddingConfig
    from models.gan import GanConfig, MrganConfig, SweepConfig

GAN_KINDS = ("mrgan", "copy_test")
_MESSAGE_CHARS = 400


def _model_file_needs_path(schema: dict[str, Any]) -> None:
    schema["if"] = {"properties": {"kind": {"enum": ["torchscript", "onnx"]}}, "required": ["kind"]}
    schema["then"] = {"required": ["path"], "properties": {"path": {"type": "string"}}}


def _some_tau(schema: dict[str, Any]) -> None:
    # taus defaults to [0.0]: only an explicit empty list together with no quantiles is refused.
    schema["not"] = {"required": ["taus"],
                     "properties": {"taus": {"maxItems": 0}, "tau_quantiles": {"maxItems": 0}}}  # fmt: skip


_TORCHSCRIPT_FILE: JsonDict = {"pattern": patterns.TORCHSCRIPT_PATH}


class EmbeddingSpec(BaseModel):
    """Feature space: pixels, an autoencoder trained on the training set, or an extractor file
    (`torchscript` and `onnx` are synonyms: the file's content decides how it is run)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra=_model_file_needs_path)

    kind: Literal["pixels", "autoencoder", "torchscript", "onnx"] = "pixels"
    path: str | None = Field(default=None, max_length=1024, json_schema_extra=_TORCHSCRIPT_FILE,
                             description="TorchScript or ONNX file relative to the data root, format "
                                         "detected from its content (missing: 404)")  # fmt: skip
    latent_dim: int = Field(default=32, ge=1, le=4096)
    epochs: int = Field(default=8, ge=0, le=1000)


class MrganSpec(BaseModel):
    """MR-GAN tau sweep (SPEC §5). Omitted GAN fields follow the image size (MLP below 28 px, else DCGAN)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra=_some_tau)

    taus: list[float] = Field(default_factory=lambda: [0.0], max_length=64)
    tau_quantiles: list[float] = Field(default_factory=list, max_length=64)
    mode: Literal["G", "GD"] = "G"
    # Upper bounds of steps, batch_size and n_generated are settings (app.services.limits.FIELD_LIMITS):
    # published in /openapi.json and checked by the service, so a 422 names the limit's variable.
    steps: int = Field(default=2000, ge=1)
    batch_size: int = Field(default=64, ge=2)
    d_steps: int = Field(default=1, ge=1, le=100)
    lr: float = Field(default=2e-4, gt=0, le=1)
    max_redraws: int = Field(default=10, ge=0, le=1000)
    seed: int = Field(default=0, ge=0, lt=2**63)
    arch: Literal["mlp", "dcgan"] | None = None
    latent_dim: int | None = Field(default=None, ge=1, le=4096)
    width: int | None = Field(default=None, ge=1, le=8192)
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)
    cells: int | None = Field(default=None, ge=1, le=10000)
    ct_metric: Literal["euclidean", "cosine"] = "euclidean"
    copy_quantile: float = Field(default=0.05, ge=0, le=1)
    n_generated: int | None = Field(default=None, ge=2)


class CopyTestSpec(BaseModel):
    """Copy test of an existing generator: `generated` (top-level dataset ref) or a generator file."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    generator_path: str | None = Field(
        default=None,
        max_length=1024,
        json_schema_extra=_TORCHSCRIPT_FILE,
        description="TorchScript or ONNX generator under the data root, "
        "format detected from its content (missing: 404)",
    )
    latent_dim: int | None = Field(default=None, ge=1, le=4096)
    n_generated: int | None = Field(default=None, ge=2)
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)
    cells: int | None = Field(default=None, ge=1, le=10000)
    metric: Literal["euclidean", "cosine"] = "euclidean"
    copy_quantile: float = Field(default=0.05, ge=0, le=1)
    seed: int = Field(default=0, ge=0, lt=2**63)


@dataclass(frozen=True)
class MrganJobConfigs:
    gan: GanConfig
    training: MrganConfig
    sweep: SweepConfig
    embedding: EmbeddingConfig

    @property
    def n_units(self) -> int:
        return len(self.sweep.taus) + len(self.sweep.tau_quantiles)


def _model_file(relative: str, settings: Settings, field: str) -> Path:
    """A model file under the data root, bounded like an uncompressed array."""
    path = data_root_file(relative, settings, field)
    limit = settings.max_uncompressed_bytes
    if path.stat().st_size > limit:
        raise Invalid(field, f"{relative} is larger than the limit of {limit} bytes")
    return path


def _refuse(relative: str, field: str, error: ValueError) -> Invalid:
    from models.onnx_model import NetworkFileError

    if isinstance(error, NetworkFileError):
        problem = error.problem
        if problem.startswith("is not a TorchScript file (save"):  # a zip: say what else it could have been
            problem = ("is not a TorchScript file or a loadable ONNX model (save it with torch.jit.script or "
                       "torch.jit.trace and .save, or torch.onnx.export)")  # fmt: skip
        return Invalid(field, f"{relative} {problem}")
    # "<what>: <problem>"; a TorchScript error is a traceback whose last line says what went wrong.
    problem = str(error).split(": ", 1)[-1]
    lines = [line.strip() for line in problem.splitlines() if line.strip()]
    if len(lines) > 1:
        problem = f"{lines[0]} {lines[-1]}"
    return Invalid(field, f"{relative}: {problem[:_MESSAGE_CHARS]}")


def generator_file(relative: str, latent_dim: int, image_shape: tuple[int, int, int], settings: Settings,
                   field: str) -> Path:  # fmt: skip
    """A generator file (TorchScript or ONNX), loaded and run once on two latents here, so that anything
    else (a pickle, garbage, the wrong shapes) is a 422 before the job exists. Nothing is unpickled."""
    path = _model_file(relative, settings, field)
    import torch

    from models.gan import generate_from_model_file

    try:
        generate_from_model_file(str(path), latent_dim, 2, image_shape, seed=0, device=torch.device("cpu"))
    except ValueError as error:
        raise _refuse(relative, field, error) from None
    return path


def extractor_file(relative: str, image_shape: tuple[int, int, int], settings: Settings, field: str) -> Path:
    """A feature extractor file (TorchScript or ONNX), loaded and run once on two grey images here."""
    path = _model_file(relative, settings, field)
    import torch

    from models.embeddings import EmbeddingConfig, build_embedder

    probe = torch.full((2, *image_shape), 0.5)
    try:
        build_embedder(EmbeddingConfig(kind="torchscript", torchscript_path=str(path)), probe)
    except ValueError as error:
        raise _refuse(relative, field, error) from None
    return path


def embedding_config(spec: dict[str, Any], seed: int, image_shape: tuple[int, int, int], settings: Settings,
                     field: str) -> EmbeddingConfig:  # fmt: skip
    from models.embeddings import FILE_KINDS, EmbeddingConfig

    path = None
    if spec["kind"] in FILE_KINDS:
        if not spec.get("path"):
            raise Invalid(f"{field}.path", f"a {spec['kind']} embedding needs the path of its file")
        path = str(extractor_file(spec["path"], image_shape, settings, f"{field}.path"))
    try:
        return EmbeddingConfig(kind=spec["kind"], torchscript_path=path, latent_dim=spec["latent_dim"],
                               epochs=spec["epochs"], seed=seed)  # fmt: skip
    except ValueError as error:
        raise Invalid(field, str(error).removeprefix("embedding: ")) from None


def _section(spec: dict[str, Any], name: str, model: type[BaseModel]) -> dict[str, Any]:
    section = spec.get(name)
    return model().model_dump() if section is None else dict(section)


def mrgan_configs(spec: dict[str, Any], image_shape: tuple[int, int, int], n_heldout: int,
                  settings: Settings) -> MrganJobConfigs:  # fmt: skip
    """Science configs of a stored mrgan spec; raises Invalid naming the field."""
    from models.copying import resolve_cells
    from models.gan import GanConfig, MrganConfig, SweepConfig

    section = _section(spec, "mrgan", MrganSpec)
    try:
        default = GanConfig.for_images(image_shape)
        arch = section["arch"] or default.arch
        fallback = default if arch == default.arch else GanConfig(arch=arch)
        latent_dim = section["latent_dim"] or fallback.latent_dim
        gan = GanConfig(arch=arch, image_shape=image_shape, latent_dim=latent_dim,
                        width=section["width"] or fallback.width)  # fmt: skip
        training = MrganConfig(
            steps=section["steps"], batch_size=section["batch_size"], d_steps=section["d_steps"],
            lr=section["lr"], mode=section["mode"], max_redraws=section["max_redraws"], seed=section["seed"],
        )  # fmt: skip
        sweep = SweepConfig(
            taus=tuple(section["taus"]), tau_quantiles=tuple(section["tau_quantiles"]),
            copy_quantile=section["copy_quantile"], n_generated=section["n_generated"],
            cells=resolve_cells(section["cells"], n_heldout), ct_metric=section["ct_metric"],
        )  # fmt: skip
    except ValueError as error:
        field, _, message = str(error).partition(": ")
        raise Invalid(f"mrgan.{field}", message or str(error)) from None
    embedding = embedding_config(section["embedding"], section["seed"], image_shape, settings,
                                 "mrgan.embedding")  # fmt: skip
    return MrganJobConfigs(gan, training, sweep, embedding)


@dataclass(frozen=True)
class CopyTestJobConfigs:
    embedding: EmbeddingConfig
    copy: CopyTestConfig
    copy_quantile: float
    generator_path: Path | None
    latent_dim: int | None
    n_generated: int | None
    seed: int


def copy_test_configs(spec: dict[str, Any], image_shape: tuple[int, int, int], n_test: int,
                      settings: Settings) -> CopyTestJobConfigs:  # fmt: skip
    from models.copying import CopyTestConfig, resolve_cells

    section = _section(spec, "copy_test", CopyTestSpec)
    has_samples, has_generator = spec.get("generated") is not None, bool(section["generator_path"])
    if has_samples == has_generator:
        raise Invalid("generated", "give exactly one of generated (samples) and copy_test.generator_path")
    generator_path = None
    if has_generator:
        if section["latent_dim"] is None:
            raise Invalid("copy_test.latent_dim", "a generator file needs its latent size")
        generator_path = generator_file(section["generator_path"], section["latent_dim"], image_shape,
                                        settings, "copy_test.generator_path")  # fmt: skip
    try:
        copy = CopyTestConfig(cells=resolve_cells(section["cells"], n_test), metric=section["metric"],
                              seed=section["seed"])  # fmt: skip
    except ValueError as error:
        raise Invalid("copy_test", str(error)) from None
    embedding = embedding_config(section["embedding"], section["seed"], image_shape, settings,
                                 "copy_test.embedding")  # fmt: skip
    return CopyTestJobConfigs(
        embedding, copy, section["copy_quantile"], generator_path, section["latent_dim"],
        section["n_generated"], section["seed"],
    )  # fmt: skip


def validate_gan_job(
    canonical: dict[str, Any], session: Session, settings: Settings, owner: str
) -> dict[str, Any]:
    """Every check a GAN job's worker would otherwise fail on; returns the datasets' facts.

    The references resolve first (an unknown one is a 404), then the rules between sections, then
    what the job would cost (app.services.limits)."""
    from app.services.limits import check_copy_test_cost, check_mrgan_cost

    sets = {"train": dataset_facts(canonical["dataset"], session, settings, owner, "dataset")}
    for name in ("heldout", "generated"):
        if canonical[name] is not None:
            sets[name] = dataset_facts(canonical[name], session, settings, owner, name)
    if "heldout" not in sets:
        raise Invalid("heldout", f"a {canonical['kind']} job needs a held-out (test) set")
    if "generated" in sets and canonical["kind"] != "copy_test":
        raise Invalid("generated", "only copy_test jobs take generated samples")
    train = sets["train"]
    for name, facts in sets.items():
        if facts.image_shape != train.image_shape:
            raise Invalid(name, f"images are {list(facts.image_shape)}, the training set's are "
                                f"{list(train.image_shape)}")  # fmt: skip
    if canonical["kind"] == "mrgan":
        if canonical["copy_test"] is not None:
            raise Invalid("copy_test", "only copy_test jobs take this section")
        configs = mrgan_configs(canonical, train.image_shape, sets["heldout"].count, settings)
        work = check_mrgan_cost(canonical, configs, sets, settings)
    else:
        if canonical["mrgan"] is not None:
            raise Invalid("mrgan", "only mrgan jobs take this section")
        copy = copy_test_configs(canonical, train.image_shape, sets["heldout"].count, settings)
        work = check_copy_test_cost(canonical, copy, sets, settings)
    return {**{name: facts.summary() for name, facts in sets.items()}, "work": work.parts}


def reject_gan_sections(canonical: dict[str, Any]) -> None:
    """A VAE audit must not carry GAN-only sections (they would be silently ignored)."""
    for name in ("generated", "mrgan", "copy_test"):
        if canonical.get(name) is not None:
            raise Invalid(name, f"only GAN job kinds ({', '.join(GAN_KINDS)}) take this section")
