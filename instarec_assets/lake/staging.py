"""Where a step stages its files: a local folder, or an object-store prefix for the Spark job.

Locally a step stages into a folder under INSTAREC_HOME (a Path). On EMR Serverless the job stages
under INSTAREC_EMR_STAGING_URI (`s3://<clean bucket>/emr-staging/<run>-clean_<table>`, or
`<run>-curated` for the feature build), which has
no folders to make and which the job reaches through Hadoop's FileSystem (EMRFS), not pathlib:
StagingUri joins and names like a Path and prints as its URI. A `file://` URI is the same thing on
a local disk (what the tests use in place of s3://).

Both Spark jobs (the clean steps and the feature build) take one staging location: the asset writes
the job's request there as `_request.json`, the job stages its tables there and writes its result
as `_result.json` last; write_staged_request and read_staged_result are those two files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

# Written by the asset before the job starts, and by the job last (its commit marker).
REQUEST_FILE = "_request.json"
RESULT_FILE = "_result.json"


@dataclass(frozen=True)
class StagingUri:
    """A file or prefix in an object store (or a file:// URI): joined with `/`, named like a Path."""

    uri: str

    def __truediv__(self, name: str) -> StagingUri:
        return StagingUri(f"{self.uri.rstrip('/')}/{name}")

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.uri


StagedLocation = Path | StagingUri


def is_uri(location: str) -> bool:
    return "://" in location


def staging_location(location: str) -> StagedLocation:
    """A URI (s3://, file://) as a StagingUri, anything else as a local Path."""
    return StagingUri(location.rstrip("/")) if is_uri(location) else Path(location)


def staging_file(staging: str, name: str) -> str:
    """The URI or path of one file in a staging location."""
    return str(staging_location(staging) / name)


class StagedResultMissing(RuntimeError):
    """The job ended without leaving its result (or a table it names) in the staging location."""


def write_staged_request(fs: AbstractFileSystem, staging: str, request: dict[str, Any]) -> str:
    """`_request.json` in `staging`, through `fs` (local or the lake's S3); its URI. A request is too
    long (a year of history is hundreds of URIs) and may hold secrets (the forget list's salt) for
    the job run's visible parameters."""
    uri = staging_file(staging, REQUEST_FILE)
    with fs.open(uri, "w") as handle:
        json.dump(request, handle)
    return uri


def read_staged_result(fs: AbstractFileSystem, staging: str) -> dict[str, Any]:
    """The `_result.json` the job wrote last into `staging`; StagedResultMissing when there is none."""
    uri = staging_file(staging, RESULT_FILE)
    fs.invalidate_cache()  # s3fs lists once and remembers; the job wrote after
    if not fs.exists(uri):
        raise StagedResultMissing(f"no {RESULT_FILE} at {uri}")
    with fs.open(uri, "r") as handle:
        return json.load(handle)


def require_staged(fs: AbstractFileSystem, locations: Iterable[StagedLocation]) -> None:
    """Each file the result names is there; StagedResultMissing names the first that is not."""
    for location in locations:
        if not fs.exists(str(location)):
            raise StagedResultMissing(f"{RESULT_FILE} names {location}, which is not there")
