"""Errors with one-line messages that name the problem and the fix.

The CLI prints `str(error)` of these alone (no traceback); anything else is a bug and keeps its traceback.
"""

__all__ = [
    "OptimumOnnx23Error",
    "UnsupportedArchitectureError",
    "ModelNotFoundError",
    "CorruptCheckpointError",
    "InvalidArgumentError",
    "OutputFolderError",
    "ValidationError",
    "TraceError",
    "UnsafeModelFileError",
    "VariantFormatError",
    "VariantNotFoundError",
    "VariantNotApplicableError",
    "NotCoveredError",
    "ConflictingDistributionError",
]


class OptimumOnnx23Error(Exception):
    """Base class: a problem with the user's input or environment, reported in one line."""


class UnsupportedArchitectureError(OptimumOnnx23Error, ValueError):
    pass


class ModelNotFoundError(OptimumOnnx23Error, FileNotFoundError):
    pass


class CorruptCheckpointError(OptimumOnnx23Error, ValueError):
    """A weight file of the checkpoint is not what its name says (not safetensors, truncated, not GGUF)."""


class InvalidArgumentError(OptimumOnnx23Error, ValueError):
    pass


class OutputFolderError(OptimumOnnx23Error, FileExistsError):
    pass


class ValidationError(OptimumOnnx23Error, AssertionError):
    """The exported ONNX model disagrees with PyTorch beyond the tolerance."""


class TraceError(OptimumOnnx23Error, RuntimeError):
    """torch.export or the ONNX translation failed; the message names the module and operation, the
    original error is chained (`__cause__`) for --verbose."""


class UnsafeModelFileError(OptimumOnnx23Error, ValueError):
    """A model file points outside its folder (external data path traversal) or is corrupt."""


class VariantFormatError(OptimumOnnx23Error, ValueError):
    """A backend variant in a model file is malformed (missing values, a cycle, a bad hash or metadata)."""


class VariantNotFoundError(OptimumOnnx23Error, KeyError):
    """A variant was asked for by name and the model does not carry it."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class VariantNotApplicableError(VariantFormatError):
    """A built-in variant finds nothing to rewrite in this graph (e.g. no RMSNormalization in GPT-2)."""


class NotCoveredError(OptimumOnnx23Error, ImportError):
    """An optimum-onnx name (another task, quantization, ...) that our `optimum.onnxruntime` does not provide."""


class ConflictingDistributionError(OptimumOnnx23Error, ImportError):
    """optimum-onnx is installed too: our `optimum.onnxruntime` refuses to stand in for it."""
