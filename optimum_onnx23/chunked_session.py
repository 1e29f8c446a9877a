"""`ChunkedSession`: run an ONNX graph whose weights do not fit in memory, in pieces.

The graph's nodes (in their saved, topological order) are cut into consecutive chunks holding at
most `max_chunk_bytes` of initializers each (a node whose own weights are larger is a chunk alone).
Each chunk becomes a model of its own whose inputs are the values it reads from earlier chunks (or
the graph's inputs) and whose outputs are the values later chunks read (or the caller asked for);
its weights stay references into the model's external-data file. `run_many` opens one onnxruntime
session per chunk, runs every feed set through it, keeps only the values later chunks need and
closes it before the next: the weights resident at once are one chunk's, never the model's.

Guarantees:
- The outputs are those of the whole graph computed by the same onnxruntime kernels on the same
  weights; only graph optimizations that would cross a cut (a fusion spanning two chunks) can differ,
  and the standard-op graphs this package writes have none that change numerics at the layer scale
  (tests/test_chunked_session.py compares with a whole-graph session).
- Any value of the graph can be asked for (an intermediate activation as well as a graph output);
  with `consume`, each is handed over as soon as its chunk has run and not kept.
- Graphs with control flow (`If`/`Loop`/`Scan` subgraphs) read the outer values their subgraphs use.
- A value crossing a cut is typed from the model's value_info, or else by onnx's shape inference;
  one it cannot type raises `ValueError` (callers then run one whole session, with a warning).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .model_file import EXTERNAL_FOLDER_KEY

__all__ = ["CHUNK_BYTES", "ChunkedSession", "SessionArg", "initializer_bytes"]

# Weights resident per chunk: what streamed validation and chunked calibration hold at a time.
CHUNK_BYTES = 1 << 30

logger = logging.getLogger(__name__)

_ORT_TYPES = {
    onnx.TensorProto.FLOAT: "float", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "double", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.BOOL: "bool",
}


@dataclass(frozen=True)
class SessionArg:
    """What `onnxruntime.NodeArg` says of a graph input or output: name, shape (int or str per dim), type."""

    name: str
    shape: list
    type: str


def _arg(info: onnx.ValueInfoProto) -> SessionArg:
    tensor = info.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
    return SessionArg(info.name, shape, f"tensor({_ORT_TYPES.get(tensor.elem_type, str(tensor.elem_type))})")


def initializer_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of an initializer, external or inline, from its proto alone (nothing is read)."""
    for entry in tensor.external_data:
        if entry.key == "length":
            return int(entry.value)
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    return int(np.prod(tensor.dims, dtype=np.int64)) * 4


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names the node's subgraphs read (over-approximated: every name they read that
    they do not define; the caller keeps only the names the outer graph has)."""
    reads: set[str] = set()
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
            defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
            for inner in graph.node:
                reads.update(n for n in inner.input if n and n not in defined)
                reads.update(_subgraph_reads(inner) - defined)
                defined.update(inner.output)
    return reads


class ChunkedSession:
    """An onnxruntime CPU session over `model` (a path to an .onnx file whose external data lies
    beside it, or a `ModelProto` whose external data is in `folder`) run chunk by chunk."""

    def __init__(
        self, model: str | Path | onnx.ModelProto, folder: str | Path | None = None, max_chunk_bytes: int = CHUNK_BYTES,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ):
        if not isinstance(model, onnx.ModelProto):
            folder = Path(model).parent if folder is None else folder
            model = onnx.load(str(model), load_external_data=False)
        self.model, self.folder, self.providers = model, Path(folder) if folder is not None else None, list(providers)
        graph = model.graph
        self._initializers = {t.name: t for t in graph.initializer}
        self._types = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
        self._inferred = False
        self._inputs = [_arg(i) for i in graph.input if i.name not in self._initializers]
        self._outputs = [_arg(o) for o in graph.output]
        self.chunks: list[list[onnx.NodeProto]] = []
        self._reads: list[set[str]] = []  # per chunk: the non-initializer values it reads from outside itself
        self._weights: list[list[str]] = []  # per chunk: the initializers it reads
        produced_by: dict[str, int] = {}
        size = 0
        for node in graph.node:
            reads = {n for n in node.input if n} | (_subgraph_reads(node) & (set(self._types) | set(self._initializers) | set(produced_by)))
            new = [n for n in reads if n in self._initializers and (not self.chunks or n not in self._weights[-1])]
            weight = sum(initializer_bytes(self._initializers[n]) for n in new)
            if not self.chunks or (size + weight > max_chunk_bytes and self.chunks[-1]):
                self.chunks.append([])
                self._reads.append(set())
                self._weights.append([])
                size = 0
                new = [n for n in reads if n in self._initializers]
                weight = sum(initializer_bytes(self._initializers[n]) for n in new)
            index = len(self.chunks) - 1
            self.chunks[index].append(node)
            self._weights[index] += new
            size += weight
            self._reads[index].update(n for n in reads if n not in self._initializers and produced_by.get(n) != index)
            produced_by.update((o, index) for o in node.output if o)
        self._produced_by = produced_by
        self.chunk_bytes = [sum(initializer_bytes(self._initializers[n]) for n in names) for names in self._weights]

    def get_inputs(self) -> list[SessionArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[SessionArg]:
        return list(self._outputs)

    def run(self, names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.run_many(names, [feeds])[0]

    def run_many(
        self, names: Sequence[str] | None, feeds_list: Sequence[dict[str, np.ndarray]],
        consume: Callable[[int, str, np.ndarray], None] | None = None,
    ) -> list[list[np.ndarray]] | None:
        """`names` (None: the graph outputs) for every feed set; with `consume(i, name, value)` each
        value is handed over when its chunk has run (and not returned)."""
        names = [o.name for o in self._outputs] if names is None else list(names)
        inputs = {i.name for i in self._inputs}
        unknown = [n for n in names if n not in self._produced_by and n not in inputs]
        if unknown:
            raise ValueError(f"ChunkedSession: the graph computes no value {unknown[0]!r}.")
        values: list[dict[str, np.ndarray]] = [dict(feeds) for feeds in feeds_list]
        results: list[dict[str, np.ndarray]] = [{} for _ in feeds_list]
        wanted = set(names)
        for i, feeds in enumerate(feeds_list):  # asked-for graph inputs
            for name in wanted & inputs:
                self._deliver(i, name, feeds[name], consume, results)
        for index, nodes in enumerate(self.chunks):
            later = set().union(*self._reads[index + 1 :]) if index + 1 < len(self.chunks) else set()
            produced = [o for node in nodes for o in node.output if o and self._produced_by.get(o) == index]
            outputs = [o for o in dict.fromkeys(produced) if o in later or o in wanted]
            if not outputs:
                continue
            start = time.perf_counter()
            session = self._session(index, outputs)
            for i in range(len(feeds_list)):
                chunk_feeds = {n: values[i][n] for n in self._chunk_inputs(index)}
                for name, value in zip(outputs, session.run(outputs, chunk_feeds)):
                    if name in later:
                        values[i][name] = value
                    if name in wanted:
                        self._deliver(i, name, value, consume, results)
                for name in [n for n in values[i] if n not in later and n not in inputs]:
                    del values[i][name]
            del session
            gc.collect()
            logger.debug("chunk %d/%d (%.2f GB of weights) in %.1f s", index + 1, len(self.chunks), self.chunk_bytes[index] / 1e9, time.perf_counter() - start)
        if consume is not None:
            return None
        return [[r[n] for n in names] for r in results]

    @staticmethod
    def _deliver(i: int, name: str, value: np.ndarray, consume, results) -> None:
        if consume is not None:
            consume(i, name, value)
        else:
            results[i][name] = value

    def _chunk_inputs(self, index: int) -> list[str]:
        return sorted(self._reads[index])

    def check_types(self) -> None:
        """Raise `ValueError` if a value crossing a cut has no type (nothing has run yet)."""
        for index in range(len(self.chunks)):
            for name in self._chunk_inputs(index):
                self._value_info(name)

    def _value_info(self, name: str) -> onnx.ValueInfoProto:
        info = self._types.get(name)
        if (info is None or not info.type.HasField("tensor_type")) and not self._inferred:
            # a graph saved without value_info: onnx's shape inference types it (graph only, no weights read)
            self._inferred = True
            inferred = onnx.shape_inference.infer_shapes(self.model)
            self._types.update((v.name, v) for v in inferred.graph.value_info if v.name not in self._types)
            info = self._types.get(name)
        if info is None or not info.type.HasField("tensor_type"):
            raise ValueError(f"ChunkedSession: value {name!r} crosses a chunk boundary and has no type (value_info or shape inference).")
        return info

    def _session(self, index: int, outputs: Iterable[str]):
        import onnxruntime as ort

        graph = onnx.helper.make_graph(
            self.chunks[index], f"chunk{index}",
            [self._value_info(n) for n in self._chunk_inputs(index)],
            [self._value_info(n) for n in outputs],
            initializer=[self._initializers[n] for n in self._weights[index]],
        )
        model = onnx.helper.make_model(graph, opset_imports=self.model.opset_import, ir_version=self.model.ir_version)
        model.functions.extend(self.model.functions)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Pre-packing copies MatMul weights into MLAS' layout: a second copy, for a chunk run a few times.
        options.add_session_config_entry("session.disable_prepacking", "1")
        if self.folder is not None:
            options.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(self.folder))
        return ort.InferenceSession(model.SerializeToString(), options, providers=self.providers)
