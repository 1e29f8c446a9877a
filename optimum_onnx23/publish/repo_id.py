"""Hub repo id check, light enough for the CLI to run before its heavy imports (huggingface_hub only)."""

from __future__ import annotations

from huggingface_hub.utils import HFValidationError, validate_repo_id

from .errors import InvalidRepoIdError

__all__ = ["check_repo_id"]


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if huggingface_hub's validator accepts it, else `InvalidRepoIdError` in one line."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        reason = str(error).strip().splitlines()[0]
        raise InvalidRepoIdError(
            f"Invalid Hub repo id {repo_id!r}: {reason} Pass `name` or `namespace/name` with letters, digits, '-', '_', '.'."
        ) from None
    if not repo_id:
        raise InvalidRepoIdError("Empty Hub repo id; pass `name` or `namespace/name`.")
    return repo_id
