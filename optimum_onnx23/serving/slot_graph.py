"""The serving graph for onnxruntime CPU: every fused `Attention` with a past cache becomes
`com.microsoft::GroupQueryAttention` reading and writing fixed KV slots, one slot per batch row,
each row with its own length.

Why: with the dynamic cache a batch is one rectangle, so every row attends over (and every step
copies) the longest row's past, left padding included; at 16 rows with a 512-token prompt among
them that copy is most of a decode step (docs/serving.md). onnxruntime's GroupQueryAttention
takes the past as a `[B, kv_heads, N, head_dim]` buffer bound as its own output (written in
place, no copy) and per-row lengths (`seqlens_k`), and its CPU kernel computes each row over its
own length only. Opset-24 `Attention` takes per-row lengths too (`nonpad_kv_seqlen`), but
onnxruntime 1.32's CPU kernel still computes over all N slots of every row (measured: 2.1 ms per
layer at 16 rows x 1024 slots, whatever the lengths), so it is no faster than padding.

Graph I/O after the pass: `input_ids` [B, S], `position_ids` [B, S], `seqlens_k` [B] int32 (each
row's length after this step, minus one), `total_sequence_length` [] int32 (the largest
`seqlens_k` + 1), `past_key_values.{i}.key|value` [B, kv_heads, N, head_dim] bound as
`present.{i}.key|value` (same shape, the same buffer); `attention_mask` is gone (a row's slots
past its length are never read).

Both fused forms are rewritten: 3-D `Attention` taking the past and returning the presents, and
4-D `Attention` over explicit `Concat(past, new)` presents (families with q/k norms on heads),
transposed to and from GroupQueryAttention's 3-D layout.

Guarantees: the graph is rewritten only if every `Attention` node has a boolean mask and reads
the past cache graph inputs (directly or through its present `Concat`), and the mask is used by
attention alone; otherwise `SlotGraphError` says
which condition failed and the graph is unusable (callers fall back to the dynamic cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from optimum_onnx23.contract import PAST_KV_PATTERN

__all__ = ["SlotGraphError", "to_kv_slots", "SEQLENS_K", "TOTAL_SEQUENCE_LENGTH", "MS_DOMAIN"]

SEQLENS_K = "seqlens_k"
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"
MS_DOMAIN = "com.microsoft"


class SlotGraphError(ValueError):
    """The graph cannot run on KV slots (the reason is the message)."""


@dataclass
class _Layer:
    """One attention layer as GroupQueryAttention needs it: 3-D q/k/v (new positions only), the
    past inputs, the outputs to replace (y, present key, present value) and the head counts."""

    node: ir.Node
    q: ir.Value
    k: ir.Value
    v: ir.Value
    past_key: ir.Value
    past_value: ir.Value
    outputs: tuple[ir.Value, ir.Value, ir.Value]
    q_heads: int
    kv_heads: int
    four_d: bool  # q/k/v and y are [B, heads, S, head_dim]: transposed around the new node


def _concat_past(value: ir.Value, node: ir.Node) -> tuple[ir.Value, ir.Value]:
    """`value` = Concat(past graph input, new, axis=2) that is itself a graph output (present):
    returns (past, new)."""
    concat = value.producer()
    if concat is None or concat.op_type != "Concat" or concat.attributes.get_int("axis") not in (2, -2) or len(concat.inputs) != 2:
        raise SlotGraphError(f"{node.name}: Attention without the past cache as graph inputs")
    past, new = concat.inputs
    if not (past.is_graph_input() and value.is_graph_output()):
        raise SlotGraphError(f"{node.name}: Attention without the past cache as graph inputs")
    return past, new


def _layer(node: ir.Node) -> _Layer:
    inputs = list(node.inputs) + [None] * (6 - len(node.inputs))
    q, k, v, mask, past_key, past_value = inputs[:6]
    if len(node.inputs) > 6 and any(x is not None for x in node.inputs[6:]):
        raise SlotGraphError(f"{node.name}: Attention with nonpad_kv_seqlen")
    if mask is None or mask.dtype != ir.DataType.BOOL:
        raise SlotGraphError(f"{node.name}: Attention without a boolean mask (additive bias, ALiBi or none)")
    if node.attributes.get_int("is_causal", 0) or node.attributes.get_int("qk_matmul_output_mode", 0):
        raise SlotGraphError(f"{node.name}: Attention with is_causal or a qk output mode")
    if len(node.outputs) > 3 and node.outputs[3].uses():
        raise SlotGraphError(f"{node.name}: Attention's qk output is used")
    if past_key is not None:  # 3-D form: the op concatenates the past itself and returns the presents
        if past_value is None or not (past_key.is_graph_input() and past_value.is_graph_input()) or len(node.outputs) < 3:
            raise SlotGraphError(f"{node.name}: Attention without the past cache as graph inputs")
        if v.shape is None or v.shape.rank() != 3 or "q_num_heads" not in node.attributes:
            raise SlotGraphError(f"{node.name}: Attention on 4-D inputs with a past input")
        heads = node.attributes.get_int("q_num_heads"), node.attributes.get_int("kv_num_heads")
        return _Layer(node, q, k, v, past_key, past_value, tuple(node.outputs[:3]), *heads, four_d=False)
    # 4-D form (q/k norms on heads): Attention(q, Concat(past_k, k), Concat(past_v, v), mask)
    past_key, new_key = _concat_past(k, node)
    past_value, new_value = _concat_past(v, node)
    dims = [x.shape[1] if x.shape is not None and x.shape.rank() == 4 else None for x in (q, past_key)]
    if not all(isinstance(d, int) for d in dims):
        raise SlotGraphError(f"{node.name}: 4-D Attention whose head counts are not static")
    return _Layer(node, q, new_key, new_value, past_key, past_value, (node.outputs[0], k, v), dims[0], dims[1], four_d=True)


def _to_3d(graph: ir.Graph, before: ir.Node, value: ir.Value) -> ir.Value:
    """[B, H, S, D] -> [B, S, H*D]."""
    transposed = ir.node("Transpose", [value], attributes={"perm": [0, 2, 1, 3]})
    shape = ir.node("Constant", [], attributes={"value": ir.tensor([0, 0, -1], dtype=ir.DataType.INT64)})
    reshaped = ir.node("Reshape", [transposed.outputs[0], shape.outputs[0]])
    for node in (transposed, shape, reshaped):
        graph.insert_before(before, node)
    return reshaped.outputs[0]


def _to_4d(graph: ir.Graph, after: ir.Node, value: ir.Value, heads: int) -> ir.Value:
    """[B, S, H*D] -> [B, H, S, D]."""
    shape = ir.node("Constant", [], attributes={"value": ir.tensor([0, 0, heads, -1], dtype=ir.DataType.INT64)})
    reshaped = ir.node("Reshape", [value, shape.outputs[0]])
    transposed = ir.node("Transpose", [reshaped.outputs[0]], attributes={"perm": [0, 2, 1, 3]})
    graph.insert_after(after, [shape, reshaped, transposed])
    return transposed.outputs[0]


def to_kv_slots(model: ir.Model, windows: dict[int, int] | None = None) -> int:
    """Rewrite `model` in place (see the module docstring); returns the number of attention layers.
    `windows`: layer index -> sliding window (keys within the last `window` positions, the query's
    own included, as transformers masks them); the graph's masks hold the windows but
    GroupQueryAttention does not read them, so the caller states them (from the model's config).
    Raises `SlotGraphError` before changing anything when the graph does not qualify."""
    windows = windows or {}
    graph = model.graph
    attentions = [n for n in graph if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]
    if not attentions:
        raise SlotGraphError("no fused Attention node (the export ran without fusions, or the family's attention has no standard op)")
    layers = [_layer(node) for node in attentions]
    by_name = {v.name: v for v in graph.inputs}
    kv_inputs = {v.name for v in graph.inputs if PAST_KV_PATTERN.fullmatch(v.name or "")}
    if len(kv_inputs) != 2 * len(layers) or any(not PAST_KV_PATTERN.fullmatch(x.past_key.name) for x in layers):
        raise SlotGraphError(
            f"{len(kv_inputs) // 2} cache layers but {len(layers)} fused Attention nodes (unfused attention layers, or shared KV)"
        )
    if "attention_mask" not in by_name:
        raise SlotGraphError("the graph has no attention_mask input")

    batch = ir.SymbolicDim("batch_size")
    seqlens = ir.Value(name=SEQLENS_K, type=ir.TensorType(ir.DataType.INT32), shape=ir.Shape([batch]))
    total = ir.Value(name=TOTAL_SEQUENCE_LENGTH, type=ir.TensorType(ir.DataType.INT32), shape=ir.Shape([]))
    for name in kv_inputs:
        value = by_name[name]
        value.shape = ir.Shape([batch, value.shape[1], ir.SymbolicDim("max_cache_len"), value.shape[3]])
    for layer in layers:
        node = layer.node
        attributes = {"num_heads": layer.q_heads, "kv_num_heads": layer.kv_heads}
        if "scale" in node.attributes:
            attributes["scale"] = node.attributes.get_float("scale")
        if node.attributes.get_float("softcap", 0.0):
            attributes["softcap"] = node.attributes.get_float("softcap")
        index = int(PAST_KV_PATTERN.fullmatch(layer.past_key.name).group(1))
        if windows.get(index):
            attributes["local_window_size"] = windows[index]  # the same keys as transformers' window (tested)
        q, k, v = layer.q, layer.k, layer.v
        if layer.four_d:
            q, k, v = (_to_3d(graph, node, x) for x in (q, k, v))
        gqa = ir.node(
            "GroupQueryAttention",
            [q, k, v, layer.past_key, layer.past_value, seqlens, total],
            attributes=attributes,
            domain=MS_DOMAIN,
            num_outputs=3,
            name=f"{node.name}.slots" if node.name else None,
        )
        graph.insert_before(node, gqa)
        y = _to_4d(graph, gqa, gqa.outputs[0], layer.q_heads) if layer.four_d else gqa.outputs[0]
        for old, new, like in zip(layer.outputs, (y, *gqa.outputs[1:]), (None, layer.past_key, layer.past_value)):
            name = old.name
            old.replace_all_uses_with(new, replace_graph_outputs=True)
            old.name = f"{name}.replaced"
            new.name = name
            new.type = old.type
            new.shape = like.shape if like is not None else old.shape
        graph.remove(node, safe=True)
    RemoveUnusedNodesPass()(model)
    mask = by_name["attention_mask"]
    if mask.uses():
        raise SlotGraphError("attention_mask is used by more than attention (its positions or padding feed other layers)")
    graph.inputs.remove(mask)
    graph.inputs.extend([seqlens, total])
    model.opset_imports.setdefault(MS_DOMAIN, 1)
    graph.opset_imports.setdefault(MS_DOMAIN, 1)
    return len(layers)
