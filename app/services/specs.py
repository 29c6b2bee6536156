"""The job request body, validated with pydantic before anything is stored or queued.

The model/training/audit sections are generated from the science core's frozen dataclasses
(models.config), so the API can never drift from them: same field names, types and defaults. The
dataclasses' own checks (ranges, K >= 2, known names) run too and are reported with the field's
location, e.g. ``["body", "audit", "folds"]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from app.services.gan_specs import CopyTestSpec, MrganSpec
from models.config import AuditConfig, ModelConfig, Preset, TrainConfig, preset_section

# Decided by the worker that runs the job, not by the caller.
_SERVER_SIDE_FIELDS = {"device"}


def _spec_model(name: str, config_cls: type, doc: str) -> type[BaseModel]:
    hints = typing.get_type_hints(config_cls)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(config_cls):
        if field.name in _SERVER_SIDE_FIELDS:
            continue
        fields[field.name] = (hints[field.name], field.default)
    model = create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=doc, **fields)
    return model


ModelSpec = _spec_model("ModelSpec", ModelConfig, "The VAE: architecture, widths, latent size, likelihood.")
TrainingSpec = _spec_model("TrainingSpec", TrainConfig, "Optimisation of every fold model (Adam).")
AuditSpec = _spec_model("AuditSpec", AuditConfig, "Folds K, repetitions L, IS samples, eval_every, seed.")


class DatasetRef(BaseModel):
    """Exactly one of: an uploaded dataset id, a built-in name, a path under the server's data root."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, max_length=64, description="id returned by POST /datasets")
    builtin: str | None = Field(default=None, max_length=64, description="e.g. digits, digits:train")
    path: str | None = Field(default=None, max_length=1024, description="relative to MEMAUDIT_DATA_ROOT")

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetRef:
        given = [name for name in ("id", "builtin", "path") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of id, builtin, path")
        return self

    def as_dict(self) -> dict[str, str]:
        return {key: value for key, value in self.model_dump().items() if value is not None}


class JobCreate(BaseModel):
    """POST /jobs body. Omitted sections take the paper's defaults (K=10, L=10, 100 epochs)."""

    model_config = ConfigDict(extra="forbid")

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
    webhook_url: str | None = Field(default=None, max_length=2048,
                                    description="POSTed on every state change, signed (docs/integration.md)")

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
