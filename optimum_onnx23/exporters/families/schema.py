"""The schema of a family entry: what the exported graph looks like for one `model_type`.

Entries are data: the tables (`dense.py`, `moe.py`, `hybrid.py`) hold one each and the registry
(`families/__init__.py`) collects them. Nothing here imports torch: the export signature
(`exporters.tracing.signature`) derives the I/O names, dynamic axes, sample inputs and the wrapper
from an entry and the model's `PretrainedConfig`, once per export. The schema, field by field:

- Normalization: the op it fuses to (`norm_op`: `RMSNormalization` or `LayerNormalization`, bias
  or not), how many a layer has (`norms_per_layer`; 1 where attention and MLP read one norm in
  parallel), `qk_norm` (two more a layer), `extra_norms` (outside the layers besides the final one:
  bloom's embedding norm), or `norm_count` where no formula fits (per-head norms).
- Positions: `positions` is `rotary`, `learned` (an embedding table) or `alibi` (a per-head linear
  bias on the scores, which reaches `Attention` as part of its float mask); with rotary,
  `rotary_layers` counts the layers that apply it (NoPE layers do not), `rotary_dim` the rotated
  part of each head when it is partial (`RotaryEmbedding(rotary_embedding_dim=...)`), and
  `rotary_interleaved` pairs (x0, x1), (x2, x3), ... instead of the two halves (`interleaved=1`).
- KV cache: `cache_dims(config)` gives (kv heads, key size, value size) of every layer; the
  defaults read `num_key_value_heads` and `head_dim`; `kv_heads` and `value_head_dim` override
  them, `kv_layout` replaces the whole list (MLA caches a compressed latent: `mla_cache_dims`).
- Multimodal checkpoints: `decoder_config` names the config attribute of the text decoder to
  export, `key_mapping` renames the checkpoint's weights to the text model's names.
- `attn_implementation`: transformers' attention code to trace where the default does not export.
- Tracing: `uses_position_ids` (the graph takes `position_ids`); `scan_chunk(config)`, the chunk
  length of a recurrent scan, makes the trace sample longer than one chunk (hybrid decoders).
  Routed experts need no field: every module of transformers' experts interface is traced in a
  static-shape form (`exporters.tracing.experts`), whichever entry the model has.
- `unfused`: per standard op, why the family has no (or fewer) such nodes where a reader would
  expect one (ALiBi has no RotaryEmbedding; MLA's absorbed form has no standard op), written into
  the export report beside the expected counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from ...errors import UnsupportedArchitectureError
from .cache_layout import CacheLayout

__all__ = [
    "POSITIONS",
    "TASKS",
    "Config",
    "LAYER_KINDS",
    "DecoderExportConfig",
    "HybridExportConfig",
    "MoeExportConfig",
    "all_layers",
    "head_dim",
    "layer_types",
    "layers_of_type",
    "mla_cache_dims",
    "partial_rotary",
    "per_layer_cache_dims",
]

# optimum's task names; "-with-past" adds the KV cache as graph I/O.
TASKS = ("text-generation", "text-generation-with-past")
POSITIONS = ("rotary", "learned", "alibi")

Config = Any  # a transformers PretrainedConfig


# ---- helpers the tables use ---------------------------------------------------------------------
def all_layers(config: Config) -> int:
    return config.num_hidden_layers


def layers_of_type(layer_type: str) -> Callable[[Config], int]:
    """Rotary on the layers of one `layer_types` kind only (cohere2, exaone4: full layers are NoPE)."""

    def count(config: Config) -> int:
        return sum(kind == layer_type for kind in config.layer_types[: config.num_hidden_layers])

    return count


def head_dim(config: Config) -> int:
    """`head_dim`, or the hidden size over the attention heads where the config has none."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def partial_rotary(config: Config) -> int:
    """`partial_rotary_factor` of transformers' rope parameters, as a number of rotated channels."""
    factor = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    return int(head_dim(config) * factor)


def _resolve(value, config: Config):
    """A field given as a value or as a function of the model's config."""
    return value(config) if callable(value) else value


def per_layer_cache_dims(config: Config) -> list[tuple[int, int, int]]:
    """Layers of different shapes (gemma4: full-attention layers have `global_head_dim` and their own
    kv head count), read from transformers' `per_layer_config`."""
    layers = [config.per_layer_config[i] for i in range(config.num_hidden_layers)]
    return [(layer.num_key_value_heads, layer.head_dim, layer.head_dim) for layer in layers]


def mla_cache_dims(config: Config) -> list[tuple[int, int, int]]:
    """Multi-head latent attention (deepseek_v2/v3, minicpm3): transformers caches the compressed
    latent, one "head" per layer: the normalized `kv_lora_rank` latent as the key and the shared
    rotary key (`qk_rope_head_dim`) as the value; every step expands them with `kv_b_proj`."""
    return [(1, config.kv_lora_rank, config.qk_rope_head_dim)] * config.num_hidden_layers


# ---- dense decoders ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecoderExportConfig:
    """How one decoder architecture maps to the exported ONNX graph (see the module docstring)."""

    model_type: str
    # Fields typed `X | Callable` take a value or a function of the model's config.
    norm_op: str = "RMSNormalization"
    norms_per_layer: int | Callable[[Config], int] = 2
    qk_norm: bool | Callable[[Config], bool] = False
    extra_norms: int = 0
    norm_count: Callable[[Config], int] | None = None
    positions: str | Callable[[Config], str] = "rotary"
    rotary_layers: Callable[[Config], int] | None = all_layers
    rotary_dim: Callable[[Config], int] | None = None
    rotary_interleaved: bool = False
    # Config attributes; the sliding window is applied through the mask, the cache stays full-length.
    sliding_window_attr: str | None = None
    softcap_attr: str | None = None
    # KV-cache layout overrides: kv heads, value head size, or every layer's (heads, key size, value size).
    kv_heads: Callable[[Config], int] | None = None
    value_head_dim: Callable[[Config], int] | None = None
    kv_layout: Callable[[Config], list[tuple[int, int, int]]] | None = None
    decoder_config: str | None = None
    key_mapping: dict[str, str] | None = None
    # transformers' attention implementation to trace, where the default one does not export.
    attn_implementation: str | None = None
    # Whether the graph takes `position_ids` (Mamba-2 alone has no positions).
    uses_position_ids: bool = True
    # A recurrent scan's chunk length (recurrences.py cuts min(S, chunk)): the trace sample is
    # longer, so torch.export sees two chunks and keeps their count symbolic. Traced with one chunk
    # (S = 5 < 256), it settles shapes on a single chunk: onnxruntime's Split fusion then fails on
    # prompts longer than a chunk (measured on a Mamba-2 with chunks of 256 and a 1,500-token prompt).
    scan_chunk: Callable[[Config], int] | None = None
    # Per standard op, why the family has none (or fewer) where a reader would expect one.
    unfused: dict[str, str] = field(default_factory=dict)
    notes: str = ""

    # Whether layer_replication may trace 4 layers and clone the last for the others.
    replicable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not callable(self.positions) and self.positions not in POSITIONS:
            raise ValueError(f"{self.model_type}: positions must be one of {POSITIONS}, got {self.positions!r}")

    def position_kind(self, config: Config) -> str:
        return _resolve(self.positions, config)

    # ---- the decoder to export ----------------------------------------------------------------
    def text_config(self, config: Config) -> Config:
        """The config of the decoder that is exported: `config` itself, or the text decoder's of a
        multimodal checkpoint (`decoder_config`)."""
        return getattr(config, self.decoder_config) if self.decoder_config else config

    def load_kwargs(self) -> dict[str, Any]:
        """What `from_pretrained` takes besides the checkpoint (weight renames, attention implementation)."""
        kwargs = {"key_mapping": self.key_mapping, "attn_implementation": self.attn_implementation}
        return {name: value for name, value in kwargs.items() if value is not None}

    # ---- the cache -------------------------------------------------------------------------
    def num_layers(self, config: Config) -> int:
        return config.num_hidden_layers

    def num_kv_heads(self, config: Config) -> int:
        if self.kv_heads is not None:
            return self.kv_heads(config)
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads

    def head_dim(self, config: Config) -> int:
        return head_dim(config)

    def cache_dims(self, config: Config) -> list[tuple[int, int, int]]:
        """(kv heads, key head size, value head size) of each layer's cache."""
        if self.kv_layout is not None:
            return list(self.kv_layout(config))
        heads, key = self.num_kv_heads(config), self.head_dim(config)
        value = self.value_head_dim(config) if self.value_head_dim else key
        return [(heads, key, value)] * self.num_layers(config)

    def cache_layout(self, config: Config) -> CacheLayout:
        """Which cache tensors each layer holds: a key and a value per layer."""
        return CacheLayout.attention(self.cache_dims(config))

    # ---- what the fused graph must contain -------------------------------------------------
    def expected_fusions(self, config: Config) -> dict[str, int]:
        layers = self.num_layers(config)
        if self.norm_count is not None:
            norms = self.norm_count(config)
        else:
            per_layer = _resolve(self.norms_per_layer, config) + (2 if _resolve(self.qk_norm, config) else 0)
            norms = layers * per_layer + 1 + self.extra_norms
        rotary = self.rotary_layers is not None and self.position_kind(config) == "rotary"
        return {"Attention": layers, self.norm_op: norms, "RotaryEmbedding": 2 * self.rotary_layers(config) if rotary else 0}

    def expected_rotary(self, config: Config) -> dict[str, int]:
        """The attributes every RotaryEmbedding node must carry (0 = full head, not interleaved)."""
        return {"rotary_embedding_dim": self.rotary_dim(config) if self.rotary_dim else 0, "interleaved": int(self.rotary_interleaved)}

    def unfused_ops(self, config: Config) -> dict[str, str]:
        """Per standard op, why the graph has none (or fewer than a reader would expect)."""
        notes = dict(self.unfused)
        positions = self.position_kind(config)
        if positions == "learned":
            notes.setdefault("RotaryEmbedding", "learned absolute positions (an embedding table added to the input): no rotary to fuse")
        elif positions == "alibi":
            notes.setdefault(
                "RotaryEmbedding",
                "ALiBi positions: a per-head linear bias on the attention scores, passed to Attention inside its float "
                "attn_mask (no standard op computes ALiBi itself)",
            )
        elif self.rotary_layers is None:
            notes.setdefault("RotaryEmbedding", "no positional encoding in the layers")
        elif self.rotary_layers(config) < self.num_layers(config):
            notes.setdefault("RotaryEmbedding", "layers without rotary positions (NoPE) have none")
        return notes


# ---- Mixture-of-Experts decoders -------------------------------------------------------------------
@dataclass(frozen=True)
class MoeExportConfig(DecoderExportConfig):
    """A decoder whose MLPs are (partly) transformers experts modules (traced, like any model's,
    with `tracing.experts.static_experts`).

    `fused_attention=False` where no standard op computes the family's attention (gpt-oss's sinks);
    `unfused` then says why."""

    fused_attention: bool = True

    def expected_fusions(self, config: Config) -> dict[str, int]:
        expected = super().expected_fusions(config)
        if not self.fused_attention:
            expected["Attention"] = 0
        return expected


# ---- hybrid decoders ---------------------------------------------------------------------------------
# transformers' layer types -> what the layer caches ("state" is the family's recurrent kind).
LAYER_KINDS = {
    "full_attention": ("attention",),
    "sliding_attention": ("attention",),
    "conv": ("conv",),
    "linear_attention": ("conv", "state"),
    "hybrid": ("attention", "conv", "state"),
    "mlp": (),
    "moe": (),
}


def layer_types(config: Config) -> list[str]:
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
    conv_shape: Callable[[Config], tuple[int, ...]] | None = None
    state_shape: Callable[[Config], tuple[int, ...]] | None = None
    norms: Callable[[Config, CacheLayout], int] | None = None

    replicable: ClassVar[bool] = False  # layer_replication clones `past_key_values.*` I/O only

    def cache_layout(self, config: Config) -> CacheLayout:
        types = layer_types(config)
        unknown = sorted({t for t in types if t not in LAYER_KINDS})
        if unknown:
            raise UnsupportedArchitectureError(
                f"{self.model_type}: layer type(s) {', '.join(unknown)} have no cache layout in the ONNX exporter."
            )
        kinds = [tuple(self.state_kind if k == "state" else k for k in LAYER_KINDS[t]) for t in types]
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

    def num_layers(self, config: Config) -> int:
        return len(layer_types(config))

    def expected_fusions(self, config: Config) -> dict[str, int]:
        layout = self.cache_layout(config)
        expected = {"Attention": len(layout.attention_layers)}
        if self.rotary_layers is not None:
            expected["RotaryEmbedding"] = 2 * self.rotary_layers(config)
        if self.norms is not None:
            expected[self.norm_op] = self.norms(config, layout)
        return expected
