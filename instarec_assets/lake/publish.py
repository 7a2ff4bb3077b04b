"""Publishing a finished local file as a lake object in one step: a rename locally, one put on S3.

Shared by the IO manager (every partition it stores) and the forget procedure (every partition it
rewrites), so both replace files the same way and readers never see half of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from upath import UPath

from instarec_assets.lake.staging import StagedLocation, StagingUri


def is_local(destination: UPath) -> bool:
    return destination.protocol in ("", "file", "local")


def publish(staged: StagedLocation, destination: UPath) -> None:
    """Make a staged file the partition in one step: a rename locally, one object write on S3.

    Readers see the old file or the new one, never half of either; re-running replaces the file.
    A file the Spark job staged on S3 is copied within S3 (one CopyObject, or a multipart copy
    completed at once), not through this process, then its staged object deleted.
    """
    if isinstance(staged, StagingUri):
        if is_local(destination):
            raise ValueError(f"{staged} is staged remotely; the lake at {destination} is local")
        destination.fs.copy(str(staged), destination.path)
        destination.fs.rm_file(str(staged))
        return
    if is_local(destination):
        target = Path(destination.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # a killed run's, never renamed
            stale.unlink(missing_ok=True)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        shutil.move(staged, temporary)
        os.replace(temporary, target)
    else:
        destination.fs.put_file(str(staged), destination.path)
        staged.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        staged.parent.rmdir()  # the step's staging folder, once its last file is published
