"""The S3 timeout setting reaches every filesystem a run uses, with one botocore attempt per s3fs try."""

from __future__ import annotations

from instarec_assets.definitions import build_resources
from instarec_assets.lake.locations import LakeLocations

AWS = {
    "env": "aws",
    "raw_bucket": "instarec-raw",
    "clean_bucket": "instarec-clean",
    "curated_bucket": "instarec-curated",
    "consumption_bucket": "instarec-consumption",
    "endpoint_url": "http://127.0.0.1:9",
}


def test_the_lake_resource_hands_its_steps_the_configured_s3_timeout(tmp_path):
    """Steps and IO managers build their filesystem from the lake resource: it must carry the timeout."""
    locations = LakeLocations(home=str(tmp_path), s3_timeout_s=7.5, **AWS)
    resources = build_resources(locations)
    lake = resources["lake"]
    assert lake.s3_timeout_s == resources["clean_io_manager"].lake.s3_timeout_s == 7.5
    config = lake.locations.storage_options()["config_kwargs"]
    assert (config["connect_timeout"], config["read_timeout"]) == (7.5, 7.5)
    assert config["retries"] == {"total_max_attempts": 1, "mode": "standard"}


def test_the_filesystem_gets_the_timeouts_and_local_mode_needs_no_options(tmp_path):
    fs = LakeLocations(home=str(tmp_path), s3_timeout_s=4, **AWS).filesystem
    assert (fs.config_kwargs["connect_timeout"], fs.config_kwargs["read_timeout"]) == (4, 4)
    assert fs.client_kwargs["endpoint_url"] == AWS["endpoint_url"]
    assert LakeLocations(home=str(tmp_path)).storage_options() == {}
