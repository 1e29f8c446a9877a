"""One generation's decoder state: the KV cache on the device, the attention mask and positions."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from .io_spec import DecoderIO
from .kv_cache import DynamicKVCache, StaticKVCache

__all__ = ["DecoderState"]


class DecoderState:
    """Feeds token steps through the session and returns last-position logits.

    Guarantees: the KV cache only ever moves between session outputs and inputs as OrtValues
    (static caches are bound in place); positions follow transformers (cumsum of the mask - 1,
    0 on padding); every row's cache holds the same number of positions (left padding).
    """

    def __init__(self, session: ort.InferenceSession, io: DecoderIO, batch_size: int):
        self.session = session
        self.io = io
        cache_class = StaticKVCache if io.static else DynamicKVCache
        self.cache = cache_class(session, io, batch_size)
        self.mask = np.zeros((batch_size, 0), dtype=np.int64)
        self._binding = session.io_binding()
        # On CPU a dynamic cache needs no binding: one `run_with_ort_values` call takes the pasts as
        # OrtValues and returns the presents as OrtValues. Binding 2 names a layer costs more
        # (SmolLM2, 30 layers: 0.72 vs 0.20 ms of Python a token, at 9-10 ms a token in int4).
        # Static buffers and in-place states are bound as outputs, which only IO binding can do.
        self._plain_run = self.cache.device == "cpu" and not io.static and not io.inplace_states
        self._output_names = ["logits", *(spec.present for spec in io.cache)]

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> torch.Tensor:
        """Run `input_ids` [B, S] (with the mask of these S positions, ones by default);
        returns float32 logits [B, vocab] of the last position."""
        input_ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        batch, length = input_ids.shape
        new_mask = np.ones((batch, length), np.int64) if attention_mask is None else np.asarray(attention_mask, np.int64)
        self.mask = np.concatenate([self.mask, new_mask], axis=1)
        width = self.cache.attention_mask_width(length)
        if width == self.mask.shape[1]:
            mask = self.mask
        else:  # static cache: the mask spans the whole buffer, unfilled slots masked
            mask = np.zeros((batch, width), dtype=np.int64)
            mask[:, : self.mask.shape[1]] = self.mask
        inputs = {"input_ids": input_ids, "attention_mask": mask}
        if self.io.has_position_ids:
            positions = self.mask.cumsum(-1)[:, -length:] - 1
            inputs["position_ids"] = np.ascontiguousarray(np.where(self.mask[:, -length:] == 0, 0, positions))
        if self._plain_run:
            feeds = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in inputs.items()}
            feeds.update(self.cache.feeds())
            outputs = self.session.run_with_ort_values(self._output_names, feeds)
        else:
            binding = self._binding
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
            for name, array in inputs.items():
                binding.bind_cpu_input(name, array)
            binding.bind_output("logits", "cpu")  # first, so it is outputs[0]
            self.cache.bind(binding, length)
            self.session.run_with_iobinding(binding)
            outputs = binding.get_outputs()
        self.cache.update(outputs[1:], length)
        logits = outputs[0].numpy()
        return torch.from_numpy(np.ascontiguousarray(logits[:, -1, :], dtype=np.float32))

    def reorder(self, beam_idx: np.ndarray) -> None:
        """Keep rows `beam_idx` (beam search, or expanding a prefill to beams); cache stays on device."""
        self.cache.reorder(beam_idx)
        self.mask = self.mask[beam_idx]
