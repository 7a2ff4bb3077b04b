"""Where a clean step stages its files: a local folder, or an object-store prefix for the Spark job.

Locally a step stages into a folder under INSTAREC_HOME (a Path). On EMR Serverless the job stages
under INSTAREC_EMR_STAGING_URI (`s3://<clean bucket>/emr-staging/<run>-clean_<table>`), which has
no folders to make and which the job reaches through Hadoop's FileSystem (EMRFS), not pathlib:
StagingUri joins and names like a Path and prints as its URI. A `file://` URI is the same thing on
a local disk (what the tests use in place of s3://).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
