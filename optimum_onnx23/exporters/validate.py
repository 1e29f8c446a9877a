"""Check an exported decoder against PyTorch before anything is written to the user's folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ValidationError
from .configs import DecoderExportConfig

__all__ = ["Reference", "ValidationShape", "VALIDATION_SHAPES", "compare_with_references", "pytorch_references"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationShape:
    batch_size: int
    sequence_length: int
    past_length: int
    left_padding: int

    @property
    def label(self) -> str:
        return f"batch={self.batch_size},seq={self.sequence_length},past={self.past_length},pad={self.left_padding}"


# None of these equals the trace shapes (batch 2, seq 5, past 3): prefill with an empty past,
# one-token decode on a padded batch, and a chunked step with past and padding.
VALIDATION_SHAPES = (
    ValidationShape(1, 7, 0, 0),
    ValidationShape(3, 1, 9, 2),
    ValidationShape(2, 4, 6, 3),
)


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()


@dataclass
class Reference:
    """PyTorch's outputs for one validation shape, kept as numpy so the model can be freed."""

    label: str
    feeds: list[np.ndarray]  # in the graph's input order
    expected: list[np.ndarray]  # in the graph's output order
    query_mask: np.ndarray  # [batch, sequence]: False at left padding


def pytorch_references(
    wrapper: torch.nn.Module,
    export_config: DecoderExportConfig,
    config,
    with_past: bool,
    dtype: torch.dtype,
    device: torch.device,
    shapes=VALIDATION_SHAPES,
    seed: int = 0,
    max_cache_len: int | None = None,
) -> list[Reference]:
    """Run PyTorch on each shape. `max_cache_len` selects the static-cache inputs."""
    from .static_cache import static_dummy_inputs

    generator = torch.Generator().manual_seed(seed)
    references = []
    for shape in shapes:
        if not with_past and shape.past_length:
            shape = ValidationShape(shape.batch_size, shape.sequence_length + shape.past_length, 0, shape.left_padding)
        sizes = dict(
            batch_size=shape.batch_size,
            sequence_length=shape.sequence_length,
            past_length=shape.past_length,
            left_padding=shape.left_padding,
            dtype=dtype,
            generator=generator,
        )
        if max_cache_len is None:
            inputs = export_config.dummy_inputs(config, with_past, **sizes)
        else:
            inputs = static_dummy_inputs(export_config, config, max_cache_len, **sizes)
        with torch.no_grad():
            expected = wrapper(*(t.to(device) for t in inputs))
        query_mask = _to_numpy(inputs[1][:, shape.past_length : shape.past_length + shape.sequence_length]).astype(bool)
        references.append(
            Reference(shape.label, [_to_numpy(t) for t in inputs], [_to_numpy(t).astype(np.float32) for t in expected], query_mask)
        )
    return references


def compare_with_references(session, references: list[Reference], atol: float) -> dict[str, dict[str, float]]:
    """Run onnxruntime on the references' inputs; return per-shape, per-output max |diff|, raise past `atol`.

    Logits at left-padding positions are excluded: no caller reads them and a fully masked
    attention row has no defined value (PyTorch and onnxruntime legitimately differ there).
    The I/O names come from the session, so every export form (static cache, last-position-only
    logits) is compared the same way.
    """
    names_in = [i.name for i in session.get_inputs()]
    names_out = [o.name for o in session.get_outputs()]
    results: dict[str, dict[str, float]] = {}
    failures = []
    for reference in references:
        actual = session.run(names_out, dict(zip(names_in, reference.feeds)))
        diffs = {}
        for name, ref, got in zip(names_out, reference.expected, actual):
            got = got.astype(np.float32)
            if ref.shape != got.shape:
                raise ValidationError(f"Output `{name}` has shape {got.shape} in ONNX but {ref.shape} in PyTorch ({reference.label}).")
            if name == "logits":  # all positions, or the last one only (`--logits last`)
                mask = reference.query_mask[:, -ref.shape[1] :]
                ref, got = ref[mask], got[mask]
            diff = float(np.abs(ref - got).max()) if ref.size else 0.0
            if not np.isfinite(got).all():
                diff = float("inf")
            diffs[name] = diff
        results[reference.label] = diffs
        worst = max(diffs, key=diffs.get)
        logger.info("  %s: max |onnx - torch| = %.2e (%s)", reference.label, diffs[worst], worst)
        failures += [f"{name} {d:.2e} at {reference.label}" for name, d in diffs.items() if not d <= atol]
    if failures:
        shown = "; ".join(failures[:6]) + (f"; and {len(failures) - 6} more" if len(failures) > 6 else "")
        raise ValidationError(
            f"ONNX outputs differ from PyTorch beyond atol={atol:g}: {shown}. "
            "Nothing was written; raise --atol if this precision is acceptable."
        )
    return results
