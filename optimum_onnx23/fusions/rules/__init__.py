"""optimum_onnx23's own fusion rules, one per file, for patterns onnxscript's fusions miss."""

from .softcap_attention import fuse_softcap_attention

__all__ = ["fuse_softcap_attention"]
