"""Limits on what a request may cost, and the schema that states them (no services needed).

- The cost model (app/services/cost.py) counts exactly the parameters and multiply-adds torch runs:
  checked against the real networks of models/ with torch's own FlopCounterMode.
- The paper's headline job fits the default limits with room to spare.
- Every bound /openapi.json publishes for a request field is the one the server enforces: the value
  at the bound passes the service's checks and the next one is a 422 naming the field.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from app.services import cost
from app.services.dataset_facts import DatasetFacts
from app.services.errors import Invalid
from app.services.limits import FIELD_LIMITS, check_fields, check_vae_cost
from app.services.specs import SCHEMA_RULES, JobCreate
from app.settings import Settings
from models.audit import eval_epochs
from models.config import AuditConfig, ModelConfig, TrainConfig
from models.embeddings import _MlpAutoencoder
from models.gan.config import GanConfig, SweepConfig
from models.gan.networks import build_gan
from models.networks import build_vae, model_input_shape

MODELS = [
    (ModelConfig(hidden=(1024, 512, 256), latent=16), (1, 28, 28)),  # SPEC §2 MNIST MLP
    (ModelConfig(hidden=(7,), latent=3, likelihood="gaussian_const"), (3, 5, 9)),
    (ModelConfig(arch="conv", base_filters=32, latent=64, likelihood="gaussian_diag"), (3, 32, 32)),
    (ModelConfig(arch="conv", base_filters=8, latent=5, likelihood="logistic"), (1, 8, 8)),
    (ModelConfig(arch="conv", base_filters=4, latent=3, likelihood="gaussian_const"), (3, 100, 60)),
    (ModelConfig(hidden=(64, 32), latent=4, pad_to=32), (1, 28, 28)),  # the mnist preset pads 28 -> 32
    (ModelConfig(arch="conv", base_filters=4, latent=3, pad_to=32), (1, 28, 28)),
]


def facts(count: int, image_shape: tuple[int, int, int]) -> DatasetFacts:
    return DatasetFacts(
        count=count, image_shape=image_shape, min=0.0, max=1.0, source_kind="uint8", is_8bit=True
    )


def _params(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _macs_per_sample(call: Any, batch: int) -> float:
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops() / 2 / batch  # torch counts 2 FLOPs per multiply-add


@pytest.mark.parametrize(("config", "shape"), MODELS, ids=[f"{m.arch}-{s}" for m, s in MODELS])
def test_vae_parameters_and_multiply_adds_are_torchs(config: ModelConfig, shape: tuple[int, ...]) -> None:
    model = build_vae(config, shape, 0).eval()
    counted = cost.vae_cost(config.to_dict(), shape)
    assert counted.params == _params(model)
    images, latents = torch.rand(3, *model_input_shape(config, shape)), torch.randn(3, config.latent)
    assert counted.encoder.macs == _macs_per_sample(lambda: model.encode(images), 3)
    assert counted.decoder.macs == _macs_per_sample(lambda: model.decode(latents), 3)


@pytest.mark.parametrize(
    ("arch", "shape"), [("mlp", (1, 8, 8)), ("dcgan", (1, 28, 28)), ("dcgan", (3, 32, 32))]
)
def test_gan_and_embedding_networks_are_counted_like_torch(arch: str, shape: tuple[int, int, int]) -> None:
    config = GanConfig(arch=arch, image_shape=shape, latent_dim=20, width=16)  # type: ignore[arg-type]
    generator, discriminator = (net.eval() for net in build_gan(config))
    counted_g, counted_d = cost.gan_cost(arch, shape, 20, 16)
    assert (counted_g.params, counted_d.params) == (_params(generator), _params(discriminator))
    assert counted_g.macs == _macs_per_sample(lambda: generator(torch.randn(2, 20)), 2)
    assert counted_d.macs == _macs_per_sample(lambda: discriminator(torch.rand(2, *shape)), 2)
    pixels = math.prod(shape)
    encoder = _MlpAutoencoder(pixels, cost.AUTOENCODER_HIDDEN, 12).encoder
    counted_e = cost.autoencoder_encoder(pixels, 12)
    assert counted_e.params == _params(encoder)
    assert counted_e.macs == _macs_per_sample(lambda: encoder(torch.rand(2, pixels)), 2)


@pytest.mark.parametrize("epochs", [1, 7, 100])
@pytest.mark.parametrize("every", [None, 1, 3, 7, 10, 1000])
def test_the_number_of_evaluations_is_the_science_cores(epochs: int, every: int | None) -> None:
    assert cost.eval_count(epochs, every) == len(eval_epochs(epochs, every))


def _headline(shape: tuple[int, int, int]) -> dict[str, Any]:
    body = {"dataset": {"builtin": "fashion-mnist"}, "model": {"hidden": [1024, 512, 256], "latent": 16},
            "training": {"epochs": 100, "batch_size": 64},
            "audit": {"folds": 10, "repeats": 10, "is_samples": 256}}  # fmt: skip
    return JobCreate.model_validate(body).canonical()


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 32, 32)])
def test_the_papers_headline_job_fits_the_default_limits(shape: tuple[int, int, int]) -> None:
    """K = L = 10, 100 epochs, S = 256, the MLP 1024-512-256-16 on 60k images (SPEC §2): accepted, with
    a tenth of the default work limit to spare; its estimate is about 1.5e16 FLOPs."""
    canonical, settings = _headline(shape), Settings()
    check_fields(canonical, settings)
    work = check_vae_cost(canonical, facts(60_000, shape), facts(10_000, shape), settings)
    assert 1e16 < work.flops < settings.max_job_work / 10, work.describe()
    assert work.parts["training"] > work.parts["importance sampling"] > work.parts["generation"]


def test_the_work_estimate_grows_with_what_drives_the_cost() -> None:
    canonical, settings = _headline((1, 28, 28)), Settings()
    train, heldout = facts(60_000, (1, 28, 28)), facts(10_000, (1, 28, 28))
    base = check_vae_cost(canonical, train, heldout, settings)

    def doubled(section: str, name: str) -> cost.WorkEstimate:
        changed = {**canonical, section: {**canonical[section], name: canonical[section][name] * 2}}
        return check_vae_cost(changed, train, heldout, settings)

    longer = doubled("training", "epochs")  # twice the training; still one evaluation, at the end
    assert longer.parts["training"] == 2 * base.parts["training"]
    assert longer.parts["importance sampling"] == base.parts["importance sampling"]
    more_models = doubled("audit", "repeats")
    assert more_models.flops == pytest.approx(2 * base.flops, rel=0.01)
    samples = doubled("audit", "is_samples")
    sampled = samples.parts["importance sampling"]
    assert sampled == pytest.approx(2 * base.parts["importance sampling"], rel=0.01)
    every_epoch = {**canonical, "audit": {**canonical["audit"], "eval_every": 1}}
    with pytest.raises(Invalid) as refused:  # 100 importance-sampled evaluations instead of 1: 4.5e17 FLOPs
        check_vae_cost(every_epoch, train, heldout, Settings(max_job_work=1e17))
    assert refused.value.field == "audit" and "MEMAUDIT_MAX_JOB_WORK" in refused.value.message


# ---- the published bounds are the enforced ones ----

_DATACLASS = {"ModelSpec": ModelConfig, "TrainingSpec": TrainConfig, "AuditSpec": AuditConfig}
_SECTION = {"ModelSpec": "model", "TrainingSpec": "training", "AuditSpec": "audit", "MrganSpec": "mrgan"}


def _numeric_bounds() -> list[tuple[str, str, str, float]]:
    cases = []
    for component, rules in SCHEMA_RULES.items():
        for name, keywords in rules.items():
            items = keywords.get("items", {})
            for keyword, value in [*keywords.items(), *((f"items.{k}", v) for k, v in items.items())]:
                if keyword != "items":
                    cases.append((component, name, keyword, value))
    return cases


def _enforced(component: str, name: str, value: Any) -> bool:
    """Whether the service's field checks accept ``value`` for this field."""
    if (component, name) == ("MrganSpec", "taus"):
        try:
            SweepConfig(taus=tuple(value))
        except ValueError:
            return False
        return True
    if (component, name) == ("MrganSpec", "tau_quantiles"):
        try:
            SweepConfig(tau_quantiles=tuple(value))
        except ValueError:
            return False
        return True
    canonical = JobCreate.model_validate({"dataset": {"builtin": "digits"}}).canonical()
    canonical[_SECTION[component]][name] = value
    try:
        _DATACLASS[component].from_dict(canonical[_SECTION[component]])
        check_fields(canonical, Settings())
    except (ValueError, Invalid):
        return False
    return True


@pytest.mark.parametrize(
    ("component", "name", "keyword", "bound"),
    _numeric_bounds(),
    ids=[f"{c}.{n}.{k}" for c, n, k, _ in _numeric_bounds()],
)
def test_each_published_rule_is_the_enforced_one(component: str, name: str, keyword: str, bound: Any) -> None:
    def value(number: float) -> Any:
        if keyword.startswith("items."):
            return [number]
        if keyword in ("minItems", "maxItems"):
            return [8] * int(number)
        return number

    integer = keyword in ("minItems", "maxItems") or (isinstance(bound, int) and name != "lr")
    step = 1 if integer else 1e-9
    inside, outside = {
        "minimum": (bound, bound - step),
        "items.minimum": (bound, bound - step),
        "maximum": (bound, bound + step),
        "items.maximum": (bound, bound + step),
        "exclusiveMinimum": (bound + step, bound),
        "minItems": (bound, bound - 1),
        "maxItems": (bound, bound + 1),
    }[keyword]
    assert _enforced(component, name, value(inside)), f"{inside} should be accepted"
    assert not _enforced(component, name, value(outside)), f"{outside} should be refused"


@pytest.mark.parametrize("limit", FIELD_LIMITS, ids=[f"{lim.section}.{lim.name}" for lim in FIELD_LIMITS])
def test_each_configured_limit_is_published_and_enforced(limit: Any) -> None:
    from fastapi import FastAPI

    from app.api.openapi import install_openapi
    from app.api.routes import datasets, jobs, scores

    configured = {"max_epochs": 321, "max_batch_size": 111, "max_is_samples": 777, "max_folds_x_repeats": 41,
                  "max_generated_samples": 999, "max_model_params": 12345, "max_gan_steps": 5555}  # fmt: skip
    settings = Settings(**{limit.setting: configured[limit.setting]})
    app = FastAPI()
    for module in (datasets, jobs, scores):
        app.include_router(module.router, responses={401: {"description": "no key"}})
    install_openapi(app, settings, lambda: True)
    prop = app.openapi()["components"]["schemas"][limit.component]["properties"][limit.name]
    target = next((b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"), prop)
    published = target["items"]["maximum"] if limit.items else target["maximum"]
    assert published == limit.bound(settings)

    section = {"kind": "mrgan"} if limit.section == "mrgan" else {}
    canonical = JobCreate.model_validate({"dataset": {"builtin": "digits"}, **section}).canonical()
    canonical[limit.section] = dict(canonical[limit.section] or {})
    canonical[limit.section][limit.name] = [published] if limit.items else published
    check_fields(canonical, settings)
    canonical[limit.section][limit.name] = [published + 1] if limit.items else published + 1
    with pytest.raises(Invalid) as refused:
        check_fields(canonical, settings)
    assert refused.value.field.startswith(f"{limit.section}.{limit.name}")
    assert limit.variable in refused.value.message and str(published) in refused.value.message
