"""The output folder: refuse to clobber, build beside it, move into place only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from ..files import check_output_folder, current_umask  # check_output_folder: torch-free, for the CLI

__all__ = ["check_output_folder", "staged_output_folder"]


@contextlib.contextmanager
def staged_output_folder(output: Path):
    """Yield a temporary folder next to `output`; on success it replaces `output` in one rename.

    On any exception, KeyboardInterrupt included, the temporary folder is removed and `output`
    is left as it was, so a failed export never leaves a half-written model behind.
    """
    output = output.absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    staging.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would leak into the final folder
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
