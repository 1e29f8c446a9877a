"""Static-cache lowering: the KV cache is the KV cache is a fixed `[batch, kv_heads, N, head_dim]` buffer per layer,
written in place by a standard op at positions given as a graph input.

Graph I/O (in this order): `input_ids` [B, S], `attention_mask` [B, N] (1 for positions that hold
real tokens, the S new ones included; 0 for padding and unfilled slots), `position_ids` [B, S],
`write_indices` [B] int64 (the slot of the first new token; rows may differ), then
`past_key_values.{i}.key|value` [B, kv_heads, N, head_dim]; outputs `logits` and
`present.{i}.key|value` with the shape of the pasts. `present` is the past buffer with the S new
positions written by `TensorScatter` (opset 24, axis 2, linear mode); a runtime that binds the
same buffer as `past` input and `present` output gets no KV copy per step (onnxruntime's kernel
is may-in-place).

Why TensorScatter: `benchmarks/generate_bench.py` times the three standard ops that can write a
position into 60 [1, 3, 1500, 64] buffers bound in place: TensorScatter 23-42 us a step, ScatterND
34-137 us, ScatterElements 300-470 us (it copies the whole buffer). TensorScatter takes the write
positions directly as [B] (ScatterND needs a [B, H, S, 3] index tensor built in the graph), and
onnxruntime logs a warning whenever it has to copy, which makes "no KV copy" checkable.

Tracing (`exporters.tracing.export_cache`): each cache layer's write is an out-of-place scatter that exports as a standard opset-23
ScatterElements, so the opset-23 fusions run unchanged; after fusion `lower_kv_writes` replaces
each with `TensorScatter` and moves the default opset import to 24 (the other ops keep their
semantics: opset 24 only adds types and optional inputs). Validation runs the lowered graph against the same wrapper in PyTorch before saving.

Last-position logits (`logits="last"`, either cache): the wrapper passes `logits_to_keep=1`, so
`logits` is [B, 1, V]; a prefill skips the lm_head on the rest of the prompt. Both variants are
recorded in the ONNX metadata (`record_variant`); the runtime reads them from the graph's I/O.

Guarantees: `lower_kv_writes` replaces exactly the ScatterElements whose data is one of the given
past inputs, keeps each present's name, type and shape, and returns how many it replaced (the
caller compares that with the signature's count); `record_variant` writes the contract's metadata
keys and nothing else.
"""

from __future__ import annotations

from typing import Collection

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from ...contract import CACHE_KEY, LOGITS_KEY, MAX_CACHE_LEN_KEY, WRITE_INDICES

__all__ = ["STATIC_CACHE_OPSET", "lower_kv_writes", "record_variant"]

STATIC_CACHE_OPSET = 24  # TensorScatter's opset


def lower_kv_writes(model: ir.Model, kv_inputs: Collection[str]) -> int:
    """Replace each KV write (a ScatterElements on axis 2 whose data is one of the `kv_inputs`
    graph inputs, the signature's `kv_inputs`) with `TensorScatter(past, update, write_indices,
    axis=2)` and import opset 24.

    Returns the number of writes replaced; the index arithmetic left unused is removed."""
    graph = model.graph
    write_indices = next(v for v in graph.inputs if v.name == WRITE_INDICES)
    count = 0
    for node in list(graph):
        if node.op_type != "ScatterElements" or node.domain not in ("", "ai.onnx"):
            continue
        cache, _, update = node.inputs
        if not (cache.is_graph_input() and cache.name in kv_inputs):
            continue
        scatter = ir.node(
            "TensorScatter",
            [cache, update, write_indices],
            attributes={"axis": 2, "mode": "linear"},
            name=f"{cache.name}.tensor_scatter",
        )
        scatter.outputs[0].type = cache.type
        scatter.outputs[0].shape = cache.shape
        graph.insert_before(node, scatter)
        old = node.outputs[0]
        name = old.name
        old.replace_all_uses_with(scatter.outputs[0], replace_graph_outputs=True)
        old.name = f"{name}.replaced"
        scatter.outputs[0].name = name  # keeps `present.{i}.key|value`
        graph.remove(node, safe=True)
        count += 1
    model.opset_imports[""] = max(model.opset_imports.get("", 0), STATIC_CACHE_OPSET)
    graph.opset_imports[""] = model.opset_imports[""]
    RemoveUnusedNodesPass()(model)
    return count


def record_variant(model: ir.Model, cache: str, max_cache_len: int | None, logits: str) -> None:
    """Write the export variant into the ONNX metadata (contract's `CACHE_KEY`, `LOGITS_KEY`, `MAX_CACHE_LEN_KEY`)."""
    model.metadata_props[CACHE_KEY] = cache
    model.metadata_props[LOGITS_KEY] = logits
    if max_cache_len is not None:
        model.metadata_props[MAX_CACHE_LEN_KEY] = str(max_cache_len)
