"""Reading the checkpoint to export: its config, its weight files, and GGUF files.

Weight files of a local folder are checked before transformers reads them, so that a file that is
not what its name says (not safetensors, truncated, a missing shard, a GGUF without its magic)
stops the export with one line naming the file, instead of a library traceback. Hub checkpoints
are checked by the same code once transformers has downloaded them (the error is mapped).

GGUF (`gguf_file=`): transformers' loader dequantizes llama.cpp files to torch weights (it needs
the `gguf` package: `pip install optimum-onnx23[gguf]`). The exported `config.json` drops the
`quantization_config` that loader records, since the ONNX weights are plain floats.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import CorruptCheckpointError, InvalidArgumentError, ModelNotFoundError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = [
    "check_gguf_file",
    "check_weight_files",
    "dequantized_config",
    "load_causal_lm",
    "load_model_config",
]

GGUF_MAGIC = b"GGUF"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_SAFETENSORS_INDEX = "model.safetensors.index.json"


def _looks_like_path(name: str) -> bool:
    """Anything that cannot be a Hub id (`name` or `org/name`) is taken as a local path."""
    return not _HUB_ID.match(name)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_safetensors(path: Path) -> None:
    """A safetensors file is an 8-byte little-endian header size, a JSON header, then the data the
    header's offsets describe; refuse anything else, or a file shorter than its header says."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptCheckpointError(f"{path} is not a safetensors file ({size} bytes); re-download or re-save the checkpoint.")
        (header_size,) = struct.unpack("<Q", head)
        if header_size > min(size - 8, 100 << 20):
            raise CorruptCheckpointError(f"{path} is not a safetensors file (no valid header); re-download or re-save the checkpoint.")
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CorruptCheckpointError(f"{path} is not a safetensors file (its header is not JSON); re-download or re-save the checkpoint.") from None
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    needed = 8 + header_size + max(ends, default=0)
    if size < needed:
        raise CorruptCheckpointError(
            f"{path} is truncated: {size} bytes where its header describes {needed}; re-download or re-save the checkpoint."
        )


def check_gguf_file(path: Path) -> None:
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file {path} does not exist; pass --gguf-file with the name of a .gguf file in the model folder.")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise CorruptCheckpointError(f"{path} is not a GGUF file (it does not start with `GGUF`); pass a llama.cpp .gguf file.")


def check_weight_files(folder: Path) -> None:
    """Raise `CorruptCheckpointError` / `ModelNotFoundError` (one line) for the safetensors weights of
    `folder`: every shard its index names must exist and every file must be whole. Folders with
    other weight formats are left to transformers."""
    folder = Path(folder)
    index = folder / _SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CorruptCheckpointError(f"{index} is not a safetensors index (no `weight_map`); re-download the checkpoint.") from None
        shards = sorted(set(weight_map.values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise ModelNotFoundError(
                f"{folder} is missing weight shard {missing[0]}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + f" named by {_SAFETENSORS_INDEX}; download the complete checkpoint."
            )
        files = [folder / name for name in shards]
    else:
        files = sorted(folder.glob("*.safetensors"))
    for path in files:
        _check_safetensors(path)


def dequantized_config(config: PretrainedConfig) -> PretrainedConfig:
    """`config` without the `quantization_config` transformers' GGUF loader adds (weights are floats now)."""
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    return config


def load_model_config(model: str, revision=None, cache_dir=None, trust_remote_code=False, token=None, gguf_file: str | None = None):
    """`AutoConfig` for a local folder or a Hub id, with one-line errors for what is missing."""
    from transformers import AutoConfig

    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{model} is a file; pass the model folder that holds config.json" + (" or the GGUF file." if gguf_file is None else "."))
        if gguf_file is not None:
            check_gguf_file(path / gguf_file)
        elif not (path / "config.json").is_file():
            gguf = sorted(p.name for p in path.glob("*.gguf"))
            hint = f"; to export its GGUF file pass --gguf-file {gguf[0]}" if gguf else ""
            raise ModelNotFoundError(f"{model} is not a model folder: it has no config.json{hint}.")
    elif _looks_like_path(model):
        raise ModelNotFoundError(f"Model folder {model} does not exist; pass an existing folder or a Hub model id.")
    try:
        config = AutoConfig.from_pretrained(
            str(path) if path.exists() else model,
            revision=revision,
            cache_dir=cache_dir,
            trust_remote_code=trust_remote_code,
            token=token,
            **({"gguf_file": gguf_file} if gguf_file else {}),
        )
    except ImportError as error:  # the gguf package
        raise InvalidArgumentError(f"Reading GGUF needs the `gguf` package ({_first_line(error)}); pip install 'optimum-onnx23[gguf]'.") from None
    except (OSError, ValueError) as error:
        if "trust_remote_code" in str(error):
            raise ModelNotFoundError(
                f"`{model}` needs custom code from its repository; pass --trust-remote-code if you trust it."
            ) from error
        raise ModelNotFoundError(
            f"Could not load the config of `{model}` ({_first_line(error)}); pass a local model folder or a Hub id that is "
            "reachable (or already in the HF cache when offline)."
        ) from error
    return dequantized_config(config) if gguf_file else config


def load_causal_lm(
    model: str, config: PretrainedConfig, *, dtype, revision=None, cache_dir=None, trust_remote_code=False, token=None, gguf_file=None, **architecture
):
    """`AutoModelForCausalLM.from_pretrained`, weights checked first (local folders) and load errors
    reported in one line naming the file. `architecture`: what the export config asks of the load
    (`key_mapping`, regex -> name, loads a multimodal checkpoint's text decoder alone;
    `attn_implementation`)."""
    from transformers import AutoModelForCausalLM

    path = Path(model).expanduser()
    if path.is_dir() and gguf_file is None:
        check_weight_files(path)
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(path) if path.is_dir() else model,
            config=config,
            revision=revision,
            cache_dir=cache_dir,
            trust_remote_code=trust_remote_code,
            token=token,
            dtype=dtype,
            **({"gguf_file": gguf_file} if gguf_file else {}),
            **architecture,
        )
    except ImportError as error:
        raise InvalidArgumentError(f"Loading `{model}` needs a missing package ({_first_line(error)}); install it and retry.") from None
    except Exception as error:  # safetensors' SafetensorError derives from Exception only
        if type(error).__name__ == "SafetensorError" or "safetensors" in str(error).lower():
            raise CorruptCheckpointError(
                f"The weights of `{model}` could not be read ({_first_line(error)[:200]}); re-download or re-save the checkpoint."
            ) from None
        if isinstance(error, OSError):
            raise ModelNotFoundError(f"Could not load the weights of `{model}` ({_first_line(error)[:200]}).") from None
        raise
