"""optimum_onnx23's own fusion rules, one per file, for patterns onnxscript's fusions miss."""

from .alibi_attention import fuse_alibi_attention
from .attention_3d import fuse_attention_3d
from .centered_rms_normalization import fuse_centered_rms_normalization
from .eager_attention import fuse_eager_attention
from .grouped_kv_attention import fuse_grouped_kv_attention
from .interleaved_rotary_embedding import fuse_interleaved_rotary_embedding
from .partial_rotary_embedding import fuse_partial_rotary_embedding
from .pow_rms_normalization import fuse_pow_rms_normalization
from .rotary_embedding_bshd import fuse_rotary_embedding_bshd
from .rotary_embedding_cast import fuse_rotary_embedding_cast
from .softcap_attention import fuse_softcap_attention
from .split_halves_rotary_embedding import fuse_split_halves_rotary_embedding
from .swiglu import SWIGLU_OPSET, fuse_swiglu

__all__ = [
    "fuse_alibi_attention",
    "fuse_attention_3d",
    "fuse_centered_rms_normalization",
    "fuse_eager_attention",
    "fuse_grouped_kv_attention",
    "fuse_interleaved_rotary_embedding",
    "fuse_partial_rotary_embedding",
    "fuse_pow_rms_normalization",
    "fuse_rotary_embedding_bshd",
    "fuse_rotary_embedding_cast",
    "fuse_softcap_attention",
    "fuse_split_halves_rotary_embedding",
    "fuse_swiglu",
    "SWIGLU_OPSET",
]
