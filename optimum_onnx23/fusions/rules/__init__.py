"""optimum_onnx23's own fusion rules, one per file, for patterns onnxscript's fusions miss."""

from .grouped_kv_attention import fuse_grouped_kv_attention
from .softcap_attention import fuse_softcap_attention

__all__ = ["fuse_grouped_kv_attention", "fuse_softcap_attention"]
