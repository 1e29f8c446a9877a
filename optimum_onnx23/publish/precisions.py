"""The precisions of a published repo: the main graph, and each attached backend variant that other
consumers understand, materialized as a standalone graph file with its own external data.

Backend variants live inside `model.onnx` (docs/variants.md) and only our sessions select them.
transformers.js picks a file by the `dtype` it is given (`model_q4.onnx` for `"q4"`; the suffixes
of its `DEFAULT_DTYPE_SUFFIX_MAPPING`, transformers.js 4.3 `src/utils/dtypes.js`) and loads that
file's `<file>_data` only; onnxruntime-genai and onnxruntime's model packages name a file too. So
each variant with a transformers.js dtype becomes `model_<suffix>.onnx`: the plain model our own
sessions run for it (`select_variant`: the variant substituted, every variant stripped) and
`model_<suffix>.onnx_data` holding exactly the tensors that graph reads, nothing else.

Guarantees of `plan_variant_files`: nothing is written; the graph bytes and the data file's size
are exact (the dry run reports them); `write` copies each tensor's bytes from the export's data
file in bounded chunks (no tensor is held in memory), 64-byte aligned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import UnsafeModelFileError

if TYPE_CHECKING:  # onnx stays unimported for the CLI's early checks, which read VARIANT_PRECISIONS
    from .onnx_files import OnnxModelFiles

__all__ = [
    "DTYPE_SUFFIXES",
    "VARIANT_PRECISIONS",
    "MaterializedVariant",
    "PrecisionFile",
    "plan_variant_files",
    "precision_of_suffix",
]

logger = logging.getLogger(__name__)

# transformers.js `dtype` -> the suffix of `onnx/model{suffix}.onnx` it loads (its
# DEFAULT_DTYPE_SUFFIX_MAPPING, transformers.js 4.3.1): note `q8` is `_quantized`, `int8` is `_int8`.
DTYPE_SUFFIXES = {
    "fp32": "",
    "fp16": "_fp16",
    "int8": "_int8",
    "uint8": "_uint8",
    "q8": "_quantized",
    "q4": "_q4",
    "q2": "_q2",
    "q1": "_q1",
    "q4f16": "_q4f16",
    "q2f16": "_q2f16",
    "q1f16": "_q1f16",
    "bnb4": "_bnb4",
}
# The weight precision each transformers.js dtype stands for (what the card and --genai-precision call it).
_DTYPE_PRECISION = {
    "fp32": "fp32", "fp16": "fp16", "int8": "int8", "uint8": "uint8", "q8": "int8", "q4": "int4", "q2": "int2",
    "q1": "int1", "q4f16": "int4", "q2f16": "int2", "q1f16": "int1", "bnb4": "bnb4",
}
# Built-in variants other consumers can run, by the main graph's dtype: (precision, transformers.js dtype).
# int4 MatMulNBits on fp16 activations is what transformers.js calls q4f16; an int8 MatMulNBits on
# fp16 activations has no transformers.js name. `ort-cpu` (fp32, rewiring only) and
# `backend-context` (a stand-in for a compiled blob) add no precision: our sessions only.
VARIANT_PRECISIONS: dict[str, dict[str, tuple[str, str]]] = {
    "ort-cpu-int4": {"fp32": ("int4", "q4"), "fp16": ("int4", "q4f16")},
    "ort-cpu-int8": {"fp32": ("int8", "int8")},
}
ALIGNMENT = 64
_CHUNK = 16 << 20


def precision_of_suffix(suffix: str) -> tuple[str, str] | None:
    """(precision, dtype) of `onnx/model_<suffix>.onnx` for transformers.js; None if it maps no dtype."""
    for dtype, known in DTYPE_SUFFIXES.items():
        if known == f"_{suffix}":
            return _DTYPE_PRECISION[dtype], dtype
    return None


@dataclass
class MaterializedVariant:
    """A backend variant as a standalone graph: `graph` (its exact bytes) and a data file of
    `data_size` bytes, filled by `write_data` from the export's own data file."""

    variant: str
    file_name: str
    graph: bytes = field(repr=False)
    data_size: int
    providers: list[str]
    priority: int
    # (source data file, offset, length, offset in the new data file) per external tensor
    _copies: list[tuple[Path, int, int, int]] = field(default_factory=list, repr=False)

    @property
    def data_name(self) -> str:
        return f"{self.file_name}_data"

    def write_data(self, out: BinaryIO) -> None:
        """Write the data file: each tensor copied from the export's data file, zero padding between."""
        position = 0
        handles: dict[Path, BinaryIO] = {}
        try:
            for source, offset, length, target in self._copies:
                out.write(b"\0" * (target - position))
                handle = handles.get(source) or handles.setdefault(source, open(source, "rb"))
                handle.seek(offset)
                left = length
                while left:
                    chunk = handle.read(min(left, _CHUNK))
                    if not chunk:
                        raise UnsafeModelFileError(f"{source} ends before the {length} bytes at offset {offset}; re-export the model.")
                    out.write(chunk)
                    left -= len(chunk)
                position = target + length
            out.write(b"\0" * (self.data_size - position))
        finally:
            for handle in handles.values():
                handle.close()


@dataclass(frozen=True)
class PrecisionFile:
    """One precision of the repo: the graph a consumer loads for it and that graph's data files."""

    precision: str  # fp32, int4, int8, ...
    dtype: str  # transformers.js dtype
    graph: str  # path in the repo
    data: tuple[str, ...]
    size: int  # graph + data bytes: what a consumer of this precision downloads
    variant: str | None = None  # the backend variant it materializes (None: the main graph or a file as found)


_QUANTIZED_OP = "com.microsoft::MatMulNBits"  # what makes a variant int4/int8: without it, it quantized nothing


def _materialize(main: "OnnxModelFiles", variant: str, file_name: str, notes: list[str]) -> MaterializedVariant | None:
    import onnx_ir as ir

    from ..model_file import ModelFile
    from ..variants import list_variants, select_variant

    model = ModelFile.open(main.model).to_ir()  # data read where it lies, symlinks of a Hub cache included
    info = next(i for i in list_variants(model) if i.name == variant)
    if _QUANTIZED_OP not in info.ops or not info.owned_bytes:
        notes.append(f"Variant {variant} quantizes no weight of {main.name} (its ops: {', '.join(info.ops)}); it is not published as {file_name}.")
        return None
    selected = select_variant(model, variant=variant, copy=False)  # checks the variant's content hash
    data_name = f"{file_name}_data"
    copies: list[tuple[Path, int, int, int]] = []
    end = 0
    for value in selected.graph.initializers.values():
        tensor = value.const_value
        if not isinstance(tensor, ir.ExternalTensor):
            continue  # small tensors stay inline, as the exporter wrote them
        target = -(-end // ALIGNMENT) * ALIGNMENT
        copies.append((Path(tensor.path), tensor.offset or 0, tensor.length, target))
        value.const_value = ir.ExternalTensor(
            data_name, target, tensor.length, tensor.dtype, shape=tensor.shape, name=value.name, base_dir=main.model.parent
        )
        end = target + tensor.length
    for node in ir.traversal.RecursiveGraphIterator(selected.graph):
        for attribute in node.attributes.values():
            if attribute.type == ir.AttributeType.TENSOR and isinstance(attribute.value, ir.ExternalTensor):
                raise UnsafeModelFileError(
                    f"{main.name}: node {node.name} keeps its tensor in external data, which publishing cannot "
                    "move into a variant's own file; re-export the model."
                )
    graph = ir.serde.serialize_model(selected).SerializeToString()
    return MaterializedVariant(variant, file_name, graph, end, info.providers, info.priority, copies)


def plan_variant_files(
    main: "OnnxModelFiles", main_dtype: str, existing: set[str], notes: list[str]
) -> list[tuple[MaterializedVariant, str, str]]:
    """(materialized variant, precision, transformers.js dtype) for each variant attached to `main`
    that a consumer understands, skipping a file name already in `existing` (a Hub-layout folder
    published before keeps its files as they are). Variants without a consumer form get a note."""
    planned = []
    for variant in main.attached_variants:
        form = VARIANT_PRECISIONS.get(variant, {}).get(main_dtype)
        if form is None:
            if variant in VARIANT_PRECISIONS:
                notes.append(f"Variant {variant} of a {main_dtype} graph has no transformers.js dtype; it runs in our sessions only.")
            continue
        precision, dtype = form
        file_name = f"model{DTYPE_SUFFIXES[dtype]}.onnx"
        if file_name in existing:
            logger.info("%s is already in the folder; it is published as it is instead of materializing %s.", file_name, variant)
            continue
        materialized = _materialize(main, variant, file_name, notes)
        if materialized is not None:
            planned.append((materialized, precision, dtype))
    return planned

