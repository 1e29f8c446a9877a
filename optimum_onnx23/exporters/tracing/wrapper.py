"""A flat-tensor view of a transformers decoder, the signature the ONNX graph gets.

transformers 5 passes the KV cache as a `Cache` object; ONNX consumers (optimum-onnx,
transformers.js, onnxruntime-genai) want one tensor per layer and per key/value. The wrapper
rebuilds a `DynamicCache` from those tensors inside the trace, so no pytree registration of
cache classes is needed, and returns the presents in the same order.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache

__all__ = ["DecoderWrapper", "cache_kwarg"]


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name `model.forward` takes the cache under: `cache` since transformers renamed it
    (`past_key_values` is deprecated there, with a FutureWarning), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(output):
    """The cache a transformers model output carries, under either name."""
    return output.cache if "cache" in output.keys() or hasattr(type(output), "cache") else output.past_key_values


class DecoderWrapper(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, num_layers: int, with_past: bool, logits_to_keep: int = 0):
        super().__init__()
        self.model = model
        self.num_layers = num_layers
        self.with_past = with_past
        # 0 = logits for every position (default, optimum-onnx's format); 1 = last position only,
        # all generation needs: the prefill skips the lm_head on the rest of the prompt.
        self.logits_to_keep = logits_to_keep
        self.cache_kwarg = cache_kwarg(model)

    def forward(self, input_ids, attention_mask, position_ids, *past_key_values):
        cache = None
        if self.with_past:
            # Plain full-length layers for every architecture, sliding-window ones included: the
            # window is enforced by the attention mask, so the cache I/O keeps one length for all
            # layers, as optimum-onnx's format expects.
            cache = DynamicCache()
            for i in range(self.num_layers):
                cache.update(past_key_values[2 * i], past_key_values[2 * i + 1], i)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=self.with_past,
            **{self.cache_kwarg: cache},
            **({"logits_to_keep": self.logits_to_keep} if self.logits_to_keep else {}),
        )
        if not self.with_past:
            return (out.logits,)
        outputs = [out.logits]
        for layer in output_cache(out).layers[: self.num_layers]:
            outputs += [layer.keys, layer.values]
        return tuple(outputs)
