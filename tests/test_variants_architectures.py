"""Every built-in variant on architectures whose graphs differ where the producers look: GPT-2
(Gemm linears, LayerNorm, no GQA), Gemma-2 (softcapped attention), Phi-3 (fused QKV), Qwen-3 (QK
norms), SmolLM-3 (layers without RoPE), BLOOM (ALiBi bias in the attention mask, fused QKV with
bias), MiniCPM3 (MLA: latent cache, low-rank projections). Uses the shared default exports.

The quantized variants are judged against an independent reading of their weights
(`quantized_reference`): every main-graph linear is replaced, each dequantized weight lies within
half a rounding step of the main graph's (int4: except what its scale search clips), and the variant's logits and KV outputs match the main graph
run on those dequantized weights up to the kernels' activation quantization. A wrong rewrite (a
swapped scale, a transposed weight) moves most elements by several steps: `test_broken_variants_are_caught` builds
such variants and shows the check fails on them."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from architecture_records import record
from quantized_reference import dequantize_variant, with_weights

from optimum_onnx23.variants import attach_builtin_variants, select_variant
from optimum_onnx23.variants.folder import load_model
from optimum_onnx23.variants.producers import produce
from optimum_onnx23.variants.producers._linear import find_linears, group_linears

pytestmark = pytest.mark.usefixtures("quiet_onnxruntime")
ALL = ["ort-cpu-int4", "ort-cpu-int8", "ort-cpu", "backend-context"]
QUANTIZED_OP = {"ort-cpu-int4": "MatMulNBits", "ort-cpu-int8": "MatMulNBits"}
# The tiny test models scale their weights by 4 (so greedy choices are not ties), which makes
# quantization error larger than on real checkpoints: against the fp32 main graph these bounds
# are loose (real-checkpoint quality is judged by perplexity and token agreement elsewhere).
# int4 on MiniCPM3 (two chained low-rank linears for q and for kv) measured 0.54 with the first
# calibration texts and 0.735 with the broader ones of issue 25 (the calibrated scale search moves
# with its statistics): its weights pass check_quantized_variant (rounding steps, activation error),
# so its end-to-end bound is what chaining costs on these flat logits; the other families stay at 0.6.
MAX_RELATIVE = {"ort-cpu-int4": 0.6, "ort-cpu-int8": 0.1, "ort-cpu": 1e-5, "backend-context": 0.0}
MAX_RELATIVE_FAMILY = {("minicpm3", "ort-cpu-int4"): 0.85}
# |dequantized - main weight| in rounding steps. int8 (absmax / 127) rounds to nearest: half a step.
# int4 searches each block's scale in [0.80, 1.10] of its range and may clip the block's extremes:
# at most (1 / 0.80 - 1) * 15 = 3.75 steps, while every element it does not clip is rounded to
# nearest, so few elements sit beyond half a step. A swapped scale
# or a transposed weight moves most elements by several steps.
MAX_STEPS = {"ort-cpu-int4": 3.75 + 1e-3, "ort-cpu-int8": 0.5 + 1e-3}
MAX_SHARE_BEYOND_HALF_STEP = {"ort-cpu-int4": 0.10, "ort-cpu-int8": 0.0}
# Variant vs the main graph on its dequantized weights, relative to the largest value: what is left
# is the kernels' activation quantization (accuracy_level 4: int8 blocks of the activations), the
# same for both weight widths: measured on the logits, phi3 / qwen3 / gemma2 0.014-0.024 for both,
# minicpm3 0.051 (int4) and 0.046 (int8). A wrong weight layout gives errors of order 1.
MAX_ACTIVATION_ERROR = {"ort-cpu-int4": 0.08, "ort-cpu-int8": 0.08}
IDS = np.array([[1, 17, 43, 99, 250, 7, 8, 12, 5, 77, 300, 41, 9, 10, 11, 12]], np.int64)


def _run(path, ids=IDS):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    feeds = {k: v for k, v in feeds.items() if k in names}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    return session.run(None, feeds)


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def check_quantized_variant(folder, selected: ir.Model, name: str) -> None:
    """Raise AssertionError unless `selected` (variant `name` selected from the model in `folder`,
    saved there as scratch files) quantizes every linear of the main graph faithfully."""
    main = load_model(folder / "model.onnx")
    linears = {linear.weight.name: linear for linear in find_linears(main.graph)}
    dequantized = dequantize_variant(main, selected)
    assert sorted(dequantized) == sorted(linears), "the variant does not replace every linear"
    for weight, deq in dequantized.items():
        diff = np.abs(deq.weight - linears[weight].weight_kn())
        steps = np.where(deq.step > 0, diff / np.where(deq.step > 0, deq.step, 1), np.where(diff > 0, np.inf, 0))
        assert steps.max() <= MAX_STEPS[name], f"{name}: {weight} is {steps.max():.3g} rounding steps from the main graph's weight"
        share = float((steps > 0.5 + 1e-3).mean())
        assert share <= MAX_SHARE_BEYOND_HALF_STEP[name], (
            f"{name}: {share:.1%} of {weight} is more than half a rounding step from the main graph's weight"
        )

    ir.save(selected, folder / f"check-{name}.onnx")
    reference = with_weights(load_model(folder / "model.onnx"), {w: d.weight for w, d in dequantized.items()})
    ir.save(reference, folder / f"check-{name}-dequantized.onnx", external_data=f"check-{name}-dequantized.onnx_data")
    got, want = _run(folder / f"check-{name}.onnx"), _run(folder / f"check-{name}-dequantized.onnx")
    for i, (have, expected) in enumerate(zip(got, want)):  # logits, then every present key and value
        error = _relative(have, expected)
        assert error <= MAX_ACTIVATION_ERROR[name], f"{name}: output {i} is {error:.3g} off the dequantized main graph"
    if name in QUANTIZED_OP:  # float activations: the variant is exactly the dequantized main graph
        for node in selected.graph:
            if node.op_type == "MatMulNBits":
                node.attributes["accuracy_level"] = ir.AttrInt64("accuracy_level", 0)
        ir.save(selected, folder / f"check-{name}-float.onnx")
        for i, (have, expected) in enumerate(zip(_run(folder / f"check-{name}-float.onnx"), want)):
            assert _relative(have, expected) <= 1e-5, f"{name} with float activations: output {i} differs"


@pytest.mark.parametrize("model_type", ["gpt2", "gemma2", "phi3", "qwen3", "smollm3", "bloom", "minicpm3"])
def test_builtin_variants_on_architecture(exported_dir, tmp_path, model_type):
    base = exported_dir(model_type)
    folder = tmp_path / model_type
    shutil.copytree(base, folder)
    report = attach_builtin_variants(folder, ALL)
    if model_type in ("gpt2", "bloom"):  # LayerNorm and plain multi-head attention: nothing for ort-cpu to rewrite
        assert list(report["skipped"]) == ["ort-cpu"] and "nothing to rewrite" in report["skipped"]["ort-cpu"]
    else:
        assert not report["skipped"]
    onnx.checker.check_model(str(folder / "model.onnx"), full_check=True)
    main = _run(base / "model.onnx")
    assert all(np.array_equal(a, b) for a, b in zip(main, _run(folder / "model.onnx")))
    linears = find_linears(load_model(base / "model.onnx").graph)
    for name in report["variants"]:
        selected = select_variant(load_model(folder / "model.onnx"), variant=name)
        if name in QUANTIZED_OP:
            # one MatMulNBits per linear layer, the tied lm_head included; int4 packs those that read one input
            expected = len(group_linears(linears, pack=name == "ort-cpu-int4"))
            assert [n.op_type for n in selected.graph].count(QUANTIZED_OP[name]) == expected
        path = folder / f"selected-{name}.onnx"
        ir.save(selected, path)
        got = _run(path)
        assert [g.shape for g in got] == [m.shape for m in main]
        if name in QUANTIZED_OP:  # judged by its weights first; then the loose end-to-end bound
            check_quantized_variant(folder, selected, name)
        relative = _relative(got[0], main[0])
        bound = MAX_RELATIVE_FAMILY.get((model_type, name), MAX_RELATIVE[name])
        assert relative <= bound, f"{model_type} {name}: relative logits error {relative:.3g}"
        if name not in QUANTIZED_OP:  # fp32 rewrites: the KV outputs are the main graph's too
            for want, have in zip(main[1:], got[1:]):
                assert _relative(have, want) <= max(MAX_RELATIVE[name], 1e-6)
    record(model_type, "variants", applied=sorted(report["variants"]))


def _swap_scales(spec) -> str:
    """Swap the scales of the first two same-shaped quantized matmuls (a producer mixing up its
    linears' scales)."""
    scales = [key for key in spec.owned if key.endswith(".scales")]
    first = scales[0]
    second = next(key for key in scales[1:] if spec.owned[key].shape == spec.owned[first].shape)
    spec.owned[first], spec.owned[second] = spec.owned[second], spec.owned[first]
    return f"{first} <-> {second}"


def _transposed_weight_spec(name: str, folder):
    """The variant produced from a main graph whose first square weight is transposed (a producer
    reading [N, K] as [K, N]), then attached to the untouched main graph."""
    model = load_model(folder / "model.onnx")
    linear = next(linear for linear in find_linears(model.graph) if linear.weight.shape[0] == linear.weight.shape[1])
    transposed = np.ascontiguousarray(linear.weight.const_value.numpy().T)
    linear.weight.const_value = ir.tensor(transposed, name=linear.weight.name)
    return produce(name, model)


@pytest.mark.parametrize("name", sorted(QUANTIZED_OP))
@pytest.mark.parametrize("bug", ["swapped scale", "transposed weight"])
def test_broken_variants_are_caught(exported_dir, tmp_path, name, bug):
    folder = tmp_path / "llama"
    shutil.copytree(exported_dir("llama"), folder)
    model = load_model(folder / "model.onnx")
    if bug == "swapped scale":
        spec = produce(name, model)
        _swap_scales(spec)
    else:
        spec = _transposed_weight_spec(name, folder)
    spec.attach_to(model)
    with pytest.raises(AssertionError, match="rounding step"):
        check_quantized_variant(folder, select_variant(model, variant=name), name)
    # Control: the same variant produced faithfully passes.
    model = load_model(folder / "model.onnx")
    produce(name, model).attach_to(model)
    check_quantized_variant(folder, select_variant(model, variant=name), name)
