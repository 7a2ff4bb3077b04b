"""The secret salt behind the analysts' `user_key`: from the environment, or a 0600 file under INSTAREC_HOME.

Analysts never see raw user ids: the warehouse stores `user_key`, the first 16 hex digits of
`sha256(salt || ':' || user_id)`. The salt is read at build time only and never written into the
warehouse, so a copy of the database cannot be joined back to user ids by hashing guesses.
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
    """INSTAREC_WAREHOUSE_SALT if set; else INSTAREC_HOME/secrets/warehouse_salt, created on first use."""
    from_env = Settings.from_env().warehouse_salt
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
