"""Variants on an exported folder (`model.onnx` + `model.onnx_data`), in place.

New weights are *appended* to the existing external-data file and referenced by offset, so the
main graph's weights are never rewritten and `strip` can truncate the file back to its original
bytes. `model.onnx` is replaced atomically (written beside it, then renamed).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import onnx_ir as ir

from ..errors import ModelNotFoundError, UnsafeModelFileError, VariantNotApplicableError
from ..files import replacing
from ..paths import external_data_path
from .format import VARIANT_DOMAIN, function_id, variant_functions

__all__ = ["load_model", "save_model", "attach_builtin_variants", "strip_folder", "external_files", "remove_selected_files", "check_external_locations"]

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


def check_external_locations(proto, folder: Path) -> None:
    """`external_files` for an `onnx.ModelProto` loaded without its weights."""
    seen: set[str] = set()
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key != "location" or entry.value in seen:
                continue
            seen.add(entry.value)
            external_data_path(entry.value, folder, f"Initializer {tensor.name}")


def load_model(onnx_path: Path) -> ir.Model:
    """Load a model without reading its weights, with its external-data paths validated."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelNotFoundError(f"{onnx_path} does not exist; pass the model.onnx of an exported folder.")
    model = ir.load(onnx_path)
    external_files(model, onnx_path.parent)
    return model


def _data_file(model: ir.Model, onnx_path: Path) -> str:
    files = external_files(model, onnx_path.parent)
    if len(files) > 1:
        raise UnsafeModelFileError(f"{onnx_path} spreads its weights over {len(files)} files; variants need one.")
    return next(iter(files), onnx_path.name + "_data")


def save_model(model: ir.Model, onnx_path: Path) -> None:
    """Save `model` as `onnx_path`: variants' in-memory weights (256 bytes or more) are appended to
    its data file; every other initializer is written exactly as it was loaded."""
    onnx_path = Path(onnx_path)
    folder = onnx_path.parent
    data_name = _data_file(model, onnx_path)
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
    return [n for n in before if names is None or n in names]


def _with_calibration(name: str, folder: Path, options: dict) -> dict:
    """Producers that take `calibration` get token windows of the bundled calibration texts,
    tokenized with the folder's tokenizer, unless `calibration=False` is passed; a folder without a
    tokenizer gets none, with a warning."""
    import inspect

    from .producers import BUILTIN
    from .producers._calibration import calibration_windows

    if "calibration" not in inspect.signature(BUILTIN[name]).parameters:
        return options
    wanted = options.get("calibration", True)
    if wanted is False or wanted is None:
        options["calibration"] = None
    elif wanted is True:
        try:
            options["calibration"] = calibration_windows(folder)
        except (OSError, ValueError) as error:
            logger.warning("Variant %s: no tokenizer in %s (%s); quantized without calibration.", name, folder, str(error)[:120])
            options["calibration"] = None
    return options


def attach_builtin_variants(model_folder: Path, names: list[str], options: dict | None = None) -> dict:
    """Attach the built-in variants `names` to the exported folder, in place.

    Returns a report: per variant its bytes (owned weights added to the data file, graph bytes added
    to model.onnx), the ops it uses and the seconds it took; the files' sizes before and after; and
    under `skipped`, with a logged warning, the variants that found nothing to rewrite in this graph.
    """
    from .listing import list_variants
    from .producers import BUILTIN, produce

    folder = Path(model_folder)
    onnx_path = folder / "model.onnx"
    for name in names:
        if name not in BUILTIN:
            from ..errors import InvalidArgumentError

            raise InvalidArgumentError(f"Unknown built-in variant {name!r}; choose from: {', '.join(BUILTIN)}.")
    model = load_model(onnx_path)
    data_path = folder / _data_file(model, onnx_path)
    report: dict = {"files_before": {onnx_path.name: onnx_path.stat().st_size, data_path.name: data_path.stat().st_size}}
    report["variants"] = {}
    report["skipped"] = {}
    for name in names:
        start = time.perf_counter()
        size_graph = onnx_path.stat().st_size
        size_data = data_path.stat().st_size
        try:
            spec = produce(name, model, **_with_calibration(name, folder, dict((options or {}).get(name, {}))))
        except VariantNotApplicableError as error:
            logger.warning("Variant %s not attached: %s", name, error)
            report["skipped"][name] = str(error)
            continue
        spec.attach_to(model)
        save_model(model, onnx_path)
        info = next(i for i in list_variants(model) if i.name == name)
        report["variants"][name] = {
            "owned_bytes": info.owned_bytes,
            "data_bytes_added": data_path.stat().st_size - size_data,
            "graph_bytes_added": onnx_path.stat().st_size - size_graph,
            "nodes": len(list(model.functions[(VARIANT_DOMAIN, function_id(name), "")])),
            "ops": info.ops,
            "seconds": round(time.perf_counter() - start, 3),
        }
        logger.info("Attached variant %s (%d owned bytes) in %.1f s", name, info.owned_bytes, time.perf_counter() - start)
    remove_selected_files(onnx_path)
    report["files_after"] = {onnx_path.name: onnx_path.stat().st_size, data_path.name: data_path.stat().st_size}
    return report
