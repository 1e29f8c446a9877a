"""Activation statistics of the main graph's linear layers, for calibrated quantization.

`input_hessians` runs the fp32 main graph in onnxruntime on calibration token windows, with the
inputs of the given linear layers added as graph outputs, and accumulates `X^T X / n` per distinct
input (Q/K/V share one, gate/up another): the `H` that GPTQ compensates errors with. The weights
stay on disk: the model is handed to onnxruntime as graph bytes plus the folder of its external
data. `calibration_windows` tokenizes the bundled calibration texts (distinct from the evaluation
texts of `variants.quality`) with the exported folder's tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from ...contract import WRITE_INDICES
from ..format import VARIANT_DOMAIN

__all__ = ["CALIBRATION_DIR", "calibration_windows", "input_hessians"]

logger = logging.getLogger(__name__)
CALIBRATION_DIR = Path(__file__).resolve().parents[2] / "data" / "quality" / "calibration"


def calibration_windows(folder: str | Path, window: int = 512) -> list[np.ndarray]:
    """The bundled calibration texts, tokenized with `folder`'s tokenizer, cut in windows of at
    most `window` tokens and never more positions than the model has (`config.json`)."""
    import json

    from transformers import AutoTokenizer

    config = json.loads((Path(folder) / "config.json").read_text())
    limits = [config.get(key) for key in ("max_position_embeddings", "n_positions")]
    window = min([window, *(int(v) for v in limits if isinstance(v, int) and v > 1)])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    windows = []
    for path in sorted(CALIBRATION_DIR.glob("*.txt")):
        ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False, verbose=False)["input_ids"]
        windows += [np.array(ids[i : i + window], np.int64) for i in range(0, len(ids), window) if len(ids[i : i + window]) > 1]
    return windows


def _external_folder(model: ir.Model) -> Path | None:
    for value in model.graph.initializers.values():
        if isinstance(value.const_value, ir.ExternalTensor):
            return Path(value.const_value.base_dir)
    return None


def input_hessians(
    model: ir.Model, activations: Sequence[ir.Value], windows: Sequence[np.ndarray], full: bool = True
) -> dict[str, np.ndarray]:
    """`{activation name: X^T X / rows}` (float32 `[K, K]`) over the tokens of `windows`, each run
    as one batch-1 prefill of the main graph; with `full=False` only its diagonal (`[K]`, the mean
    square per input channel)."""
    import onnxruntime as ort

    from ...model_file import EXTERNAL_FOLDER_KEY

    probe = model.clone()
    for key in [k for k in probe.functions if k[0].startswith(VARIANT_DOMAIN)]:
        del probe.functions[key]
    for name in [n for n in probe.graph.initializers if n.startswith("variants/")]:
        del probe.graph.initializers[name]  # owned weights of attached variants: unused by the main graph
    names = list(dict.fromkeys(v.name for v in activations))
    values = {v.name: v for node in probe.graph for v in node.outputs if v.name in names}
    values.update({v.name: v for v in probe.graph.inputs if v.name in names})
    # The logits are not wanted (the lm_head over every position is a quarter of a prefill):
    # dropped with the nodes only they needed. The presents stay (attention must produce them).
    kept = [v for v in probe.graph.outputs if v.name != "logits" and v.name not in names]
    probe.graph.outputs.clear()
    probe.graph.outputs.extend([*kept, *(values[name] for name in names)])
    RemoveUnusedNodesPass()(probe)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    folder = _external_folder(model)
    if folder is not None:
        options.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(folder))
    proto = ir.serde.serialize_model(probe).SerializeToString()
    session = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}  # pruning may have dropped some
    # An empty past: K/V of length 0, or for static-cache exports the whole (zero) buffer written
    # from slot 0 with the mask covering it; hybrids' fixed-size states are zero too.
    static = WRITE_INDICES in inputs
    pasts = {name: info for name, info in inputs.items() if name.startswith("past_")}
    capacity = next((info.shape[2] for name, info in pasts.items() if name.startswith("past_key_values")), None) if static else None
    sums: dict[str, np.ndarray] = {}
    rows = 0
    for ids in windows:
        ids = ids[None, :capacity] if static else ids[None]
        length = ids.shape[1]
        mask = np.zeros((1, capacity if static else length), np.int64)
        mask[:, :length] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, WRITE_INDICES: np.zeros(1, np.int64)}
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(length, dtype=np.int64)[None]
        for name, info in pasts.items():
            shape = [1] + [d if isinstance(d, int) else 0 for d in info.shape[1:]]
            feeds[name] = np.zeros(shape, np.float16 if info.type == "tensor(float16)" else np.float32)
        outputs = session.run(names, {k: v for k, v in feeds.items() if k in inputs})
        for name, x in zip(names, outputs):
            x = x.reshape(-1, x.shape[-1]).astype(np.float32)
            sums[name] = sums.get(name, 0) + (x.T @ x if full else np.einsum("rk,rk->k", x, x))
        rows += length
    return {name: (total / rows).astype(np.float32) for name, total in sums.items()}
