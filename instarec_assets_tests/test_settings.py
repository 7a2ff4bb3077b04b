"""Settings: one module reads the environment, the README lists every variable, bad values fail in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from instarec_assets.settings import VARIABLES, Settings, SettingsError

PACKAGE = Path(__file__).resolve().parent.parent / "instarec_assets"
README = (PACKAGE.parent / "README.md").read_text()
ENV_READ = re.compile(r"os\.environ(\.get|\[|\.setdefault)?|os\.getenv")


def test_only_the_settings_module_reads_the_environment():
    """serving/ reads its own (it ships without the pipeline); two lines set process-level variables."""
    readers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == "settings.py" or relative.startswith("serving/"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if ENV_READ.search(line) and not re.search(
                r'os\.environ\["DAGSTER_HOME"\] =|setdefault\("CUBLAS', line
            ):
                readers.append(f"{relative}:{number}: {line.strip()}")
    assert readers == []


def test_readme_lists_every_variable():
    missing = [name for name in VARIABLES if f"`{name}`" not in README]
    assert missing == []


def test_settings_parse_and_default():
    settings = Settings.from_env(
        {
            "INSTAREC_THREADS": "3",
            "INSTAREC_SAGEMAKER_SUBNETS": "subnet-a, subnet-b",
            "AWS_DEFAULT_REGION": "eu-west-1",
        }
    )
    assert settings.threads == 3 and settings.sagemaker_subnets == ("subnet-a", "subnet-b")
    assert settings.region == "eu-west-1" and settings.env == "local" and settings.serving_keep_versions == 3
    assert (settings.retrain_every_batches, settings.retrain_max_age_days, settings.retrain_drift_psi) == (
        4,
        28,
        0.2,
    )
    assert Settings.from_env({"INSTAREC_RETRAIN_DRIFT_PSI": "0"}).retrain_drift_psi == 0.0


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("INSTAREC_THREADS", "-1", "INSTAREC_THREADS must be a non-negative integer, not '-1'"),
        ("INSTAREC_THREADS", "two", "INSTAREC_THREADS must be a non-negative integer, not 'two'"),
        (
            "INSTAREC_SERVING_KEEP_VERSIONS",
            "0",
            "INSTAREC_SERVING_KEEP_VERSIONS must be a positive integer, not '0'",
        ),
        (
            "INSTAREC_RETRAIN_EVERY_BATCHES",
            "-2",
            "INSTAREC_RETRAIN_EVERY_BATCHES must be a non-negative integer, not '-2'",
        ),
        (
            "INSTAREC_RETRAIN_DRIFT_PSI",
            "high",
            "INSTAREC_RETRAIN_DRIFT_PSI must be a non-negative number, not 'high'",
        ),
        (
            "INSTAREC_RETRAIN_DRIFT_PSI",
            "nan",
            "INSTAREC_RETRAIN_DRIFT_PSI must be a non-negative number, not 'nan'",
        ),
    ],
)
def test_a_bad_value_names_the_variable(name: str, value: str, message: str):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({name: value})
    assert str(raised.value) == message
