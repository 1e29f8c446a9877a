"""The flat-tensor view of a transformers decoder: the signature the ONNX graph gets.

transformers 5 passes the cache as a `Cache` object; ONNX consumers (optimum-onnx,
transformers.js, onnxruntime-genai) want one tensor per layer and per key/value (and per state of
hybrid decoders). `DecoderWrapper` rebuilds the `Cache` from those tensors inside the trace
(`export_cache.ExportCache`), so no pytree registration of cache classes is needed, and returns
the presents in the same order. One wrapper serves every family and cache mode: what it takes and
returns is its `ExportSignature`'s.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from typing import TYPE_CHECKING, Iterator

import torch

from .export_cache import ExportCache
from .recurrences import exportable

if TYPE_CHECKING:
    from .signature import ExportSignature

__all__ = ["DecoderWrapper", "cache_kwarg", "output_cache"]


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name `model.forward` takes the cache under: `cache` since transformers renamed it
    (`past_key_values` is deprecated there, with a FutureWarning), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(output):
    """The cache a transformers model output carries, under either name."""
    return output.cache if "cache" in output.keys() or hasattr(type(output), "cache") else output.past_key_values


@contextlib.contextmanager
def _static_recurrent_mask(model: torch.nn.Module, write_indices: torch.Tensor) -> Iterator[None]:
    """transformers' `create_recurrent_attention_mask` takes the mask's last S columns as the new
    tokens' padding; a static cache's mask spans the whole buffer, the new tokens sit at
    `write_indices`: read them there instead."""

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


class DecoderWrapper(torch.nn.Module):
    """forward(input_ids, attention_mask, [position_ids], [write_indices], *cache) -> (logits, *presents),
    as `signature.input_names` / `output_names` list them. `num_layers` may be lowered for a shallow
    trace (exporters.passes.layer_replication): the cache then covers the first layers only."""

    def __init__(self, model: torch.nn.Module, signature: ExportSignature):
        super().__init__()
        self.model = model
        self.signature = signature
        self.num_layers = signature.num_layers
        self.cache_kwarg = cache_kwarg(model)

    def forward(self, input_ids, attention_mask, *rest):
        signature = self.signature
        position_ids = write_indices = None
        if signature.uses_position_ids:
            position_ids, rest = rest[0], rest[1:]
        if signature.static:  # attention layers write their new positions at write_indices
            write_indices, rest = rest[0], rest[1:]
        layout = signature.layout.first(self.num_layers)
        cache = ExportCache(layout, rest, write_indices) if signature.with_past else None
        kwargs = {"position_ids": position_ids} if signature.uses_position_ids else {}
        if signature.logits_to_keep:
            # 0 = logits for every position (default, optimum-onnx's format); 1 = last position only,
            # all generation needs: the prefill skips the lm_head on the rest of the prompt.
            kwargs["logits_to_keep"] = signature.logits_to_keep
        with contextlib.ExitStack() as stack:
            if layout.state_layers:
                # transformers' own scans run eagerly (validation references); the exportable forms while tracing.
                if torch.compiler.is_exporting() or torch.compiler.is_compiling():
                    stack.enter_context(exportable(self.model))
                if write_indices is not None:
                    stack.enter_context(_static_recurrent_mask(self.model, write_indices))
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                use_cache=signature.with_past,
                **{self.cache_kwarg: cache.cache if cache is not None else None},
                **kwargs,
            )
        if cache is None:
            return (out.logits,)
        returned = output_cache(out)
        if layout.state_layers and returned is not cache.cache:
            raise RuntimeError(f"{type(self.model).__name__} did not use the cache it was given")
        return (out.logits, *cache.presents(returned))
