"""/openapi.json says exactly what the server accepts: FastAPI's schema, refined with what it cannot see.

Added to the generated schema: the ranges the science dataclasses enforce (specs.SCHEMA_RULES), the
bounds this server is configured with (limits.FIELD_LIMITS, MEMAUDIT_MAX_TOP, MEMAUDIT_PAGE_SIZE_MAX,
MEMAUDIT_MAX_UPLOAD_BYTES), string patterns of ids and cursors, the multipart upload's media types,
one error body for every 4xx, the headers of 201/202/401/429 answers, the bearer security scheme
(only while keys exist: without any the server is single-user), links from a created job to the
routes that read it, and, in create_job's description, the checks that need the dataset.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI

from app.services import patterns
from app.services.limits import FIELD_LIMITS
from app.services.specs import SCHEMA_RULES
from app.settings import Settings

log = logging.getLogger(__name__)
Schema = dict[str, Any]
# .npy; .npz or a zip of images; a tar of images or a WebDataset shard; Hugging Face parquet
UPLOAD_MEDIA_TYPES = "application/x-npy, application/zip, application/x-tar, application/vnd.apache.parquet"
ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
_PATH_PATTERNS = {"job_id": patterns.UUID, "dataset_id": patterns.UUID}
JOB_LINKS = {
    "GetJob": "get_job", "CancelJob": "cancel_job", "ListJobScores": "list_job_scores",
    "GetJobReport": "get_job_report", "ExportScoresCsv": "export_scores_csv",
}  # fmt: skip
# GET /scores names the job its scores come from (by default the latest finished one) and its samples
SCORED_JOB_LINKS = {"ListJobScores": "list_job_scores", "ExportScoresParquet": "export_scores_parquet",
                    "GetJobReport": "get_job_report"}  # fmt: skip
SAMPLE_LINKS = {"GetSample": "get_sample", "GetSampleImage": "get_sample_image",
                "GetSampleNeighbours": "get_sample_neighbours"}  # the top sample is always flagged


def install_openapi(app: FastAPI, settings: Settings, keys_configured: Callable[[], bool]) -> None:
    """Replace ``app.openapi`` with the refined schema (built once per security state)."""
    generated = app.openapi
    built: dict[bool, Schema] = {}

    def openapi() -> Schema:
        protected = keys_configured()
        if protected not in built:
            schema = copy.deepcopy(generated())
            refine(schema, settings, protected)
            built[protected] = schema
        return built[protected]

    app.openapi = openapi  # type: ignore[method-assign]


def refine(schema: Schema, settings: Settings, protected: bool) -> None:
    components = schema["components"]["schemas"]
    for component, rules in SCHEMA_RULES.items():
        for name, keywords in rules.items():
            constrain(components[component]["properties"][name], keywords)
    for limit in FIELD_LIMITS:
        keyword = {"items": {"maximum": limit.bound(settings)}} if limit.items else {
            "maximum": limit.bound(settings)}  # fmt: skip
        constrain(components[limit.component]["properties"][limit.name], keyword)
    _parameters(schema, settings)
    _upload(schema, components, settings)
    _responses(schema)
    _links(schema)
    _security(schema, protected)
    _describe_create_job(schema, settings)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)


def constrain(prop: Schema, keywords: Schema) -> None:
    """Merge JSON Schema keywords into a property, into its non-null branch when it is nullable."""
    target = prop
    for branch in prop.get("anyOf", []):
        if branch.get("type") != "null":
            target = branch
    for key, value in keywords.items():
        if key == "items":
            target.setdefault("items", {}).update(value)
        else:
            target[key] = value


def _operations(schema: Schema) -> Iterator[tuple[str, str, Schema]]:
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def _parameters(schema: Schema, settings: Settings) -> None:
    maxima = {("top_scores", "top"): settings.max_top, ("list_job_scores", "limit"): settings.page_size_max}
    for _, _, operation in _operations(schema):
        for parameter in operation.get("parameters", []):
            target = parameter["schema"]
            if parameter["in"] == "path" and parameter["name"] in _PATH_PATTERNS:
                constrain(target, {"pattern": _PATH_PATTERNS[parameter["name"]], "format": "uuid"})
            if (operation["operationId"], parameter["name"]) in maxima:
                constrain(target, {"maximum": maxima[(operation["operationId"], parameter["name"])]})
            if parameter["name"] == "job_id" and parameter["in"] == "query":
                constrain(target, {"pattern": patterns.UUID, "format": "uuid"})
            if parameter["name"] == "cursor":
                constrain(target, {"pattern": patterns.CURSOR})


def _upload(schema: Schema, components: Schema, settings: Settings) -> None:
    body = schema["paths"]["/datasets"]["post"]["requestBody"]["content"]["multipart/form-data"]
    body["encoding"] = {"file": {"contentType": UPLOAD_MEDIA_TYPES}}
    name = body["schema"]["$ref"].rsplit("/", 1)[1]
    file = components[name]["properties"]["file"]
    file.update({"format": "binary", "minLength": 1, "maxLength": settings.max_upload_bytes})


def _responses(schema: Schema) -> None:
    """One body for every 4xx; the headers clients rely on."""
    for _, _, operation in _operations(schema):
        for status, response in operation["responses"].items():
            if status.startswith("4"):
                response["content"] = {"application/json": {"schema": ERROR_REF}}
            headers = response.setdefault("headers", {})
            if status in ("201", "202"):
                headers["Location"] = {"description": "URL of the created resource",
                                       "schema": {"type": "string"}}  # fmt: skip
            if status == "401":
                headers["WWW-Authenticate"] = {"schema": {"type": "string", "const": "Bearer"}}
            if status == "429":
                headers["Retry-After"] = {"description": "seconds until a new job may be accepted",
                                          "schema": {"type": "integer", "minimum": 1}}  # fmt: skip
            if not headers:
                del response["headers"]


def _links(schema: Schema) -> None:
    created = schema["paths"]["/jobs"]["post"]["responses"]["202"]
    created["links"] = {name: {"operationId": operation, "parameters": {"job_id": "$response.body#/id"}}
                        for name, operation in JOB_LINKS.items()}  # fmt: skip
    top = schema["paths"]["/scores"]["get"]["responses"]["200"]
    top["links"] = {
        **{name: {"operationId": operation, "parameters": {"job_id": "$response.body#/job_id"}}
           for name, operation in SCORED_JOB_LINKS.items()},
        **{name: {"operationId": operation, "parameters": {"job_id": "$response.body#/job_id",
                                                           "sample_id": "$response.body#/items/0/sample_id"}}
           for name, operation in SAMPLE_LINKS.items()},
        "FindSampleByKey": {"operationId": "find_sample",
                            "parameters": {"job_id": "$response.body#/job_id",
                                           "key": "$response.body#/items/0/key"}},
    }  # fmt: skip
    uploaded = schema["paths"]["/datasets"]["post"]["responses"]["201"]
    uploaded["links"] = {"GetDataset": {"operationId": "get_dataset",
                                        "parameters": {"dataset_id": "$response.body#/id"}}}  # fmt: skip


def _security(schema: Schema, protected: bool) -> None:
    if not protected:  # single-user mode: no route needs a key, and the schema must not claim one
        for _, _, operation in _operations(schema):
            operation["responses"].pop("401", None)
        return
    schema["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "an API key (MEMAUDIT_API_KEYS or `memaudit create-key`)"}}  # fmt: skip
    for _, _, operation in _operations(schema):
        if "401" in operation["responses"]:
            operation["security"] = [{"bearer": []}]


def _describe_create_job(schema: Schema, settings: Settings) -> None:
    operation = schema["paths"]["/jobs"]["post"]
    operation["description"] = (
        "Submit an audit. The body is checked field by field against this schema; then the dataset "
        "references resolve (an unknown id, built-in or path is a 404); then these rules, which need "
        "the data or join fields and so cannot be written in JSON Schema, are each a 422 naming the "
        "field: audit.folds <= the dataset's size; training.batch_size (mrgan.batch_size) <= the "
        f"dataset's size; folds x repeats <= {settings.max_folds_x_repeats}; every network <= "
        f"{settings.max_model_params} parameters on the dataset's images; the estimated work of the "
        f"job <= {settings.max_job_work:.3g} FLOPs (docs/configuration.md, Limits); the likelihood "
        "suits the pixels; held-out and generated sets have the training set's image shape; each job "
        "kind takes only its sections; a webhook's host resolves to no loopback, private or link-local "
        "address. At most "
        f"{settings.max_active_jobs or 'unlimited'} active jobs per owner, and "
        f"{settings.job_rate_limit or 'unlimited'} new ones per {settings.job_rate_window_s} s (429)."
    )
    operation["requestBody"]["content"]["application/json"]["examples"] = {
        "small": {"summary": "a quick audit of the built-in digits",
                  "value": {"dataset": {"builtin": "digits"}, "training": {"epochs": 5},
                            "audit": {"folds": 3, "repeats": 1, "is_samples": 16}}},
    }  # fmt: skip
