"""Find the files of an exported decoder: a local folder (flat, or the Hub layout with the ONNX
file under `onnx/`) or a Hugging Face Hub repository, downloading only the files generation needs."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from optimum_onnx23.errors import ModelNotFoundError

__all__ = ["ModelFiles", "resolve_model_files", "DEFAULT_FILE_NAME"]

DEFAULT_FILE_NAME = "model.onnx"
# Subfolders searched, in order, when none is given: optimum-onnx's flat layout, then transformers.js'.
_LAYOUTS = ("", "onnx")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# Everything the runtime reads besides the ONNX file: configs and any tokenizer format.
_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "export_report.json",
)


@dataclass(frozen=True)
class ModelFiles:
    """Where the model lives: `folder` holds config and tokenizer, `onnx_path` the graph."""

    folder: Path
    onnx_path: Path


def _find_onnx(folder: Path, subfolder: str, file_name: str, source: str) -> ModelFiles:
    candidates = [subfolder] if subfolder else list(_LAYOUTS)
    for sub in candidates:
        path = folder / sub / file_name
        if path.is_file():
            config_folder = folder if (folder / "config.json").is_file() else path.parent
            return ModelFiles(config_folder, path)
    where = " or ".join(f"{sub or '.'}/{file_name}" for sub in candidates)
    raise ModelNotFoundError(
        f"{source} has no ONNX model ({where} not found); export one with "
        "`optimum-cli export onnx --dynamo --model <model> <folder>` or pass file_name=/subfolder=."
    )


def resolve_model_files(
    model_id_or_path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    subfolder: str = "",
    file_name: str | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
) -> ModelFiles:
    """Resolve a local folder or a Hub id to local files. For a Hub id only the configs, the
    tokenizer files and the chosen ONNX file with its external data are fetched; with
    `HF_HUB_OFFLINE=1` or `local_files_only` they must already be in the HF cache."""
    file_name = file_name or DEFAULT_FILE_NAME
    if Path(file_name).name != file_name or Path(subfolder).is_absolute() or ".." in Path(subfolder).parts:
        raise ModelNotFoundError(f"file_name `{file_name}` / subfolder `{subfolder}` must name paths inside the model folder.")
    name = str(model_id_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return _find_onnx(path, subfolder, file_name, str(path))
    if path.exists():
        raise ModelNotFoundError(f"{name} is a file; pass the exported model folder (the one holding {file_name}).")
    if not _HUB_ID.match(name):  # a path (absolute, ./, ../, ~, several /): no Hub id looks like that
        raise ModelNotFoundError(
            f"Model folder {name} does not exist (from {Path.cwd()}) and is not a Hub model id; pass an exported folder "
            "(an absolute path works from any directory) or a Hub model id."
        )

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    subs = [subfolder] if subfolder else list(_LAYOUTS)
    patterns = list(_SIDE_FILES) + [f"{sub}/{f}" if sub else f for sub in subs for f in (file_name, f"{file_name}_data", f"{file_name}.data", f"{file_name}_data_*")]
    try:
        local = snapshot_download(
            name,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            allow_patterns=patterns,
        )
    except (RepositoryNotFoundError, RevisionNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        reason = " ".join(str(error).split()).rstrip(".") or type(error).__name__  # whole, on one line
        raise ModelNotFoundError(
            f"No local folder {name} (from {Path.cwd()}) and not a Hub id that can be reached"
            f"{f' at revision {revision}' if revision else ''}: {reason}. Pass the exported folder's path "
            "(absolute from any directory), or check the Hub id, or download it first when offline (HF_HUB_OFFLINE=1)."
        ) from None
    return _find_onnx(Path(local), subfolder, file_name, f"Hub repository {name}")
