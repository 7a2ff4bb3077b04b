"""Scoring the inference rows with a SageMaker batch transform job, as the seed system did (Dagster-free).

The rows arrive as pyarrow RecordBatches carrying `user_id, product_id, order_id, eval_set` and the
model's features (`feature_batches`). Each batch becomes one headerless CSV part under
`s3://<curated>/sagemaker/<job>/input/` holding the features only, in the model's training order
(the SageMaker XGBoost container reads `text/csv` rows by position), while the batch's ids wait in a
local parquet file. After the job, each `<part>.csv.out` (one probability per line: `SplitType=Line`
keeps the input order) is paired with its part's ids and appended to the same predictions parquet
the in-process scorer writes (`PREDICTIONS_SCHEMA`). At most one batch is in memory at a time.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from instarec_assets.backends.sagemaker import (
    SageMakerJobError,
    SageMakerXGBoost,
    StatusCallback,
    check_job_name,
    make_job_name,
    split_s3_uri,
)
from instarec_assets.consumption.recommendations import PREDICTIONS_SCHEMA
from instarec_assets.lake.duck import StagedParquet

BATCH_TRANSFORM = "sagemaker batch transform"
IN_PROCESS = "in-process"
ID_COLUMNS = ("user_id", "product_id", "order_id", "eval_set")
MODEL_ARTIFACT_KEY = "sagemaker_model_artifact"


@dataclass(frozen=True)
class BatchTransformRun:
    """What one scoring run did; `job_name` is empty when there was nothing to score (no job ran)."""

    staged: StagedParquet
    job_name: str
    model_data_url: str
    input_uri: str
    output_uri: str
    parts: int
    upload_seconds: float
    wait_seconds: float
    download_seconds: float

    @property
    def seconds(self) -> float:
        return self.upload_seconds + self.wait_seconds + self.download_seconds

    def as_metadata(self) -> dict[str, Any]:
        return {
            "job_name": self.job_name,
            "model_data_url": self.model_data_url,
            "input_uri": self.input_uri,
            "output_uri": self.output_uri,
            "parts": self.parts,
            "rows": self.staged.row_count,
            "upload_seconds": round(self.upload_seconds, 3),
            "wait_seconds": round(self.wait_seconds, 3),
            "download_seconds": round(self.download_seconds, 3),
        }


def model_data_url(card: Mapping[str, Any]) -> str:
    """The SageMaker training job's `model.tar.gz`, as the model card records it.

    A model trained in-process has none, and the batch transform container cannot load `model.json`.
    """
    url = card.get(MODEL_ARTIFACT_KEY)
    if not url:
        raise SageMakerJobError(
            f"model {card.get('model_version', '?')} has no {MODEL_ARTIFACT_KEY} in its model card "
            "(it was trained in-process): materialize xgboost_model again with INSTAREC_TRAINING_BACKEND=sagemaker, "
            "or score in-process with INSTAREC_TRAINING_BACKEND=local"
        )
    split_s3_uri(url)
    return url


def _ids(batch: pa.RecordBatch) -> pa.Table:
    missing = [name for name in ID_COLUMNS if name not in batch.schema.names]
    if missing:
        raise ValueError(f"feature batches lack id column(s) {', '.join(missing)}")
    return pa.table(
        {name: batch.column(name).cast(PREDICTIONS_SCHEMA.field(name).type) for name in ID_COLUMNS}
    )


def _predictions(ids: pa.Table, probabilities: np.ndarray) -> pa.Table:
    return pa.table(
        {
            **{name: ids.column(name) for name in ID_COLUMNS},
            "probability": pa.array(probabilities.astype(np.float32), pa.float32()),
        },
        schema=PREDICTIONS_SCHEMA,
    )


def _check_probabilities(job_name: str, part: str, values: np.ndarray) -> None:
    outside = int(np.count_nonzero(~((values >= 0) & (values <= 1))))
    if outside:
        raise SageMakerJobError(
            f"batch transform {job_name}: {part}.out has {outside} value(s) that are not probabilities in [0, 1] "
            "(the model's objective should be binary:logistic)",
            job_name=job_name,
        )


def score_with_batch_transform(
    client: SageMakerXGBoost,
    batches: Iterable[pa.RecordBatch],
    feature_names: Sequence[str],
    model_data_url: str,
    out_path: Path,
    workdir: Path,
    *,
    job_name: str | None = None,
    on_status: StatusCallback | None = None,
) -> BatchTransformRun:
    """Upload the batches as CSV parts, run one transform job over them, write the predictions parquet.

    A part whose output has another number of lines than it has rows fails the run with one line
    naming the job, the object and both counts. The SageMaker model is deleted afterwards.
    """
    job_name = check_job_name(job_name or make_job_name("instarec-score"))
    split_s3_uri(model_data_url)
    names = tuple(feature_names)
    local = Path(workdir) / job_name
    ids_dir = local / "ids"
    ids_dir.mkdir(parents=True, exist_ok=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    input_uri, output_uri = client.transform_input_uri(job_name), client.transform_output_uri(job_name)
    try:
        started = time.perf_counter()
        parts: list[tuple[str, int]] = []
        for batch in batches:
            if batch.num_rows == 0:
                continue
            ids = _ids(batch)
            part = client.upload_transform_part(
                job_name, len(parts), batch, names, local.parent, keep_file=False
            )
            pq.write_table(ids, ids_dir / f"{part[0]}.parquet")
            parts.append(part)
        uploaded = time.perf_counter()
        if not parts:
            pq.write_table(PREDICTIONS_SCHEMA.empty_table(), out_path, compression="zstd")
            return BatchTransformRun(
                StagedParquet(out_path, 0), "", model_data_url, "", "", 0, uploaded - started, 0.0, 0.0
            )
        waited, rows = _transform(client, job_name, model_data_url, parts, ids_dir, out_path, on_status)
        finished = time.perf_counter()
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return BatchTransformRun(
        staged=StagedParquet(out_path, rows),
        job_name=job_name,
        model_data_url=model_data_url,
        input_uri=input_uri,
        output_uri=output_uri,
        parts=len(parts),
        upload_seconds=uploaded - started,
        wait_seconds=waited - uploaded,
        download_seconds=finished - waited,
    )


def _transform(
    client: SageMakerXGBoost,
    job_name: str,
    model_data_url: str,
    parts: list[tuple[str, int]],
    ids_dir: Path,
    out_path: Path,
    on_status: StatusCallback | None,
) -> tuple[float, int]:
    """Create the model and the job, wait, read each part's output; returns (when the job ended, rows)."""
    output_uri = client.transform_output_uri(job_name)
    try:
        client.create_transform_job(job_name, model_data_url)
        client.wait_batch_transform(job_name, on_status=on_status)
        waited = time.perf_counter()
        rows = 0
        with pq.ParquetWriter(out_path, PREDICTIONS_SCHEMA, compression="zstd") as writer:
            for name, expected in parts:
                probabilities = client.read_transform_part(job_name, output_uri, name, expected)
                _check_probabilities(job_name, name, probabilities)
                writer.write_table(_predictions(pq.read_table(ids_dir / f"{name}.parquet"), probabilities))
                rows += expected
    except BaseException:
        with contextlib.suppress(ClientError):  # the job's own error matters more than a leftover model
            client.sagemaker.delete_model(ModelName=job_name)
        raise
    client.sagemaker.delete_model(ModelName=job_name)
    return waited, rows
