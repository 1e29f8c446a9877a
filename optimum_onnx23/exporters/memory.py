"""Releasing the PyTorch weights before onnxruntime loads its own copy for validation."""

from __future__ import annotations

import ctypes
import gc
import itertools
from pathlib import Path

import torch

__all__ = ["free_pytorch_weights"]

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
