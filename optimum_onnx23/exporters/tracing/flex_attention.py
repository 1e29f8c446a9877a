"""torch's `flex_attention` higher-order op exported as `ai.onnx.preview.FlexAttention`.

With `attn_implementation="flex_attention"` transformers calls `torch.nn.attention.flex_attention`
with a `score_mod` (softcap, ...) and a `BlockMask` whose `mask_mod` is transformers' own mask
function (causal, sliding window, chunks, left padding, cache offsets). torch.export keeps the call
as one `torch.ops.higher_order.flex_attention` node whose `score_mod` and `mask_mod` are FX
subgraphs over 0-d tensors `(score, b, h, q_idx, kv_idx, *captured)`; torch's ONNX exporter
translates each subgraph into a local function (its index ops broadcast: `GatherND` over expanded
indices) and hands them to `flex_attention_onnx`, registered for the op in `TRANSLATIONS`.

`flex_attention_onnx` writes one `FlexAttention` node (Q, K, V; `scale`; GQA native) whose
`score_mod` graph attribute is both modifiers applied to the whole `[B, H, L, S]` score tensor:
the index grids come from the scores' shape (`Range`, broadcast `[B,1,1,1]`, `[1,H,1,1]`,
`[1,1,L,1]`, `[1,1,1,S]`), torch's `score_mod` body is inlined, then `mask_mod`'s, and masked
scores become float32's lowest value (`Where`). The ONNX op has no `mask_mod` attribute: the spec
says masking is written in `score_mod`. The captured tensors (the padding mask, the cache offset)
are read from the enclosing graph by name (outer scope, as `If`/`Loop` bodies do). Not `-inf`: a
fully masked row (a left-padding query) would be NaN and reach the cache through `Prob @ V`; with
the lowest finite value it averages instead (PyTorch writes zeros there; no output reads that row).

`flex_masks()` is the trace-time context: transformers' flex mask builder (`flex_attention_mask`)
asks whether the 2-D mask is all ones (data-dependent: torch.export refuses) and computes the
block-sparse tables with `create_block_mask` (a vmapped, compiled pass); during the trace it is
replaced by the same mask function (padding always included, offsets added as transformers does)
over a dense `BlockMask` (every block visited), which the ONNX op does not need anyway. It also
turns torch's fake-tensor cache off: torch 2.13 fails replaying an index into a captured tensor of
symbolic shape from that cache ("... is not tracked with proxy").

Guarantees: one `FlexAttention` per attention call; the node computes
`softmax(mask(score_mod(Q K^T * scale))) V` with torch's own score_mod / mask_mod bodies.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import onnx_ir as ir
import torch

__all__ = [
    "FLEX_DOMAIN", "FLEX_VERSION", "TRANSLATIONS", "flex_masks", "flex_attention_onnx", "adopt_flex_opset", "keep_modifier_constants",
    "count_flex_attention",
]

FLEX_DOMAIN = "ai.onnx.preview"
FLEX_VERSION = 1
_MASKED = float(np.finfo(np.float32).min)


# ---- trace time ---------------------------------------------------------------------------------
def _dense_block_mask(mask_function, batch_size: int, q_length: int, kv_length: int, device) -> "torch.nn.attention.flex_attention.BlockMask":
    from torch.nn.attention.flex_attention import _DEFAULT_SPARSE_BLOCK_SIZE as block
    from torch.nn.attention.flex_attention import BlockMask

    q_blocks, kv_blocks = (q_length + block - 1) // block, (kv_length + block - 1) // block
    kv_num_blocks = torch.full((batch_size, 1, q_blocks), kv_blocks, dtype=torch.int32, device=device)
    kv_indices = torch.arange(kv_blocks, dtype=torch.int32, device=device).expand(batch_size, 1, q_blocks, kv_blocks)
    return BlockMask.from_kv_blocks(
        kv_num_blocks, kv_indices, BLOCK_SIZE=block, mask_mod=mask_function, seq_lengths=(q_length, kv_length), compute_q_blocks=False
    )


def _flex_attention_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None, device="cpu", **kwargs):
    """transformers' `flex_attention_mask`, without its data-dependent all-ones test and with a dense block table."""
    from transformers import masking_utils as mu

    mask_function = mask_function or mu.causal_mask_function
    if attention_mask is not None:
        padding_mask = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset)
        mask_function = mu.and_masks(mask_function, mu.padding_mask_function(padding_mask))
    mask_function = mu.add_offsets_to_mask_function(mask_function, q_offset, kv_offset)
    return _dense_block_mask(mask_function, batch_size, q_length, kv_length, device)


def _plain_flex_attention(query, key, value, training=False, **kwargs):
    """transformers wraps flex_attention in torch.compile outside dynamo; torch.export wants the op itself."""
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(query, key, value, **kwargs)


@contextlib.contextmanager
def flex_masks() -> Iterator[None]:
    """While tracing a flex_attention model: dense block masks from transformers' mask functions,
    the flex op called directly, and torch's fake-tensor cache off (see the module docstring)."""
    import torch._dynamo.config as dynamo_config
    from transformers import masking_utils
    from transformers.integrations import flex_attention as hf_flex

    mapping = masking_utils.ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
    saved = mapping.get("flex_attention"), hf_flex.compile_friendly_flex_attention, dynamo_config.fake_tensor_cache_enabled
    # torch translates mask_mod's 0-d index result as Transpose(perm=[]), and onnx-ir warns that the
    # empty list's type is ambiguous; `_inline` writes that node as Identity: nothing to act on.
    convenience = logging.getLogger("onnx_ir._convenience")
    level = convenience.level
    mapping["flex_attention"] = _flex_attention_mask
    hf_flex.compile_friendly_flex_attention = _plain_flex_attention
    dynamo_config.fake_tensor_cache_enabled = False
    convenience.setLevel(logging.ERROR)
    try:
        yield
    finally:
        mapping["flex_attention"], hf_flex.compile_friendly_flex_attention, dynamo_config.fake_tensor_cache_enabled = saved
        convenience.setLevel(level)


# ---- translation --------------------------------------------------------------------------------
def _const(graph_nodes: list[ir.Node], array: np.ndarray, name: str) -> ir.Value:
    node = ir.node("Constant", [], attributes={"value": ir.tensor(array, name=name)}, name=name)
    node.outputs[0].name = name
    graph_nodes.append(node)
    return node.outputs[0]


def _index_grids(nodes: list[ir.Node], scores: ir.Value) -> list[ir.Value]:
    """b, h, q_idx, kv_idx as int32 `[B,1,1,1]`, `[1,H,1,1]`, `[1,1,L,1]`, `[1,1,1,S]` (torch's index dtype)."""
    shape = ir.node("Shape", [scores], name="flex_scores_shape")
    shape.outputs[0].name = shape.name
    nodes.append(shape)
    zero, one = _const(nodes, np.array(0, np.int64), "flex_zero"), _const(nodes, np.array(1, np.int64), "flex_one")
    grids = []
    for axis, label in enumerate(("b", "h", "q_idx", "kv_idx")):
        index = _const(nodes, np.array([axis], np.int64), f"flex_axis_{label}")
        dim = ir.node("Gather", [shape.outputs[0], index], name=f"flex_dim_{label}")
        limit = ir.node("Squeeze", [dim.outputs[0]], name=f"flex_len_{label}")
        span = ir.node("Range", [zero, limit.outputs[0], one], name=f"flex_range_{label}")
        target = [1, 1, 1, 1]
        target[axis] = -1
        grid_shape = _const(nodes, np.array(target, np.int64), f"flex_shape_{label}")
        reshaped = ir.node("Reshape", [span.outputs[0], grid_shape], name=f"flex_grid64_{label}")
        cast = ir.node("Cast", [reshaped.outputs[0]], attributes={"to": ir.DataType.INT32}, name=f"flex_grid_{label}")
        cast.outputs[0].name = f"flex_{label}"
        for step in (dim, limit, span, reshaped):
            step.outputs[0].name = step.name
        nodes += [dim, limit, span, reshaped, cast]
        grids.append(cast.outputs[0])
    return grids


def _inline(nodes: list[ir.Node], function: ir.Function, actuals: Sequence[ir.Value], prefix: str) -> list[ir.Value]:
    """Copy `function`'s nodes into `nodes` with its inputs bound to `actuals`; returns its outputs.
    torch's translation of a 0-d index result is `Transpose(perm=[])`, an identity on 0-d tensors
    but invalid on the broadcast grids: written as `Identity`. Its `GatherND` takes the int32 index
    grids as they come (the spec wants int64): cast."""
    mapping: dict[ir.Value, ir.Value] = dict(zip(function.inputs, actuals))
    for node in function:
        attributes = list(node.attributes.values())
        op_type = node.op_type
        inputs = [mapping[v] if v is not None else None for v in node.inputs]
        if op_type == "Transpose" and "perm" in node.attributes and not list(node.attributes["perm"].value):
            op_type, attributes = "Identity", []
        if op_type == "GatherND":
            cast = ir.node("Cast", [inputs[1]], attributes={"to": ir.DataType.INT64}, name=f"{prefix}{node.name}_indices")
            cast.outputs[0].name = cast.name
            nodes.append(cast)
            inputs[1] = cast.outputs[0]
        copy = ir.Node(
            node.domain, op_type, inputs,
            attributes=[ir.Attr(a.name, a.type, a.value) for a in attributes], num_outputs=len(node.outputs),
            name=f"{prefix}{node.name}",
        )
        for old, new in zip(node.outputs, copy.outputs):
            new.name = f"{prefix}{old.name}"
            mapping[old] = new
        nodes.append(copy)
    return [mapping[v] for v in function.outputs]


def _modifier_graph(score_fn: ir.Function | None, mask_fn: ir.Function | None, score_buffers, mask_buffers) -> ir.Graph:
    nodes: list[ir.Node] = []
    scores = ir.Value(name="flex_scores", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["B", "H", "L", "S"]))
    grids = _index_grids(nodes, scores)
    result = scores
    if score_fn is not None:
        (result,) = _inline(nodes, score_fn, [scores, *grids, *score_buffers], "score_mod/")
    if mask_fn is not None:
        (keep,) = _inline(nodes, mask_fn, [*grids, *mask_buffers], "mask_mod/")
        masked = _const(nodes, np.array(_MASKED, np.float32), "flex_masked")
        where = ir.node("Where", [keep, result, masked], name="flex_apply_mask")
        where.outputs[0].name = where.name
        nodes.append(where)
        result = where.outputs[0]
    result.name = "flex_scores_out"
    result.type, result.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(["B", "H", "L", "S"])
    return ir.Graph([scores], [result], nodes=nodes, name="flex_score_mod")


def flex_attention_onnx(query, key, value, score_mod, block_mask, scale, kernel_options, score_mod_other_buffers=(), mask_mod_other_buffers=()):
    """The translation of `torch.ops.higher_order.flex_attention` (see the module docstring).
    Returns (output, logsumexp, max): the two statistics are left unread by inference (transformers
    asks for them only off CPU, and our trace is on CPU) and are written as plain reductions of the
    output so that the node count stays one op; validation would catch a graph that read them."""
    from torch.onnx._internal.exporter._torchlib.ops.hop import call_op

    mask_fn = block_mask[-1] if block_mask else None
    if not isinstance(mask_fn, ir.Function):
        mask_fn = None
    graph = _modifier_graph(score_mod if isinstance(score_mod, ir.Function) else None, mask_fn,
                            list(score_mod_other_buffers), list(mask_mod_other_buffers))
    (output,) = call_op("FlexAttention", query, key, value, _domain=FLEX_DOMAIN, scale=float(scale), score_mod=graph)
    axes = call_op("Constant", value=ir.tensor(np.array([-1], np.int64)))[0]
    (lse,) = call_op("ReduceMax", output, axes, keepdims=0)
    (peak,) = call_op("ReduceMax", output, axes, keepdims=0)
    return output, lse, peak


TRANSLATIONS = {torch.ops.higher_order.flex_attention: flex_attention_onnx}


def adopt_flex_opset(model: ir.Model) -> int:
    """Give the FlexAttention nodes their domain's version and the model its import; returns the count."""
    count = 0
    for node in model.graph.all_nodes():
        if node.domain == FLEX_DOMAIN and node.op_type == "FlexAttention":
            node.version = None
            count += 1
    if count:
        model.opset_imports[FLEX_DOMAIN] = FLEX_VERSION
    return count


def keep_modifier_constants(model: ir.Model, size_limit: int = 64) -> int:
    """Move the small constants of the FlexAttention modifier graphs back inside them.

    The optimizer lifts every Constant, subgraphs' included, to a main-graph initializer
    (`LiftConstantsToInitializersPass`, `LiftSubgraphInitializersToMainGraphPass`): the softcap,
    the window size and the index grids' 0/1 would then be outer-scope reads like the padding mask.
    Each becomes a `Constant` of the graph that reads it again (named under the node), so
    `score_mod` reads from outside only what the model computes (the padding mask, the cache
    offset). Returns how many constants moved; initializers left unread are removed."""
    moved = 0
    for node in model.graph:
        if node.domain != FLEX_DOMAIN or node.op_type != "FlexAttention":
            continue
        for attribute in node.attributes.values():
            if attribute.type != ir.AttributeType.GRAPH:
                continue
            subgraph: ir.Graph = attribute.value
            local: dict[int, ir.Value] = {}
            for inner in list(ir.traversal.RecursiveGraphIterator(subgraph)):
                for position, value in enumerate(inner.inputs):
                    if value is None or not value.is_initializer() or value.graph is not model.graph:
                        continue
                    tensor = value.const_value
                    if tensor is None or tensor.size > size_limit:
                        continue
                    if id(value) not in local:
                        constant = ir.node("Constant", [], attributes={"value": ir.tensor(tensor.numpy(), name=value.name)})
                        constant.outputs[0].name = f"{node.name}/{value.name}"
                        constant.outputs[0].type, constant.outputs[0].shape = value.type, value.shape
                        subgraph.insert_before(subgraph[0], constant)
                        local[id(value)] = constant.outputs[0]
                        moved += 1
                    inner.replace_input_with(position, local[id(value)])
    for name, value in list(model.graph.initializers.items()):
        if not value.uses() and not value.is_graph_output() and value not in model.graph.inputs:
            model.graph.initializers.pop(name)
    return moved


def count_flex_attention(graph: ir.Graph) -> int:
    return sum(1 for n in graph if n.domain == FLEX_DOMAIN and n.op_type == "FlexAttention")
