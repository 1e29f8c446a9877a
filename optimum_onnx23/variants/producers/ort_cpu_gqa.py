"""`ort-cpu-gqa`: attention with sinks (gpt-oss) as onnxruntime's `com.microsoft::GroupQueryAttention`.

No standard op takes attention sinks (a learned per-head logit in the softmax's denominator), so the
main graph keeps gpt-oss' attention as MatMul / Concat(sink) / Softmax / Slice / MatMul over the
`repeat_kv` copies of the cache. onnxruntime's GroupQueryAttention (1.32) has a `head_sink` input for
exactly that. Per layer, the region replaces the attention's output (the [batch, seq, heads x
head_dim] value before `o_proj`) and the layer's `present.{i}.key|value` with one GroupQueryAttention:

- query / key / value: the main graph's rotated query and new key (BNSH, transposed to 3-D) and value;
  `past_key` / `past_value`: the layer's cache inputs; the op appends and returns the present cache.
- `attention_bias`: the main graph's own float mask ([batch, 1, seq, total]: causal, left padding,
  sliding window), so the op's `seqlens_k` is `total - 1` for every row and its own causal mask
  agrees with it; `local_window_size` stays -1 (the window is in the bias).
- `head_sink`: the layer's sinks ([heads], owned by the variant: 4 bytes a head); `scale`: the
  scores' scale constant.

The ort-cpu rewrites (SkipSimplifiedLayerNormalization) are merged in, as ort-cpu-moe does: this is
the onnxruntime-CPU form of the rest of the graph. Guarantee: within 1e-4 of the main graph (fp32);
tested against the main graph and transformers' generation in tests/test_ort_gqa_variant.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..format import owned_prefix
from ._merge import merge_bodies
from .ort_cpu import ort_cpu_region
from .spec import VariantSpec

__all__ = ["NAME", "SinkAttention", "find_sink_attention", "produce"]

NAME = "ort-cpu-gqa"
_PASS_THROUGH = ("Transpose", "Reshape", "Expand", "Unsqueeze")  # repeat_kv's copy and the K transpose


@dataclass
class SinkAttention:
    """One layer's attention-with-sinks region of the main graph."""

    query: ir.Value  # rotated, [batch, heads, seq, head_dim]
    key: ir.Value  # the new key, [batch, kv_heads, seq, head_dim]
    value: ir.Value
    past_key: ir.Value
    past_value: ir.Value
    present_key: ir.Value
    present_value: ir.Value
    mask: ir.Value  # float [batch, 1, seq, total]
    sinks: np.ndarray  # [heads]
    scale: float
    output: ir.Value  # [batch, seq, heads * head_dim], what o_proj reads


def _producer(value: ir.Value | None, op: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op and node.domain == "" else None


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if node is not None and node.op_type == "Constant" and "value" in node.attributes:
        return node.attributes["value"].as_tensor().numpy()
    return None


def _cache_concat(value: ir.Value) -> ir.Node | None:
    """The Concat(past, new) that makes a layer's present cache, behind repeat_kv's copy and transposes."""
    for _ in range(8):
        node = value.producer()
        if node is None:
            return None
        if node.op_type == "Concat":
            return node
        if node.op_type not in _PASS_THROUGH:
            return None
        value = node.inputs[0]
    return None


def _match(softmax: ir.Node) -> SinkAttention | None:
    sub = _producer(softmax.inputs[0], "Sub")  # the max subtracted for stability
    scores = _producer(sub.inputs[0], "Concat") if sub else None  # [scores | sink] on the last axis
    if scores is None or len(scores.inputs) != 2 or scores.attributes.get_int("axis", 0) not in (-1, 3):
        return None
    add = _producer(scores.inputs[0], "Add")
    sink = _producer(scores.inputs[1], "Expand")
    mul = _producer(add.inputs[0], "Mul") if add else None
    qk = _producer(mul.inputs[0], "MatMul") if mul else None
    scale, sinks = _constant(mul.inputs[1]) if mul else None, _constant(sink.inputs[0]) if sink else None
    if qk is None or scale is None or scale.size != 1 or sinks is None:
        return None
    # softmax -> Slice (drop the sink column) -> MatMul with V -> Transpose -> Reshape to [B, S, H*D]
    users = [u.node for u in softmax.outputs[0].uses()]
    sliced = users[0] if len(users) == 1 and users[0].op_type == "Slice" else None
    pv_users = [u.node for u in sliced.outputs[0].uses()] if sliced else []
    pv = pv_users[0] if len(pv_users) == 1 and pv_users[0].op_type == "MatMul" else None
    t_users = [u.node for u in pv.outputs[0].uses()] if pv else []
    transpose = t_users[0] if len(t_users) == 1 and t_users[0].op_type == "Transpose" else None
    r_users = [u.node for u in transpose.outputs[0].uses()] if transpose else []
    reshape = r_users[0] if len(r_users) == 1 and r_users[0].op_type == "Reshape" else None
    if reshape is None or list(transpose.attributes.get_ints("perm", [])) != [0, 2, 1, 3]:
        return None
    k_cat, v_cat = _cache_concat(qk.inputs[1]), _cache_concat(pv.inputs[1])
    if k_cat is None or v_cat is None or not (k_cat.outputs[0].is_graph_output() and v_cat.outputs[0].is_graph_output()):
        return None
    past_k, new_k = k_cat.inputs
    past_v, new_v = v_cat.inputs
    if not (past_k.is_graph_input() and past_v.is_graph_input()):
        return None
    return SinkAttention(
        query=qk.inputs[0], key=new_k, value=new_v, past_key=past_k, past_value=past_v, present_key=k_cat.outputs[0],
        present_value=v_cat.outputs[0], mask=add.inputs[1], sinks=sinks.reshape(-1).astype(np.float32), scale=float(scale.reshape(())),
        output=reshape.outputs[0],
    )


def find_sink_attention(graph: ir.Graph) -> list[SinkAttention]:
    """Every attention-with-sinks region of the main graph, in graph order."""
    found = []
    for node in graph:
        if node.op_type == "Softmax" and node.domain == "" and node.inputs[0].shape is not None and len(node.inputs[0].shape) == 4:
            match = _match(node)
            if match is not None:
                found.append(match)
    return found


def produce(model: ir.Model, fusions: bool = True) -> VariantSpec:
    from ...errors import VariantNotApplicableError

    layers = find_sink_attention(model.graph)
    if not layers:
        raise VariantNotApplicableError("ort-cpu-gqa: no attention with sinks (gpt-oss' Concat(scores, sink) + Softmax) in this graph.")
    names = {v.name for v in model.graph.inputs}
    if not {"attention_mask", "input_ids"} <= names:
        raise VariantNotApplicableError("ort-cpu-gqa: the graph has no input_ids / attention_mask to size GroupQueryAttention's sequences.")
    prefix = owned_prefix(NAME)
    inputs: dict[str, ir.Value] = {}
    owned: dict[str, ir.TensorProtocol] = {}
    nodes: list[ir.Node] = []
    outputs: list[ir.Value] = []

    def value(name: str) -> ir.Value:
        return inputs.setdefault(name, ir.Value(name=name))

    def add(op: str, args, domain: str = "", num_outputs: int = 1, **attributes):
        node = ir.node(op, args, attributes=attributes, domain=domain, num_outputs=num_outputs)
        nodes.append(node)
        return node.outputs[0] if num_outputs == 1 else node.outputs

    def const(array) -> ir.Value:
        return add("Constant", [], value=ir.tensor(np.asarray(array)))

    # Every row is `total` long (the mask in attention_bias drops the padding): seqlens_k = total - 1.
    mask_shape = add("Shape", [value("attention_mask")])
    total = add("Gather", [mask_shape, const(np.int64(1))], axis=0)
    batch = add("Slice", [mask_shape, const(np.array([0])), const(np.array([1]))])
    total_i32 = add("Cast", [total], to=ir.DataType.INT32)
    seqlens = add("Cast", [add("Expand", [add("Sub", [total, const(np.int64(1))]), batch])], to=ir.DataType.INT32)
    # Every row's whole chunk is valid (the padding is in the bias): query_seqlens = seq lets the kernel take
    # a chunk on a past for batch > 1 ("batch_size must be 1 when sequence_length > 1 and past context is given").
    seq = add("Gather", [add("Shape", [value("input_ids")]), const(np.int64(1))], axis=0)
    query_seqlens = add("Cast", [add("Expand", [seq, batch])], to=ir.DataType.INT32)
    to_3d = const(np.array([0, 0, -1]))

    def bsd(v: ir.Value) -> ir.Value:  # [B, H, S, D] -> [B, S, H*D]
        return add("Reshape", [add("Transpose", [value(v.name)], perm=[0, 2, 1, 3]), to_3d])

    for i, layer in enumerate(layers):
        heads, kv_heads = layer.sinks.shape[0], layer.past_key.shape[1]
        if not isinstance(kv_heads, int):
            raise VariantNotApplicableError(f"ort-cpu-gqa: the kv head count of {layer.past_key.name} is not static.")
        owned[f"{prefix}layer{i}.sinks"] = ir.tensor(layer.sinks, name=f"{prefix}layer{i}.sinks")
        out, present_k, present_v = add(
            "GroupQueryAttention",
            [bsd(layer.query), bsd(layer.key), bsd(layer.value), value(layer.past_key.name), value(layer.past_value.name), seqlens,
             total_i32, None, None, None, value(layer.mask.name), value(f"{prefix}layer{i}.sinks"), None, None, None, None,
             query_seqlens],
            domain="com.microsoft", num_outputs=3, num_heads=int(heads), kv_num_heads=int(kv_heads), scale=layer.scale,
        )
        for new, old in ((out, layer.output), (present_k, layer.present_key), (present_v, layer.present_value)):
            new.name = old.name  # the values this region replaces
            outputs.append(new)
    body = ir.Graph(list(inputs.values()), outputs, nodes=nodes)
    if fusions:  # the ort-cpu rewrites too: this is the whole onnxruntime-CPU form
        body = merge_bodies(body, ort_cpu_region(model, NAME)[0])
    return VariantSpec.ort_cpu(
        model,
        name=NAME,
        body=body,
        owned=owned,
        priority=15,
        description=f"{len(layers)} attention-with-sinks layers as com.microsoft::GroupQueryAttention (head_sink; the main "
        "graph's mask as attention_bias)",
        tolerance="fp32: within 1e-4 of the main graph",
    )
