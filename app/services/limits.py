"""Limits on what one request may cost (OWASP API4): per-field bounds, the rules that join fields, and
an estimate of the job's total work, each refused with a 422 naming the field and the limit before any
row is written.

Per-field bounds (``FIELD_LIMITS``) come from the settings, are published in /openapi.json as
``maximum`` (app.api.openapi) and are checked first, together with the static rules of
``SCHEMA_RULES``. Rules that need the dataset (batch <= n, parameters on these images, FLOPs) or that
join fields (folds x repeats) cannot be written in JSON Schema; they run once the references have
resolved (an unknown dataset is a 404 first) and are listed in the create_job operation's description.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.services import cost
from app.services.errors import Invalid
from app.services.specs import MAX_HIDDEN_LAYERS, MAX_IS_CHUNK_BYTES
from app.settings import Settings

if TYPE_CHECKING:
    from app.services.dataset_facts import DatasetFacts
    from app.services.gan_specs import CopyTestJobConfigs, MrganJobConfigs


@dataclass(frozen=True)
class FieldLimit:
    """``request[section][name] <= settings.<setting> // divisor`` (each item of a list when ``items``)."""

    setting: str
    component: str  # the schema in /openapi.json
    section: str
    name: str
    divisor: int = 1
    items: bool = False

    def bound(self, settings: Settings) -> int:
        return int(getattr(settings, self.setting)) // self.divisor

    @property
    def variable(self) -> str:
        return f"MEMAUDIT_{self.setting.upper()}"


FIELD_LIMITS = (
    FieldLimit("max_epochs", "TrainingSpec", "training", "epochs"),
    FieldLimit("max_batch_size", "TrainingSpec", "training", "batch_size"),
    FieldLimit("max_is_samples", "AuditSpec", "audit", "is_samples"),
    # folds x repeats <= the limit with repeats >= 1 and folds >= 2 bounds each of them alone
    FieldLimit("max_folds_x_repeats", "AuditSpec", "audit", "folds"),
    FieldLimit("max_folds_x_repeats", "AuditSpec", "audit", "repeats", divisor=2),
    FieldLimit("max_generated_samples", "AuditSpec", "audit", "n_generated"),
    # a layer of width w has more than w parameters
    FieldLimit("max_model_params", "ModelSpec", "model", "hidden", items=True),
    FieldLimit("max_gan_steps", "MrganSpec", "mrgan", "steps"),
    FieldLimit("max_batch_size", "MrganSpec", "mrgan", "batch_size"),
    FieldLimit("max_generated_samples", "MrganSpec", "mrgan", "n_generated"),
    FieldLimit("max_generated_samples", "CopyTestSpec", "copy_test", "n_generated"),
)


def _values(limit: FieldLimit, canonical: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    section = canonical.get(limit.section)
    value = section.get(limit.name) if isinstance(section, dict) else None
    if value is None:
        return
    if limit.items:
        yield from ((f"{limit.section}.{limit.name}.{i}", item) for i, item in enumerate(value))
    else:
        yield f"{limit.section}.{limit.name}", value


def check_fields(canonical: dict[str, Any], settings: Settings) -> None:
    """The per-field bounds (settings and static), before anything is looked up."""
    hidden = canonical["model"]["hidden"]
    if len(hidden) > MAX_HIDDEN_LAYERS:
        raise Invalid("model.hidden", f"at most {MAX_HIDDEN_LAYERS} layers; got {len(hidden)}")
    chunk = canonical["audit"]["is_chunk_bytes"]
    if chunk is not None and chunk > MAX_IS_CHUNK_BYTES:
        raise Invalid("audit.is_chunk_bytes", f"at most {MAX_IS_CHUNK_BYTES} bytes; got {chunk}")
    for limit in FIELD_LIMITS:
        bound = limit.bound(settings)
        for field, value in _values(limit, canonical):
            if isinstance(value, int) and value > bound:
                raise Invalid(field, f"{value} is over the limit of {bound} ({limit.variable}"
                                     f"{f' / {limit.divisor}' if limit.divisor > 1 else ''})")  # fmt: skip


def _check_params(field: str, what: str, params: int, settings: Settings) -> None:
    if params > settings.max_model_params:
        raise Invalid(field, f"{what} would have {params:,} parameters; the limit is "
                             f"{settings.max_model_params:,} (MEMAUDIT_MAX_MODEL_PARAMS)")  # fmt: skip


def _check_work(field: str, work: cost.WorkEstimate, settings: Settings, advice: str) -> None:
    if work.flops > settings.max_job_work:
        limit = f"{settings.max_job_work:.3g} FLOPs (MEMAUDIT_MAX_JOB_WORK)"
        raise Invalid(field, f"this job would take about {work.describe()}; the limit is {limit}: {advice}")


def check_vae_cost(canonical: dict[str, Any], train: DatasetFacts, heldout: DatasetFacts | None,
                   settings: Settings) -> cost.WorkEstimate:  # fmt: skip
    """The VAE audit's rules that join fields or need the dataset; returns the work estimate."""
    audit, training, model = canonical["audit"], canonical["training"], canonical["model"]
    models = audit["folds"] * audit["repeats"]
    if models > settings.max_folds_x_repeats:
        raise Invalid("audit.repeats", f"folds x repeats = {audit['folds']} x {audit['repeats']} = {models} "
                                       f"models; the limit is {settings.max_folds_x_repeats} "
                                       "(MEMAUDIT_MAX_FOLDS_X_REPEATS)")  # fmt: skip
    if training["batch_size"] > train.count:
        raise Invalid("training.batch_size", f"{training['batch_size']} is larger than the "
                                             f"{train.count} samples of the dataset")  # fmt: skip
    try:
        network = cost.vae_cost(model, train.image_shape)
    except ValueError as error:
        raise Invalid("model.arch", str(error).removeprefix("arch: ")) from None
    field = "model.base_filters" if model["arch"] == "conv" else "model.hidden"
    _check_params(field, f"the VAE on {list(train.image_shape)} images", network.params, settings)
    work = cost.vae_job_work(canonical, train.count, heldout.count if heldout else 0, train.image_shape)
    _check_work("audit", work, settings, "fewer epochs, folds x repeats or is_samples, a larger eval_every "
                                         "or a smaller model")  # fmt: skip
    return work


def check_mrgan_cost(canonical: dict[str, Any], configs: MrganJobConfigs, sets: dict[str, DatasetFacts],
                     settings: Settings) -> cost.WorkEstimate:  # fmt: skip
    from app.services.gan_specs import MrganSpec

    section = canonical["mrgan"] or MrganSpec().model_dump()
    train, heldout = sets["train"], sets["heldout"]
    if section["batch_size"] > train.count:
        raise Invalid("mrgan.batch_size", f"{section['batch_size']} is larger than the {train.count} "
                                          "samples of the dataset")  # fmt: skip
    gan = configs.gan
    generator, discriminator = cost.gan_cost(gan.arch, train.image_shape, gan.latent_dim, gan.width)
    _check_params("mrgan.width", "the generator", generator.params, settings)
    _check_params("mrgan.width", "the discriminator", discriminator.params, settings)
    cells = configs.sweep.cells or 1
    work = cost.mrgan_job_work(section, (gan.arch, gan.latent_dim, gan.width), configs.n_units, train.count,
                               heldout.count, cells, train.image_shape)  # fmt: skip
    _check_work("mrgan", work, settings, "fewer steps, taus or redraws, a smaller batch or network")
    return work


def check_copy_test_cost(canonical: dict[str, Any], configs: CopyTestJobConfigs,
                         sets: dict[str, DatasetFacts], settings: Settings) -> cost.WorkEstimate:  # fmt: skip
    from app.services.gan_specs import CopyTestSpec

    section = canonical["copy_test"] or CopyTestSpec().model_dump()
    train, heldout = sets["train"], sets["heldout"]
    generated = sets["generated"].count if "generated" in sets else configs.n_generated or heldout.count
    if generated > settings.max_generated_samples:
        limit = f"{settings.max_generated_samples} (MEMAUDIT_MAX_GENERATED_SAMPLES)"
        raise Invalid("generated", f"{generated} generated samples; the limit is {limit}")
    work = cost.copy_test_work(section, train.count, heldout.count, generated, configs.copy.cells,
                               train.image_shape)  # fmt: skip
    _check_work("copy_test", work, settings, "fewer samples or cells, or a smaller embedding")
    return work
