"""Response models of the API (the request body of POST /jobs is app.services.specs.JobCreate)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.lifecycle import JobState


class DatasetOut(BaseModel):
    id: str
    filename: str
    sha256: str
    shape: list[int] = Field(description="shape of the stored array, as uploaded")
    dtype: str = Field(description="uint8 (0..255) or float (0..1)")
    min: float = Field(description="smallest pixel value, scaled to [0, 1]")
    max: float = Field(description="largest pixel value, scaled to [0, 1]")
    count: int
    size_bytes: int
    created_at: dt.datetime
    format: str = Field(description="npy, npz, image-zip, image-tar, parquet, webdataset, cifar10-bin")
    has_keys: bool = Field(description="the samples carry the user's ids (keys)")
    has_labels: bool
    label_names: list[str] | None = Field(description="class names, when the format names them")


class DatasetList(BaseModel):
    items: list[DatasetOut]
    limit: int
    offset: int


class Progress(BaseModel):
    units_done: int
    units_total: int
    epoch: int | None = None
    epochs: int | None = None
    unit: int | None = None
    fraction: float | None = None


class ScoresInfo(BaseModel):
    available: bool
    provisional: bool
    units: int = Field(description="finished units the stored scores are based on")
    url: str


class JobOut(BaseModel):
    id: str
    kind: str
    state: JobState
    progress: Progress
    timings: dict[str, Any]
    error: str | None
    summary: dict[str, Any] | None = Field(description="quantiles of M etc., once succeeded")
    scores: ScoresInfo
    device: str | None
    n_samples: int
    image_shape: list[int]
    spec: dict[str, Any]
    url: str


class JobList(BaseModel):
    items: list[JobOut]
    limit: int
    offset: int


class ScoreOut(BaseModel):
    job_id: str
    sample_id: int
    key: str | None = Field(description="the user's id of the sample (file path, id column, __key__)")
    label: str | None = Field(description="the sample's class as text (class name when known)")
    rank: int | None = Field(description="1 = most memorized")
    score: float | None = Field(description="M = U - V in nats; null when not finite")
    log_p_in: float | None = Field(description="U: log-mean-exp over in-models")
    log_p_out: float | None = Field(description="V: log-mean-exp over out-models")
    n_in: int | None
    n_out: int | None
    rho: float | None = None
    copy_count: float | None = None
    image_url: str
    url: str


class TopScores(BaseModel):
    job_id: str
    provisional: bool
    items: list[ScoreOut]


class ScorePage(BaseModel):
    job_id: str
    provisional: bool
    sort: str
    items: list[ScoreOut]
    next_cursor: str | None


class SampleOut(ScoreOut):
    provisional: bool
    highly_memorized: bool | None = Field(description="score above the job's 0.95 quantile of M")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: bool
    broker: bool
    version: str


class NeighbourOut(BaseModel):
    """One neighbour of a flagged training sample (GET /jobs/{id}/samples/{sid}/neighbours)."""

    role: Literal["train", "heldout", "generated"] = Field(
        description="train: another training image; heldout: a held-out image; generated: a model sample")
    index: int = Field(description="its index in its set (sample_id for training images)")
    key: str | None = Field(description="the user's id of a training neighbour (null for the other sets)")
    label: str | None = Field(description="a training neighbour's class as text")
    distance: float = Field(description="distance to the flagged sample, in the response's space")
    image_url: str


class SampleNeighboursOut(BaseModel):
    job_id: str
    sample_id: int
    key: str | None
    label: str | None
    image_url: str
    flagged_rank: int = Field(description="1 = the highest-scored flagged sample")
    space: str = Field(description="where train / heldout / generated distances live: pixels = "
                                   "intensities in [0, 1], all channels")
    metric: Literal["euclidean"]
    train: list[NeighbourOut] = Field(description="the 3 nearest other training images, nearest first")
    heldout: NeighbourOut | None = Field(description="the nearest held-out image (jobs with a held-out set)")
    generated: NeighbourOut | None = Field(description="the nearest generated image (VAE jobs that "
                                                       "generated samples)")
    copies: list[NeighbourOut] = Field(description="GAN and copy-test jobs: generated samples that copy "
                                                   "this image, closest first (at most 8)")
    copies_space: str | None = Field(description="feature space and metric of the copies' distances")
    copy_threshold: float | None = Field(description="a generated sample copies its nearest training image "
                                                     "when their distance is at most this")


class InputOut(BaseModel):
    source: str = Field(description="upload:<dataset id>, builtin:<name> or path:<under the data root>")
    file_sha256: str | None = Field(description="sha256 of the bytes given (several files: their manifest's)")
    content_sha256: str | None = Field(default=None, description="sha256 of the decoded images (datasets)")
    count: int | None = None
    image_shape: list[int] | None = None


class ProvenanceOut(BaseModel):
    """What an audit read and what ran it (docs/api.md, Provenance); written by the finishing step."""

    schema_version: int = Field(alias="schema", serialization_alias="schema")
    software: dict[str, str | None]
    inputs: dict[str, InputOut]
    config: dict[str, Any]
    seeds: dict[str, int]
    units: list[dict[str, Any]]
    phases: dict[str, float | None]
