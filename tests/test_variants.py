"""Backend variants on the bundled tiny Llama: attach leaves the main graph alone, select matches it,
strip restores the bytes, malformed variants get one-line errors or a warned fallback."""

from __future__ import annotations

import collections
import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from optimum_onnx23.errors import InvalidArgumentError, UnsafeModelFileError, VariantFormatError, VariantNotFoundError
from optimum_onnx23.variants import (
    attach_builtin_variants,
    attach_variant,
    list_variants,
    select_for_providers,
    select_variant,
    strip_variants,
)
from optimum_onnx23.variants.folder import load_model, save_model, strip_folder
from optimum_onnx23.variants.producers._linear import find_linears, group_linears
from optimum_onnx23.variants.runtime import create_session

pytestmark = pytest.mark.usefixtures("quiet_onnxruntime")
CPU = ["CPUExecutionProvider"]
ALL = ["ort-cpu-int4", "ort-cpu-int8", "ort-cpu", "backend-context"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_folder(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def feeds_for(session: ort.InferenceSession, ids: np.ndarray) -> dict:
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None].repeat(ids.shape[0], 0)}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):
            feeds[i.name] = np.zeros((ids.shape[0], i.shape[1], 0, i.shape[3]), np.float32)
    return {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}}


def run(path: Path | str, ids: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=CPU)
    return session.run(None, feeds_for(session, ids))


IDS = np.array([[1, 17, 43, 99, 250, 7, 8, 12], [1, 5, 6, 7, 300, 301, 2, 9]], np.int64)


@pytest.fixture(scope="module")
def base(exported_dir) -> Path:
    return exported_dir("bundled")


@pytest.fixture(scope="module")
def with_all(base, tmp_path_factory) -> tuple[Path, dict]:
    folder = copy_folder(base, tmp_path_factory.mktemp("variants") / "all")
    return folder, attach_builtin_variants(folder, ALL)


def test_attach_leaves_main_graph_bit_identical_and_checker_green(base, with_all):
    folder, report = with_all
    onnx.checker.check_model(str(folder / "model.onnx"), full_check=True)
    before = onnx.load(str(base / "model.onnx"), load_external_data=False)
    after = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert list(after.graph.node) == list(before.graph.node)
    assert list(after.graph.input) == list(before.graph.input) and list(after.graph.output) == list(before.graph.output)
    assert list(after.graph.initializer)[: len(before.graph.initializer)] == list(before.graph.initializer)
    for want, got in zip(run(base / "model.onnx", IDS), run(folder / "model.onnx", IDS)):
        assert np.array_equal(want, got)
    assert [i.name for i in list_variants(load_model(folder / "model.onnx"))] == ALL
    assert set(report["variants"]) == set(ALL)


@pytest.mark.parametrize("name", ["ort-cpu", "backend-context"])
def test_select_fp32_variants_match_main_graph(base, with_all, name, tmp_path):
    folder, _ = with_all
    selected = select_variant(load_model(folder / "model.onnx"), variant=name)
    assert not [n for n in selected.graph.initializers if n.startswith("variants/")]
    ir.save(selected, folder / f"test-{name}.onnx")  # same folder: references model.onnx_data
    onnx.checker.check_model(str(folder / f"test-{name}.onnx"), full_check=True)
    for want, got in zip(run(base / "model.onnx", IDS), run(folder / f"test-{name}.onnx", IDS)):
        assert np.abs(want - got).max() <= 1e-4
    ops = [n.op_type for n in selected.graph]
    if name == "ort-cpu":
        assert ops.count("SkipSimplifiedLayerNormalization") == 4  # 2 layers x 2 residual norms
        main_ops = [n.op_type for n in load_model(base / "model.onnx").graph]
        # The main graph already reads the cache inside 3-D Attention (fusions.attention_3d): the
        # variant's only remaining rewrite is the residual norms.
        assert ops.count("RMSNormalization") == main_ops.count("RMSNormalization") - 4
        others = lambda names: collections.Counter(op for op in names if op not in ("SkipSimplifiedLayerNormalization", "RMSNormalization", "Add"))  # noqa: E731
        assert others(ops) == others(main_ops)
    else:
        assert ops.count("BackendContext") == 1 and "RMSNormalization" in ops


def greedy_agreement(main: list[np.ndarray], variant: list[np.ndarray]) -> float:
    return float(np.mean(main[0].argmax(-1) == variant[0].argmax(-1)))


# Logits error relative to the largest main-graph logit, and the share of teacher-forced greedy
# tokens equal to the main graph's, on the bundled tiny Llama (random weights scaled up: flat
# logits, so these bounds catch broken rewrites; quality on real text is tests/test_real_variants.py).
# int8 measured 0.9%/69% smoothed in blocks of 16 (the default since issue 25), 0.8%/94% unsmoothed
# in blocks of 32: the same logits error, and 16 near-flat positions where one flip is 6 points;
# int8's top-1 on real text is asserted by the real tiers (>= 95%). int4: 5.8%/56%.
QUANTIZED = {"ort-cpu-int8": (0.03, 0.6), "ort-cpu-int4": (0.10, 0.5)}


@pytest.mark.parametrize("name", list(QUANTIZED))
def test_select_quantized_variants_within_documented_tolerance(base, with_all, name):
    folder, report = with_all
    model = load_model(folder / "model.onnx")
    linears = find_linears(model.graph)
    selected = select_variant(model, variant=name)
    ops = [n.op_type for n in selected.graph]
    groups = group_linears(linears, pack=name == "ort-cpu-int4")  # int4 packs linears that read one input
    packed = sum(len(group) > 1 for group in groups)
    assert ops.count("MatMulNBits") == len(groups)  # one per linear layer or packed group
    assert "MatMul" not in ops  # every linear, the tied lm_head included
    bits = {n.name: n.attributes["bits"].as_int() for n in selected.graph if n.op_type == "MatMulNBits"}
    lm_head = next(n for n in selected.graph if n.op_type == "MatMulNBits" and n.outputs[0].name == linears[-1].output.name)
    if name == "ort-cpu-int8":
        assert set(bits.values()) == {8}
    else:  # int4, except the groups whose measured sensitivity the budget required in int8 (as the report states)
        q = report["variants"][name]["quantization"]
        assert packed == 2 * 2 and bits[lm_head.name] == (8 if q["groups"]["lm_head"]["int8"] else 4)
        assert list(bits.values()).count(8) == q["int8_groups"] and list(bits.values()).count(4) == len(groups) - q["int8_groups"]
    # the ort-cpu rewrites ride along: 2 layers x 2 residual norms
    assert ops.count("SkipSimplifiedLayerNormalization") == 4
    # Attention is already 3-D in the main graph, not rewritten
    # each packed group: its Split and sizes; each smoothed group (int8's default): its Mul by 1/s
    smoothed = sum(n.op_type == "Mul" and n.outputs[0].name.endswith(".smoothed") for n in selected.graph)
    assert smoothed == (len(groups) if name == "ort-cpu-int8" else 0), smoothed
    assert report["variants"][name]["nodes"] == len(groups) + 2 * packed + 4 + smoothed
    path = folder / f"test-{name}.onnx"
    ir.save(selected, path)
    main, got = run(base / "model.onnx", IDS), run(path, IDS)
    relative = np.abs(main[0] - got[0]).max() / np.abs(main[0]).max()
    agreement = greedy_agreement(main, got)
    max_rel, min_agree = QUANTIZED[name]
    assert relative < max_rel and agreement >= min_agree, f"{name}: rel. logits error {relative:.3f}, greedy agreement {agreement:.0%}"


def test_quantized_variants_add_only_their_packed_weights_and_fp32_rewrites_under_one_percent(base, with_all):
    _, report = with_all
    total = sum((base / n).stat().st_size for n in ("model.onnx", "model.onnx_data"))
    for name in ("ort-cpu-int4", "ort-cpu-int8"):
        entry = report["variants"][name]
        # weights of 256 bytes or more go to model.onnx_data (64-byte aligned), smaller scales stay in model.onnx
        assert entry["data_bytes_added"] <= entry["owned_bytes"] + 64 * 3 * entry["nodes"]
        assert entry["data_bytes_added"] + entry["graph_bytes_added"] >= entry["owned_bytes"]
        assert entry["graph_bytes_added"] < 0.05 * total  # node and metadata protos, no weights
    for name in ("ort-cpu", "backend-context"):
        entry = report["variants"][name]
        assert entry["data_bytes_added"] == 0 and entry["graph_bytes_added"] < 0.01 * total
    int4, int8 = report["variants"]["ort-cpu-int4"], report["variants"]["ort-cpu-int8"]
    assert int4["owned_bytes"] < int8["owned_bytes"]


def test_strip_restores_original_bytes(base, tmp_path):
    folder = copy_folder(base, tmp_path / "m")
    original = {p.name: sha(p) for p in folder.glob("model.onnx*")}
    attach_builtin_variants(folder, ["ort-cpu-int8", "ort-cpu", "backend-context"])
    assert select_for_providers(folder / "model.onnx", CPU)[1] == "ort-cpu-int8"
    assert {p.name: sha(p) for p in folder.glob("model.onnx*")} != original
    assert strip_folder(folder / "model.onnx") == ["ort-cpu-int8", "ort-cpu", "backend-context"]
    assert {p.name: sha(p) for p in folder.glob("model.onnx*")} == original
    assert not list(folder.glob("model.variant-*"))


def test_strip_in_memory_restores_graph_bytes(base):
    model = load_model(base / "model.onnx")
    before = ir.to_proto(model).SerializeToString()
    from optimum_onnx23.variants.producers import produce

    produce("ort-cpu", model).attach_to(model)
    produce("ort-cpu-int8", model).attach_to(model)
    assert ir.to_proto(model).SerializeToString() != before
    strip_variants(model)
    assert ir.to_proto(model).SerializeToString() == before


def test_overlapping_variants_coexist_and_priority_decides(with_all):
    folder, _ = with_all
    infos = {i.name: i for i in list_variants(load_model(folder / "model.onnx"))}
    # int4/int8 replace every linear (logits included) and carry the ort-cpu rewrites: all overlap
    assert set(infos["ort-cpu-int4"].overlaps) == {"ort-cpu-int8", "ort-cpu", "backend-context"}
    assert infos["ort-cpu"].overlaps == ["ort-cpu-int4", "ort-cpu-int8"]
    selected = select_variant(load_model(folder / "model.onnx"), CPU)
    assert selected.metadata_props["optimum_onnx23.selected_variant"] == "ort-cpu-int4"
    assert not selected.functions  # other variants stripped


def _first_two_chained_linears(graph: ir.Graph) -> tuple[str, str]:
    linears = find_linears(graph)
    return linears[0].output.name, linears[-1].output.name  # the lm_head depends on the first layer


def test_malformed_variants_get_one_line_errors(base):
    model = load_model(base / "model.onnx")
    early, late = _first_two_chained_linears(model.graph)

    def body(input_name: str, output_name: str) -> ir.Graph:
        x = ir.Value(name=input_name)
        node = ir.node("Identity", [x])
        node.outputs[0].name = output_name
        return ir.Graph([x], node.outputs, nodes=[node])

    with pytest.raises(VariantFormatError, match="consumes `nowhere`"):
        attach_variant(model, "bad", body("nowhere", early), CPU)
    with pytest.raises(VariantFormatError, match="produces `nothing`"):
        attach_variant(model, "bad", body(early, "nothing"), CPU)
    with pytest.raises(VariantFormatError, match="cycle"):
        attach_variant(model, "bad", body(late, early), CPU)  # early := late, but late is computed from early
    with pytest.raises(InvalidArgumentError, match="Unknown execution provider 'FooExecutionProvider'"):
        attach_variant(model, "bad", body(early, late), ["FooExecutionProvider"])
    with pytest.raises(InvalidArgumentError, match="Invalid variant name"):
        attach_variant(model, "Bad Name", body(early, late), CPU)
    assert not list_variants(model) and "optimum_onnx23.variants" not in model.metadata_props  # nothing half-attached
    attach_variant(model, "one-two", body(early, late), CPU, validate=False)
    with pytest.raises(InvalidArgumentError, match="maps to the function id of variant one-two"):
        attach_variant(model, "one_two", body(early, late), CPU)
    strip_variants(model)
    with pytest.raises(InvalidArgumentError, match="Unknown execution provider"):
        select_variant(model, ["FooExecutionProvider"])
    with pytest.raises(VariantNotFoundError, match="no variant 'ort-cpu'"):
        select_variant(model, variant="ort-cpu")
    for error in (VariantFormatError, InvalidArgumentError, VariantNotFoundError):
        assert "\n" not in str(error("x"))


def test_tampered_variant_fails_its_content_hash(base):
    model = load_model(base / "model.onnx")
    from optimum_onnx23.variants.producers import produce

    produce("ort-cpu-int8", model).attach_to(model)
    owned = list_variants(model)[0].owned_initializers[0]
    tensor = model.graph.initializers[owned].const_value
    model.graph.initializers[owned].const_value = ir.tensor(np.zeros(tensor.shape.numpy(), tensor.dtype.numpy()), name=owned)
    with pytest.raises(VariantFormatError, match="content hash"):
        select_variant(model, CPU)


def is_plain_main_graph(selected, folder: Path) -> bool:
    """`selected` is the stripped main graph, in memory: same nodes, no variant functions or weights."""
    plain = selected.proto()
    main = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    return (
        isinstance(selected.model, bytes) and selected.folder == folder and not plain.functions
        and list(plain.graph.node) == list(main.graph.node)
        and not [i for i in plain.graph.initializer if i.name.startswith("variants/")]
    )


def _attach_matmul_variant(folder: Path, providers: list[str], domain: str, op: str) -> None:
    model = load_model(folder / "model.onnx")
    linear = find_linears(model.graph)[0]
    x, w = ir.Value(name=linear.activation.name), ir.Value(name=linear.weight.name)
    node = ir.Node(domain, op, [x, w], name="fast")
    node.outputs[0].name = linear.output.name
    attach_variant(model, "fast-matmul", ir.Graph([x, w], node.outputs, nodes=[node]), providers,
                   opset_imports={"": 23, domain: 1}, priority=99)
    save_model(model, folder / "model.onnx")


def test_variant_with_ops_the_provider_lacks_falls_back_with_warning(base, tmp_path):
    folder = copy_folder(base, tmp_path / "m")
    _attach_matmul_variant(folder, CPU, "com.example", "FastMatMul")
    with pytest.warns(UserWarning, match=r"needs com.example::FastMatMul.*using the main graph"):
        selected, chosen = select_for_providers(folder / "model.onnx", CPU)
    assert chosen is None and is_plain_main_graph(selected, folder)
    with pytest.warns(UserWarning, match="using the main graph"):
        session, chosen = create_session(folder / "model.onnx", CPU)
    assert chosen is None
    assert np.array_equal(session.run(None, feeds_for(session, IDS))[0], run(base / "model.onnx", IDS)[0])


def test_variant_for_a_provider_this_build_lacks_falls_back(base, tmp_path):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    folder = copy_folder(base, tmp_path / "m")
    _attach_matmul_variant(folder, ["CUDAExecutionProvider"], "com.microsoft", "FusedMatMul")  # a CPU kernel exists
    with pytest.warns(UserWarning, match="lacks for CUDAExecutionProvider"):
        selected, chosen = select_for_providers(folder / "model.onnx", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert chosen is None and is_plain_main_graph(selected, folder)
    assert select_for_providers(folder / "model.onnx", CPU)[1] is None  # not a CPU variant


def test_backend_context_runs_its_fallback_without_the_backend(base, with_all, caplog):
    folder, _ = with_all
    assert "QNNExecutionProvider" not in ort.get_available_providers()
    with caplog.at_level("INFO", logger="optimum_onnx23.variants"):
        selected, chosen = select_for_providers(folder / "model.onnx", ["QNNExecutionProvider", "CPUExecutionProvider"])
    assert chosen == "backend-context" and "Using backend variant backend-context for QNNExecutionProvider" in caplog.text
    model = selected.proto()
    onnx.save(model, folder / "test-backend-context.onnx")  # beside its data file, for the checker
    onnx.checker.check_model(str(folder / "test-backend-context.onnx"), full_check=True)
    (context,) = [n for n in model.graph.node if n.op_type == "BackendContext"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in context.attribute}
    assert attrs["source"] == b"QNNExecutionProvider" and attrs["embed_mode"] == 1 and attrs["main_context"] == 1
    assert b"region_sha256" in attrs["ep_cache_context"] and attrs["compatibility"].startswith(b"optimum-onnx23-stand-in")
    assert [f.name for f in model.functions] == ["BackendContext"]  # the fallback travels with the plain model
    session = selected.session(CPU)
    for want, got in zip(run(base / "model.onnx", IDS), session.run(None, feeds_for(session, IDS))):
        assert np.array_equal(want, got)


def listing(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_selection_writes_nothing_beside_the_model_and_caches_in_our_folder(base, with_all, tmp_path, monkeypatch, caplog):
    folder, _ = with_all
    monkeypatch.setenv("OPTIMUM_ONNX23_CACHE", str(tmp_path / "cache"))
    before = listing(folder)
    selected, chosen = select_for_providers(folder / "model.onnx", CPU)
    assert chosen == "ort-cpu-int4" and isinstance(selected.model, bytes) and selected.folder == folder
    assert len(selected.model) < (folder / "model.onnx").stat().st_size  # the graph; weights stay in model.onnx_data
    (cached,) = (tmp_path / "cache" / "selected").iterdir()
    assert cached.read_bytes() == selected.model and cached.name.endswith("-ort-cpu-int4-f1.onnx")
    mtime = cached.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="optimum_onnx23.variants"):
        again, _ = select_for_providers(folder / "model.onnx", [("CPUExecutionProvider", {})])
    assert again.model == selected.model and cached.stat().st_mtime_ns == mtime and "cached selection" in caplog.text
    main, chosen = select_for_providers(folder / "model.onnx", CPU, variant="main")
    assert chosen is None and is_plain_main_graph(main, folder)
    session, chosen = create_session(folder / "model.onnx", CPU)
    assert chosen == "ort-cpu-int4" and session.run(None, feeds_for(session, IDS))[0].shape[:2] == IDS.shape
    assert listing(folder) == before  # nothing written beside the model
    plain, chosen = select_for_providers(base / "model.onnx", CPU)
    assert plain.model == (base / "model.onnx").read_bytes() and chosen is None  # no variants: the file's own bytes


def test_variant_runs_from_a_read_only_folder_without_a_writable_cache(with_all, tmp_path, monkeypatch):
    """As in a Hugging Face cache snapshot: the folder is read-only (mode 555/444; root ignores the
    bits, so the listing is compared too) and our cache cannot be created (its parent is a file)."""
    folder = copy_folder(with_all[0], tmp_path / "ro")
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("OPTIMUM_ONNX23_CACHE", str(tmp_path / "not-a-folder" / "cache"))
    paths = [folder, *folder.iterdir()]
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        before = listing(folder)
        session, chosen = create_session(folder / "model.onnx", CPU)
        assert chosen == "ort-cpu-int4"
        want = run(folder / "model.onnx", IDS)[0]  # main graph, for the shape only
        assert session.run(None, feeds_for(session, IDS))[0].shape == want.shape
        assert listing(folder) == before
    finally:
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_external_data_outside_the_folder_is_refused(base, tmp_path):
    folder = copy_folder(base, tmp_path / "m")
    model = ir.load(folder / "model.onnx")
    value = next(v for v in model.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor))
    t = value.const_value
    value.const_value = ir.ExternalTensor("../outside.bin", t.offset, t.length, t.dtype, shape=t.shape, name=t.name, base_dir=folder)
    ir.save(model, folder / "model.onnx")
    with pytest.raises(UnsafeModelFileError, match="outside its folder"):
        select_for_providers(folder / "model.onnx", CPU)


def test_missing_ops_knows_what_onnxruntime_runs_without_a_kernel():
    from optimum_onnx23.variants.runtime import missing_ops

    ops = ["ai.onnx::Constant", "ai.onnx::Split", "com.microsoft::MatMulNBits", "com.example::FastMatMul"]
    assert missing_ops(ops, CPU) == ["com.example::FastMatMul"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        # contrib ops need the first provider; standard ones may fall to the CPU provider
        assert missing_ops(ops, ["CUDAExecutionProvider", *CPU]) == ["com.microsoft::MatMulNBits", "com.example::FastMatMul"]


def test_create_session_falls_back_when_onnxruntime_refuses_the_variant(base, tmp_path):
    folder = copy_folder(base, tmp_path / "m")
    # DynamicQuantizeMatMul has a CPU kernel, so selection picks it, but its B must be int8: onnxruntime
    # refuses the fp32 weight when the session is created.
    _attach_matmul_variant(folder, CPU, "com.microsoft", "DynamicQuantizeMatMul")
    assert select_for_providers(folder / "model.onnx", CPU)[1] == "fast-matmul"
    with pytest.warns(UserWarning, match="could not load variant fast-matmul"):
        session, chosen = create_session(folder / "model.onnx", CPU)
    assert chosen is None
    assert np.array_equal(session.run(None, feeds_for(session, IDS))[0], run(base / "model.onnx", IDS)[0])


def test_model_proto_in_model_proto_out(base):
    proto = onnx.load(str(base / "model.onnx"))  # weights loaded: the whole model in memory
    graph = ir.serde.deserialize_model(proto).graph
    linear = find_linears(graph)[0]
    x, w = ir.Value(name=linear.activation.name), ir.Value(name=linear.weight.name)
    node = ir.node("MatMul", [x, w])  # the same computation, spelled again: an fp32 "variant"
    node.outputs[0].name = linear.output.name
    with_variant = attach_variant(proto, "same", ir.Graph([x, w], node.outputs, nodes=[node]), CPU)
    assert isinstance(with_variant, onnx.ModelProto) and [i.name for i in list_variants(with_variant)] == ["same"]
    selected = select_variant(with_variant, CPU)
    assert isinstance(selected, onnx.ModelProto) and not selected.functions
    session = ort.InferenceSession(selected.SerializeToString(), providers=CPU)
    assert np.array_equal(session.run(None, feeds_for(session, IDS))[0], run(base / "model.onnx", IDS)[0])
    assert strip_variants(with_variant).graph == proto.graph
