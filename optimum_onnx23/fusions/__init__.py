"""Stage 2 of the data flow: fuse the exported graph into the standard opset-23 ops.

`fuse(model)` runs onnxscript's opset-23 fusions (RMSNormalization, RotaryEmbedding, GQA into
Attention) and optimum_onnx23's own rules where onnxscript's miss, and reports what each fused
together with the resulting count of every standard op in the graph. Rules for ops of a newer
opset (`OPSET_FUSION_STEPS`: SwiGLU at 28) run only when the graph imports that opset, and their
ops are then counted too.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Callable

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from .._onnxscript_compat import gqa_fusion, rms_normalization_fusion, rotary_embedding_fusion
from .rules import (
    SWIGLU_OPSET,
    fuse_alibi_attention,
    fuse_attention_3d,
    fuse_centered_rms_normalization,
    fuse_eager_attention,
    fuse_grouped_kv_attention,
    fuse_interleaved_rotary_embedding,
    fuse_partial_rotary_embedding,
    fuse_pow_rms_normalization,
    fuse_rotary_embedding_bshd,
    fuse_rotary_embedding_cast,
    fuse_softcap_attention,
    fuse_split_halves_rotary_embedding,
    fuse_swiglu,
)

__all__ = ["FusionReport", "fuse", "FUSION_STEPS", "OPSET_FUSION_STEPS", "STANDARD_OPS", "count_ops", "standard_ops"]

STANDARD_OPS = ("Attention", "RMSNormalization", "LayerNormalization", "RotaryEmbedding")
MIN_FUSION_OPSET = 23

# (who, name, function) in the order they must run: a centered RMSNormalization (hand-written
# LayerNorm) exists only once onnxscript's RMS rule ran; partial rotary folds the RotaryEmbedding
# nodes both rotary rules write; our softcap, ALiBi and eager-attention rules must see the graph before onnxscript's GQA rule
# folds cache concatenation into Attention nodes; ours drops the repeat_kv expansion wherever that
# rule did not apply, then moves the cache concatenation and the head reshapes inside Attention
# (3-D inputs), which needs the grouped form and whole-head RotaryEmbedding inputs.
FUSION_STEPS: tuple[tuple[str, str, Callable[[ir.Model], int]], ...] = (
    ("onnxscript", "RMSNormalization", rms_normalization_fusion.fuse_rms_normalization),
    ("optimum_onnx23", "PowRmsNormalization", fuse_pow_rms_normalization),
    ("optimum_onnx23", "CenteredRmsNormalization", fuse_centered_rms_normalization),
    ("onnxscript", "RotaryEmbedding", rotary_embedding_fusion.fuse_rotary_embedding),
    ("optimum_onnx23", "RotaryEmbeddingCast", fuse_rotary_embedding_cast),
    ("optimum_onnx23", "RotaryEmbeddingBSHD", fuse_rotary_embedding_bshd),
    ("optimum_onnx23", "SplitHalvesRotaryEmbedding", fuse_split_halves_rotary_embedding),
    ("optimum_onnx23", "InterleavedRotaryEmbedding", fuse_interleaved_rotary_embedding),
    ("optimum_onnx23", "PartialRotaryEmbedding", fuse_partial_rotary_embedding),
    ("optimum_onnx23", "SoftcapAttention", fuse_softcap_attention),
    ("optimum_onnx23", "AlibiAttention", fuse_alibi_attention),
    ("optimum_onnx23", "EagerAttention", fuse_eager_attention),
    ("onnxscript", "GQA", gqa_fusion.fuse_gqa),
    ("optimum_onnx23", "GroupedKvAttention", fuse_grouped_kv_attention),
    ("optimum_onnx23", "Attention3D", fuse_attention_3d),
)

# (min opset, who, name, function, op written): after FUSION_STEPS, where the graph's opset has the op.
OPSET_FUSION_STEPS: tuple[tuple[int, str, str, Callable[[ir.Model], int], str], ...] = (
    (SWIGLU_OPSET, "optimum_onnx23", "SwiGLU", fuse_swiglu, "SwiGLU"),
)


def standard_ops(opset: int) -> tuple[str, ...]:
    """The fused ops counted in a report at `opset`: STANDARD_OPS, and the newer ones it defines."""
    return STANDARD_OPS + tuple(op for since, *_, op in OPSET_FUSION_STEPS if opset >= since)


@dataclass
class FusionReport:
    opset: int
    applied: dict[str, dict[str, int]] = field(default_factory=dict)  # who -> rule -> matches
    op_counts: dict[str, int] = field(default_factory=dict)  # standard op -> nodes after fusion
    skipped_reason: str | None = None

    def to_dict(self) -> dict:
        return {"opset": self.opset, "applied": self.applied, "op_counts": self.op_counts, "skipped": self.skipped_reason}


def count_ops(model: ir.Model) -> collections.Counter:
    """Op histogram of the main graph, `domain::op` for non-default domains."""
    return collections.Counter(
        (f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type)
        for node in model.graph.all_nodes()
    )


def fuse(model: ir.Model) -> FusionReport:
    """Fuse in place and drop the nodes fusions left unused.

    A no-op (with the reason recorded) below opset 23, where the ops do not exist.
    """
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    report = FusionReport(opset=opset)
    if opset < MIN_FUSION_OPSET:
        report.skipped_reason = f"opset {opset} < {MIN_FUSION_OPSET}: Attention, RMSNormalization and RotaryEmbedding do not exist"
    else:
        for who, name, step in FUSION_STEPS:
            report.applied.setdefault(who, {})[name] = step(model)
        for since, who, name, step, _ in OPSET_FUSION_STEPS:
            if opset >= since:
                report.applied.setdefault(who, {})[name] = step(model)
        # Rewrites leave the replaced pattern's shape computations behind (e.g. repeat_kv's targets).
        common_passes.RemoveUnusedNodesPass()(model)
    counts = count_ops(model)
    report.op_counts = {op: counts.get(op, 0) for op in standard_ops(opset)}
    return report
