"""`ORTModelForCausalLM.save_pretrained`: the folder `from_pretrained` loads, each file written
beside its final name and then renamed, so no file is ever half-written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from optimum_onnx23.contract import EXPORT_REPORT_FILE
from optimum_onnx23.errors import InvalidArgumentError, OutputFolderError
from optimum_onnx23.files import replacing

__all__ = ["save_model_folder", "copy_replacing"]


def copy_replacing(source: Path, target: Path) -> None:
    """Copy `source` over `target` through a temporary name, so `target` is never half-written."""
    if target.exists() and os.path.samefile(source, target):
        return
    with replacing(target) as partial:  # keeps target's mode (a new file: the user's umask)
        shutil.copyfile(source, partial)


def save_model_folder(model_path: Path | None, folder: Path | None, config, generation_config, save_directory: str | os.PathLike) -> None:
    """Copy the ONNX graph with its external data (and export_report.json when the model has one),
    then write config.json and generation_config.json; other files in `save_directory` stay."""
    from optimum_onnx23.publish import find_onnx_models

    save_directory = Path(save_directory)
    if save_directory.exists() and not save_directory.is_dir():
        raise OutputFolderError(f"{save_directory} is a file; pass a folder to save_pretrained().")
    if model_path is None:
        raise InvalidArgumentError("This model was built from a session, not a file: there is no ONNX file to save.")
    graph = next(m for m in find_onnx_models(model_path.parent) if m.model.name == model_path.name)
    sources = [graph.model, *graph.external_data]
    report = folder / EXPORT_REPORT_FILE if folder is not None else None
    if report is not None and report.is_file():
        sources.append(report)
    save_directory.mkdir(parents=True, exist_ok=True)
    for source in sources:
        copy_replacing(source, save_directory / source.name)
    config.save_pretrained(save_directory)
    generation_config.save_pretrained(save_directory)
