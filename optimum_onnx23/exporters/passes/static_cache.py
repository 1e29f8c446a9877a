"""Export variants for generation. Static cache: the KV cache is a fixed `[batch, kv_heads, N, head_dim]` buffer per layer,
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

Tracing: each cache layer's write is an out-of-place scatter that exports as a standard opset-23
ScatterElements, so the opset-23 fusions run unchanged; after fusion `lower_kv_writes` replaces
each with `TensorScatter` and moves the default opset import to 24 (the other ops keep their
semantics: opset 24 only adds types and optional inputs). Validation runs the lowered graph against the same wrapper in PyTorch before saving.

Last-position logits (`logits="last"`, either cache): the wrapper passes `logits_to_keep=1`, so
`logits` is [B, 1, V]; a prefill skips the lm_head on the rest of the prompt. Both variants are
recorded in the ONNX metadata (`record_variant`); the runtime reads them from the graph's I/O.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
import torch
from transformers.cache_utils import Cache, StaticLayer

from ..errors import InvalidArgumentError
from .configs import DecoderExportConfig
from .wrapper import cache_kwarg

__all__ = [
    "CACHE_MODES",
    "STATIC_CACHE_OPSET",
    "StaticCacheWrapper",
    "check_static_arguments",
    "static_dummy_inputs",
    "static_dynamic_shapes",
    "static_input_names",
    "lower_kv_writes",
    "record_variant",
]

logger = logging.getLogger(__name__)

CACHE_MODES = ("dynamic", "static")
STATIC_CACHE_OPSET = 24  # TensorScatter's opset
WRITE_INDICES = "write_indices"


# ---- the write op --------------------------------------------------------------------------------
def kv_write(cache: torch.Tensor, update: torch.Tensor, write_indices: torch.Tensor) -> torch.Tensor:
    """`cache` with `update` [B, H, S, D] written at positions write_indices[b] + [0, S) of axis 2.

    Out of place, so torch.export sees no input mutation; it exports as one ScatterElements on the
    past input, which `lower_kv_writes` turns into TensorScatter."""
    batch, heads, length, dim = update.shape
    positions = write_indices[:, None] + torch.arange(length, device=update.device)
    index = positions[:, None, :, None].expand(batch, heads, length, dim)
    return cache.scatter(2, index, update)


class _WriteLayer(StaticLayer):
    """A static layer over given buffers; `update` returns the written buffers without mutating."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, write_indices: torch.Tensor):
        super().__init__(max_cache_len=keys.shape[2])
        self.keys, self.values = keys, values
        self.write_indices = write_indices
        # Mask offset of the first new token; rows share it when the runtime left-pads.
        self.cumulative_length = write_indices[0]
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys = kv_write(self.keys, key_states, self.write_indices)
        self.values = kv_write(self.values, value_states, self.write_indices)
        return self.keys, self.values


class StaticCacheWrapper(torch.nn.Module):
    """forward(input_ids, attention_mask, position_ids, write_indices, *past) -> (logits, *present)."""

    def __init__(self, model: torch.nn.Module, num_layers: int, logits_to_keep: int = 0):
        super().__init__()
        self.model = model
        self.num_layers = num_layers
        self.logits_to_keep = logits_to_keep
        self.cache_kwarg = cache_kwarg(model)

    def forward(self, input_ids, attention_mask, position_ids, write_indices, *past_key_values):
        layers = [
            _WriteLayer(past_key_values[2 * i], past_key_values[2 * i + 1], write_indices) for i in range(self.num_layers)
        ]
        cache = Cache(layers=layers)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=self.logits_to_keep,
            **{self.cache_kwarg: cache},
        )
        outputs = [out.logits]
        for layer in layers:
            outputs += [layer.keys, layer.values]
        return tuple(outputs)


# ---- export-time description -------------------------------------------------------------------------
def check_static_arguments(cache: str, max_cache_len: int | None, with_past: bool, opset: int = 23) -> None:
    """One-line `InvalidArgumentError` for a cache mode the exporter cannot produce."""
    if cache not in CACHE_MODES:
        raise InvalidArgumentError(f"Unknown cache mode `{cache}`; pass --cache dynamic or --cache static.")
    if cache == "dynamic":
        if max_cache_len is not None:
            raise InvalidArgumentError("--max-cache-len only applies to --cache static; drop it or add --cache static.")
        return
    if not with_past:
        raise InvalidArgumentError("--cache static needs the KV cache: use --task text-generation-with-past.")
    if opset < 23:
        raise InvalidArgumentError(f"--cache static needs --opset 23 (the graph is then moved to opset 24 for TensorScatter), got {opset}.")
    if max_cache_len is None or not isinstance(max_cache_len, int) or max_cache_len < 16:
        raise InvalidArgumentError(
            f"--cache static needs --max-cache-len N with N >= 16 (prompt plus new tokens), got {max_cache_len}."
        )


def static_input_names(export_config: DecoderExportConfig, config) -> list[str]:
    if hasattr(export_config, "static_input_names"):  # hybrid decoders (exporters.hybrid)
        return export_config.static_input_names(config)
    names = export_config.input_names(config, with_past=True)
    return names[:3] + [WRITE_INDICES] + names[3:]


def static_dynamic_shapes(export_config: DecoderExportConfig, config) -> tuple:
    from torch.export import Dim

    if hasattr(export_config, "static_dynamic_shapes"):
        return export_config.static_dynamic_shapes(config)
    batch = Dim("batch_size")
    seq = Dim("sequence_length")
    past = tuple({0: batch} for _ in range(2 * export_config.num_layers(config)))
    return ({0: batch, 1: seq}, {0: batch}, {0: batch, 1: seq}, {0: batch}, past)


def static_dummy_inputs(
    export_config: DecoderExportConfig,
    config,
    max_cache_len: int,
    batch_size: int = 2,
    sequence_length: int | None = None,
    past_length: int = 3,
    left_padding: int = 0,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, ...]:
    """Inputs in the wrapper's order: `past_length` filled slots, then `sequence_length` new tokens;
    row 0 has `left_padding` masked slots; unfilled slots hold random values (they must be masked)."""
    if hasattr(export_config, "static_dummy_inputs"):
        return export_config.static_dummy_inputs(
            config, max_cache_len, batch_size, sequence_length, past_length, left_padding, dtype, generator
        )
    sequence_length = 5 if sequence_length is None else sequence_length
    leading = static_leading_inputs(config, max_cache_len, batch_size, sequence_length, past_length, left_padding, generator)
    shapes = export_config.cache_shapes(config, batch_size, max_cache_len)
    past = [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]
    return (*leading, *past)


def static_leading_inputs(
    config, max_cache_len: int, batch_size: int, sequence_length: int, past_length: int, left_padding: int, generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`input_ids`, the whole-buffer `attention_mask`, `position_ids` and `write_indices` of a
    static-cache sample (the cache tensors follow; their layout is the export config's)."""
    total = past_length + sequence_length
    if total > max_cache_len:
        raise ValueError(f"sample of {total} positions exceeds max_cache_len={max_cache_len}")
    input_ids = torch.randint(0, config.vocab_size, (batch_size, sequence_length), generator=generator)
    attention_mask = torch.zeros(batch_size, max_cache_len, dtype=torch.int64)
    attention_mask[:, :total] = 1
    attention_mask[0, : min(left_padding, total - 1)] = 0
    position_ids = (attention_mask[:, :total].cumsum(-1) - 1).clamp(min=0)[:, past_length:]
    write_indices = torch.full((batch_size,), past_length, dtype=torch.int64)
    return input_ids, attention_mask, position_ids, write_indices


# ---- lowering -------------------------------------------------------------------------------------------
def lower_kv_writes(model: ir.Model) -> int:
    """Replace each KV write (a ScatterElements on axis 2 whose data is a `past_key_values.*` graph
    input) with `TensorScatter(past, update, write_indices, axis=2)` and import opset 24.

    Returns the number of writes replaced; the index arithmetic left unused is removed."""
    import onnxscript.optimizer

    graph = model.graph
    write_indices = next(v for v in graph.inputs if v.name == WRITE_INDICES)
    count = 0
    for node in list(graph):
        if node.op_type != "ScatterElements" or node.domain not in ("", "ai.onnx"):
            continue
        cache, _, update = node.inputs
        if not (cache.is_graph_input() and cache.name.startswith("past_key_values.")):
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
    onnxscript.optimizer.remove_unused_nodes(model)
    return count


def record_variant(model: ir.Model, cache: str, max_cache_len: int | None, logits: str) -> None:
    """Write the export variant into the ONNX metadata (`optimum_onnx23.cache`, `.max_cache_len`, `.logits`)."""
    model.metadata_props["optimum_onnx23.cache"] = cache
    model.metadata_props["optimum_onnx23.logits"] = logits
    if max_cache_len is not None:
        model.metadata_props["optimum_onnx23.max_cache_len"] = str(max_cache_len)
