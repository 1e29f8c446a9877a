"""The region the weight-only quantized variants share: every linear layer quantized block-wise
(`_nbits`), the lm_head with its own settings, emitted as `com.microsoft::MatMulNBits` (`_nbits`)
or as standard `DequantizeLinear` + `MatMul` (`_qdq`) from the same codes, scales and zero points;
optionally with the `ort-cpu` rewrites.

`shared_quantization()` lets the producers run inside it (one `attach_builtin_variants` call)
reuse each other's quantized weights: the contrib and standard forms of one scheme quantize once."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ...errors import VariantNotApplicableError
from ...resources import whole_model_fits
from ..format import owned_prefix
from ._calibration import CHUNK_BYTES, first_tokens, input_hessians
from ._linear import Linear, find_linears, group_linears, name_group_outputs
from ._merge import merge_bodies
from ._nbits import QuantizedWeight, matmul_nbits, quantize_blockwise, quantize_gptq
from ._qdq import dequantize_matmul
from ._smooth import ChannelTransform, channel_transform
from .ort_cpu import ort_cpu_region
from .ort_cpu_functions import ops_without_kernel

__all__ = ["Scheme", "FORMS", "describe_smoothing", "group_role", "main_weight_bytes", "quantized_region", "shared_quantization", "lm_head_of", "is_mlp_down", "is_attention_value"]

logger = logging.getLogger(__name__)

# The export flag that put an op without an onnxruntime kernel in the graph (else: its opset).
_EXPORT_FLAG = {"FlexAttention": "--attn-implementation flex_attention"}
FORMS = ("nbits", "qdq")  # com.microsoft::MatMulNBits, or DequantizeLinear + MatMul
_SHARED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("shared_quantization", default=None)


@contextlib.contextmanager
def shared_quantization() -> Iterator[None]:
    """Within this block, `quantized_region` calls on the same model with the same linears,
    schemes and calibration windows quantize once (results kept until the block ends)."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


@dataclass(frozen=True)
class Scheme:
    """How one group of linears is quantized."""

    bits: int
    block_size: int
    symmetric: bool
    method: str = "rtn"  # "rtn", "search" (scales searched per block), "gptq" (needs calibration)

    def describe(self, calibrated: bool = False) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        method = {"rtn": "round to nearest", "search": "searched scales", "gptq": "GPTQ"}[self.method]
        if calibrated and self.method != "rtn":
            method += ", calibrated"
        return f"int{self.bits} blocks of {self.block_size} ({kind}, {method})"

    def quantize(self, weight_kn: np.ndarray, hessian: np.ndarray | None) -> QuantizedWeight:
        if self.method == "gptq" and hessian is not None:
            return quantize_gptq([weight_kn], [hessian], self.bits, self.block_size, self.symmetric)[0]
        importance = None
        if hessian is not None and self.method != "rtn":
            importance = np.diag(hessian) if hessian.ndim == 2 else hessian
        return quantize_blockwise(weight_kn, self.bits, self.block_size, self.symmetric, self.method != "rtn", importance)


def lm_head_of(graph: ir.Graph, linears: list[Linear]) -> Linear | None:
    """The linear layer nearest to the `logits` output (a decoder's lm_head): found by walking back
    from `logits` and stopping at the first matmul on each path."""
    logits = next((v for v in graph.outputs if v.name == "logits"), None)
    if logits is None:
        return None
    by_node = {l.node: l for l in linears}
    stack, seen = [logits], set()
    while stack:
        node = stack.pop().producer()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in by_node:
            return by_node[node]
        if node.op_type in ("MatMul", "Gemm"):
            continue
        stack.extend(v for v in node.inputs if v is not None and not v.is_initializer())
    return None


_ELEMENTWISE = {"Mul", "Div", "Add", "Sub", "Sigmoid", "Tanh", "Erf", "Pow", "Gelu", "FastGelu", "QuickGelu", "BiasGelu",
                "Relu", "Silu", "Softplus", "Cast"}


def is_mlp_down(graph_linears: set[ir.Node], linear: Linear) -> bool:
    """The MLP's output projection: its input is computed from other linear layers' outputs
    through elementwise ops only (SwiGLU's `silu(gate) * up`, GPT-2's gelu), not through a
    normalization or attention."""
    stack, seen, found = [linear.activation], set(), False
    while stack:
        node = stack.pop().producer()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in graph_linears:
            found = True
            continue
        if node.op_type not in _ELEMENTWISE:
            return False
        stack.extend(v for v in node.inputs if v is not None and not v.is_initializer() and v.const_value is None)
    return found


def is_attention_value(linear: Linear) -> bool:
    """The attention's V projection: its output reaches an attention op's value input (index 2)
    through layout ops only (and the `Concat` with the past cache, as in Gemma-3's graph)."""
    stack, seen = [linear.output], set()
    while stack:
        for use in stack.pop().uses():
            node = use.node
            if node in seen:
                continue
            seen.add(node)
            if node.op_type in ("Attention", "GroupQueryAttention", "MultiHeadAttention") and use.idx == 2:
                return True
            if node.op_type in ("Reshape", "Transpose", "Cast", "Identity", "Concat"):  # Concat: joined to the past V
                stack.extend(node.outputs)
    return False


def quantized_region(
    model: ir.Model,
    name: str,
    scheme: Scheme,
    accuracy_level: int,
    lm_head_scheme: Scheme | None = None,
    mlp_down_scheme: Scheme | None = None,
    attn_v_scheme: Scheme | None = None,
    include_lm_head: bool = True,
    pack: bool = False,
    fusions: bool = True,
    calibration: list[np.ndarray] | None = None,
    form: str = "nbits",
    budget: float | None = None,
    bounded_memory: bool | None = None,
    smooth: float | str | None = None,
    reorder: bool = False,
) -> tuple[ir.Graph, dict[str, ir.TensorProtocol], dict]:
    """(body, owned weights, counts): each linear (group) as one `MatMulNBits` (`form="nbits"`) or
    one `DequantizeLinear` + `MatMul` (`form="qdq"`; `accuracy_level` unused: the session sets it)
    with `scheme`, the lm_head with `lm_head_scheme` and the MLP output projections with
    `mlp_down_scheme` (None: `scheme`); `fusions` merges the `ort-cpu` rewrites in. With
    `calibration` (token windows), the main graph is run on them first and the schemes that search
    or use GPTQ weigh errors by the statistics of each layer's input.

    With `budget` (and `calibration`), the fixed lists above are not used: every group, the
    lm_head included, starts in `scheme` and the groups whose measured effect on the output is
    largest per extra byte go to symmetric int8 until the perplexity change measured on held-out
    calibration windows is within `budget` (`_precision.choose`); `counts["precision"]` says what
    was chosen and measured.

    `bounded_memory` (None: when the main graph's fp32 weights, over 1 GiB, with the sessions'
    overhead would take more than half of the available memory): the calibration statistics come from the graph run
    chunk by chunk, and the precision search (a whole fp32 model in onnxruntime plus its weights as
    feeds) is not run; the fixed lists are used and a warning says so.

    With `smooth` (alpha, and `calibration`), each group's activation is divided per input channel
    by `_smooth.smoothing_scales` (one `Mul` by the variant's own `1 / s`) and its weight rows
    multiplied by `s` before quantizing: the fp32 function is the same, the int8 activations of
    accuracy level 4 lose less to outlier channels. `form="float"` emits the (smoothed) weights
    unquantized as the variant's own fp32 initializers: what checks that the fold is exact."""
    if form not in (*FORMS, "float"):
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    # A quantized variant is the main graph with its linears replaced: ops onnxruntime cannot run
    # (FlexAttention of a flex_attention export) stay, so neither calibration nor the variant could run.
    missing = ops_without_kernel(model.graph, model.opset_imports.get("", 23))
    if missing:
        raise VariantNotApplicableError(
            f"{name}: onnxruntime has no kernel for {', '.join(missing)} of the main graph, so the quantized graph could not be "
            f"calibrated or run; to quantize, export without {_EXPORT_FLAG.get(missing[0], '--opset ' + str(model.opset_imports.get('', 23)))}."
        )
    linears = find_linears(model.graph, include_lm_head)
    lm_head = lm_head_of(model.graph, linears) if include_lm_head else None
    groups = group_linears([l for l in linears if l is not lm_head], pack) + ([[lm_head]] if lm_head else [])
    nodes_of_linears = {l.node for l in linears}
    chosen: list[Scheme] = []
    counts = {"linears": 0, "matmuls": 0, "lm_head": 0, "mlp_down": 0, "attn_v": 0}
    for group in groups:
        if group[0] is lm_head and lm_head_scheme is not None:
            chosen.append(lm_head_scheme)
            counts["lm_head"] += 1
        elif mlp_down_scheme is not None and len(group) == 1 and is_mlp_down(nodes_of_linears, group[0]):
            chosen.append(mlp_down_scheme)
            counts["mlp_down"] += 1
        elif attn_v_scheme is not None and any(is_attention_value(linear) for linear in group):  # packed QKV: all of it
            chosen.append(attn_v_scheme)
            counts["attn_v"] += 1
        else:
            chosen.append(scheme)
    measured = budget is not None and bool(calibration)
    asked = bounded_memory is True
    if bounded_memory is None:
        # a main graph of at most one calibration chunk gains nothing from chunks: never bounded by itself
        weights = main_weight_bytes(model)
        overhead = _SEARCH_OVERHEAD if measured else _WHOLE_MODEL_OVERHEAD
        bounded_memory = bool(calibration) and weights > CHUNK_BYTES and not whole_model_fits(int(overhead * weights))
    if measured and bounded_memory:
        logger.warning(
            "%s: the precision search would hold about %.1f GB (2.6x the main graph's weights), %s, so it is skipped: "
            "the fixed list is used (Q/K/V and MLP down projections int8, the rest int4), with calibration statistics "
            "gathered chunk by chunk.", name, _SEARCH_OVERHEAD * main_weight_bytes(model) / 1e9,
            "and bounded memory was asked for (--streamed without --quant-budget)" if asked else "more than half of the available memory",
        )
        measured = False
    if measured:
        chosen = [scheme] * len(groups)
        counts.update(lm_head=0, mlp_down=0, attn_v=0)
    transformed = (smooth is not None or reorder) and bool(calibration)
    smoothing = _smoothing(model, groups, calibration, smooth, reorder, bool(bounded_memory)) if transformed else [None] * len(groups)
    if transformed:
        counts["smoothing"] = {"alpha": smooth, "reorder": reorder, "groups": sum(s is not None for s in smoothing)}
    shared = _SHARED.get()
    key = (*_shared_key(model, groups, chosen, calibration), budget if measured else None, smooth, reorder)
    if shared is not None and key in shared:
        quantized, precision = shared[key][1]
        logger.info("%s: the same quantized weights as an earlier variant of this model", name)
    else:
        precision = None
        if form == "float":
            quantized = [None] * len(groups)
        elif measured:
            quantized, precision = _measured_precision(model, name, groups, scheme, calibration, budget, lm_head, smoothing)
        else:
            quantized = _quantize_groups(model, name, groups, chosen, calibration, smoothing, bounded_memory)
        if shared is not None:  # the key's objects are held so their ids stay unique
            shared[key] = ((model, [l.weight.const_value for g in groups for l in g]), (quantized, precision))
    if precision is not None:
        counts["precision"] = precision
    prefix = owned_prefix(name)
    inputs: dict[str, ir.Value] = {}
    owned: dict[str, ir.TensorProtocol] = {}
    nodes: list[ir.Node] = []
    outputs: list[ir.Value] = []
    for i, (group, qw, s) in enumerate(zip(groups, quantized, smoothing)):
        first = group[0]
        stem = first.weight.name + (f"+{len(group) - 1}" if len(group) > 1 else "") + (".lm_head" if first is lm_head else "")
        node_name = f"{first.node.name or first.output.name}_q{qw.bits if qw is not None else 32}"
        activation = inputs.setdefault(first.activation.name, ir.Value(name=first.activation.name))
        if s is not None:
            activation = _divide(activation, s, f"{prefix}{stem}", inputs, owned, nodes, f"{node_name}.smooth")
        if form == "float":
            emitted = _float_matmul(activation, group, s, f"{prefix}{stem}", inputs, owned, node_name)
        elif form == "nbits":
            emitted = [matmul_nbits(activation, qw, f"{prefix}{stem}", accuracy_level, inputs, owned, bias=first.bias, name=node_name)]
        else:
            emitted = dequantize_matmul(activation, qw, f"{prefix}{stem}", inputs, owned, bias=first.bias, name=node_name)
        extra, named = name_group_outputs(emitted[-1].outputs[0], group, f"{name}/packed{i}")
        nodes += [*emitted, *extra]
        outputs += named
        counts["linears"] += len(group)
        counts["matmuls"] += 1
    body = ir.Graph(list(inputs.values()), outputs, nodes=nodes)
    if fusions:  # the ort-cpu rewrites too: this is the whole onnxruntime-CPU form, not just its weights
        body = merge_bodies(body, ort_cpu_region(model, name)[0])
    return body, owned, counts


def _smoothing(
    model: ir.Model, groups: list[list[Linear]], calibration: list[np.ndarray], alpha: float | str | None, reorder: bool,
    chunked: bool = False,
) -> list[ChannelTransform | None]:
    """The `_smooth.ChannelTransform` of each group from the channel maxima of its activation over
    the first calibration tokens; None for a group with a bias (Gemm: kept simple, not measured)."""
    from ._calibration import input_absmax

    if alpha == "search":
        return _searched_smoothing(model, groups, calibration)

    start = time.perf_counter()
    wanted = [g[0].activation for g in groups if g[0].bias is None]
    peaks = input_absmax(model, wanted, first_tokens(calibration, _DIAGONAL_TOKENS), chunked=chunked)
    out: list[np.ndarray | None] = []
    for group in groups:
        peak = peaks.get(group[0].activation.name) if group[0].bias is None else None
        if peak is None:
            out.append(None)
            continue
        out.append(channel_transform(peak, _group_weight(group), alpha, reorder))
        _release(group)
    logger.info("smoothing (alpha %s, reorder %s): %d groups in %.1f s", alpha, reorder, sum(s is not None for s in out),
                time.perf_counter() - start)
    return out


def _searched_smoothing(model: ir.Model, groups: list[list[Linear]], calibration: list[np.ndarray]) -> list[ChannelTransform | None]:
    """`_smooth.searched_transform` per group (bias-free), for int4 round to nearest blocks of 32."""
    from ._nbits import dequantize, quantize_blockwise
    from ._smooth import searched_transform

    start = time.perf_counter()
    wanted = [g[0].activation for g in groups if g[0].bias is None]
    squares = input_hessians(model, wanted, first_tokens(calibration, _DIAGONAL_TOKENS), False)
    out: list[ChannelTransform | None] = []
    for group in groups:
        h = squares.get(group[0].activation.name) if group[0].bias is None else None
        out.append(None if h is None else searched_transform(
            h, _group_weight(group), lambda w: dequantize(quantize_blockwise(w, 4, 32, False, False, None))))
        _release(group)
    logger.info("searched smoothing: %d of %d groups scaled in %.1f s", sum(t is not None for t in out), len(groups), time.perf_counter() - start)
    return out


def _divide(x: ir.Value, t: ChannelTransform, stem: str, inputs: dict, owned: dict, nodes: list, name: str) -> ir.Value:
    """`(x / s)[..., p]` as `Gather(x, p, axis=-1) * (1 / s)[p]`, the variant's own `[K]` tensors
    `<stem>.channels` and `<stem>.smooth`."""
    if t.perm is not None:
        tensor_name = f"{stem}.channels"
        owned[tensor_name] = ir.tensor(t.perm.astype(np.int64), name=tensor_name)
        gather = ir.node("Gather", [x, inputs.setdefault(tensor_name, ir.Value(name=tensor_name))], attributes={"axis": -1}, name=f"{name}.reorder")
        gather.outputs[0].name = f"{stem}.reordered"
        nodes.append(gather)
        x = gather.outputs[0]
    if t.scale is not None:
        inverse = (1.0 / t.scale).astype(np.float32)
        tensor_name = f"{stem}.smooth"
        owned[tensor_name] = ir.tensor(inverse[t.perm] if t.perm is not None else inverse, name=tensor_name)
        mul = ir.node("Mul", [x, inputs.setdefault(tensor_name, ir.Value(name=tensor_name))], name=name)
        mul.outputs[0].name = f"{stem}.smoothed"
        nodes.append(mul)
        x = mul.outputs[0]
    return x


def _float_matmul(x: ir.Value, group: list[Linear], t: ChannelTransform | None, stem: str, inputs: dict, owned: dict, name: str) -> list[ir.Node]:
    """`MatMul(x, t.weight(W))` (`+ bias`) with the group's weight as the variant's own fp32 tensor."""
    weight = _group_weight(group, t)
    tensor_name = f"{stem}.weight"
    owned[tensor_name] = ir.tensor(np.ascontiguousarray(weight, np.float32), name=tensor_name)
    matmul = ir.node("MatMul", [x, inputs.setdefault(tensor_name, ir.Value(name=tensor_name))], name=name)
    nodes = [matmul]
    bias = group[0].bias
    if bias is not None:
        matmul.outputs[0].name = f"{stem}.matmul"
        nodes.append(ir.node("Add", [matmul.outputs[0], inputs.setdefault(bias.name, ir.Value(name=bias.name))], name=f"{name}.bias"))
    return nodes


def describe_smoothing(counts: dict) -> str:
    """The clause the variant descriptions add for `counts["smoothing"]` ("" when none)."""
    smoothing = counts.get("smoothing")
    if not smoothing or not smoothing["groups"]:
        return ""
    what = []
    if smoothing["alpha"] is not None:
        what.append("activation scales searched per group (AWQ-style)" if smoothing["alpha"] == "search" else
                    f"activations smoothed per input channel (SmoothQuant, alpha {smoothing['alpha']:g})")
    if smoothing["reorder"]:
        what.append("input channels reordered by activation range")
    return f"; {' and '.join(what)} before {smoothing['groups']} matmuls, from calibration text"


def group_role(group: list[Linear], lm_head: Linear | None, linear_nodes: set[ir.Node]) -> str:
    """What a group is in a decoder layer, found structurally: `lm_head`, `attn_qkv` (the group
    feeding attention's value input), `mlp_down`, `mlp_gate_up` (another packed group), `attn_o`."""
    if group[0] is lm_head:
        return "lm_head"
    if any(is_attention_value(linear) for linear in group):
        return "attn_qkv" if len(group) > 1 else "attn_v"
    if len(group) == 1 and is_mlp_down(linear_nodes, group[0]):
        return "mlp_down"
    return "mlp_gate_up" if len(group) > 1 else "attn_o"


def _measured_precision(
    model: ir.Model, name: str, groups: list[list[Linear]], scheme: Scheme, calibration: list[np.ndarray], budget: float,
    lm_head: Linear | None, smoothing: list[ChannelTransform | None],
) -> tuple[list[QuantizedWeight], dict]:
    from ._calibration import split_held_out
    from ._precision import choose, quantized_bytes

    fit, held_out = split_held_out(calibration)
    wide = Scheme(8, scheme.block_size, symmetric=True)
    int8_cache: dict[int, QuantizedWeight] = {}

    def int8(i: int) -> QuantizedWeight:
        if i not in int8_cache:
            int8_cache[i] = wide.quantize(_group_weight(groups[i], smoothing[i]), None)
            _release(groups[i])
        return int8_cache[i]

    smoothed = [s for s in smoothing if s is not None]
    key = _precision_key(groups, scheme, budget, calibration, smoothed)
    cached = _precision_cache_read(key)
    int4 = _quantize_groups(model, name, groups, [scheme] * len(groups), fit, smoothing)
    if cached is not None and len(cached.get("bits_list", ())) == len(groups):
        logger.info("%s: precision measured before for these weights, budget and calibration (cache %s)", name, key[:12])
        quantized = [int8(i) if bits == 8 else qw for i, (bits, qw) in enumerate(zip(cached["bits_list"], int4))]
        return quantized, {k: v for k, v in cached.items() if k != "bits_list"}
    sensitivity_key = _precision_key(groups, scheme, None, calibration, smoothed)  # the same for every budget
    known = (_precision_cache_read(sensitivity_key) or {}).get("sensitivity")
    choice = choose(model, groups, int4, int8, fit, held_out, budget, sensitivity=known, smoothing=smoothing)
    if known is None:
        _precision_cache_write(sensitivity_key, {"sensitivity": choice.sensitivity})
    quantized = [int8(i) if bits == 8 else qw for i, (bits, qw) in enumerate(zip(choice.bits, int4))]
    nodes = {l.node for g in groups for l in g}
    roles = [group_role(g, lm_head, nodes) for g in groups]
    by_role: dict[str, dict[str, int]] = {}
    for role, bits in zip(roles, choice.bits):
        entry = by_role.setdefault(role, {"int4": 0, "int8": 0})
        entry[f"int{bits}"] += 1
    weights_bytes = sum(quantized_bytes(q) for q in quantized)
    embedding_row = 4 * (lm_head.weight_kn_shape()[0] if lm_head is not None else 0)  # the Gather reads one fp32 row
    if not choice.met:
        logger.warning(
            "%s: no precision assignment met the quality budget of %+.1f%% perplexity (held-out calibration text aimed "
            "at %+.1f%%): with every group in int8 it measured %+.2f%%; the variant is all int8. Raise the budget or use int8.",
            name, 100 * budget, 100 * choice.aim, 100 * choice.perplexity_change,
        )
    precision = {
        "budget": budget,
        "met": choice.met,
        "perplexity_change": round(choice.perplexity_change, 5),
        "held_out_tokens": choice.held_out_tokens,
        "bytes_read_per_token": int(weights_bytes + embedding_row),
        "groups": by_role,
        "int8_groups": int(sum(b == 8 for b in choice.bits)),
        "aim": round(choice.aim, 5),
        "candidates": [{"int8_groups": n, "perplexity_change": round(c, 5)} for n, c in choice.measured],
        "bits": {g[0].weight.name + (f"+{len(g) - 1}" if len(g) > 1 else ""): b for g, b in zip(groups, choice.bits)},
        "sensitivity": {g[0].weight.name: float(f"{k:.4g}") for g, k in zip(groups, choice.sensitivity)},
        "seconds": round(choice.seconds, 1),
    }
    _precision_cache_write(key, {**precision, "bits_list": choice.bits})
    return quantized, precision


_PRECISION_FORMAT = 8  # bump when the measurement changes: cached choices of an older one are not reused


def _precision_key(
    groups: list[list[Linear]], scheme: Scheme, budget: float | None, calibration: list[np.ndarray], smoothing: list[ChannelTransform] = ()
) -> str:
    """Content key of a precision choice: every group's weight bytes, the scheme, the budget and
    the calibration tokens (what the measurement depends on)."""
    digest = hashlib.sha256(f"{_PRECISION_FORMAT}|{scheme}|{budget!r}".encode())
    for group in groups:
        for linear in group:
            digest.update(linear.weight.name.encode() + b"|" + np.ascontiguousarray(linear.weight.const_value.numpy()).tobytes())
    for window in calibration:
        digest.update(np.ascontiguousarray(window, np.int64).tobytes() + b"|")
    for t in smoothing:
        digest.update(b"s" + t.key())
    return digest.hexdigest()


def _precision_path(key: str):
    from ..runtime import cache_dir

    return cache_dir().parent / "precision" / f"{key}.json"


def _precision_cache_read(key: str) -> dict | None:
    import json

    try:
        return json.loads(_precision_path(key).read_text())
    except (OSError, ValueError):
        return None


def _precision_cache_write(key: str, entry: dict) -> None:
    """Measured once per weights, budget and calibration: the standard and contrib int4 forms, or
    a second attach of the same export, reuse it. A cache that cannot be written is skipped."""
    import json
    import os

    path = _precision_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, path)
    except OSError as error:
        logger.info("precision cache not written (%s)", error)


def _shared_key(model: ir.Model, groups: list[list[Linear]], schemes: list[Scheme], calibration) -> tuple:
    digest = hashlib.sha256()
    for window in calibration or ():
        digest.update(np.ascontiguousarray(window, np.int64).tobytes() + b"|")
    weights = tuple(tuple(id(l.weight.const_value) for l in g) for g in groups)
    return id(model), weights, tuple(schemes), digest.hexdigest() if calibration else None


def _group_weight(group: list[Linear], transform: ChannelTransform | None = None) -> np.ndarray:
    """The group's weights side by side as one float32 `[K, sum N]` array (a copy: nothing returned
    refers to the memory-mapped external data, so the mapping can be released afterwards); with
    `transform`, its rows transformed (`_smooth`)."""
    if transform is not None:
        return transform.weight(_group_weight(group))
    if len(group) > 1:
        return np.concatenate([l.weight_kn() for l in group], axis=1)
    weight = group[0].weight_kn()
    return weight if weight.base is None else weight.copy()


def _release(group: list[Linear]) -> None:
    """Unmap the group's external weights: their pages leave this process's resident set (they
    were read once; a later reader maps them again)."""
    for linear in group:
        tensor = linear.weight.const_value
        if isinstance(tensor, ir.ExternalTensor):
            try:
                tensor.release()
            except BufferError:  # someone else still holds a view of the mapping: it stays mapped
                pass


def _quantize_groups(
    model: ir.Model, name: str, groups: list[list[Linear]], chosen: list[Scheme], calibration: list[np.ndarray] | None,
    smoothing: list[ChannelTransform | None] | None = None,
    bounded_memory: bool = False,
) -> list[QuantizedWeight]:
    hessians: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    if calibration:
        wanted = [g[0].activation for g, c in zip(groups, chosen) if c.method != "rtn"]
        full = any(c.method == "gptq" for c in chosen)  # searching needs only the diagonal
        if not full:  # a mean square per input channel: 2k tokens of every kind settle it
            calibration = first_tokens(calibration, _DIAGONAL_TOKENS)
        hessians = input_hessians(model, wanted, calibration, full, chunked=bounded_memory) if wanted else {}
    calibrated = time.perf_counter()
    smoothing = smoothing or [None] * len(groups)
    quantized = _quantize_all(groups, [_smoothed_hessian(hessians.get(g[0].activation.name), s) for g, s in zip(groups, smoothing)],
                              chosen, smoothing)
    logger.info("%s: calibration statistics in %.1f s, %d weights quantized in %.1f s", name, calibrated - start,
                len(groups), time.perf_counter() - calibrated)
    return quantized


_DIAGONAL_TOKENS = 2048
# Peak RSS of an attach over the main graph's fp32 weights, measured on the 1.07 B Llama (4.3 GB):
# calibration on one whole-model session, the fp32 weights once (1.11x); with the precision search,
# whose probe feeds every weight and a candidate's dequantized copy of them, 11.18 GB = 2.6x.
_WHOLE_MODEL_OVERHEAD = 1.15
_SEARCH_OVERHEAD = 2.6


def main_weight_bytes(model: ir.Model) -> int:
    """Bytes of the main graph's initializers (attached variants' own weights excluded)."""
    return sum(v.const_value.nbytes for n, v in model.graph.initializers.items() if v.const_value is not None and not n.startswith("variants/"))


def _smoothed_hessian(hessian: np.ndarray | None, t: ChannelTransform | None) -> np.ndarray | None:
    """The statistics of the transformed activation."""
    return hessian if hessian is None or t is None else t.hessian(hessian)


def _quantize_all(
    groups: list[list[Linear]], hessians: list[np.ndarray | None], schemes: list[Scheme],
    smoothing: list[ChannelTransform | None], batch: int = 8,
) -> list[QuantizedWeight]:
    """Each group's weight with its scheme, streamed: one group's float32 weight is read from the
    (memory-mapped) external data, quantized and released before the next is read, so the float
    model is never resident as a whole. GPTQ weights of one shape and scheme go through
    `quantize_gptq` `batch` at a time (the same projection of several layers)."""
    out: list[QuantizedWeight | None] = [None] * len(groups)
    batches: dict[tuple, list[int]] = {}
    for i, (group, hessian, scheme) in enumerate(zip(groups, hessians, schemes)):
        if scheme.method == "gptq" and hessian is not None:
            shape = (group[0].weight_kn_shape()[0], sum(l.weight_kn_shape()[1] for l in group))
            batches.setdefault((shape, scheme), []).append(i)
            continue
        weight = _group_weight(group, smoothing[i])
        out[i] = scheme.quantize(weight, hessian)
        del weight
        _release(group)
    for (_, scheme), members in batches.items():
        for start in range(0, len(members), batch):
            chunk = members[start : start + batch]
            weights = [_group_weight(groups[i], smoothing[i]) for i in chunk]
            results = quantize_gptq(weights, [hessians[i] for i in chunk], scheme.bits, scheme.block_size, scheme.symmetric)
            del weights
            for i, qw in zip(chunk, results):
                out[i] = qw
                _release(groups[i])
    return out
