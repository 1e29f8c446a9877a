"""The output folder: refuse to clobber, build beside it, move into place only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import OutputFolderError

__all__ = ["check_output_folder", "staged_output_folder"]


def check_output_folder(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise OutputFolderError(f"Output path {output} is a file; pass a folder path.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise OutputFolderError(f"Output folder {output} exists and is not empty; pass --overwrite to replace it.")


@contextlib.contextmanager
def staged_output_folder(output: Path):
    """Yield a temporary folder next to `output`; on success it replaces `output` in one rename.

    On any exception, KeyboardInterrupt included, the temporary folder is removed and `output`
    is left as it was, so a failed export never leaves a half-written model behind.
    """
    output = output.absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would leak into the final folder
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = output.with_name(f".{output.name}.previous-{os.getpid()}")
    moved_aside = False
    try:
        if output.exists():
            output.rename(previous)
            moved_aside = True
        staging.rename(output)
    except BaseException:  # the move itself failed: put the old folder back, drop the new one
        if moved_aside and not output.exists():
            previous.rename(output)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if moved_aside:
        shutil.rmtree(previous, ignore_errors=True)
