"""`ORTModelForCausalLM.from_pretrained(checkpoint, export=True)`: export a transformers checkpoint
with the dynamo exporter once, into a cache folder keyed by content, and reuse it afterwards.

The key covers what decides the export's bytes: the checkpoint's files (sha256 of each file of a
local folder; the commit of a Hub repository, which git already addresses by content), the export
options, and the versions of this package, torch, transformers and the ONNX libraries. Any change
to one of them is a new folder; the same inputs always find the same folder, in any process.
Folders live under `$OPTIMUM_ONNX23_EXPORT_CACHE`, by default `$HF_HOME/optimum-onnx23/exports`
(`~/.cache/huggingface/optimum-onnx23/exports`); deleting one only costs a re-export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from filelock import FileLock

from optimum_onnx23.errors import InvalidArgumentError, ModelNotFoundError
from optimum_onnx23.progress import progress_on_stderr

__all__ = ["EXPORT_CACHE_ENV", "CacheEntry", "cache_entry", "cached_export", "export_cache_root", "export_dtype"]

logger = logging.getLogger(__name__)

EXPORT_CACHE_ENV = "OPTIMUM_ONNX23_EXPORT_CACHE"
# What the export reads from a checkpoint folder is every top-level file but notes and locks.
_IGNORED = re.compile(r"^\.|\.(md|lock)$")
_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}
_VERSIONED = ("optimum-onnx23", "torch", "transformers", "onnx", "onnxscript", "onnx-ir")
_HASHES_FILE = "file-hashes.json"
TASK = "text-generation-with-past"  # one graph for prefill and decode, the only one the runtime runs
OPSET = 23


def export_cache_root() -> Path:
    """Where `export=True` keeps its exports (created on first use)."""
    configured = os.environ.get(EXPORT_CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "optimum-onnx23" / "exports"


def export_dtype(dtype: Any) -> str:
    """The exporter's dtype name for optimum-onnx's `dtype=` (a torch dtype or a name; default fp32)."""
    if dtype is None:
        return "fp32"
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise InvalidArgumentError(f"dtype={dtype!r} cannot be exported; pass torch.float32, torch.float16 or torch.bfloat16.")
    return _DTYPES[name]


@dataclass(frozen=True)
class _Checkpoint:
    source: str  # what the exporter loads: a local folder or a Hub id
    revision: str | None
    identity: dict[str, Any]
    label: str  # readable part of the cache folder's name


class _FileHashes:
    """sha256 of local files, remembered by (path, size, mtime) so a large checkpoint is read once."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.known = json.loads(path.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.changed = False

    def digest(self, file: Path) -> str:
        resolved = file.resolve()
        if resolved.parent.name == "blobs":  # the HF cache names each blob by its content hash
            return f"blob:{resolved.name}"
        stat = resolved.stat()
        key = str(resolved)
        entry = self.known.get(key)
        if entry and entry[:2] == [stat.st_size, stat.st_mtime_ns]:
            return entry[2]
        sha = hashlib.sha256()
        with open(resolved, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 23), b""):
                sha.update(chunk)
        self.known[key] = [stat.st_size, stat.st_mtime_ns, sha.hexdigest()]
        self.changed = True
        return sha.hexdigest()

    def save(self) -> None:
        if not self.changed:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(self.known))
        os.replace(tmp, self.path)


def _label(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name.strip("/"))[-60:] or "model"


def _local_checkpoint(folder: Path, hashes: _FileHashes) -> _Checkpoint:
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"{folder} has no config.json: export=True takes a transformers checkpoint (a folder saved by "
            "save_pretrained, or a Hub id); load an exported ONNX folder without export=True."
        )
    files = sorted(p for p in folder.iterdir() if p.is_file() and not _IGNORED.search(p.name))
    identity = {"files": {p.name: hashes.digest(p) for p in files}}
    return _Checkpoint(str(folder), None, identity, _label(folder.absolute().name))


def _hub_checkpoint(model_id: str, revision, cache_dir, token, local_files_only, force_download) -> _Checkpoint:
    from huggingface_hub import hf_hub_download

    try:
        config = Path(
            hf_hub_download(
                model_id, "config.json", revision=revision, cache_dir=cache_dir, token=token,
                local_files_only=local_files_only, force_download=force_download,
            )
        )
    except Exception as error:  # huggingface_hub's many HTTP / offline / not-found errors: one line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotFoundError(
            f"Could not get `{model_id}`'s config.json from the Hub to export it ({first_line[:200]}); check the id, "
            "or download the checkpoint first when offline (HF_HUB_OFFLINE=1)."
        ) from None
    # .../models--org--name/snapshots/<commit>/config.json: the commit pins every file's content.
    commit = config.parent.name if config.parent.parent.name == "snapshots" else None
    if commit is None:
        identity = {"repo": model_id, "revision": revision, "config": hashlib.sha256(config.read_bytes()).hexdigest()}
    else:
        identity = {"repo": model_id, "commit": commit}
    return _Checkpoint(model_id, commit or revision, identity, _label(model_id))


@dataclass(frozen=True)
class CacheEntry:
    """Where the export of a checkpoint lives, and what the exporter is given to make it."""

    folder: Path
    source: str
    revision: str | None

    @property
    def complete(self) -> bool:
        # The exporter moves a folder into place only once validated and written whole.
        return (self.folder / "export_report.json").is_file() and (self.folder / "model.onnx").is_file()


def cache_entry(
    model_id: str | os.PathLike,
    *,
    subfolder: str = "",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    trust_remote_code: bool = False,
    dtype: str = "fp32",
) -> CacheEntry:
    """The cache folder for exporting `model_id` (a transformers checkpoint folder or Hub id) with
    these options; reads the checkpoint (hashes, or the Hub commit), exports nothing."""
    root = export_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    local = Path(model_id).expanduser()
    if local.is_dir():
        hashes = _FileHashes(root / _HASHES_FILE)
        checkpoint = _local_checkpoint(local / subfolder if subfolder else local, hashes)
        hashes.save()
    elif subfolder:
        raise InvalidArgumentError(
            f"export=True cannot export a Hub subfolder ({model_id}/{subfolder}); download it and pass the local folder."
        )
    else:
        checkpoint = _hub_checkpoint(str(model_id), revision, cache_dir, token, local_files_only, force_download)
    key = {
        "format": 1,
        "checkpoint": checkpoint.identity,
        "export": {"task": TASK, "opset": OPSET, "dtype": dtype, "trust_remote_code": bool(trust_remote_code)},
        "versions": {name: metadata.version(name) for name in _VERSIONED},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return CacheEntry(root / f"{checkpoint.label}-{digest[:16]}", checkpoint.source, checkpoint.revision)


def cached_export(
    model_id: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    trust_remote_code: bool = False,
    dtype: str = "fp32",
    **hub_options: Any,
) -> Path:
    """The folder holding the export of `model_id`, exported now if no earlier call made it (in any
    process: concurrent calls for the same key export once). `hub_options`: `subfolder`,
    `revision`, `local_files_only`, `force_download`."""
    entry = cache_entry(
        model_id, cache_dir=cache_dir, token=token, trust_remote_code=trust_remote_code, dtype=dtype, **hub_options
    )
    with progress_on_stderr(defer_to_root=True), FileLock(str(entry.folder) + ".lock"):
        if entry.complete:
            logger.info("Using the ONNX export of %s cached in %s", model_id, entry.folder)
            return entry.folder
        logger.info("Exporting %s to ONNX (opset %d, %s) into %s; later loads reuse it", model_id, OPSET, dtype, entry.folder)
        from optimum_onnx23 import exporters  # looked up at call time: tests count the calls

        exporters.export(
            entry.source, entry.folder, task=TASK, opset=OPSET, dtype=dtype, trust_remote_code=trust_remote_code,
            revision=entry.revision, cache_dir=None if cache_dir is None else str(cache_dir), token=token,
            overwrite=True,
        )
    return entry.folder
