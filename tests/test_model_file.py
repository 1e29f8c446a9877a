"""Opening a model parses its ONNX file once: `ModelFile` reads and checks it, variant selection
works on that parsed proto, and onnxruntime gets bytes (never the path, which it would read and
parse again). Counted through every ONNX loader the package could call."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from optimum_onnx23.errors import UnsafeModelFileError
from optimum_onnx23.model_file import ModelFile
from optimum_onnx23.pipelines import ORTModelForCausalLM

pytestmark = pytest.mark.usefixtures("quiet_onnxruntime")


@pytest.fixture(scope="module")
def plain_dir(exported_dir):
    return exported_dir("llama")


@pytest.fixture(scope="module")
def variant_dir(exported_dir):
    return exported_dir("llama", "--variant", "ort-cpu-int4")


@pytest.fixture
def parses(monkeypatch):
    """Every parse of an ONNX file by onnx or onnx-ir, and every path given to onnxruntime."""
    calls: list[str] = []

    def counting(name, original):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return original(*args, **kwargs)

        return wrapper

    for name in ("load", "load_model", "load_model_from_string"):
        monkeypatch.setattr(onnx, name, counting(f"onnx.{name}", getattr(onnx, name)))
    monkeypatch.setattr(ir, "load", counting("ir.load", ir.load))
    monkeypatch.setattr(ir.serde, "deserialize_model", counting("ir.deserialize_model", ir.serde.deserialize_model))
    original_session = ort.InferenceSession.__init__

    def session_init(self, source, *args, **kwargs):
        if not isinstance(source, bytes):
            calls.append(f"InferenceSession({type(source).__name__})")
        return original_session(self, source, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "__init__", session_init)
    return calls


def test_plain_model_is_parsed_once(plain_dir, parses):
    folder = plain_dir
    model = ORTModelForCausalLM.from_pretrained(folder)
    assert parses == ["onnx.load_model_from_string"], parses
    assert model.generate([[1, 2, 3]], max_new_tokens=2).shape == (1, 5)


def test_model_with_variants_is_parsed_once_even_on_a_selection_cache_miss(variant_dir, parses, tmp_path, monkeypatch):
    folder = variant_dir
    monkeypatch.setenv("OPTIMUM_ONNX23_CACHE", str(tmp_path / "empty-cache"))
    ORTModelForCausalLM.from_pretrained(folder)
    # The selected graph is built from the parsed proto (onnx-ir objects), not from the file again.
    assert parses == ["onnx.load_model_from_string", "ir.deserialize_model"], parses
    parses.clear()
    ORTModelForCausalLM.from_pretrained(folder)  # cached selection: bytes from our cache
    assert parses == ["onnx.load_model_from_string"], parses


def test_a_variant_onnxruntime_refuses_falls_back_without_reopening_the_file(variant_dir, parses, tmp_path, monkeypatch):
    from optimum_onnx23.variants import runtime

    folder = variant_dir
    monkeypatch.setenv("OPTIMUM_ONNX23_CACHE", str(tmp_path / "cache"))
    original = runtime.Selected.session

    def refuse_variant(self, providers, sess_options=None):
        if b"MatMulNBits" in self.model:
            raise RuntimeError("simulated: this build cannot run MatMulNBits")
        return original(self, providers, sess_options)

    monkeypatch.setattr(runtime.Selected, "session", refuse_variant)
    with pytest.warns(UserWarning, match="could not load variant ort-cpu-int4"):
        ORTModelForCausalLM.from_pretrained(folder)
    assert parses.count("onnx.load_model_from_string") == 1 and not any("load(" in p or p == "onnx.load" for p in parses), parses


def test_model_file_checks_every_external_location(plain_dir, tmp_path):
    folder = plain_dir
    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    tensor = next(t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    entry = next(e for e in tensor.external_data if e.key == "location")
    entry.value = "../../etc/passwd"
    bad = tmp_path / "model.onnx"
    bad.write_bytes(proto.SerializeToString())
    with pytest.raises(UnsafeModelFileError, match="passwd"):
        ModelFile.open(bad)
