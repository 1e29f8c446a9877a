"""What `export_report.json` promises beyond the happy path: a fusion-gap warning when a fusion
count falls short of the architecture's (a rule disabled on purpose), and validation on shapes that
differ from the ones torch.export traced (recorded from the trace call itself)."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch

from optimum_onnx23 import fusions

GAP = "Fusion gap: 0 RotaryEmbedding nodes where the architecture has 4."


@pytest.fixture(scope="module")
def gapped_export(tmp_path_factory, tiny_model_dir):
    """The tiny Llama exported in this process with onnxscript's RotaryEmbedding rule disabled,
    recording the input shapes of every torch.onnx.export call. Returns (report, traced, log)."""
    from optimum_onnx23.exporters import export

    traced: list[list[tuple[int, ...]]] = []
    original_export = torch.onnx.export

    def recording_export(model, args, *rest, **kwargs):
        traced.append([tuple(t.shape) for t in args])
        return original_export(model, args, *rest, **kwargs)

    steps = tuple((who, name, (lambda model: 0) if name == "RotaryEmbedding" else step) for who, name, step in fusions.FUSION_STEPS)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("optimum_onnx23")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.onnx, "export", recording_export)
        patch.setattr(fusions, "FUSION_STEPS", steps)
        logger.addHandler(handler)
        try:
            report = export(tiny_model_dir("llama"), tmp_path_factory.mktemp("gap") / "out")
        finally:
            logger.removeHandler(handler)
    return report, traced, [r.getMessage() for r in records if r.levelno >= logging.WARNING]


def test_fusion_gap_is_reported_when_a_rule_falls_short(gapped_export):
    report, _, warnings = gapped_export
    assert report.expected_fusions == {"Attention": 2, "RMSNormalization": 5, "RotaryEmbedding": 4}
    assert report.fusions["op_counts"]["RotaryEmbedding"] == 0 and report.fusions["applied"]["onnxscript"]["RotaryEmbedding"] == 0
    assert report.warnings == [GAP]  # only the disabled rule's op; the others fused in full
    assert GAP in warnings  # logged as a warning too, not only written to the file
    # An unfused graph is still the same computation: it was validated.
    assert 0 < report.max_abs_diff <= 1e-4


def _label_shape(label: str) -> tuple[int, int, int, int]:
    match = re.fullmatch(r"batch=(\d+),seq=(\d+),past=(\d+),pad=(\d+)", label)
    assert match, label
    return tuple(int(x) for x in match.groups())


def test_validation_shapes_differ_from_the_traced_ones(gapped_export):
    report, traced, _ = gapped_export
    assert len(traced) == 1  # a 2-layer model is traced whole
    ids, mask, positions, *pasts = traced[0]
    trace = (ids[0], ids[1], pasts[0][2])  # batch, new tokens, past length
    assert len(pasts) == 4 and mask == (ids[0], ids[1] + pasts[0][2]) and positions == ids
    shapes = [_label_shape(label) for label in report.validation]
    assert len(shapes) == 3
    for batch, seq, past, pad in shapes:
        assert (batch, seq, past) != trace, f"validated on the traced shape {trace}"
        assert (batch, seq, past) != (trace[0], trace[1], 0)
    # The three README names: prefill on an empty cache, padded one-token decode, chunked step
    # with past and padding.
    assert any(past == 0 and seq > 1 for _, seq, past, _ in shapes)
    assert any(seq == 1 and past > 0 and pad > 0 and batch > 1 for batch, seq, past, pad in shapes)
    assert any(seq > 1 and past > 0 and pad > 0 for _, seq, past, pad in shapes)
    for diffs in report.validation.values():
        assert sorted(diffs) == sorted(["logits"] + [f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value")])
        assert all(np.isfinite(d) and d <= 1e-4 for d in diffs.values())
