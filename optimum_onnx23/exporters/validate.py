"""Check an exported decoder against PyTorch before anything is written to the user's folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ValidationError
from .configs import DecoderExportConfig

__all__ = ["ValidationShape", "VALIDATION_SHAPES", "validate_against_pytorch"]

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


def validate_against_pytorch(
    session,
    wrapper: torch.nn.Module,
    export_config: DecoderExportConfig,
    config,
    with_past: bool,
    atol: float,
    dtype: torch.dtype,
    device: torch.device,
    shapes=VALIDATION_SHAPES,
    seed: int = 0,
    max_cache_len: int | None = None,
) -> dict[str, dict[str, float]]:
    """Run both on each shape; return per-shape, per-output max |diff|, raise past `atol`.

    Logits at left-padding positions are excluded: no caller reads them and a fully masked
    attention row has no defined value (PyTorch and onnxruntime legitimately differ there).
    Works for every export form: the I/O names come from the session, `max_cache_len` selects
    the static-cache inputs, and last-position-only logits are compared where they exist.
    """
    from .static_cache import static_dummy_inputs

    names_in = [i.name for i in session.get_inputs()]
    names_out = [o.name for o in session.get_outputs()]
    generator = torch.Generator().manual_seed(seed)
    results: dict[str, dict[str, float]] = {}
    failures = []
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
        actual = session.run(names_out, {n: _to_numpy(t) for n, t in zip(names_in, inputs)})
        query_mask = _to_numpy(inputs[1][:, shape.past_length : shape.past_length + shape.sequence_length]).astype(bool)
        diffs = {}
        for name, ref, got in zip(names_out, expected, actual):
            ref = _to_numpy(ref).astype(np.float32)
            got = got.astype(np.float32)
            if ref.shape != got.shape:
                raise ValidationError(f"Output `{name}` has shape {got.shape} in ONNX but {ref.shape} in PyTorch ({shape.label}).")
            if name == "logits":  # all positions, or the last one only (`--logits last`)
                mask = query_mask[:, -ref.shape[1] :]
                ref, got = ref[mask], got[mask]
            diff = float(np.abs(ref - got).max()) if ref.size else 0.0
            if not np.isfinite(got).all():
                diff = float("inf")
            diffs[name] = diff
        results[shape.label] = diffs
        worst = max(diffs, key=diffs.get)
        logger.info("  %s: max |onnx - torch| = %.2e (%s)", shape.label, diffs[worst], worst)
        failures += [f"{name} {d:.2e} at {shape.label}" for name, d in diffs.items() if not d <= atol]
    if failures:
        shown = "; ".join(failures[:6]) + (f"; and {len(failures) - 6} more" if len(failures) > 6 else "")
        raise ValidationError(
            f"ONNX outputs differ from PyTorch beyond atol={atol:g}: {shown}. "
            "Nothing was written; raise --atol if this precision is acceptable."
        )
    return results
