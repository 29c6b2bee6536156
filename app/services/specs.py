"""The job request body, validated with pydantic before anything is stored or queued.

The model/training/audit sections are generated from the science core's frozen dataclasses
(models.config), so the API can never drift from them: same field names, types and defaults. The
dataclasses' own checks (ranges, K >= 2, known names) run in the service, reported with the field's
location, e.g. ``["audit", "folds"]``; ``SCHEMA_RULES`` publishes the same ranges in /openapi.json
(tests/service/test_limits.py checks that each published bound is the one enforced).

Rules that JSON Schema can state but pydantic would report in another shape (exactly one dataset
reference, which sections each job kind takes) are published here too, as ``oneOf`` / ``if``-``then``,
and enforced by the service after the references resolve (app.services.jobs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from app.services import patterns
from app.services.gan_specs import CopyTestSpec, MrganSpec
from models.config import AuditConfig, ModelConfig, Preset, TrainConfig, preset_section

MAX_HIDDEN_LAYERS = 32
MAX_IS_CHUNK_BYTES = 2**40
# JSON Schema keywords per (component, property) of the generated sections: the ranges their
# dataclasses (models.config) enforce, plus the two rules the service adds (hidden depth, chunk size).
SCHEMA_RULES: dict[str, dict[str, dict[str, Any]]] = {
    "ModelSpec": {
        "hidden": {"minItems": 1, "maxItems": MAX_HIDDEN_LAYERS, "items": {"minimum": 1}},
        "latent": {"minimum": 1, "maximum": 4096},
        "base_filters": {"minimum": 1, "maximum": 1024},
    },
    "TrainingSpec": {
        "epochs": {"minimum": 1},
        "lr": {"exclusiveMinimum": 0, "maximum": 10},
        "batch_size": {"minimum": 1},
        "weight_decay": {"minimum": 0},
    },
    "AuditSpec": {
        "folds": {"minimum": 2},
        "repeats": {"minimum": 1},
        "is_samples": {"minimum": 1},
        "eval_every": {"minimum": 1},
        "seed": {"minimum": 0, "maximum": 2**63 - 1},
        "models_per_unit": {"minimum": 1},
        "is_chunk_bytes": {"minimum": 1, "maximum": MAX_IS_CHUNK_BYTES},
        "n_generated": {"minimum": 0},
        "stop_when_stable": {"exclusiveMinimum": 0, "maximum": 1},
    },
    "MrganSpec": {
        "taus": {"items": {"minimum": 0, "maximum": 2}},
        "tau_quantiles": {"items": {"minimum": 0, "maximum": 1}},
    },
}

# Decided by the worker that runs the job, not by the caller.
_SERVER_SIDE_FIELDS = {"device"}


def _spec_model(name: str, config_cls: type, doc: str) -> type[BaseModel]:
    hints = typing.get_type_hints(config_cls)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(config_cls):
        if field.name in _SERVER_SIDE_FIELDS:
            continue
        fields[field.name] = (hints[field.name], field.default)
    config = ConfigDict(extra="forbid", allow_inf_nan=False)  # JSON numbers are finite
    model = create_model(name, __config__=config, __doc__=doc, **fields)
    return model


ModelSpec = _spec_model("ModelSpec", ModelConfig, "The VAE: architecture, widths, latent size, likelihood.")
TrainingSpec = _spec_model("TrainingSpec", TrainConfig, "Optimisation of every fold model (Adam).")
AuditSpec = _spec_model("AuditSpec", AuditConfig, "Folds K, repetitions L, IS samples, eval_every, seed.")


def _dataset_ref_schema(schema: dict[str, Any]) -> None:
    """Exactly one of id / builtin / path as a oneOf (the others absent or null)."""
    formats = {
        "id": {"type": "string", "format": "uuid", "pattern": patterns.UUID,
               "description": "id returned by POST /datasets"},
        "builtin": {"type": "string", "pattern": patterns.BUILTIN, "maxLength": 64,
                    "description": "a built-in dataset of this server: digits, digits:train, digits:test, "
                                   "fashion-mnist[:test][:pad32] where installed (unknown: 404)"},
        "path": {"type": "string", "pattern": patterns.DATA_PATH, "maxLength": 1024,
                 "description": "a file, folder or brace pattern of shards relative to MEMAUDIT_DATA_ROOT "
                                "(missing: 404)"},
    }  # fmt: skip
    options = {name: schema["properties"][name] for name in READ_OPTIONS}
    branches = []
    for given in formats:
        properties = {key: formats[key] if key == given else {"type": "null"} for key in formats}
        properties.update(options)
        branches.append({"type": "object", "title": f"DatasetBy{given.capitalize()}",
                         "properties": properties, "required": [given], "additionalProperties": False})
    for key in ("properties", "required", "type", "additionalProperties"):
        schema.pop(key, None)
    schema["oneOf"] = branches


READ_OPTIONS = ("resize", "mode", "format")
MAX_SIDE = 4096


class DatasetRef(BaseModel):
    """Exactly one of: an uploaded dataset id, a built-in name, a path under the server's data root; and
    how to read it (docs/science.md, "Datasets")."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_dataset_ref_schema)

    id: str | None = Field(default=None, max_length=64, description="id returned by POST /datasets")
    builtin: str | None = Field(default=None, max_length=64, description="e.g. digits, digits:train")
    path: str | None = Field(default=None, max_length=1024, description="relative to MEMAUDIT_DATA_ROOT")
    resize: list[Annotated[int, Field(ge=1, le=MAX_SIDE)]] | None = Field(
        default=None, min_length=2, max_length=2,
        description="[H, W]: resize every image (bilinear, antialiased); needed for images of mixed sizes")
    mode: Literal["L", "RGB"] | None = Field(
        default=None, description="convert every image to grayscale (L) or colour (RGB); drops alpha")
    format: Literal["auto", "array", "images", "parquet", "webdataset", "cifar10"] | None = Field(
        default=None, description="how to read the path (default auto: by suffix and content)")

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetRef:
        given = [name for name in ("id", "builtin", "path") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of id, builtin, path")
        return self

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.model_dump().items() if value is not None}


WebhookUrl = Annotated[str, Field(max_length=2048, pattern=patterns.WEBHOOK_URL,
                                  json_schema_extra={"format": "uri"})]
_NULL = {"type": "null"}
_GIVEN = {"not": {"type": "null"}}


def _job_kind_rules(schema: dict[str, Any]) -> None:
    """Which sections each kind takes (enforced by the service once the datasets resolve)."""

    def kind_is(kind: str, required: bool) -> dict[str, Any]:
        rule: dict[str, Any] = {"properties": {"kind": {"const": kind}}}
        return {**rule, "required": ["kind"]} if required else rule

    generated_samples = {"required": ["generated"], "properties": {
        "generated": _GIVEN, "copy_test": {"anyOf": [_NULL, {"properties": {"generator_path": _NULL}}]}}}
    torchscript_generator = {"required": ["copy_test"], "properties": {
        "generated": _NULL,
        "copy_test": {"type": "object", "required": ["generator_path", "latent_dim"], "properties": {
            "generator_path": {"type": "string"}, "latent_dim": {"type": "integer"}}}}}
    schema["allOf"] = [
        {"if": kind_is("vae_audit", required=False),
         "then": {"properties": {"generated": _NULL, "mrgan": _NULL, "copy_test": _NULL}}},
        {"if": kind_is("mrgan", required=True),
         "then": {"required": ["heldout"], "properties": {
             "heldout": _GIVEN, "generated": _NULL, "copy_test": _NULL, "preset": _NULL}}},
        {"if": kind_is("copy_test", required=True),
         "then": {"required": ["heldout"], "properties": {"heldout": _GIVEN, "mrgan": _NULL, "preset": _NULL},
                  "oneOf": [generated_samples, torchscript_generator]}},
    ]  # fmt: skip


class JobCreate(BaseModel):
    """POST /jobs body. Omitted sections take the paper's defaults (K=10, L=10, 100 epochs)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_job_kind_rules)

    kind: Literal["vae_audit", "mrgan", "copy_test"] = "vae_audit"
    dataset: DatasetRef
    heldout: DatasetRef | None = None
    generated: DatasetRef | None = Field(default=None, description="copy_test: generated samples to test")
    mrgan: MrganSpec | None = Field(default=None, description="kind mrgan: the tau sweep (docs/science.md)")
    copy_test: CopyTestSpec | None = Field(default=None, description="kind copy_test: options")
    preset: Preset | None = Field(default=None, description="vae_audit: the paper's settings for mnist, "
                                  "cifar10 or celeba (docs/science.md); fields given explicitly override")
    model: ModelSpec = Field(default_factory=ModelSpec)  # type: ignore[valid-type]
    training: TrainingSpec = Field(default_factory=TrainingSpec)  # type: ignore[valid-type]
    audit: AuditSpec = Field(default_factory=AuditSpec)  # type: ignore[valid-type]
    webhook_url: WebhookUrl | None = Field(
        default=None,
        description="POSTed on every state change, signed (docs/integration.md). Its host must not resolve "
                    "to a loopback, private, link-local or otherwise reserved address unless the server "
                    "allows it (MEMAUDIT_WEBHOOK_ALLOW_PRIVATE)")

    @field_validator("webhook_url")
    @classmethod
    def _absolute_http_url(cls, value: str | None) -> str | None:
        from app.webhooks import validate_url

        return None if value is None else validate_url(value)

    @model_validator(mode="after")
    def _fill_in_preset(self) -> JobCreate:
        """Preset fields go where the body left a field out; the stored spec holds the result."""
        if self.preset is None:
            return self
        if self.kind != "vae_audit":
            raise ValueError("preset: only vae_audit jobs take a preset")
        for attr, section in (("model", "model"), ("training", "train"), ("audit", "audit")):
            spec = getattr(self, attr)
            given = spec.model_dump(include=spec.model_fields_set)
            setattr(self, attr, type(spec)(**{**preset_section(self.preset, section), **given}))
        return self

    def canonical(self) -> dict[str, Any]:
        """JSON-safe, defaults filled in: what is stored and what the idempotency hash covers."""
        data: dict[str, Any] = self.model_dump(mode="json", exclude_none=False)
        data["dataset"] = self.dataset.as_dict()
        data["heldout"] = self.heldout.as_dict() if self.heldout is not None else None
        data["generated"] = self.generated.as_dict() if self.generated is not None else None
        return data


def request_hash(canonical: dict[str, Any]) -> str:
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


@dataclasses.dataclass(frozen=True)
class JobConfigs:
    model: ModelConfig
    training: TrainConfig
    audit: AuditConfig


def build_configs(spec: dict[str, Any], device: str = "auto") -> JobConfigs:
    """The science-core configs of a stored spec; raises ValueError('field: message') when invalid."""
    return JobConfigs(
        model=ModelConfig.from_dict(spec["model"]),
        training=TrainConfig.from_dict(spec["training"]),
        audit=AuditConfig.from_dict({**spec["audit"], "device": device}),
    )
