"""Random Llama checkpoints of real shapes written without holding the model (issue 27).

The model is built on the meta device (only its parameter names and shapes), then each tensor is
drawn in chunks (normal, std 0.02; norm weights 1 + N(0, 0.02)), cast to the checkpoint dtype and
appended to a safetensors shard: peak memory is one chunk, whatever the model's size. Shards of
at most 5 GB with `model.safetensors.index.json` (what transformers, llama.cpp's convert and the
onnxruntime-genai builder read), config.json, and the SmolLM2 tokenizer (ids < 49152, which every
shape's vocabulary covers) when it is cached.

    python benchmarks/big_checkpoint.py --shape llama-8b /work/int4direct-data/llama8b
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import time
import zlib
from pathlib import Path

import torch

__all__ = ["SHAPES", "TOKENIZER", "write_checkpoint"]

_LLAMA = dict(max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5, num_key_value_heads=8, head_dim=None)
SHAPES = {
    # export_bench's 1.07 B shape (hidden 2048, 16 layers, SmolLM2's tied 49152-token vocabulary)
    "llama-1b": {**_LLAMA, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                 "vocab_size": 49152, "tie_word_embeddings": True, "max_position_embeddings": 2048},
    # Llama-3.2-3B: tied 128256 vocabulary
    "llama-3b": {**_LLAMA, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24,
                 "vocab_size": 128256, "tie_word_embeddings": True, "head_dim": 128},
    # Llama-3.1-8B: untied lm_head, llama3 rope scaling
    "llama-8b": {**_LLAMA, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                 "vocab_size": 128256, "tie_word_embeddings": False, "head_dim": 128, "max_position_embeddings": 131072,
                 "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192}},
}
TOKENIZER = Path.home() / ".cache/optimum-onnx23/smollm2-135m-instruct/hf"
_SHARD_BYTES = 5 << 30
_CHUNK = 1 << 24  # elements drawn at a time (64 MB of float32)
_SAFETENSORS_DTYPE = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


def _tensors(shape: dict) -> list[tuple[str, tuple[int, ...]]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{k: v for k, v in shape.items() if v is not None})
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()], config  # tied: named once


def _fill(name: str, numel: int, dtype: torch.dtype, seed: int, write) -> None:
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, numel, _CHUNK):
        values = torch.randn(min(_CHUNK, numel - start), generator=generator) * 0.02
        if name.endswith("norm.weight"):
            values += 1.0
        write(values.to(dtype).view(torch.uint8).numpy().tobytes())


def write_checkpoint(folder: Path, shape: dict, dtype: torch.dtype = torch.bfloat16) -> int:
    """Write the checkpoint; returns its fp32 weight bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors, config = _tensors(shape)
    item = torch.empty(0, dtype=dtype).element_size()
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, dims in tensors:
        nbytes = torch.Size(dims).numel() * item
        if shards[-1] and size + nbytes > _SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, dims))
        size += nbytes
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, dims in shard:
            nbytes = torch.Size(dims).numel() * item
            header[name] = {"dtype": _SAFETENSORS_DTYPE[dtype], "shape": list(dims), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = file
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with (folder / file).open("wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for name, dims in shard:
                _fill(name, torch.Size(dims).numel(), dtype, zlib.crc32(name.encode()), f.write)
                total += torch.Size(dims).numel() * 4
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(torch.Size(d).numel() * item for _, d in tensors)}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.dtype = dtype
    config.architectures = ["LlamaForCausalLM"]
    config.bos_token_id, config.eos_token_id = 1, 2  # SmolLM2's tokenizer
    config.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (TOKENIZER / name).is_file():
            shutil.copy(TOKENIZER / name, folder / name)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, required=True)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    total = write_checkpoint(args.folder, SHAPES[args.shape])
    print(f"{args.shape}: {total / 4 / 1e9:.2f} B parameters, {total / 2e9:.1f} GB bf16 in {time.perf_counter() - start:.0f} s -> {args.folder}")


if __name__ == "__main__":
    main()
