"""Decoder caches held as onnxruntime values on the session's device between decoding steps.

`DynamicKVCache` feeds each step's `present*` outputs back as the next `past*` inputs without
touching them. `StaticKVCache` allocates fixed `[batch, kv_heads, N, head_dim]` buffers once and
binds each buffer as both the input and the output of its layer, so the graph's in-place scatter
writes the new positions and no KV bytes are copied. Hybrid decoders' fixed-size states (conv,
ssm, recurrent; `io_spec.CacheIO`) start as zeros and ride along in either cache; the ones the
export marks in-place safe are bound as input and output too. Beam search reorders every cache
tensor with a small Gather graph run on the same provider: the cache never leaves the device,
but each reorder is a copy (of all N positions for a static cache). Reordering in place would need
the graph to read rows through an index; measured on the SmolLM2 shape (30 layers, 3 kv heads,
beam 4, N=256) one reorder copies 47 MB: 23 ms best of 15 on this shared 2-core machine.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from .io_spec import WRITE_INDICES, DecoderIO

__all__ = ["DynamicKVCache", "StaticKVCache", "device_of"]

_IR_TYPES = {np.float32: ir.DataType.FLOAT, np.float16: ir.DataType.FLOAT16, np.float64: ir.DataType.DOUBLE}
_DEVICES = {"CUDAExecutionProvider": "cuda", "ROCMExecutionProvider": "cuda", "DmlExecutionProvider": "dml"}


def device_of(session: ort.InferenceSession) -> str:
    """The OrtValue device type of the session's first provider."""
    return _DEVICES.get(session.get_providers()[0], "cpu")


@lru_cache(maxsize=8)
def _gather_model(signature: tuple[tuple[int, type], ...]) -> bytes:
    """A graph with one tensor in and out per (rank, dtype) of `signature`: y_i = Gather(x_i, beam_idx, axis=0)."""
    index = ir.Value(name="beam_idx", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(["n"]))
    inputs, outputs, nodes = [index], [], []
    for i, (rank, dtype) in enumerate(signature):
        dims = [f"d{i}_{axis}" for axis in range(1, rank)]
        x = ir.Value(name=f"x{i}", type=ir.TensorType(_IR_TYPES[dtype]), shape=ir.Shape(["b", *dims]))
        node = ir.node("Gather", [x, index], attributes={"axis": 0}, name=f"gather{i}")
        node.outputs[0].name = f"y{i}"
        node.outputs[0].type = x.type
        node.outputs[0].shape = ir.Shape(["n", *dims])
        inputs.append(x)
        outputs.append(node.outputs[0])
        nodes.append(node)
    graph = ir.Graph(inputs, outputs, nodes=nodes, opset_imports={"": 21}, name="reorder_cache")
    return ir.serde.serialize_model(ir.Model(graph, ir_version=10)).SerializeToString()


class _Reorderer:
    """Runs the Gather graph on the decoder's providers with IO binding, outputs left on the device."""

    def __init__(self, session: ort.InferenceSession, signature: tuple[tuple[int, type], ...]):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(_gather_model(signature), options, providers=session.get_providers())
        self.device = device_of(session)

    def __call__(self, values: list[ort.OrtValue], beam_idx: np.ndarray) -> list[ort.OrtValue]:
        binding = self.session.io_binding()
        index = np.ascontiguousarray(beam_idx, dtype=np.int64)
        binding.bind_cpu_input("beam_idx", index)
        for i, value in enumerate(values):
            binding.bind_ortvalue_input(f"x{i}", value)
            binding.bind_output(f"y{i}", self.device)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()


class _KVCacheBase:
    def __init__(self, session: ort.InferenceSession, io: DecoderIO):
        self.session = session
        self.io = io
        self.device = device_of(session)
        self.values: list[ort.OrtValue] = []
        self.length = 0  # positions filled so far (padding included), same for every row
        self._reorderer: _Reorderer | None = None

    def _zeros(self, shape: tuple[int, ...], dtype: type | None = None) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=dtype or self.io.dtype), self.device, 0)

    def _initial(self, batch_size: int, past_length: int) -> list[ort.OrtValue]:
        """Every cache tensor for an empty past: K/V `past_length` long (0, or the static buffer),
        states zero (a zero state is no past)."""
        return [self._zeros(shape, c.dtype) for shape, c in zip(self.io.cache_shapes(batch_size, past_length), self.io.cache)]

    def _bind_states_in_place(self, binding: ort.IOBinding, spec, value: ort.OrtValue) -> None:
        binding.bind_ortvalue_input(spec.past, value)
        if spec.past in self.io.inplace_states:
            binding.bind_ortvalue_output(spec.present, value)  # the graph reads it all before writing
        else:
            binding.bind_output(spec.present, self.device)

    def reorder(self, beam_idx: np.ndarray) -> None:
        """Row i of every cache tensor becomes row `beam_idx[i]`; `beam_idx` may change the batch size."""
        beam_idx = np.asarray(beam_idx, dtype=np.int64)
        if beam_idx.shape[0] == self.batch_size and np.array_equal(beam_idx, np.arange(self.batch_size)):
            return
        if self._reorderer is None:
            signature = tuple((len(c.shape) + 1, c.dtype) for c in self.io.cache)
            self._reorderer = _Reorderer(self.session, signature)
        self.values = self._reorderer(self.values, beam_idx)
        self.batch_size = int(beam_idx.shape[0])


class DynamicKVCache(_KVCacheBase):
    """Cache that grows by the step's length: presents are the next step's pasts."""

    def __init__(self, session: ort.InferenceSession, io: DecoderIO, batch_size: int):
        super().__init__(session, io)
        self.batch_size = batch_size
        self.values = self._initial(batch_size, 0)

    def attention_mask_width(self, step_length: int) -> int:
        return self.length + step_length

    def feeds(self) -> dict[str, ort.OrtValue]:
        """The pasts by input name, for a `run_with_ort_values` call (no output bound in place)."""
        return {spec.past: value for spec, value in zip(self.io.cache, self.values)}

    def bind(self, binding: ort.IOBinding, step_length: int) -> None:
        for spec, value in zip(self.io.cache, self.values):
            if spec.is_state:
                self._bind_states_in_place(binding, spec, value)
            else:
                binding.bind_ortvalue_input(spec.past, value)
                binding.bind_output(spec.present, self.device)

    def update(self, presents: list[ort.OrtValue], step_length: int) -> None:
        # In-place states keep their OrtValue: the one bound as output is a view that does not own it.
        self.values = [
            value if spec.past in self.io.inplace_states else present
            for spec, value, present in zip(self.io.cache, self.values, presents)
        ]
        self.length += step_length


class StaticKVCache(_KVCacheBase):
    """Fixed buffers of `max_cache_len` positions, each bound as input and output of its layer."""

    def __init__(self, session: ort.InferenceSession, io: DecoderIO, batch_size: int):
        super().__init__(session, io)
        self.batch_size = batch_size
        self.values = self._initial(batch_size, io.max_cache_len)

    def attention_mask_width(self, step_length: int) -> int:
        return self.io.max_cache_len

    def bind(self, binding: ort.IOBinding, step_length: int) -> None:
        self._write = np.full((self.batch_size,), self.length, dtype=np.int64)  # kept alive until the run
        binding.bind_cpu_input(WRITE_INDICES, self._write)
        for spec, value in zip(self.io.cache, self.values):
            if spec.is_state:
                self._bind_states_in_place(binding, spec, value)
            else:
                binding.bind_ortvalue_input(spec.past, value)
                binding.bind_ortvalue_output(spec.present, value)  # same buffer: the scatter writes in place

    def update(self, presents: list[ort.OrtValue], step_length: int) -> None:
        # K/V buffers (and in-place states) already hold the new positions; other states are new values.
        self.values = [
            present if spec.is_state and spec.past not in self.io.inplace_states else value
            for spec, value, present in zip(self.io.cache, self.values, presents)
        ]
        self.length += step_length
