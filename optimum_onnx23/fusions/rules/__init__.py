"""optimum_onnx23's own fusion rules, one per file, for patterns onnxscript's fusions miss."""

from .attention_3d import fuse_attention_3d
from .grouped_kv_attention import fuse_grouped_kv_attention
from .softcap_attention import fuse_softcap_attention
from .split_halves_rotary_embedding import fuse_split_halves_rotary_embedding

__all__ = ["fuse_attention_3d", "fuse_grouped_kv_attention", "fuse_softcap_attention", "fuse_split_halves_rotary_embedding"]
