"""Opening an exported decoder: check the ONNX file is safe to load, then create the session.

Session creation lives in `create_session` alone: it also picks the backend variant (if the file
carries any) for the first execution provider, see `optimum_onnx23.variants`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import onnx
import onnxruntime as ort

from optimum_onnx23.errors import OptimumOnnx23Error, UnsafeModelFileError
from optimum_onnx23.paths import external_data_path

__all__ = ["check_onnx_file", "create_session"]


def check_onnx_file(onnx_path: str | os.PathLike) -> None:
    """Raise `UnsafeModelFileError` unless every external-data `location` of `onnx_path` is a
    relative path that resolves inside the model's folder, or if the file is not a readable ONNX
    model. The weights themselves are not read."""
    onnx_path = Path(onnx_path)
    try:
        # Weights stay on disk: only the protobuf (graph + external-data references) is parsed.
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends: one line for the user
        raise UnsafeModelFileError(
            f"{onnx_path} is not a readable ONNX model ({type(error).__name__}); re-export or re-download it."
        ) from None
    if not model.graph.node:
        raise UnsafeModelFileError(f"{onnx_path} holds an empty ONNX graph; re-export or re-download it.")
    tensors = list(model.graph.initializer)
    for node in model.graph.node:  # Constant nodes may carry external tensors too
        tensors += [attr.t for attr in node.attribute if attr.type == onnx.AttributeProto.TENSOR]
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        external_data_path(location, onnx_path.parent, f"{onnx_path.name} tensor `{tensor.name}`")


def create_session(
    onnx_path: str | os.PathLike,
    providers: Sequence[str | tuple[str, dict]] = ("CPUExecutionProvider",),
    session_options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """One onnxruntime session for `onnx_path` (checked with `check_onnx_file` first).

    If the file carries backend variants, the one targeting `providers[0]` runs (logged); when
    none does, or onnxruntime lacks its ops or refuses it, the main graph runs (with a warning).
    """
    check_onnx_file(onnx_path)
    available = ort.get_available_providers()
    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    missing = [name for name in names if name not in available]
    if missing:
        from optimum_onnx23.errors import InvalidArgumentError

        raise InvalidArgumentError(
            f"onnxruntime provider {', '.join(missing)} is not available in this install; use one of: {', '.join(available)}."
        )
    from optimum_onnx23.variants.runtime import create_session as create_variant_session

    try:
        session, _variant = create_variant_session(onnx_path, providers, session_options)
        return session
    except OptimumOnnx23Error:
        raise
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsafeModelFileError(f"onnxruntime could not load {onnx_path} ({first_line[:300]}); re-export it.") from None
