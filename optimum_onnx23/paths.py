"""Validation of file paths read from model files (external-data locations)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UnsafeModelFileError

__all__ = ["external_data_path"]


def external_data_path(location: str, folder: str | os.PathLike, owner: str) -> Path:
    """The file an external-data `location` names, refused unless it stays inside `folder`.

    The check is lexical (`normpath`, no symlink resolution): an absolute path or a `..` that
    leaves the folder is refused, while a symlink placed inside the folder is its owner's choice.
    That is what the Hub cache needs, where every snapshot file is a symlink into `blobs/`.
    `owner` names what carries the location (e.g. "model.onnx tensor `w`") for the error line.
    """
    folder = Path(os.path.abspath(folder))
    target = Path(os.path.normpath(folder / location)) if location else folder
    if not location or Path(location).is_absolute() or not target.is_relative_to(folder) or target == folder:
        raise UnsafeModelFileError(
            f"{owner} points at external data `{location}` outside its folder; refusing to load it "
            "(only paths inside the model folder are allowed)."
        )
    return target
