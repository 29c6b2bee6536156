"""POST /datasets (multipart upload), GET /datasets, GET /datasets/{dataset_id}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Response, UploadFile, status

from app.api.deps import OwnerDep, SessionDep, SettingsDep
from app.api.presenters import dataset_out
from app.api.schemas import DatasetList, DatasetOut
from app.services import datasets as service

router = APIRouter(prefix="/datasets", tags=["datasets"])


UPLOAD_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": DatasetOut, "description": "the same bytes were uploaded before"},
    400: {"description": "malformed multipart body"},
    413: {"description": "file too large"},
    422: {"description": "invalid file"},
}


@router.post("", operation_id="upload_dataset", response_model=DatasetOut,
             status_code=status.HTTP_201_CREATED, responses=UPLOAD_RESPONSES)
def upload_dataset(
    file: Annotated[UploadFile, File(description=".npy / .npz, a .zip / .tar / .tar.gz of images, parquet, "
                                                 "a WebDataset shard or a CIFAR-10 batch (docs/api.md)")],
    session: SessionDep, settings: SettingsDep, owner: OwnerDep, response: Response,
) -> DatasetOut:
    filename = file.filename or "upload"
    stored = service.store_upload(session, settings, owner, file.file, filename, field="file")
    response.headers["Location"] = f"/datasets/{stored.dataset.id}"
    if not stored.created:
        response.status_code = status.HTTP_200_OK
    return dataset_out(stored.dataset)


@router.get("", operation_id="list_datasets", response_model=DatasetList)
def list_datasets(
    session: SessionDep, owner: OwnerDep, settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50, offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> DatasetList:
    rows = service.list_datasets(session, owner, limit, offset)
    return DatasetList(items=[dataset_out(row) for row in rows], limit=limit, offset=offset)


@router.get("/{dataset_id}", operation_id="get_dataset", response_model=DatasetOut,
            responses={404: {"description": "no such dataset for this key"}})
def get_dataset(dataset_id: str, session: SessionDep, owner: OwnerDep) -> DatasetOut:
    return dataset_out(service.get_dataset(session, owner, dataset_id))
