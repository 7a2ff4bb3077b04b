"""Forget requests: the append-only audit log under the lake and the forget list derived from it.

Each request (a forget, or the withdrawal of one) is one new JSON object under
`<raw zone>/privacy/forget_requests/`, named by its time and id, never rewritten or deleted by
this code (on AWS the raw bucket's Object Lock keeps it). A record names who asked, when, why,
what was rewritten with the rows removed, and the model versions trained with the user's data;
it never holds the deleted data or the user id itself, only `user_hash`, the salted sha256 of the
id (the warehouse's salt: `user_key` is its first 16 hex digits). The forget list is the users
whose latest request is a forget: the clean step quarantines their later landings.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from upath import UPath

from instarec_assets.lake.locations import LakeLocations
from instarec_assets.lake.publish import publish

REQUESTS_FOLDER = "forget_requests"
FORGET = "forget"
WITHDRAW = "withdraw"


def user_hash(user_id: int, salt: str) -> str:
    """The salted sha256 of a user id, in hex: what the audit log and the forget list store."""
    return hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()


@dataclass(frozen=True)
class Rewrite:
    """One file, table or store the forget procedure changed, with the user's rows it removed."""

    target: str
    kind: str  # parquet | landing csv | warehouse | analyst table | analyst object deleted | serving ...
    rows_removed: int
    rows_kept: int | None = None
    noncurrent_versions_deleted: int = 0


@dataclass(frozen=True)
class ModelTrainedWith:
    """A stored model version whose training data held the user's rows (not retrained)."""

    model: str
    partition: str
    version: str


@dataclass(frozen=True)
class AuditRecord:
    """One entry of the audit log; nothing in it identifies the user without the salt."""

    action: str  # forget | withdraw
    user_hash: str
    requested_by: str
    reason: str
    requested_at: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    )
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    rewritten: tuple[Rewrite, ...] = ()
    models_trained_with_user: tuple[ModelTrainedWith, ...] = ()
    note: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @property
    def rows_removed(self) -> int:
        return sum(rewrite.rows_removed for rewrite in self.rewritten)


def requests_uri(privacy_uri: str) -> str:
    return f"{privacy_uri}/{REQUESTS_FOLDER}"


def append_record(locations: LakeLocations, record: AuditRecord) -> str:
    """Write the record as a new object (a temp file renamed locally, one put on S3); its URI."""
    privacy_uri = locations.privacy_uri()
    stamp = record.requested_at.replace("-", "").replace(":", "").replace("+0000", "Z").replace(".", "")
    uri = f"{requests_uri(privacy_uri)}/{stamp}-{record.action}-{record.request_id}.json"
    with tempfile.NamedTemporaryFile(
        "w", suffix=".json", dir=locations.scratch_dir(), delete=False
    ) as handle:
        handle.write(record.to_json() + "\n")
    publish(Path(handle.name), UPath(uri, **locations.storage_options()))
    return uri


def read_records(locations: LakeLocations) -> list[dict[str, Any]]:
    """Every record of the log, oldest first."""
    fs = locations.filesystem
    root = requests_uri(locations.privacy_uri())
    fs.invalidate_cache()
    if not fs.exists(root):
        return []
    names = sorted(path for path in fs.ls(root, detail=False) if path.endswith(".json"))
    records = []
    for name in names:
        with fs.open(name if not locations.is_aws else f"s3://{name}", "r") as handle:
            records.append(json.load(handle))
    return records


def forgotten_hashes(records: Iterable[dict[str, Any]]) -> frozenset[str]:
    """The users whose latest request is a forget (a later withdrawal lifts it)."""
    latest: dict[str, str] = {}
    for record in sorted(records, key=lambda r: r["requested_at"]):
        latest[record["user_hash"]] = record["action"]
    return frozenset(key for key, action in latest.items() if action == FORGET)
