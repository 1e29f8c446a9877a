"""Memory: releasing the PyTorch weights before onnxruntime loads its own copy for validation, and
the estimate of an export's peak (`MemoryEstimate`) checked against what is available before it starts."""

from __future__ import annotations

import ctypes
import gc
import itertools
from dataclasses import dataclass
from pathlib import Path

import torch

from ..chunked_session import CHUNK_BYTES
from ..resources import available_bytes

__all__ = ["MemoryEstimate", "available_bytes", "free_pytorch_weights"]

_MADV_DONTNEED = 4


def free_pytorch_weights(model: torch.nn.Module) -> None:
    """Free `model`'s weights; the module is unusable afterwards.

    Tensors are emptied in place because onnxscript's pattern matchers keep their last graph
    (which wraps these tensors) alive. transformers maps safetensors files into memory and that
    mapping outlives the tensors, so the pages of the mappings that held this model's weights
    are dropped with madvise (nothing reads them again), and glibc's freed heap is trimmed.
    Measured on the SmolLM-135M-shaped export: peak RSS 1.69 -> 1.17 GB (3.1x -> 2.2x the weights).
    Off Linux/glibc only the tensors are emptied.
    """
    tensors = [t for t in itertools.chain(model.parameters(), model.buffers()) if not t.is_meta]  # --streamed: meta holds nothing
    addresses = sorted({t.data_ptr() for t in tensors if t.numel()})
    with torch.no_grad():
        for tensor in tensors:
            tensor.data = torch.empty(0, dtype=tensor.dtype)
    del tensors
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.malloc_trim(0)
        maps = Path("/proc/self/maps").read_text().splitlines()
    except (OSError, AttributeError):
        return
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            continue  # only file mappings: anonymous memory was freed above
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if any(start <= address < end for address in addresses):
            libc.madvise(start, end - start, _MADV_DONTNEED)


# Measured on the 1.07 B Llama (bf16 checkpoint, fp32 export, peak RSS of the whole command):
# in memory 6.84 GB = 1.59x the exported weights (8.79 GB = 2.05x before the saved graph's tensors were
# dropped before validation); --streamed: the weights outside the layers and the traced layers
# (twice: the optimizer's transposed copy) plus 0.6 GB of interpreter, torch and onnxscript state;
# its validation runs onnxruntime chunk by chunk (`CHUNK_BYTES` of weights at a time).
_BASE = 600 << 20
_IN_MEMORY = 1.6
# --weight-format int4: bytes per linear weight element on disk and in onnxruntime (uint4 code, plus
# a float32 scale and a uint4 zero point per block of 32); the rest (embeddings, norms, a tied or
# int8 lm_head) is counted as fp32, an upper bound.
_INT4_BYTES = 0.5 + 4 / 32 + 0.5 / 32


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak resident memory of an export, estimated from the checkpoint's tensor sizes."""

    weights: int  # bytes of the exported weights (in the export dtype)
    in_memory: int  # the model loaded whole
    streamed: int  # --streamed: the traced layers (and their transposed copy), or one validation chunk
    streamed_int4: int = 0  # --streamed --weight-format int4: the trace's fp32 tensors (or onnxruntime's int4 copy) and the reference's quantized weights

    @classmethod
    def of(cls, numel: int, layer_numel: int, num_layers: int, itemsize: int, traced: int) -> "MemoryEstimate":
        weights = numel * itemsize
        outside = (numel - layer_numel) * itemsize
        traced_bytes = layer_numel * itemsize * min(traced, num_layers) // max(num_layers, 1)
        fp32_outside = (numel - layer_numel) * 4
        fp32_traced = layer_numel * 4 * min(traced, num_layers) // max(num_layers, 1)
        # plus the reference's kept quantized weights (FakeQuantizer), which the heap does not give back
        # in time: measured on the 8 B Llama, 16.7 GB peak for this estimate's 16.3 GB (onnxruntime's
        # int4 copy validates whole: a fraction of the fp32 weights)
        quantized = int(layer_numel * _INT4_BYTES)
        int4 = max(fp32_outside + 2 * fp32_traced, quantized + fp32_outside) + quantized + _BASE
        return cls(weights, int(_IN_MEMORY * weights) + _BASE, max(outside + 2 * traced_bytes, min(CHUNK_BYTES, weights)) + _BASE, int4)
