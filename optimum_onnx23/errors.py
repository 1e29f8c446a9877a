"""Errors with one-line messages that name the problem and the fix.

The CLI prints `str(error)` of these alone (no traceback); anything else is a bug and keeps its traceback.
"""

__all__ = [
    "OptimumOnnx23Error",
    "UnsupportedArchitectureError",
    "ModelNotFoundError",
    "InvalidArgumentError",
    "OutputFolderError",
    "ValidationError",
    "UnsafeModelFileError",
]


class OptimumOnnx23Error(Exception):
    """Base class: a problem with the user's input or environment, reported in one line."""


class UnsupportedArchitectureError(OptimumOnnx23Error, ValueError):
    pass


class ModelNotFoundError(OptimumOnnx23Error, FileNotFoundError):
    pass


class InvalidArgumentError(OptimumOnnx23Error, ValueError):
    pass


class OutputFolderError(OptimumOnnx23Error, FileExistsError):
    pass


class ValidationError(OptimumOnnx23Error, AssertionError):
    """The exported ONNX model disagrees with PyTorch beyond the tolerance."""


class UnsafeModelFileError(OptimumOnnx23Error, ValueError):
    """A model file points outside its folder (external data path traversal) or is corrupt."""
