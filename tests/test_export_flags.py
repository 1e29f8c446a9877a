"""The export flags README promises, each against PyTorch on the same weights: `--no-fusions`,
`--logits last` with the dynamic cache, `--dtype fp16` / `bf16` (logits in that dtype, with a
tolerance of that dtype), `--device`, and `--trust-remote-code` (refused without the flag)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import run_optimum_cli
from test_export import op_counts
from tiny_models import BUNDLED
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from optimum_onnx23.pipelines import ORTModelForCausalLM

PROMPTS = ["ONNX is", "The tiny model reads a much longer prompt than the others", "Hi"]
# Unseen by the exporter (trace: batch 2, seq 5, past 3; validation: see exporters/validate.py):
# a long prefill, and a padded 2-token step on a long past.
SHAPES = ((1, 13, 0, 0, 1), (2, 2, 11, 4, 2))
# Machine epsilon of each dtype: the outputs of a 2-layer model in that dtype differ from the same
# computation in another order by a few units of it, relative to the largest value (measured on
# SHAPES: fp16 1.4e-3 = 1.5 eps, bf16 2.2e-2 = 2.8 eps; the bound is 4 eps).
EPS = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def _random_step(config, batch, seq, past, pad, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    mask[-1, :pad] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
    pasts = [torch.randn(batch, kv_heads, past, head_dim, generator=g).to(dtype) for _ in range(2 * config.num_hidden_layers)]
    return ids, mask, pos, pasts


def pytorch_step(model, ids, mask, pos, pasts) -> dict[str, np.ndarray]:
    cache = DynamicCache()
    for i in range(model.config.num_hidden_layers):
        cache.update(pasts[2 * i].clone(), pasts[2 * i + 1].clone(), i)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
    expected = {"logits": out.logits.float().numpy()}
    for i, layer in enumerate(out.past_key_values.layers[: model.config.num_hidden_layers]):
        expected[f"present.{i}.key"] = layer.keys.float().numpy()
        expected[f"present.{i}.value"] = layer.values.float().numpy()
    return expected


def feeds_of(ids, mask, pos, pasts, numpy_dtype) -> dict[str, np.ndarray]:
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy()}
    for i in range(len(pasts) // 2):
        feeds[f"past_key_values.{i}.key"] = pasts[2 * i].float().numpy().astype(numpy_dtype)
        feeds[f"past_key_values.{i}.value"] = pasts[2 * i + 1].float().numpy().astype(numpy_dtype)
    return feeds


def _ort_run(folder, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return {name: value.astype(np.float32) for name, value in zip(names, session.run(names, feeds))}


def assert_matches_pytorch(run, folder, source, dtype=torch.float32, numpy_dtype=np.float32, last_only=False):
    """`run(folder, feeds)` (an ONNX runtime) against transformers in `dtype` on SHAPES: every output
    within 4 machine epsilons of the largest reference value (fp32: 1e-4 absolute, as the exporter)."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).eval()
    for batch, seq, past, pad, seed in SHAPES:
        ids, mask, pos, pasts = _random_step(model.config, batch, seq, past, pad, seed, dtype)
        expected = pytorch_step(model, ids, mask, pos, pasts)
        actual = run(folder, feeds_of(ids, mask, pos, pasts, numpy_dtype))
        assert sorted(actual) == sorted(expected)
        valid = mask[:, past:].bool().numpy()
        if last_only:
            expected["logits"] = expected["logits"][:, -1:]
            valid = valid[:, -1:]
        for name, ref in expected.items():
            got = actual[name]
            assert got.shape == ref.shape, f"{name}: {got.shape} != {ref.shape}"
            if name == "logits":
                ref, got = ref[valid], got[valid]
                assert np.array_equal(got.argmax(-1), ref.argmax(-1)), f"{name}: argmax differs at b={batch} s={seq} p={past}"
            tolerance = 1e-4 if dtype == torch.float32 else 4 * EPS[dtype] * np.abs(ref).max()
            diff = np.abs(got - ref).max()
            assert diff <= tolerance, f"{dtype} {name} b={batch} s={seq} p={past}: max |diff| {diff:.3g} > {tolerance:.3g}"


def test_no_fusions_keeps_the_decomposed_graph_and_matches_pytorch(exported_dir, tiny_model_dir):
    folder = exported_dir("llama", "--no-fusions")
    counts = op_counts(folder / "model.onnx")
    # torch.export itself emits Attention for SDPA at opset 23; everything else stays decomposed,
    # transformers' repeat_kv copies (Expand) included.
    assert (counts["Attention"], counts["RMSNormalization"], counts["RotaryEmbedding"]) == (2, 0, 0)
    assert counts["ReduceMean"] == 5 and counts["Cos"] == counts["Sin"] == 1 and counts["Expand"] > 0
    report = json.loads((folder / "export_report.json").read_text())
    assert report["fusions"]["skipped"] == "disabled by --no-fusions" and report["fusions"]["applied"] == {}
    assert report["expected_fusions"] == {} and report["warnings"] == []  # no fusion-gap warning for a choice
    assert_matches_pytorch(_ort_run, folder, tiny_model_dir("llama"))


def test_logits_last_with_the_dynamic_cache(exported_dir, tiny_model_dir):
    folder = exported_dir("llama", "--logits", "last")
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    logits = next(o for o in model.graph.output if o.name == "logits")
    assert logits.type.tensor_type.shape.dim[1].dim_value == 1
    assert "write_indices" not in [i.name for i in model.graph.input]
    assert {p.key: p.value for p in model.metadata_props}.get("optimum_onnx23.logits") == "last"
    report = json.loads((folder / "export_report.json").read_text())
    assert (report["logits"], report["cache"]) == ("last", "dynamic")
    assert_matches_pytorch(_ort_run, folder, tiny_model_dir("llama"), last_only=True)

    ours = ORTModelForCausalLM.from_pretrained(folder)
    assert ours.io.logits_last_only and not ours.io.static
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    for kwargs in (dict(max_new_tokens=10), dict(max_new_tokens=8, num_beams=4, num_return_sequences=2)):
        assert torch.equal(ours.generate(**inputs, **kwargs), reference.generate(**inputs, do_sample=False, **kwargs)), kwargs


def test_fp16_logits_match_pytorch_in_fp16(exported_dir, tiny_model_dir):
    folder = exported_dir("llama", "--dtype", "fp16")
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert model.graph.input[3].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    report = json.loads((folder / "export_report.json").read_text())
    assert report["atol"] == 2e-2 and 0 < report["max_abs_diff"] <= 2e-2  # validated in fp16, not skipped
    assert_matches_pytorch(_ort_run, folder, tiny_model_dir("llama"), torch.float16, np.float16)

    ours = ORTModelForCausalLM.from_pretrained(folder)
    assert ours.io.dtype == np.float16
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), dtype=torch.float16).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert torch.equal(ours.generate(**inputs, max_new_tokens=10), reference.generate(**inputs, max_new_tokens=10, do_sample=False))


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_export_fuses_like_fp32(exported_dir, dtype):
    """The rotary tables are computed in fp32 and cast after Cos/Sin (RotaryEmbeddingCast)."""
    report = json.loads((exported_dir("llama", "--dtype", dtype) / "export_report.json").read_text())
    assert report["fusions"]["op_counts"]["RotaryEmbedding"] == 4
    assert not [w for w in report["warnings"] if w.startswith("Fusion gap")]
    assert report["fusions"]["applied"]["optimum_onnx23"]["RotaryEmbeddingCast"] == 4


def _reference_evaluator_run(folder, feeds):
    """onnx's reference implementation: the one CPU runtime here with bf16 MatMul (onnxruntime's
    CPU provider has none), so the bf16 graph is checked numerically all the same."""
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(folder / "model.onnx"))
    names = [o.name for o in model.graph.output]
    outputs = ReferenceEvaluator(model).run(names, feeds)
    return {name: np.asarray(value).astype(np.float32) for name, value in zip(names, outputs)}


def test_bf16_logits_match_pytorch_in_bf16(exported_dir, tiny_model_dir):
    import ml_dtypes

    folder = exported_dir("llama", "--dtype", "bf16")
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert model.graph.input[3].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
    report = json.loads((folder / "export_report.json").read_text())
    assert report["validation"] == {}
    assert [w for w in report["warnings"] if w.startswith("Not validated against PyTorch")]
    assert_matches_pytorch(_reference_evaluator_run, folder, tiny_model_dir("llama"), torch.bfloat16, ml_dtypes.bfloat16)


def test_device_flag(tmp_path, capsys, tiny_model_dir):
    """`--device cuda` traces on the GPU and the graph matches PyTorch; where torch has no CUDA it is
    refused in one line that names the device, and nothing is written."""
    out = tmp_path / "out"
    code = run_optimum_cli("export", "onnx", "--dynamo", "--device", "cuda", "--model", tiny_model_dir("llama"), out)
    if torch.cuda.is_available():
        assert code == 0
        assert_matches_pytorch(_ort_run, out, tiny_model_dir("llama"))
        return
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: --device cuda: this torch build has no cuda device; pass --device cpu.", err[-3:]
    assert code == 1 and [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize(
    "device, message",
    [
        ("nope", "error: Unknown device `nope`; pass --device cpu, cuda or cuda:N."),
        ("meta", "error: --device meta holds no weights to trace or validate; pass --device cpu or cuda."),
    ],
)
def test_bad_device_is_one_line(device, message, tmp_path, capsys):
    code = run_optimum_cli("export", "onnx", "--dynamo", "--device", device, "--model", BUNDLED, tmp_path / "out")
    assert code == 1 and capsys.readouterr().err.strip().splitlines()[-1] == message
    assert [p.name for p in tmp_path.iterdir()] == []


REMOTE_CODE = '''
import pathlib
pathlib.Path(SENTINEL).write_text("imported")
from transformers import PretrainedConfig

class RemoteConfig(PretrainedConfig):
    model_type = "remote-decoder"
'''


def test_trust_remote_code_is_refused_without_the_flag(tmp_path, capsys, monkeypatch):
    model = tmp_path / "remote"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "remote-decoder",
        "architectures": ["RemoteForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_remote.RemoteConfig"},
    }))
    sentinel = tmp_path / "CODE_RAN"
    (model / "configuration_remote.py").write_text(REMOTE_CODE.replace("SENTINEL", repr(str(sentinel))))
    # transformers copies trusted code into its modules cache: keep that inside tmp_path
    monkeypatch.setattr("transformers.dynamic_module_utils.HF_MODULES_CACHE", str(tmp_path / "modules"))

    code = run_optimum_cli("export", "onnx", "--dynamo", "--model", model, tmp_path / "out")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and line.startswith("error:") and "custom code" in line and "--trust-remote-code" in line
    assert not sentinel.exists() and not (tmp_path / "out").exists()

    # With the flag the repository's code runs; this architecture then has no export entry.
    code = run_optimum_cli("export", "onnx", "--dynamo", "--trust-remote-code", "--model", model, tmp_path / "out")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert sentinel.read_text() == "imported"
    assert code == 1 and line.startswith("error: Architecture `remote-decoder` is not supported")
    assert not (tmp_path / "out").exists()
