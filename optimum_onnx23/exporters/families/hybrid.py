"""Hybrid decoders: attention layers mixed with convolution, state-space or linear-attention layers.

One `HybridExportConfig` per `model_type`, registered with the dense ones (configs.py imports this
module last). An entry says how the config's `layer_types` map to cache kinds and how big each
state is; `cache_layout.CacheLayout` derives the graph I/O, dynamic shapes and dummy inputs from it,
and `HybridDecoderWrapper` rebuilds transformers' `Cache` from the flat tensors inside the trace.

| model_type | layer types -> cache | state shapes (without batch) |
| --- | --- | --- |
| lfm2 | conv -> conv; full_attention -> key/value | conv [hidden, L_cache - 1] |
| qwen3_5_text, qwen3_next | linear_attention -> conv + recurrent (gated DeltaNet) | conv [2 k_heads k_dim + v_heads v_dim, K - 1], recurrent [v_heads, k_dim, v_dim] |
| granitemoehybrid, bamba, nemotron_h, mamba2 | linear_attention -> conv + ssm (Mamba-2) | conv [expand hidden + 2 groups state, K - 1], ssm [heads, head_dim, state] |
| falcon_h1 | hybrid -> key/value + conv + ssm (parallel attention and Mamba-2) | as above |

Nemotron-H's `mlp` / `moe` layers hold no cache. The tracing swaps transformers' chunked scans for
the exportable forms of `recurrences.py` (same math, one graph for every length).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from .cache_layout import CacheLayout, ExportCache
from .configs import DecoderExportConfig, register_export_config
from .wrapper import cache_kwarg, output_cache

__all__ = ["HybridExportConfig", "HybridDecoderWrapper", "HYBRID_MODEL_TYPES"]

_TRACE_BATCH, _TRACE_SEQ, _TRACE_PAST = 2, 5, 3

# transformers' layer types -> what the layer caches ("state" is the family's recurrent kind).
_KINDS = {
    "full_attention": ("attention",),
    "sliding_attention": ("attention",),
    "conv": ("conv",),
    "linear_attention": ("conv", "state"),
    "hybrid": ("attention", "conv", "state"),
    "mlp": (),
    "moe": (),
}


def _layer_types(config) -> list[str]:
    types = getattr(config, "layer_types", None)
    if types is None:  # mamba2: every layer is a Mamba-2 mixer
        return ["linear_attention"] * config.num_hidden_layers
    return list(types)


@dataclass(frozen=True)
class HybridExportConfig(DecoderExportConfig):
    """A decoder whose cache is more than K and V. `state_kind` is `ssm` (Mamba-2) or `recurrent`
    (gated DeltaNet); `conv_shape(config)` / `state_shape(config)` give the per-layer state shapes
    without the batch; `norms(config, layout)` the RMSNormalization count the fused graph has."""

    state_kind: str = "ssm"
    conv_shape: Callable | None = None
    state_shape: Callable | None = None
    norms: Callable | None = None
    uses_position_ids: bool = True
    # The scan's chunk length (recurrences.py cuts min(S, chunk)): the trace sample is longer, so
    # torch.export sees two chunks and keeps their count symbolic. Traced with one chunk (S = 5 <
    # 256), it settles shapes on a single chunk: onnxruntime's Split fusion then fails on prompts
    # longer than a chunk (measured on a Mamba-2 with chunks of 256 and a 1,500-token prompt).
    scan_chunk: Callable | None = None

    def trace_length(self, config, limit: int | None = None) -> int:
        length = _TRACE_SEQ if self.scan_chunk is None else max(_TRACE_SEQ, self.scan_chunk(config) + 3)
        return length if limit is None else max(2, min(length, limit))

    # ---- the layout -------------------------------------------------------------------------
    def cache_layout(self, config) -> CacheLayout:
        types = _layer_types(config)
        unknown = sorted({t for t in types if t not in _KINDS})
        if unknown:
            from ..errors import UnsupportedArchitectureError

            raise UnsupportedArchitectureError(
                f"{self.model_type}: layer type(s) {', '.join(unknown)} have no cache layout in the ONNX exporter."
            )
        kinds = [tuple(self.state_kind if k == "state" else k for k in _KINDS[t]) for t in types]
        conv = self.conv_shape(config) if self.conv_shape else None
        state = self.state_shape(config) if self.state_shape else None
        attention = any("attention" in k for k in kinds)  # Mamba-2 configs have no head counts
        return CacheLayout.build(
            kinds,
            kv_heads=self.num_kv_heads(config) if attention else None,
            head_dim=self.head_dim(config) if attention else None,
            conv_shape=lambda i: conv,
            state_shape=lambda i: state,
            layer_types=types,
        )

    def num_layers(self, config) -> int:
        return len(_layer_types(config))

    # ---- graph I/O ------------------------------------------------------------------------------
    def _leading_inputs(self) -> list[str]:
        return ["input_ids", "attention_mask"] + (["position_ids"] if self.uses_position_ids else [])

    def input_names(self, config, with_past: bool) -> list[str]:
        return self._leading_inputs() + (self.cache_layout(config).input_names() if with_past else [])

    def output_names(self, config, with_past: bool) -> list[str]:
        return ["logits"] + (self.cache_layout(config).output_names() if with_past else [])

    def dynamic_shapes(self, config, with_past: bool) -> tuple:
        from torch.export import Dim

        batch, seq = Dim("batch_size"), Dim("sequence_length")
        total = Dim("total_sequence_length")
        leading = [{0: batch, 1: seq}, {0: batch, 1: total if with_past else seq}]
        rest = [{0: batch, 1: seq}] if self.uses_position_ids else []
        if with_past:
            rest += list(self.cache_layout(config).dynamic_shapes(batch, Dim("past_sequence_length", min=0)))
        return (*leading, tuple(rest))

    def dummy_inputs(
        self,
        config,
        with_past: bool,
        batch_size: int = _TRACE_BATCH,
        sequence_length: int | None = None,
        past_length: int = _TRACE_PAST,
        left_padding: int = 0,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Inputs in the wrapper's order; `sequence_length` defaults to the trace length."""
        sequence_length = self.trace_length(config) if sequence_length is None else sequence_length
        past_length = past_length if with_past else 0
        total = past_length + sequence_length
        input_ids = torch.randint(0, config.vocab_size, (batch_size, sequence_length), generator=generator)
        attention_mask = torch.ones(batch_size, total, dtype=torch.int64)
        attention_mask[0, : min(left_padding, total - 1)] = 0
        inputs = [input_ids, attention_mask]
        if self.uses_position_ids:
            inputs.append((attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past_length:])
        if with_past:
            inputs += self.cache_layout(config).dummy_tensors(batch_size, past_length, dtype, generator)
        return tuple(inputs)

    # ---- the wrapper torch.export traces ------------------------------------------------------------
    def make_wrapper(self, model, config, options):
        layout = self.cache_layout(config)
        if options.static_len is not None:
            from ..errors import UnsupportedArchitectureError

            if not layout.attention_layers:
                raise UnsupportedArchitectureError(
                    f"--cache static: {self.model_type} has no attention layer, its states are fixed-size already; "
                    "export with the default dynamic cache."
                )
            if any("attention" in kinds and len(kinds) > 1 for kinds in map(layout.kinds, range(layout.num_layers))):
                raise UnsupportedArchitectureError(
                    f"--cache static is not available for {self.model_type} (layers holding both attention and Mamba state); "
                    "export with the default dynamic cache."
                )
        return HybridDecoderWrapper(
            model, layout, options.with_past, options.logits_to_keep, self.uses_position_ids, static=options.static_len is not None
        )

    # ---- static cache (exporters.static_cache calls these for hybrid configs) -------------------------
    def static_kv_writes(self, config) -> int:
        return 2 * len(self.cache_layout(config).attention_layers)

    def static_input_names(self, config) -> list[str]:
        names = self.input_names(config, with_past=True)
        return names[:3] + ["write_indices"] + names[3:]

    def static_dynamic_shapes(self, config) -> tuple:
        from torch.export import Dim

        batch, seq = Dim("batch_size"), Dim("sequence_length")
        cache = tuple({0: batch} for _ in self.cache_layout(config).tensors)
        return ({0: batch, 1: seq}, {0: batch}, ({0: batch, 1: seq}, {0: batch}, *cache))

    def static_dummy_inputs(
        self,
        config,
        max_cache_len: int,
        batch_size: int = _TRACE_BATCH,
        sequence_length: int | None = None,
        past_length: int = _TRACE_PAST,
        left_padding: int = 0,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """As `static_cache.static_dummy_inputs`: `past_length` filled slots of N, then the new tokens.
        (A static prompt is at most N - 1 long: if N - 1 is within one chunk, one chunk it is.)"""
        from .static_cache import static_leading_inputs  # static_cache imports configs, which imports this module

        if sequence_length is None:
            sequence_length = self.trace_length(config, max_cache_len - past_length)
        leading = static_leading_inputs(config, max_cache_len, batch_size, sequence_length, past_length, left_padding, generator)
        cache = self.cache_layout(config).dummy_tensors(batch_size, past_length, dtype, generator, kv_length=max_cache_len)
        return (*leading, *cache)

    replicable = False  # layer_replication clones `past_key_values.*` I/O only

    # ---- what the fused graph must contain --------------------------------------------------------------
    def expected_fusions(self, config) -> dict[str, int]:
        layout = self.cache_layout(config)
        attention = len(layout.attention_layers)
        expected = {"Attention": attention}
        if self.rotary_layers is not None:
            expected["RotaryEmbedding"] = 2 * self.rotary_layers(config)
        if self.norms is not None:
            expected[self.norm_op] = self.norms(config, layout)
        return expected


@contextlib.contextmanager
def _static_recurrent_mask(model, write_indices: torch.Tensor):
    """transformers' `create_recurrent_attention_mask` takes the mask's last S columns as the new
    tokens' padding; a static cache's mask spans the whole buffer, the new tokens sit at
    `write_indices`: read them there instead."""
    import sys

    def recurrent_mask(config, inputs_embeds, attention_mask, cache=None, **kwargs):
        if attention_mask is None or attention_mask.ndim != 2:
            return None
        positions = write_indices[:, None] + torch.arange(inputs_embeds.shape[1], device=attention_mask.device)
        return attention_mask.gather(1, positions)

    modules = {sys.modules[type(m).__module__] for m in model.modules()}
    patched = [m for m in modules if hasattr(m, "create_recurrent_attention_mask")]
    originals = [m.create_recurrent_attention_mask for m in patched]
    for module in patched:
        module.create_recurrent_attention_mask = recurrent_mask
    try:
        yield
    finally:
        for module, original in zip(patched, originals):
            module.create_recurrent_attention_mask = original


class HybridDecoderWrapper(torch.nn.Module):
    """forward(input_ids, attention_mask, [position_ids], *cache) -> (logits, *presents), the cache
    tensors in `layout` order."""

    def __init__(
        self, model, layout: CacheLayout, with_past: bool, logits_to_keep: int = 0, uses_position_ids: bool = True, static: bool = False
    ):
        super().__init__()
        self.static = static
        self.model = model
        self.layout = layout
        self.num_layers = layout.num_layers
        self.with_past = with_past
        self.logits_to_keep = logits_to_keep
        self.uses_position_ids = uses_position_ids
        self.cache_kwarg = cache_kwarg(model)
        self._takes_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    def forward(self, input_ids, attention_mask, *rest):
        from .recurrences import exportable

        position_ids = attention_layer = write_indices = None
        if self.uses_position_ids:
            position_ids, rest = rest[0], rest[1:]
        if self.static:  # attention layers write their new positions at write_indices (static_cache)
            from .static_cache import _WriteLayer

            write_indices, rest = rest[0], rest[1:]
            attention_layer = lambda key, value: _WriteLayer(key, value, write_indices)  # noqa: E731
        cache = ExportCache(self.layout, rest, attention_layer) if self.with_past else None
        kwargs = {"position_ids": position_ids} if self.uses_position_ids else {}
        if self.logits_to_keep and self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = self.logits_to_keep
        # transformers' own scans run eagerly (validation references); the exportable forms while tracing.
        exporting = torch.compiler.is_exporting() or torch.compiler.is_compiling()
        with contextlib.ExitStack() as stack:
            if exporting:
                stack.enter_context(exportable(self.model))
            if self.static:
                stack.enter_context(_static_recurrent_mask(self.model, write_indices))
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                use_cache=self.with_past,
                **{self.cache_kwarg: cache.cache if cache is not None else None},
                **kwargs,
            )
        if not self.with_past:
            return (out.logits,)
        if output_cache(out) is not cache.cache:
            raise RuntimeError(f"{type(self.model).__name__} did not use the cache it was given")
        return (out.logits, *cache.presents())


# ---- the families ------------------------------------------------------------------------------------------
def _mamba2_shapes(heads: str, head_dim: str, state: str, groups: str, kernel: str, intermediate: Callable):
    """conv_shape / state_shape readers for a Mamba-2 mixer whose config attributes have these names."""

    def conv(config):
        return (intermediate(config) + 2 * getattr(config, groups) * getattr(config, state), getattr(config, kernel) - 1)

    def ssm(config):
        return (getattr(config, heads), getattr(config, head_dim), getattr(config, state))

    return conv, ssm


def _gdn_conv(config):
    keys = config.linear_num_key_heads * config.linear_key_head_dim
    return (2 * keys + config.linear_num_value_heads * config.linear_value_head_dim, config.linear_conv_kernel_dim - 1)


def _gdn_state(config):
    return (config.linear_num_value_heads, config.linear_key_head_dim, config.linear_value_head_dim)


def _count(layout: CacheLayout, kind: str) -> int:
    return sum(1 for i in range(layout.num_layers) if kind in layout.kinds(i))


def _attention_layers(config) -> int:
    return sum(1 for t in _layer_types(config) if "attention" in _KINDS.get(t, ()))


# RMSNormalization counts of the fused graph (L layers, A attention layers, the final norm): two
# per layer (one for Nemotron-H and Mamba-2 blocks), q/k norms where the attention has them, and
# gated DeltaNet's per-head norm; Mamba-2's gated norm over groups is not an RMSNormalization.
def _two_per_layer(config, layout) -> int:
    return 2 * layout.num_layers + 1


def _one_per_layer(config, layout) -> int:
    return layout.num_layers + 1


def _gdn_norms(config, layout) -> int:
    return 2 * layout.num_layers + 2 * len(layout.attention_layers) + _count(layout, "recurrent") + 1


_granite_conv, _granite_ssm = _mamba2_shapes(
    "mamba_n_heads", "mamba_d_head", "mamba_d_state", "mamba_n_groups", "mamba_d_conv",
    lambda c: int(c.mamba_expand * c.hidden_size),
)
_falcon_conv, _falcon_ssm = _mamba2_shapes(
    "mamba_n_heads", "mamba_d_head", "mamba_d_state", "mamba_n_groups", "mamba_d_conv",
    lambda c: int(c.mamba_expand * c.hidden_size) if c.mamba_d_ssm is None else c.mamba_d_ssm,
)
_nemotron_conv, _nemotron_ssm = _mamba2_shapes(
    "mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups", "conv_kernel",
    lambda c: c.mamba_num_heads * c.mamba_head_dim,
)
_mamba2_conv, _mamba2_ssm = _mamba2_shapes(
    "num_heads", "head_dim", "state_size", "n_groups", "conv_kernel", lambda c: int(c.expand * c.hidden_size)
)

HYBRID_MODEL_TYPES: tuple[str, ...] = ()

for _entry in (
    HybridExportConfig(
        "lfm2",
        conv_shape=lambda c: (c.hidden_size, c.conv_L_cache - 1),
        rotary_layers=_attention_layers,
        # operator + ffn norm per layer, q/k layernorms per attention layer, the final norm
        norms=lambda c, layout: 2 * layout.num_layers + 2 * len(layout.attention_layers) + 1,
        notes="short causal convolutions (conv state) and attention",
    ),
    HybridExportConfig(
        "qwen3_5_text",
        state_kind="recurrent",
        conv_shape=_gdn_conv,
        state_shape=_gdn_state,
        scan_chunk=lambda c: 64,  # transformers' torch_chunk_gated_delta_rule default
        # interleaved partial MRoPE: Mul/Add in the graph, not a RotaryEmbedding pattern
        rotary_layers=None,
        norms=_gdn_norms,
        notes="gated DeltaNet (conv + recurrent state) and gated attention; MRoPE not fused",
    ),
    HybridExportConfig(
        "qwen3_next",
        state_kind="recurrent",
        conv_shape=_gdn_conv,
        state_shape=_gdn_state,
        scan_chunk=lambda c: 64,
        rotary_layers=_attention_layers,
        norms=_gdn_norms,
        notes="gated DeltaNet (conv + recurrent state) and gated attention, MoE",
    ),
    HybridExportConfig(
        "granitemoehybrid",
        conv_shape=_granite_conv,
        state_shape=_granite_ssm,
        scan_chunk=lambda c: c.mamba_chunk_size,
        # Granite 4.0-H attention has no positions (NoPE) unless position_embedding_type is "rope"
        rotary_layers=lambda c: _attention_layers(c) if c.position_embedding_type == "rope" else 0,
        norms=_two_per_layer,
        notes="Mamba-2 and attention (NoPE), MoE",
    ),
    HybridExportConfig(
        "bamba", conv_shape=_granite_conv, state_shape=_granite_ssm, rotary_layers=_attention_layers, norms=_two_per_layer,
        scan_chunk=lambda c: c.mamba_chunk_size,
        notes="Mamba-2 and attention",
    ),
    HybridExportConfig(
        "falcon_h1", conv_shape=_falcon_conv, state_shape=_falcon_ssm, rotary_layers=_attention_layers, norms=_two_per_layer,
        scan_chunk=lambda c: c.mamba_chunk_size,
        notes="Mamba-2 beside attention in every layer",
    ),
    HybridExportConfig(
        "nemotron_h", conv_shape=_nemotron_conv, state_shape=_nemotron_ssm, rotary_layers=None, norms=_one_per_layer,
        scan_chunk=lambda c: c.chunk_size,
        notes="Mamba-2, attention (no positions), MLP/MoE layers",
    ),
    HybridExportConfig(
        "mamba2",
        conv_shape=_mamba2_conv,
        state_shape=_mamba2_ssm,
        scan_chunk=lambda c: c.chunk_size,
        rotary_layers=None,
        norms=_one_per_layer,
        uses_position_ids=False,
        notes="Mamba-2 only (no attention, no positions)",
    ),
):
    register_export_config(_entry)
    HYBRID_MODEL_TYPES += (_entry.model_type,)


# ---- the export step that records the layout ------------------------------------------------------------------
def applies(ctx) -> bool:
    return isinstance(ctx.export_config, HybridExportConfig) and ctx.options.with_past


def record_cache_layout(ctx) -> None:
    """Before saving: which layer holds what into the report (`cache_layout`), the ONNX metadata
    and config.json (`optimum_onnx23_cache_layout`), and the states the runtime may bind as input
    and output at once (ONNX metadata `optimum_onnx23.inplace_states`, see inplace_states.py)."""
    from .cache_layout import CACHE_LAYOUT_KEY
    from .inplace_states import inplace_safe_states

    layout = ctx.export_config.cache_layout(ctx.config)
    description = layout.describe()
    pairs = [(t.input_name, t.output_name) for t in layout.tensors if t.is_state]
    inplace = inplace_safe_states(ctx.onnx_model, pairs)
    description["inplace_states"] = inplace
    ctx.report.cache_layout = description
    ctx.onnx_model.metadata_props[CACHE_LAYOUT_KEY] = layout.to_json()
    ctx.onnx_model.metadata_props["optimum_onnx23.inplace_states"] = ",".join(inplace)
    setattr(ctx.model.config, CACHE_LAYOUT_KEY, description)
