"""Push an export folder to the Hugging Face Hub, in the Hub layout, with huggingface_hub.

The token comes from huggingface_hub's own sources (an explicit `token=`, `HF_TOKEN`, the login
cache) and goes nowhere but huggingface_hub's request headers: it is never printed, logged or
written. Everything that can be checked offline (repo id, ONNX files, card metadata, a token
being there) is checked before the first request; `dry_run` makes no request at all.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import httpx2
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from .. import __version__
from .card import DEFAULT_LIBRARY_NAME
from .errors import HubRequestError, MissingTokenError, ModelCardError
from .layout import AUTO, HubLayout, check_repo_id, plan_hub_layout

__all__ = ["push_to_hub", "describe_dry_run", "default_commit_message"]

logger = logging.getLogger(__name__)


def default_commit_message(layout: HubLayout) -> str:
    opset = max(m.opset for m in layout.onnx_models)
    return f"Upload ONNX opset-{opset} export made with optimum-onnx23 {__version__}"


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB"


def describe_dry_run(layout: HubLayout, private: bool, commit_message: str, token_found: bool) -> str:
    """What a push would do: the files with their sizes, and the model card. Contains no token."""
    width = max(len(p) for p in layout.paths)
    lines = [
        f"Dry run: nothing was uploaded. A push would commit {len(layout.files)} files "
        f"({_size(sum(f.size for f in layout.files))}) to the {'private' if private else 'public'} "
        f"model repo {layout.repo_id}, with the message {commit_message!r}:",
    ]
    lines += [f"  {f.path_in_repo:<{width}}  {_size(f.size):>12}" for f in layout.files]
    lines += [f"Note: {note}" for note in layout.notes]
    if layout.genai_precision is not None:
        lines.append(f"onnxruntime-genai runs {layout.genai_precision.graph} ({layout.genai_precision.precision}).")
    lines.append(
        "A Hugging Face token was found." if token_found
        else "No Hugging Face token was found: set HF_TOKEN or run `hf auth login` before pushing."
    )
    lines += ["", "----- README.md -----", str(layout.card).rstrip(), "----- end of README.md -----"]
    return "\n".join(lines)


@contextmanager
def _hub_errors(action: str, repo_id: str) -> Iterator[None]:
    """Turn what the Hub or the network answers into one `HubRequestError` line (no header, no token)."""
    try:
        yield
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        fix = {
            401: "check that your token is valid (`hf auth login` or HF_TOKEN)",
            403: f"check that your token has write access to {repo_id.split('/')[0]}",
            404: "check the repo id and the revision",
        }.get(status, "retry later, or check the Hub's status")
        raise HubRequestError(f"Could not {action} {repo_id} on the Hub ({first_line}); {fix}.") from None
    except OfflineModeIsEnabled:
        raise HubRequestError(f"Cannot {action} {repo_id}: HF_HUB_OFFLINE is set; unset it to push, or pass --dry-run.") from None
    except httpx2.TransportError as error:
        raise HubRequestError(
            f"Could not {action} {repo_id}: the Hub is unreachable ({type(error).__name__}); check the network or HF_ENDPOINT."
        ) from None


def _validator_message(error: ValueError) -> str:
    """The Hub's validate-yaml answers `{"errors": [{"message": ...}]}`; `ModelCard.validate` raises its raw text."""
    text = str(error).strip()
    try:
        messages = [e.get("message", "") for e in json.loads(text).get("errors", [])]
    except (ValueError, AttributeError):
        messages = text.splitlines()[:1]
    return "; ".join(m for m in messages if m) or "no reason given"


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    base_model: str | None = None,
    library_name: str = DEFAULT_LIBRARY_NAME,
    license: str | None = None,
    dry_run: bool = False,
    validate_card_on_hub: bool = True,
    stdout: TextIO | None = None,
    genai_precision: str = AUTO,
) -> CommitInfo | None:
    """Upload the export `folder` (flat or Hub layout) to the model repo `repo_id` in the Hub layout.

    Creates the repo if needed (`HfApi.create_repo(exist_ok=True)`) and the branch `revision` if
    it is not there (`HfApi.create_branch(exist_ok=True)`), then makes one commit
    (`HfApi.create_commit`) with every file; huggingface_hub decides per file between a regular
    blob and LFS/Xet storage, as the Hub asks. Returns the `CommitInfo`, or None for a `dry_run`,
    which prints the plan and the card to `stdout` and makes no network call.

    Backend variants materialized as their own files (`model_q4.onnx` + its data) are written to a
    temporary folder for the upload and removed afterwards; `genai_precision` picks the graph
    genai_config.json names (`plan_hub_layout`).

    Raises (one line, nothing uploaded): `InvalidRepoIdError`, `NoOnnxFilesError`,
    `ModelCardError` (offline checks, then the Hub's card validator), `MissingTokenError`,
    `GenaiPrecisionError`; `HubRequestError` when the Hub refuses a request.
    """
    check_repo_id(repo_id)
    layout = plan_hub_layout(
        folder, repo_id, base_model=base_model, library_name=library_name, license=license, genai_precision=genai_precision
    )
    commit_message = commit_message or default_commit_message(layout)
    # Only whether a token exists is used here; its value stays with huggingface_hub. With
    # HF_OIDC_RESOURCE set, get_token() would exchange one over the network: not in a dry run.
    oidc = bool(os.environ.get("HF_OIDC_RESOURCE"))
    token_found = bool(token) or (oidc if dry_run else get_token() is not None)
    if dry_run:
        print(describe_dry_run(layout, bool(private), commit_message, token_found), file=stdout or sys.stdout)
        return None
    if not token_found:
        raise MissingTokenError(
            f"No Hugging Face token found to push to {repo_id}: set HF_TOKEN or run `hf auth login` (a token with write access)."
        )

    api = HfApi(token=token, library_name="optimum-onnx23", library_version=__version__)
    if validate_card_on_hub:
        with _hub_errors("validate the model card for", repo_id):
            try:
                layout.card.validate()  # the Hub's own metadata checks, before anything is created
            except ValueError as error:
                raise ModelCardError(
                    f"The Hub rejected the model card metadata ({_validator_message(error)}); fix README.md's header."
                ) from None
    with _hub_errors("create the model repo", repo_id):
        repo = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision is not None and revision != "main" and not create_pr:
        with _hub_errors(f"create the branch {revision} of", repo.repo_id):
            api.create_branch(repo.repo_id, branch=revision, repo_type="model", exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="optimum-onnx23-push-") as scratch:
        written = layout.write_materialized(Path(scratch))
        operations = [
            CommitOperationAdd(
                path_in_repo=f.path_in_repo,
                path_or_fileobj=f.content if f.content is not None else str(written.get(f.path_in_repo, f.source)),
            )
            for f in layout.files
        ]
        logger.info("Uploading %d files to %s", len(operations), repo.repo_id)
        with _hub_errors("upload to", repo.repo_id):
            info = api.create_commit(
                repo.repo_id,
                operations,
                commit_message=commit_message,
                repo_type="model",
                revision=revision,
                create_pr=create_pr,
            )
    logger.info("Pushed to %s", info.commit_url)
    return info
