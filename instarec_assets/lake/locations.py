"""Where the lake lives: local folders under INSTAREC_HOME or one S3 bucket per zone.

Every other module asks this one for URIs, so the `<zone>/<table>/year=/month=/day=/` layout is
written down exactly once.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from instarec_assets.lake.schemas import SUCCESS_MARKER, ZONES
from instarec_assets.settings import Settings

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

PARTITION_KEY_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
PARTITION_DIR_PATTERN = re.compile(r"year=(\d{4})/month=(\d{2})/day=(\d{2})")


class LakeConfigError(ValueError):
    """A setting (environment variable or parameter) is missing or malformed."""


def parse_partition_key(key: str) -> dt.date:
    """A landing date `YYYY-MM-DD`; anything else is an error naming the value."""
    if not PARTITION_KEY_PATTERN.match(key):
        raise LakeConfigError(f"partition key {key!r} is not a date in YYYY-MM-DD form")
    try:
        return dt.date.fromisoformat(key)
    except ValueError as error:
        raise LakeConfigError(f"partition key {key!r} is not a valid date: {error}") from None


def partition_relpath(table: str, partition_key: str) -> str:
    """`<table>/year=YYYY/month=MM/day=DD/<table>.parquet`, the seed system's layout."""
    day = parse_partition_key(partition_key)
    return f"{table}/year={day:%Y}/month={day:%m}/day={day:%d}/{table}.parquet"


def model_relpath(asset: str, partition_key: str) -> str:
    """`<asset>/year=YYYY/month=MM/day=DD`: one model partition's folder under the models prefix."""
    return partition_relpath(asset, partition_key).rsplit("/", 1)[0]


@dataclass(frozen=True)
class LakeLocations:
    """Roots of the landing area and the four zones, and the filesystem that reaches them."""

    env: str = "local"
    home: str = ".instarec"
    raw_bucket: str = ""
    clean_bucket: str = ""
    curated_bucket: str = ""
    consumption_bucket: str = ""
    endpoint_url: str = ""
    region: str = "us-east-1"
    s3_timeout_s: float = 60.0

    @classmethod
    def from_env(cls, home: str | None = None) -> LakeLocations:
        """INSTAREC_ENV, INSTAREC_HOME and, in aws mode, the bucket variables (instarec_assets.settings)."""
        settings = Settings.from_env()
        locations = cls(
            env=settings.env,
            home=home or settings.home,
            raw_bucket=settings.raw_bucket,
            clean_bucket=settings.clean_bucket,
            curated_bucket=settings.curated_bucket,
            consumption_bucket=settings.consumption_bucket,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
            s3_timeout_s=settings.s3_timeout_s,
        )
        locations.validate()
        return locations

    def validate(self) -> None:
        """Fail early, naming the variable, rather than deep inside a run."""
        if self.env not in ("local", "aws"):
            raise LakeConfigError(f"INSTAREC_ENV must be 'local' or 'aws', not {self.env!r}")
        if self.env == "aws":
            for zone in ZONES:
                if not self.bucket(zone):
                    raise LakeConfigError(f"INSTAREC_{zone.upper()}_BUCKET must be set when INSTAREC_ENV=aws")

    @property
    def is_aws(self) -> bool:
        return self.env == "aws"

    def bucket(self, zone: str) -> str:
        return {
            "raw": self.raw_bucket,
            "clean": self.clean_bucket,
            "curated": self.curated_bucket,
            "consumption": self.consumption_bucket,
        }[zone]

    @property
    def home_path(self) -> Path:
        return Path(self.home).resolve()

    def zone_uri(self, zone: str) -> str:
        """Root of a zone: `<home>/lake/<zone>` locally, `s3://<zone bucket>` in aws mode."""
        if zone not in ZONES:
            raise LakeConfigError(f"unknown zone {zone!r}; expected one of {', '.join(ZONES)}")
        if self.is_aws:
            return f"s3://{self.bucket(zone)}"
        return str(self.home_path / "lake" / zone)

    def landing_uri(self) -> str:
        """Where batches land: `<home>/landing` locally, the raw bucket's `landing/` prefix on S3."""
        if self.is_aws:
            return f"s3://{self.raw_bucket}/landing"
        return str(self.home_path / "landing")

    def landing_partition_uri(self, partition_key: str) -> str:
        parse_partition_key(partition_key)
        return f"{self.landing_uri()}/{partition_key}"

    @staticmethod
    def zone_of(table: str) -> str:
        """The zone a table lives in, from its name prefix (raw_, clean_, quarantined_)."""
        if table.startswith("raw_"):
            return "raw"
        if table.startswith(("clean_", "quarantined_")):
            return "clean"
        raise LakeConfigError(f"table {table!r} does not name its zone")

    def partition_uri(self, zone: str, table: str, partition_key: str) -> str:
        return f"{self.zone_uri(zone)}/{partition_relpath(table, partition_key)}"

    def privacy_uri(self) -> str:
        """The forget requests' append-only audit log: the raw zone's `privacy/` prefix (on AWS the
        Object Lock bucket, so a record, once written, cannot be changed before its retention ends)."""
        return f"{self.zone_uri('raw')}/privacy"

    def models_uri(self) -> str:
        """Where model folders live: the curated zone's `models/` prefix."""
        return f"{self.zone_uri('curated')}/models"

    def model_uri(self, asset: str, partition_key: str) -> str:
        """One model partition's folder (model, card or config, plots)."""
        return f"{self.models_uri()}/{model_relpath(asset, partition_key)}"

    def scratch_dir(self) -> Path:
        """Local working space (DuckDB spill, staged files); inside home so renames stay atomic."""
        path = self.home_path / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def storage_options(self) -> dict:
        """fsspec options for S3 (endpoint for moto or a private endpoint), with bounded timeouts and
        retries so that a cut or frozen endpoint ends the run instead of hanging it.

        s3fs already tries each call `S3FileSystem.retries` (5) times, with a short growing pause, on
        timeouts and dropped connections, and botocore's own retries would multiply that (3 x 5
        tries); so botocore sends each request once, and a frozen endpoint fails a call after about
        5 x `s3_timeout_s` (tested with a proxy that stops answering)."""
        if not self.is_aws:
            return {}
        client_kwargs: dict = {"region_name": self.region}
        if self.endpoint_url:
            client_kwargs["endpoint_url"] = self.endpoint_url
        return {
            "client_kwargs": client_kwargs,
            "config_kwargs": {
                "connect_timeout": self.s3_timeout_s,
                "read_timeout": self.s3_timeout_s,
                "retries": {"total_max_attempts": 1, "mode": "standard"},
            },
        }

    @cached_property
    def filesystem(self) -> AbstractFileSystem:
        import fsspec

        if self.is_aws:
            return fsspec.filesystem("s3", **self.storage_options())
        return fsspec.filesystem("file")

    def partitions(self, zone: str, table: str) -> dict[str, str]:
        """Existing partitions of a table, partition key to URI, in date order."""
        root = f"{self.zone_uri(zone)}/{table}"
        self.filesystem.invalidate_cache()
        found: dict[str, str] = {}
        for path in self.filesystem.glob(f"{root}/year=*/month=*/day=*/{table}.parquet"):
            match = PARTITION_DIR_PATTERN.search(path)
            if match:
                key = "-".join(match.groups())
                found[key] = path if not self.is_aws else f"s3://{path}"
        return dict(sorted(found.items()))

    def partitions_before(self, zone: str, table: str, partition_key: str) -> dict[str, str]:
        return {key: uri for key, uri in self.partitions(zone, table).items() if key < partition_key}

    def landing_batches(self) -> dict[str, bool]:
        """Landing folders by name, each with whether its `_SUCCESS` marker is there."""
        fs = self.filesystem
        root = self.landing_uri()
        fs.invalidate_cache()
        if not fs.exists(root):
            return {}
        batches: dict[str, bool] = {}
        for entry in fs.ls(root, detail=True):
            if entry["type"] != "directory":
                continue
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            batches[name] = fs.exists(f"{root}/{name}/{SUCCESS_MARKER}")
        return dict(sorted(batches.items()))
