"""The secret salt behind the analysts' `user_key`: Secrets Manager (aws), the environment, or a 0600 file.

Analysts never see raw user ids: the warehouse stores `user_key`, the first 16 hex digits of
`sha256(salt || ':' || user_id)`. The salt is read at build time only and never written into the
warehouse, so a copy of the database cannot be joined back to user ids by hashing guesses. In aws
mode the run tasks read it from a Secrets Manager secret with their own role (boto3), so every run
hashes alike and the value is never in a task definition or a process environment.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from instarec_assets.settings import Settings

SALT_ENV = "INSTAREC_WAREHOUSE_SALT"
SALT_SECRET_ENV = "INSTAREC_WAREHOUSE_SALT_SECRET"
SALT_FILE = Path("secrets") / "warehouse_salt"
MIN_SALT_LENGTH = 16
USER_KEY_HEX_DIGITS = 16


class WarehouseSaltError(ValueError):
    """The configured salt is unusable (too short, or its file cannot be read)."""


@dataclass(frozen=True)
class WarehouseSalt:
    """The salt and where it came from; `repr` leaves the value out so it never reaches a log."""

    value: str = field(repr=False)
    source: str


def salt_path(home: Path) -> Path:
    return Path(home) / SALT_FILE


def load_salt(home: Path) -> WarehouseSalt:
    """In aws mode the INSTAREC_WAREHOUSE_SALT_SECRET secret if set; else INSTAREC_WAREHOUSE_SALT if set;
    else INSTAREC_HOME/secrets/warehouse_salt, created on first use."""
    settings = Settings.from_env()
    if settings.env == "aws" and settings.warehouse_salt_secret:
        return load_salt_from_secret(
            settings.warehouse_salt_secret, region=settings.region, endpoint_url=settings.endpoint_url
        )
    from_env = settings.warehouse_salt
    if from_env is not None:
        return WarehouseSalt(_checked(from_env.strip(), SALT_ENV), f"environment variable {SALT_ENV}")
    path = salt_path(home)
    if not path.exists():
        _create_salt_file(path)
    try:
        value = path.read_text().strip()
    except OSError as error:
        raise WarehouseSaltError(f"{path}: cannot read the warehouse salt ({error.strerror})") from None
    return WarehouseSalt(_checked(value, str(path)), f"file {path}")


def load_salt_from_secret(secret_id: str, region: str, endpoint_url: str = "") -> WarehouseSalt:
    """The SecretString of a Secrets Manager secret (name or ARN), read with the caller's credentials."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    where = f"{SALT_SECRET_ENV} {secret_id}"
    client = boto3.client("secretsmanager", region_name=region, endpoint_url=endpoint_url or None)
    try:
        value = client.get_secret_value(SecretId=secret_id).get("SecretString")
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "error")
        raise WarehouseSaltError(f"{where}: cannot read the warehouse salt ({code})") from None
    except BotoCoreError as error:
        raise WarehouseSaltError(f"{where}: cannot read the warehouse salt ({error})") from None
    if value is None:
        raise WarehouseSaltError(f"{where}: the secret has no SecretString (a binary secret is not a salt)")
    return WarehouseSalt(_checked(value.strip(), where), f"Secrets Manager secret {secret_id}")


def user_key(user_id: int, salt: str) -> str:
    """The pseudonymous key the warehouse stores for a user; the same as the SQL in `build.py`."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()
    return digest[:USER_KEY_HEX_DIGITS]


def _checked(value: str, where: str) -> str:
    if len(value) < MIN_SALT_LENGTH:
        raise WarehouseSaltError(
            f"{where}: the warehouse salt must be at least {MIN_SALT_LENGTH} characters, not {len(value)}"
        )
    return value


def _create_salt_file(path: Path) -> None:
    """64 random hex digits with mode 0600, written whole then linked into place (first creator wins)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    staged = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        with contextlib.suppress(FileExistsError):  # another process created it first: theirs wins
            os.link(staged, path)
    finally:
        staged.unlink()
