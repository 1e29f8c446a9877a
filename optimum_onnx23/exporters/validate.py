"""Check an exported decoder against PyTorch before anything is written to the user's folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..contract import LOGITS
from ..errors import ValidationError
from .tracing.signature import ExportSignature

__all__ = [
    "DEFAULT_TOLERANCES",
    "Reference",
    "Tolerance",
    "ValidationResult",
    "ValidationShape",
    "VALIDATION_SHAPES",
    "compare_with_references",
    "pytorch_references",
]

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


# None of these equals the trace shapes (tracing.signature: batch 2, seq 5, past 3): prefill with an empty past,
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
    signature: ExportSignature,
    dtype: torch.dtype,
    device: torch.device,
    shapes: tuple[ValidationShape, ...] = VALIDATION_SHAPES,
    seed: int = 0,
) -> list[Reference]:
    """Run PyTorch on each shape, with the signature's sample inputs at that size."""
    with_past = signature.with_past
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
        inputs = signature.sample_inputs(**sizes)
        with torch.no_grad():
            expected = wrapper(*(t.to(device) for t in inputs))
        query_mask = _to_numpy(inputs[1][:, shape.past_length : shape.past_length + shape.sequence_length]).astype(bool)
        references.append(
            Reference(shape.label, [_to_numpy(t) for t in inputs], [_to_numpy(t).astype(np.float32) for t in expected], query_mask)
        )
    return references


@dataclass(frozen=True)
class Tolerance:
    """An output passes when max |ONNX - PyTorch| <= atol + rtol * max |PyTorch|: the allowed error
    scales with the output's magnitude, as fp32 rounding over many layers does (real 30-layer
    checkpoints reach ~1e-3 on logits of magnitude ~40, i.e. ~3e-5 relative)."""

    atol: float
    rtol: float

    def allowed(self, reference_max: float) -> float:
        return self.atol + self.rtol * reference_max

    def __str__(self) -> str:
        return f"atol={self.atol:g}, rtol={self.rtol:g}"


# Half precisions round each op's output to 11 (fp16) or 8 (bf16) bits of mantissa.
DEFAULT_TOLERANCES = {"fp32": Tolerance(1e-4, 1e-4), "fp16": Tolerance(2e-2, 1e-2), "bf16": Tolerance(1e-1, 2e-2)}


@dataclass
class ValidationResult:
    """Per validation shape and output: the max |ONNX - PyTorch|, the error allowed, and for the
    logits how many positions pick a different top-1 token than PyTorch (beyond a near-tie)."""

    max_abs_diff: dict[str, dict[str, float]]
    allowed: dict[str, dict[str, float]]
    top1: dict[str, dict[str, int]]


def _top1_mismatches(ref: np.ndarray, got: np.ndarray, allowed: float) -> int:
    """Positions whose ONNX argmax is not PyTorch's, unless PyTorch scores both within `allowed`
    (a tie at this precision is not a disagreement). `ref`, `got`: [positions, vocab]."""
    ref = ref.reshape(-1, ref.shape[-1])
    got = got.reshape(-1, got.shape[-1])
    ref_top = ref.argmax(-1)
    got_top = got.argmax(-1)
    rows = np.arange(ref.shape[0])
    return int(((ref_top != got_top) & (ref[rows, ref_top] - ref[rows, got_top] > allowed)).sum())


def compare_with_references(session, references: list[Reference], tolerance: Tolerance) -> ValidationResult:
    """Run onnxruntime on the references' inputs; raise `ValidationError` when an output differs from
    PyTorch beyond `tolerance` or the logits pick another top-1 token; return what was measured.

    Logits at left-padding positions are excluded: no caller reads them and a fully masked
    attention row has no defined value (PyTorch and onnxruntime legitimately differ there).
    The I/O names come from the session, so every export form (static cache, last-position-only
    logits) is compared the same way.
    """
    names_in = [i.name for i in session.get_inputs()]
    names_out = [o.name for o in session.get_outputs()]
    result = ValidationResult({}, {}, {})
    failures = []
    feeds = [dict(zip(names_in, reference.feeds)) for reference in references]
    # a ChunkedSession runs all shapes through each chunk in turn (one session per chunk, not per shape)
    outputs = session.run_many(names_out, feeds) if hasattr(session, "run_many") else [session.run(names_out, f) for f in feeds]
    for reference, actual in zip(references, outputs):
        diffs, allowed = {}, {}
        for name, ref, got in zip(names_out, reference.expected, actual):
            got = got.astype(np.float32)
            if ref.shape != got.shape:
                raise ValidationError(f"Output `{name}` has shape {got.shape} in ONNX but {ref.shape} in PyTorch ({reference.label}).")
            if name == LOGITS:  # all positions, or the last one only (`--logits last`)
                mask = reference.query_mask[:, -ref.shape[1] :]
                ref, got = ref[mask], got[mask]
            diff = float(np.abs(ref - got).max()) if ref.size else 0.0
            if not np.isfinite(got).all():
                diff = float("inf")
            diffs[name] = diff
            allowed[name] = tolerance.allowed(float(np.abs(ref).max()) if ref.size else 0.0)
            failures += [f"{name} {diff:.2e} > {allowed[name]:.2e} at {reference.label}"] if not diff <= allowed[name] else []
            if name == LOGITS and ref.size:
                mismatches = _top1_mismatches(ref, got, allowed[name])
                result.top1[reference.label] = {"positions": int(ref.size // ref.shape[-1]), "mismatches": mismatches}
                if mismatches:
                    failures.append(f"top-1 token differs at {mismatches} of {ref.size // ref.shape[-1]} positions at {reference.label}")
        result.max_abs_diff[reference.label] = diffs
        result.allowed[reference.label] = allowed
        worst = max(diffs, key=lambda n: diffs[n] / max(allowed[n], 1e-30))
        logger.info("  %s: max |onnx - torch| = %.2e (%s; allowed %.2e)", reference.label, diffs[worst], worst, allowed[worst])
    if failures:
        shown = "; ".join(failures[:6]) + (f"; and {len(failures) - 6} more" if len(failures) > 6 else "")
        raise ValidationError(
            f"ONNX outputs differ from PyTorch beyond {tolerance} (allowed: atol + rtol * max|PyTorch|): {shown}. "
            "Nothing was written; raise --atol/--rtol if this precision is acceptable."
        )
    return result
