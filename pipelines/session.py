"""Opening an exported decoder: the ONNX file is read, parsed and checked once
(`optimum_onnx23.model_file.ModelFile`), the backend variant for the first provider is picked on
that parsed model, and onnxruntime is handed the resulting bytes (no second read of the file).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import onnxruntime as ort

from optimum_onnx23.errors import InvalidArgumentError, OptimumOnnx23Error, UnsafeModelFileError
from optimum_onnx23.model_file import ModelFile
from optimum_onnx23.variants.runtime import create_session as create_variant_session

__all__ = ["check_onnx_file", "create_session", "open_session"]


def check_onnx_file(onnx_path: str | os.PathLike) -> ModelFile:
    """Raise `UnsafeModelFileError` unless every external-data `location` of `onnx_path` is a
    relative path that resolves inside the model's folder, or if the file is not a readable ONNX
    model. The weights themselves are not read. Returns the opened `ModelFile`."""
    return ModelFile.open(onnx_path)


def _check_providers(providers: Sequence[str | tuple[str, dict]]) -> None:
    available = ort.get_available_providers()
    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    missing = [name for name in names if name not in available]
    if missing:
        raise InvalidArgumentError(
            f"onnxruntime provider {', '.join(missing)} is not available in this install; use one of: {', '.join(available)}."
        )


def open_session(
    onnx_path: str | os.PathLike,
    providers: Sequence[str | tuple[str, dict]] = ("CPUExecutionProvider",),
    session_options: ort.SessionOptions | None = None,
) -> tuple[ort.InferenceSession, ModelFile, str | None]:
    """`create_session`, also returning the opened `ModelFile` and the variant that runs (None: the
    main graph)."""
    model = ModelFile.open(onnx_path)
    _check_providers(providers)
    try:
        session, variant = create_variant_session(model, providers, session_options)
    except OptimumOnnx23Error:
        raise
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsafeModelFileError(f"onnxruntime could not load {onnx_path} ({first_line[:300]}); re-export it.") from None
    return session, model, variant


def create_session(
    onnx_path: str | os.PathLike,
    providers: Sequence[str | tuple[str, dict]] = ("CPUExecutionProvider",),
    session_options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """One onnxruntime session for `onnx_path`, whose file is parsed once.

    If the file carries backend variants, the one targeting `providers[0]` runs (logged); when
    none does, or onnxruntime lacks its ops or refuses it, the main graph runs (with a warning).
    """
    return open_session(onnx_path, providers, session_options)[0]
