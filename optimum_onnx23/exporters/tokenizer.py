"""Save the tokenizer beside the ONNX model so that older consumers can load it too.

transformers 5 writes `"tokenizer_class": "TokenizersBackend"` for tokenizers without a dedicated
class; transformers 4 (and so optimum-onnx's ORTModelForCausalLM) cannot resolve that name, and
its `PreTrainedTokenizerFast` would also return `token_type_ids`, which decoders do not accept. The
saved config names the v4 class that loads the same `tokenizer.json` and the decoder's inputs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..contract import ATTENTION_MASK, INPUT_IDS

__all__ = ["save_tokenizer", "V4_TOKENIZER_CLASSES"]

logger = logging.getLogger(__name__)

# transformers-5-only class names -> the transformers-4 class that reads the same tokenizer.json.
V4_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}
DECODER_INPUT_NAMES = [INPUT_IDS, ATTENTION_MASK]


def save_tokenizer(
    source: str, folder: Path, *, revision=None, cache_dir=None, trust_remote_code=False, token=None, gguf_file=None
) -> str | None:
    """Save `source`'s tokenizer (the one inside `gguf_file` if given) into `folder`; returns a
    warning line if there is none to save."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=revision, cache_dir=cache_dir, trust_remote_code=trust_remote_code, token=token,
            **({"gguf_file": gguf_file} if gguf_file else {}),
        )
    except (OSError, ValueError, TypeError) as error:
        message = f"No tokenizer saved: could not load one from `{source}` ({type(error).__name__})."
        logger.warning(message)
        return message
    tokenizer.save_pretrained(folder)
    config_path = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = V4_TOKENIZER_CLASSES.get(config.get("tokenizer_class"), config.get("tokenizer_class"))
    config.setdefault("model_input_names", DECODER_INPUT_NAMES)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return None
