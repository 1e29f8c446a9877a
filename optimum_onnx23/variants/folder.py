"""Variants on an exported folder (`model.onnx` + `model.onnx_data`), in place.

New weights are *appended* to the existing external-data file and referenced by offset, so the
main graph's weights are never rewritten and `strip` can truncate the file back to its original
bytes. `model.onnx` is replaced atomically (written beside it, then renamed).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx_ir as ir

from ..errors import ModelNotFoundError, UnsafeModelFileError
from ..files import replacing
from ..paths import external_data_path
from .format import variant_functions

__all__ = ["load_model", "save_model", "data_file", "strip_folder", "external_files", "remove_selected_files"]

logger = logging.getLogger(__name__)
ALIGNMENT = 64  # appended tensors start on 64-byte boundaries (aligned loads, mmap-friendly)


def external_files(model: ir.Model, folder: Path) -> dict[str, Path]:
    """The external-data files the model references, each checked to lie inside `folder`."""
    files: dict[str, Path] = {}
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor) and tensor.location not in files:
            files[tensor.location] = external_data_path(tensor.location, folder, f"Initializer {value.name}")
    return files


def load_model(onnx_path: Path) -> ir.Model:
    """Load a model without reading its weights, with its external-data paths validated."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelNotFoundError(f"{onnx_path} does not exist; pass the model.onnx of an exported folder.")
    model = ir.load(onnx_path)
    external_files(model, onnx_path.parent)
    return model


def data_file(model: ir.Model, onnx_path: Path) -> str:
    files = external_files(model, onnx_path.parent)
    if len(files) > 1:
        raise UnsafeModelFileError(f"{onnx_path} spreads its weights over {len(files)} files; variants need one.")
    return next(iter(files), onnx_path.name + "_data")


def save_model(model: ir.Model, onnx_path: Path) -> None:
    """Save `model` as `onnx_path`: variants' in-memory weights (256 bytes or more) are appended to
    its data file; every other initializer is written exactly as it was loaded."""
    onnx_path = Path(onnx_path)
    folder = onnx_path.parent
    data_name = data_file(model, onnx_path)
    data_path = folder / data_name
    with open(data_path, "ab") as data:
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if not value.name.startswith("variants/") or tensor is None or isinstance(tensor, ir.ExternalTensor):
                continue
            if tensor.nbytes < 256:
                continue  # tiny tensors stay inline, like the exporter's
            offset = data.tell()
            if offset % ALIGNMENT:
                data.write(b"\0" * (ALIGNMENT - offset % ALIGNMENT))
                offset = data.tell()
            raw = tensor.tobytes()
            data.write(raw)
            value.const_value = ir.ExternalTensor(
                data_name, offset, len(raw), tensor.dtype, shape=tensor.shape, name=value.name, base_dir=folder
            )
    with replacing(onnx_path) as tmp:  # keeps model.onnx's mode
        ir.save(model, tmp)


def _truncate_data(model: ir.Model, onnx_path: Path) -> None:
    """Cut the data file after the last byte any remaining tensor uses (what attach appended)."""
    files = external_files(model, onnx_path.parent)
    for location, path in files.items():
        end = max(
            t.offset + t.length
            for v in model.graph.initializers.values()
            if isinstance(t := v.const_value, ir.ExternalTensor) and t.location == location
        )
        if path.stat().st_size > end:
            os.truncate(path, end)


def remove_selected_files(onnx_path: Path) -> list[Path]:
    """Delete the selected-model files `select_for_providers` wrote beside `onnx_path` (stale once
    the variants change)."""
    onnx_path = Path(onnx_path)
    stale = sorted(onnx_path.parent.glob(f"{onnx_path.stem}.variant-*.onnx"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def strip_folder(onnx_path: Path, names: list[str] | None = None) -> list[str]:
    """Strip variants from a saved model in place; returns the names removed."""
    from .strip import strip_variants

    onnx_path = Path(onnx_path)
    model = load_model(onnx_path)
    before = [f.metadata_props.get("variant.name") for f in variant_functions(model)]
    strip_variants(model, names)
    save_model(model, onnx_path)
    remove_selected_files(onnx_path)
    if not variant_functions(model):
        _truncate_data(model, onnx_path)
    after = {f.metadata_props.get("variant.name") for f in variant_functions(model)}
    return [n for n in before if n not in after]  # dependents of `names` included
