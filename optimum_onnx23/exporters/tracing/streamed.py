"""Streamed weights (`--streamed`): export a checkpoint without ever holding its model in memory.

The model is built with its parameters on the meta device (buffers, such as rotary tables, are
real: they are computed, not read). Only what the trace needs is read from the safetensors files:
the tensors outside the decoder layers and the first `layer_replication.TRACED_LAYERS` layers.
The cloned layers' weights become `onnx_ir.LazyTensor`s that read one tensor from the file,
convert it to the export dtype (and transpose it where the traced layer's MatMul reads it through a
`Transpose`, which the optimizer would otherwise fold into a materialized copy) when the graph is
saved, so the external-data file is written tensor by tensor. Validation runs the PyTorch model
with each decoder layer's weights read before its forward and dropped after it (`layer_by_layer`).

Guarantees:
- Tensors are read with plain file reads (no memory mapping): what is resident is what we keep.
- Every parameter of the model must be in the checkpoint under its own name (tied ones once), and
  the architecture must be traced 4 layers deep; otherwise one line says so (`InvalidArgumentError`).
- The weights are those `from_pretrained(dtype=...)` gives: the checkpoint's tensor cast with
  `Tensor.to(dtype)`, so the export and its validation compute what the in-memory export computes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import onnx_ir as ir
import torch

from ...errors import InvalidArgumentError

__all__ = ["CheckpointIndex", "StreamedWeights", "checkpoint_index", "meta_parameters", "skeleton"]

logger = logging.getLogger(__name__)

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


@dataclass(frozen=True)
class _Entry:
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # from the start of the file
    nbytes: int


class CheckpointIndex:
    """Where each tensor of a local safetensors checkpoint lies; reads one tensor at a time."""

    def __init__(self, entries: dict[str, _Entry]):
        self.entries = entries

    def numel(self) -> int:
        return sum(torch.Size(e.shape).numel() for e in self.entries.values())

    def read(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        entry = self.entries[name]
        buffer = bytearray(entry.nbytes)
        with entry.path.open("rb") as f:
            f.seek(entry.offset)
            f.readinto(buffer)
        tensor = torch.frombuffer(buffer, dtype=entry.dtype) if entry.nbytes else torch.empty(0, dtype=entry.dtype)
        return tensor.reshape(entry.shape).to(dtype)


def checkpoint_index(folder: Path) -> CheckpointIndex | None:
    """The index of `folder`'s safetensors files (headers only); None if it has none."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    entries = {}
    for path in files:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, info in header.items():
            if name == "__metadata__" or info["dtype"] not in _DTYPES:
                continue
            start, end = info["data_offsets"]
            entries[name] = _Entry(path, _DTYPES[info["dtype"]], tuple(info["shape"]), 8 + size + start, end - start)
    return CheckpointIndex(entries)


@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device; buffers stay real."""
    original = torch.nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


class StreamedWeights:
    """The checkpoint behind a meta-parameter `model`: materializes modules, releases them, and
    gives lazy ONNX tensors for the weights of layers that are never materialized for the trace."""

    def __init__(self, index: CheckpointIndex, model: torch.nn.Module, dtype: torch.dtype, prefix: str = "model."):
        self.index, self.model, self.dtype, self.prefix = index, model, dtype, prefix
        # (parameter name, tensor as read) -> the tensor to use; --weight-format's validation sets the fake quantization
        self.transform: Callable[[str, torch.Tensor], torch.Tensor] = lambda name, tensor: tensor
        groups: dict[int, list[str]] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            groups.setdefault(id(param), []).append(name)
        self.aliases: dict[str, str] = {}  # every (tied) parameter name -> the name the checkpoint holds
        for names in groups.values():
            stored = next((n for n in names if n in index.entries), None)
            if stored is None:
                raise InvalidArgumentError(
                    f"--streamed: the checkpoint has no tensor `{names[0]}` the model needs (renamed or converted weights); "
                    "export without --streamed."
                )
            self.aliases.update((n, stored) for n in names)

    def materialize(self, module: torch.nn.Module, skip: tuple[torch.nn.Module, ...] = ()) -> None:
        """Read `module`'s parameters (those still on meta, outside the `skip` modules) from the checkpoint."""
        def make(name: str, param: torch.nn.Parameter) -> torch.nn.Parameter:
            tensor = self.transform(name, self.index.read(self.aliases[name], self.dtype))
            return torch.nn.Parameter(tensor.to(self.dtype), requires_grad=False)

        self._set(module, make, skip=skip)

    def release(self, module: torch.nn.Module) -> None:
        """Put `module`'s parameters back on the meta device (their memory is freed)."""
        def make(name: str, param: torch.nn.Parameter) -> torch.nn.Parameter:
            meta = torch.nn.Parameter(param.to("meta"), requires_grad=False)
            with torch.no_grad():
                param.data = torch.empty(0, dtype=param.dtype)  # freed even where the trace's program still holds it
            return meta

        self._set(module, make, meta=False)

    def _set(self, module: torch.nn.Module, make: Callable, meta: bool = True, skip: tuple[torch.nn.Module, ...] = ()) -> None:
        base = next(p for p, m in self.model.named_modules(remove_duplicate=False) if m is module)
        skipped = tuple(f"{p}." for p, m in module.named_modules(remove_duplicate=False) if any(m is s for s in skip))
        done: dict[int, torch.nn.Parameter] = {}
        for path, sub in module.named_modules(remove_duplicate=False):
            if f"{path}.".startswith(skipped):
                continue
            for leaf, param in list(sub._parameters.items()):
                if param is None or (param.device.type == "meta") != meta:
                    continue
                if id(param) not in done:
                    full = ".".join(p for p in (base, path, leaf) if p)
                    done[id(param)] = make(full, param)
                sub._parameters[leaf] = done[id(param)]

    def lazy(self, wrapper_name: str, like: ir.TensorProtocol, perm: tuple[int, ...] | None, name: str, on_read: Callable[[], None]) -> ir.LazyTensor:
        """The ONNX tensor `name` holding the weight `wrapper_name` (a name in the trace's wrapper),
        transposed by `perm` if given, as `like` (the traced layer's tensor: its class and dtype)."""
        stored = self.aliases[wrapper_name.removeprefix(self.prefix)]
        shape = self.index.entries[stored].shape
        if perm is not None:
            shape = tuple(shape[p] for p in perm)
        wrap = type(like) if type(like).__name__ == "TorchTensor" else None

        def load() -> ir.TensorProtocol:
            if len(shape) > 1:  # the matrices: read once, at save (the optimizer reads small vectors too)
                on_read()
            tensor = self.index.read(stored, self.dtype)
            if perm is not None:
                tensor = tensor.permute(perm).contiguous()
            return wrap(tensor, name=name) if wrap else ir.tensor(tensor.numpy(), name=name)

        return ir.LazyTensor(load, dtype=like.dtype, shape=ir.Shape(shape), name=name)

    @contextlib.contextmanager
    def layer_by_layer(self, layers: torch.nn.ModuleList) -> Iterator[None]:
        """Within: every decoder layer holds its weights only during its forward."""
        for layer in layers:
            self.release(layer)
        total, seen = len(layers), set()
        handles = []
        for i, layer in enumerate(layers):

            def before(module, args, i=i):
                self.materialize(module)
                if i not in seen:  # progress on the first validation shape; the others take as long
                    seen.add(i)
                    logger.info("  PyTorch reference: layer %d/%d", i + 1, total)

            handles.append(layer.register_forward_pre_hook(before))
            handles.append(layer.register_forward_hook(lambda module, args, output: self.release(module)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def skeleton(folder: Path, config, dtype: torch.dtype, **architecture) -> torch.nn.Module:
    """The causal LM of `config` in `dtype`, parameters on meta, with the folder's generation config."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    if architecture.pop("key_mapping", None):
        raise InvalidArgumentError("--streamed: this architecture renames the checkpoint's weights on load; export without --streamed.")
    with meta_parameters():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **architecture)
    if (Path(folder) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model.eval()
