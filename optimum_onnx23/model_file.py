"""An exported `model.onnx`, opened once: its bytes read and parsed a single time, its
external-data paths checked, then shared by variant selection and session creation.

Guarantees of `ModelFile.open`: the file exists, is a non-empty ONNX model, and every external-data
`location` it names (initializers, `Constant` nodes, function bodies) is a relative path inside the
model's folder. The weights themselves are never read here: onnxruntime reads them from the
folder (`EXTERNAL_FOLDER_KEY`) when it is handed `raw` bytes instead of a path.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import onnx

from .contract import VARIANT_DOMAIN
from .errors import ModelNotFoundError, UnsafeModelFileError
from .paths import external_data_path

__all__ = ["ModelFile", "EXTERNAL_FOLDER_KEY"]

# onnxruntime session config entry: where a model given as bytes finds its external data.
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


def _external_tensors(proto: onnx.ModelProto):
    """Every tensor the model stores, wherever it sits: initializers and tensor attributes of the
    main graph's and the functions' nodes (subgraphs included)."""
    yield from proto.graph.initializer

    def from_nodes(nodes):
        for node in nodes:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.GRAPH:
                    yield from attr.g.initializer
                    yield from from_nodes(attr.g.node)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for graph in attr.graphs:
                        yield from graph.initializer
                        yield from from_nodes(graph.node)

    yield from from_nodes(proto.graph.node)
    for function in proto.functions:
        yield from from_nodes(function.node)


@dataclass(eq=False)
class ModelFile:
    """`path`'s bytes and their parsed proto (weights left on disk)."""

    path: Path
    raw: bytes = field(repr=False)
    proto: onnx.ModelProto = field(repr=False)
    data_files: dict[str, Path] = field(default_factory=dict, repr=False)  # location -> checked path

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ModelFile":
        """Read and parse `path` once; raise one-line `ModelNotFoundError` / `UnsafeModelFileError`."""
        path = Path(path)
        if not path.is_file():
            raise ModelNotFoundError(f"{path} does not exist; pass the model.onnx of an exported folder.")
        raw = path.read_bytes()
        try:
            proto = onnx.load_model_from_string(raw)
        except Exception as error:  # protobuf's DecodeError and friends: one line for the user
            raise UnsafeModelFileError(
                f"{path} is not a readable ONNX model ({type(error).__name__}); re-export or re-download it."
            ) from None
        if not proto.graph.node:
            raise UnsafeModelFileError(f"{path} holds an empty ONNX graph; re-export or re-download it.")
        checked: dict[str, Path] = {}
        for tensor in _external_tensors(proto):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
            if location not in checked:
                checked[location] = external_data_path(location, path.parent, f"{path.name} tensor `{tensor.name}`")
        return cls(path, raw, proto, checked)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @cached_property
    def digest(self) -> str:
        """sha256 of the graph's bytes (weights excluded), shortened: the key of selected graphs."""
        return hashlib.sha256(self.raw).hexdigest()[:32]

    @property
    def variant_functions(self) -> list[onnx.FunctionProto]:
        return [f for f in self.proto.functions if f.domain == VARIANT_DOMAIN]

    @property
    def metadata(self) -> dict[str, str]:
        return {p.key: p.value for p in self.proto.metadata_props}

    def _resolved_data(self) -> dict[str, Path]:
        """location -> the file it resolves to, when some data file is a symlink to another folder or
        name (a Hugging Face cache snapshot links into `blobs/`); empty when all sit in the folder."""
        real = {location: Path(os.path.realpath(p)) for location, p in self.data_files.items()}
        here = Path(os.path.realpath(self.folder))
        return {} if all(r.parent == here and r.name == loc for loc, r in real.items()) else real

    def for_onnxruntime(self, data: bytes) -> tuple[bytes, Path]:
        """`data` (this model or a plain model selected from it) and the folder onnxruntime reads its
        external data from. In a Hugging Face cache snapshot the data files are symlinks into
        `blobs/`, and onnxruntime refuses a model given as bytes whose data resolves outside that
        folder: the locations (checked above) are then rewritten to the files they resolve to."""
        real = self._resolved_data()
        if not real:
            return data, self.folder
        folders = {r.parent for r in real.values()}
        if len(folders) != 1:
            raise UnsafeModelFileError(f"{self.path}'s external data resolves to {len(folders)} folders; copy the model into one folder.")
        proto = self.proto if data is self.raw else onnx.load_model_from_string(data)
        relocated = onnx.ModelProto()
        relocated.CopyFrom(proto)
        for tensor in _external_tensors(relocated):
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value in real:
                    entry.value = real[entry.value].name
        return relocated.SerializeToString(), folders.pop()

    def to_ir(self):
        """The model as onnx-ir objects, built from the parsed proto (no second parse); external
        tensors resolve against the model's folder."""
        import onnx_ir as ir

        model = ir.serde.deserialize_model(self.proto)
        ir.external_data.set_base_dir(model.graph, str(self.folder))
        # onnx-ir refuses to read a data file that is a symlink out of the model's folder (a Hugging
        # Face cache snapshot): such tensors read the file it resolves to; `restore_locations` gives
        # them back their names in the model before it is serialized.
        self._relocate(model, {loc: (r.name, r.parent) for loc, r in self._resolved_data().items()})
        return model

    def restore_locations(self, model) -> None:
        """Undo `to_ir`'s relocation in `model` (or a model selected from it): each external tensor
        names its data file as this file does, so the serialized graph is the same wherever it lies."""
        self._relocate(model, {r.name: (loc, self.folder) for loc, r in self._resolved_data().items()})

    @staticmethod
    def _relocate(model, names: dict[str, tuple[str, Path]]) -> None:
        import onnx_ir as ir

        if not names:
            return
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor) and tensor.location in names:
                location, base_dir = names[tensor.location]
                value.const_value = ir.ExternalTensor(
                    location, tensor.offset, tensor.length, tensor.dtype, shape=tensor.shape, name=tensor.name, base_dir=base_dir
                )
