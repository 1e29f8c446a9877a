"""The publishing flags of `optimum-cli export onnx --dynamo`, for the export command to wire in.

    parser = ArgumentParser(); add_publish_arguments(parser)
    check_publish_args(args)               # before the export: a bad repo id costs no export
    publish_from_args(args, output_folder)  # after a successful export

There is deliberately no --token flag: a token on the command line ends up in shell history and
process listings; huggingface_hub reads HF_TOKEN or the login cache instead.
"""

from __future__ import annotations

from argparse import ArgumentParser, Namespace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

# Only argparse at import time: optimum-cli imports every command module on start-up.

__all__ = ["add_publish_arguments", "check_publish_args", "publish_from_args"]


def add_publish_arguments(parser: ArgumentParser) -> None:
    group = parser.add_argument_group("Publishing to the Hugging Face Hub")
    group.add_argument(
        "--push-to-hub",
        dest="push_to_hub",
        metavar="REPO_ID",
        default=None,
        help="After the export, upload the folder in the Hub layout (onnx/, model card, genai_config.json) to this "
        "model repo (`namespace/name`). The token comes from HF_TOKEN or `hf auth login`.",
    )
    group.add_argument("--private", action="store_true", help="Create the repo as private (an existing repo keeps its visibility).")
    group.add_argument("--commit-message", dest="commit_message", default=None, help="Message of the upload commit.")
    group.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="With --push-to-hub: print the files, their sizes and the model card, and upload nothing.",
    )
    group.add_argument(
        "--genai-precision",
        dest="genai_precision",
        default=None,
        metavar="PRECISION",
        help="With --push-to-hub: the graph genai_config.json makes onnxruntime-genai run: `auto` (default: the "
        "backend variant our CPU sessions select, e.g. int4, else the main graph), the main graph's dtype "
        "(`fp32`), or a variant's precision (`int4`, `int8`).",
    )


def check_publish_args(args: Namespace) -> None:
    """Offline checks of the flags, one-line `OptimumOnnx23Error` on bad input: a malformed repo
    id, publishing flags without --push-to-hub, and no token for a real push. Meant to run before
    the export, so that none of these costs an export."""
    repo_id = getattr(args, "push_to_hub", None)
    if repo_id is None:
        for flag, name in (
            ("private", "--private"), ("commit_message", "--commit-message"), ("dry_run", "--dry-run"),
            ("genai_precision", "--genai-precision"),
        ):
            if getattr(args, flag, None):
                raise InvalidArgumentError(f"{name} only applies to an upload; add --push-to-hub <namespace/name>.")
        return
    from .repo_id import check_repo_id

    check_repo_id(repo_id)
    _check_genai_precision(args)
    if not getattr(args, "dry_run", False):
        from huggingface_hub import get_token

        from .errors import MissingTokenError

        if get_token() is None:  # whether there is one; the value is not kept
            raise MissingTokenError(
                f"No Hugging Face token found to push to {repo_id}: set HF_TOKEN or run `hf auth login` "
                "(a token with write access), or add --dry-run."
            )


def _check_genai_precision(args: Namespace) -> None:
    """--genai-precision must name a graph this export will have: its dtype, or the precision of a
    --variant it attaches (so a typo costs no export)."""
    requested = getattr(args, "genai_precision", None)
    if requested is None or requested in ("auto", "main"):
        return
    from .precisions import VARIANT_PRECISIONS

    dtype = getattr(args, "dtype", None) or "fp32"
    forms = [VARIANT_PRECISIONS.get(v, {}).get(dtype) for v in getattr(args, "variants", None) or []]
    allowed = [dtype, *dict.fromkeys(name for form in forms if form for name in form)]
    if requested not in allowed:
        from .errors import GenaiPrecisionError

        hint = "; add --variant ort-cpu-int4 for int4" if requested in ("int4", "q4") else ""
        raise GenaiPrecisionError(
            f"--genai-precision {requested}: this export will have {', '.join(allowed)} (or `auto`){hint}."
        )


def publish_from_args(args: Namespace, export_folder: Path) -> "CommitInfo | None":
    """Push (or dry-run) `export_folder` as the flags say; a no-op without --push-to-hub.

    The card's `base_model` is the exported model when `--model` was a Hub id.
    """
    check_publish_args(args)
    repo_id = getattr(args, "push_to_hub", None)
    if repo_id is None:
        return None
    from .push import push_to_hub

    return push_to_hub(
        export_folder,
        repo_id,
        private=bool(getattr(args, "private", False)),
        commit_message=getattr(args, "commit_message", None),
        dry_run=bool(getattr(args, "dry_run", False)),
        genai_precision=getattr(args, "genai_precision", None) or "auto",
    )
