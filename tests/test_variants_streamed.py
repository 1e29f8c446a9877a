"""Streamed quantization (issue 27): `variants attach` reads each float weight from the memory-mapped
external data, quantizes it and unmaps it before the next, so the float model is never resident
as a whole. Checked here: the quantized bytes are those of the all-in-memory path (same codes,
scales and zero points), and the attach's peak RSS above its start stays a fraction of the float
weights on a model whose weights are big enough to measure (~200 MB)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from optimum_onnx23.variants.producers import _nbits
from optimum_onnx23.variants.producers._nbits import quantize_blockwise

pytestmark = pytest.mark.usefixtures("quiet_onnxruntime")


@pytest.mark.parametrize("bits,symmetric,search", [(4, False, True), (4, True, False), (8, True, False), (4, False, False)])
def test_column_chunks_quantize_byte_identical(monkeypatch, bits, symmetric, search):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((200, 77)).astype(np.float32)  # K not a block multiple, N not a chunk multiple
    importance = rng.random(200).astype(np.float32) if search else None
    whole = quantize_blockwise(weight, bits, 32, symmetric, search, importance)
    monkeypatch.setattr(_nbits, "_CHUNK_ELEMENTS", 200 * 10)  # 10 columns at a time: 8 chunks
    chunked = quantize_blockwise(weight, bits, 32, symmetric, search, importance)
    for field in ("packed", "scales", "zero_points"):
        a, b = getattr(whole, field), getattr(chunked, field)
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), field


def _in_memory(model: ir.Model) -> ir.Model:
    """The same model with every weight read into memory (the pre-streaming path's input)."""
    for value in model.graph.initializers.values():
        if isinstance(value.const_value, ir.ExternalTensor):
            value.const_value = ir.tensor(np.array(value.const_value.numpy()), name=value.name)
    return model


@pytest.mark.parametrize("variant", ["ort-cpu-int4", "int4", "int8"])
def test_streamed_attach_owns_the_same_bytes_as_in_memory_quantization(exported_dir, tmp_path, monkeypatch, variant):
    import shutil

    from optimum_onnx23.variants import attach_builtin_variants
    from optimum_onnx23.variants.folder import load_model
    from optimum_onnx23.variants.producers import produce

    folder = tmp_path / "m"
    shutil.copytree(exported_dir("bundled"), folder)
    # without calibration text (int8's smoothing and int4's searched scales would need a session):
    # what is compared is how the weights are read, not what calibration makes of them
    attach_builtin_variants(folder, [variant], {variant: {"calibration": False}})
    streamed = load_model(folder / "model.onnx")
    owned = {n: v.const_value for n, v in streamed.graph.initializers.items() if n.startswith("variants/")}
    assert owned
    monkeypatch.setattr(_nbits, "_CHUNK_ELEMENTS", 1 << 40)  # whole weights at once, as before
    reference = produce(variant, _in_memory(load_model(exported_dir("bundled") / "model.onnx")), calibration=None).owned
    inline = {n for n, t in reference.items() if t.nbytes < 256}  # stay inline in the graph either way
    assert set(reference) == set(owned)
    for name, tensor in reference.items():
        assert tensor.dtype == owned[name].dtype and tuple(tensor.shape) == tuple(owned[name].shape), name
        assert tensor.tobytes() == owned[name].tobytes(), f"{name} differs ({'inline' if name in inline else 'external'})"


_CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    import onnx_ir as ir
    from optimum_onnx23.variants import attach_builtin_variants

    def rss(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    names = sys.argv[2].split(",")
    options = {n: {"calibration": False, "method": "rtn"} for n in names}
    attach_builtin_variants(Path(sys.argv[3]), names, options)  # a small model first: every lazy import done
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here on
    start = rss("VmRSS:")
    attach_builtin_variants(Path(sys.argv[1]), names, options)
    print(json.dumps({"start": start, "peak": rss("VmHWM:")}))
""")


def _matmul_chain(folder: Path, width: int, layers: int) -> int:
    """A chain of `layers` square float32 MatMuls with Softmaxes between (the linears the quantizers look for) ending in
    `logits`, its weights in `model.onnx_data`; returns the weights' bytes."""
    rng = np.random.default_rng(0)
    x = ir.Value(name="input_ids_hidden", shape=ir.Shape(["batch", width]), type=ir.TensorType(ir.DataType.FLOAT))
    nodes, weights, current = [], [], x
    for i in range(layers):
        w = ir.Value(name=f"w{i}", shape=ir.Shape([width, width]), type=ir.TensorType(ir.DataType.FLOAT))
        w.const_value = ir.tensor(rng.standard_normal((width, width), dtype=np.float32), name=f"w{i}")
        node = ir.node("MatMul", [current, w], name=f"mm{i}")
        node.outputs[0].name = "logits" if i == layers - 1 else f"h{i}"
        nodes.append(node)
        weights.append(w)
        current = node.outputs[0]
        if i < layers - 1:  # not elementwise (that would make the next one an int8 "MLP down" projection)
            nodes.append(between := ir.node("Softmax", [current], name=f"softmax{i}"))
            between.outputs[0].name = f"a{i}"
            current = between.outputs[0]
    current.type, current.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(["batch", width])
    graph = ir.Graph([x], [current], nodes=nodes, initializers=weights, opset_imports={"": 23})
    folder.mkdir()
    ir.save(ir.Model(graph, ir_version=10), folder / "model.onnx", external_data="model.onnx_data")
    return layers * width * width * 4


def test_attach_peak_memory_stays_a_fraction_of_the_float_weights(tmp_path):
    """Before streaming, every float weight stayed mapped (and, when stored [N, K], copied transposed
    into a list) until all were quantized: on this chain peak RSS grew by 1.48x the weights. Now one
    weight at a time is read and unmapped; what grows is the quantized bytes of both forms (~0.16x
    each), one weight's temporaries and the allocator's high-water mark: 0.58x measured, 0.8x asserted."""
    folder = tmp_path / "chain"
    weight_bytes = _matmul_chain(folder, 2048, 12)  # 201 MB of float32
    _matmul_chain(tmp_path / "small", 64, 2)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder), "int4,ort-cpu-int4", str(tmp_path / "small")], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    grown = measured["peak"] - measured["start"]
    assert grown < 0.8 * weight_bytes, f"attach grew RSS by {grown / 1e6:.0f} MB for {weight_bytes / 1e6:.0f} MB of weights"
