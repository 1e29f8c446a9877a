"""One-line errors of the publishing step; all are `OptimumOnnx23Error`, so the CLI prints them alone."""

from __future__ import annotations

from ..errors import InvalidArgumentError, ModelNotFoundError, OptimumOnnx23Error

__all__ = ["PublishError", "InvalidRepoIdError", "MissingTokenError", "NoOnnxFilesError", "ModelCardError", "HubRequestError", "GenaiPrecisionError"]


class PublishError(OptimumOnnx23Error):
    """Base class of the publishing errors: nothing was uploaded when one of these is raised before the commit."""


class InvalidRepoIdError(PublishError, InvalidArgumentError):
    pass


class MissingTokenError(PublishError, PermissionError):
    pass


class NoOnnxFilesError(PublishError, ModelNotFoundError):
    pass


class ModelCardError(PublishError, ValueError):
    pass


class HubRequestError(PublishError, ConnectionError):
    """The Hub answered with an error; the message is the Hub's first line, never a header or a token."""


class GenaiPrecisionError(PublishError, InvalidArgumentError):
    """`genai_precision` names a precision the repo does not have."""
