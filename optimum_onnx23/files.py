"""Files and folders we write: a rewritten file keeps its mode, an output folder is replaced only
when it holds a previous export of ours (or nothing).

No torch, transformers or onnx here: the CLI runs `check_output_folder` before its heavy imports.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from .errors import OutputFolderError

__all__ = ["REPORT_NAME", "check_output_folder", "current_umask", "new_file_mode", "replacing"]

REPORT_NAME = "export_report.json"  # every export (and Hub layout) we write holds it


def current_umask() -> int:
    """The process umask, read without changing it where the kernel says it (Linux >= 4.7)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and put back at once
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0o666 less the umask."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def replacing(path: str | os.PathLike):
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` in one
    rename, with the mode `path` had (a new file: the user's umask), so a folder served by another
    user or a web server keeps working. On any exception, KeyboardInterrupt included, the temporary
    file is removed and `path` is left as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = new_file_mode()
        os.chmod(tmp, mode)  # mkstemp's 0600 would otherwise replace the file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_export_report(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "opset" in data and "model" in data


def _describe(entries: list[Path]) -> str:
    names = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in entries)
    if len(names) == 1:
        return names[0]
    shown = ", ".join(names[:2])
    rest = len(names) - 2
    return f"{shown} and {rest} other entr{'y' if rest == 1 else 'ies'}" if rest else f"{names[0]} and {names[1]}"


def check_output_folder(output: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an output path we must not replace, in one line: a file, a non-empty folder without
    `overwrite`, or (even with `overwrite`) a non-empty folder that is not a previous export of ours
    (no valid `export_report.json` in it): `--overwrite` never deletes what we did not write."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OutputFolderError(f"Output path {output} is a file; pass a folder path.")
    if not output.is_dir():
        return
    entries = list(output.iterdir())
    if not entries:
        return
    ours = _is_export_report(output / REPORT_NAME)
    if not overwrite:
        if ours:
            raise OutputFolderError(
                f"Output folder {output} exists and is not empty (a previous optimum-onnx23 export); pass --overwrite to replace it."
            )
        raise OutputFolderError(
            f"Output folder {output} exists and is not empty (it holds {_describe(entries)}, not an optimum-onnx23 export); "
            "choose an empty folder or remove them."
        )
    if not ours:
        raise OutputFolderError(
            f"Output folder {output} holds {_describe(entries)}, which is not an optimum-onnx23 export "
            f"(no {REPORT_NAME}); --overwrite only replaces a previous export: choose an empty folder or remove them."
        )
