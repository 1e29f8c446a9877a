"""Find the ONNX models of an export folder, with the external-data files each one references."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import onnx
from onnx.external_data_helper import _get_all_tensors, uses_external_data

from ..contract import VARIANTS_INDEX_KEY
from ..errors import UnsafeModelFileError
from .errors import NoOnnxFilesError

__all__ = ["OnnxModelFiles", "find_onnx_models", "ONNX_SUBFOLDER", "TRANSFORMERS_JS_SUFFIXES", "ATTACHED_VARIANTS_KEY"]

ONNX_SUBFOLDER = "onnx"  # where transformers.js looks for the graphs of a Hub repo

# transformers.js picks `onnx/model{suffix}.onnx` by the `dtype` it is given.
TRANSFORMERS_JS_SUFFIXES = ("fp16", "quantized", "int8", "uint8", "q4", "q4f16", "bnb4")
_VARIANT = re.compile(r"^model_(?P<variant>[A-Za-z0-9][A-Za-z0-9_.-]*)\.onnx$")
# `model.variant-<name>.onnx`: what optimum_onnx23.variants writes beside a model when it selects a
# backend variant at session creation; a local cache derived from model.onnx, never published.
_SELECTED_CACHE = re.compile(r"\.variant-[^/]*\.onnx$")
# Model metadata where optimum_onnx23.variants lists the backend variants attached inside a graph.
ATTACHED_VARIANTS_KEY = VARIANTS_INDEX_KEY


@dataclass(frozen=True)
class OnnxModelFiles:
    """One `.onnx` graph and the files holding its external weights, all in the same folder."""

    model: Path
    external_data: tuple[Path, ...]
    graph_inputs: tuple[str, ...]
    graph_outputs: tuple[str, ...]
    opset: int
    attached_variants: tuple[str, ...] = ()  # backend variants carried inside the graph (optimum_onnx23.variants)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def variant(self) -> str | None:
        """`q4` for `model_q4.onnx` (transformers.js' naming); None for the main `model.onnx`."""
        match = _VARIANT.match(self.model.name)
        return match.group("variant") if match else None


def _all_tensors(model: onnx.ModelProto):
    yield from _get_all_tensors(model)
    for function in model.functions:  # variant functions may carry constants of their own
        for node in function.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR:
                    yield attribute.t


def _attached_variants(model: onnx.ModelProto) -> tuple[str, ...]:
    raw = next((p.value for p in model.metadata_props if p.key == ATTACHED_VARIANTS_KEY), "")
    try:
        names = json.loads(raw) if raw else []
    except ValueError:
        return ()
    return tuple(str(n) for n in names) if isinstance(names, list) else ()


def _external_locations(model: onnx.ModelProto) -> list[str]:
    locations = []
    for tensor in _all_tensors(model):
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location and location not in locations:
                locations.append(location)
    return locations


def _read_model(path: Path) -> OnnxModelFiles:
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError, ValueError, ... for a corrupt file
        raise UnsafeModelFileError(f"{path} is not a readable ONNX model ({type(error).__name__}); re-export it.") from error
    external = []
    for location in _external_locations(proto):
        relative = PurePosixPath(location.replace("\\", "/"))
        # The data must sit beside the graph: anything else would not survive the move to onnx/
        # and could point a consumer at a file outside the repo.
        if relative.is_absolute() or len(relative.parts) != 1 or relative.name in ("", ".", ".."):
            raise UnsafeModelFileError(
                f"{path.name} references external data `{location}` outside its folder; re-export it with "
                "the weights beside the graph."
            )
        data = path.parent / relative.name
        if not data.is_file():
            raise UnsafeModelFileError(f"{path.name} references external data `{location}`, which is missing; copy it beside the graph.")
        external.append(data)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxModelFiles(
        model=path,
        external_data=tuple(external),
        graph_inputs=tuple(i.name for i in proto.graph.input),
        graph_outputs=tuple(o.name for o in proto.graph.output),
        opset=opset,
        attached_variants=_attached_variants(proto),
    )


def find_onnx_models(folder: Path) -> list[OnnxModelFiles]:
    """The `.onnx` files at the root of `folder` (the exporter's flat layout) or under `folder/onnx/`
    (the Hub layout), main `model.onnx` first; selected-variant caches (`*.variant-*.onnx`) are
    left out. Raises `NoOnnxFilesError` when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NoOnnxFilesError(f"{folder} is not a folder; pass the folder written by `optimum-cli export onnx --dynamo`.")
    found: dict[str, OnnxModelFiles] = {}
    for directory in (folder, folder / ONNX_SUBFOLDER):
        for path in sorted(directory.glob("*.onnx")) if directory.is_dir() else []:
            if _SELECTED_CACHE.search(path.name):
                continue
            if path.name in found:
                raise NoOnnxFilesError(
                    f"{path.name} is both at the root of {folder} and in {ONNX_SUBFOLDER}/; keep one of them."
                )
            found[path.name] = _read_model(path)
    if not found:
        raise NoOnnxFilesError(
            f"{folder} holds no ONNX model (no *.onnx at its root or in {ONNX_SUBFOLDER}/); export one first with "
            "`optimum-cli export onnx --dynamo --model <model> <folder>`."
        )
    return sorted(found.values(), key=lambda m: (m.name != "model.onnx", m.name))
