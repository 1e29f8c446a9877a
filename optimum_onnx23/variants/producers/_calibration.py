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
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from ...chunked_session import CHUNK_BYTES
from ...contract import WRITE_INDICES
from ..format import VARIANT_DOMAIN

__all__ = ["CALIBRATION_DIR", "calibration_windows", "external_folder", "first_tokens", "input_absmax", "input_hessians", "prefill_feeds", "probe_session", "split_held_out"]

logger = logging.getLogger(__name__)
CALIBRATION_DIR = Path(__file__).resolve().parents[2] / "data" / "quality" / "calibration"


def calibration_windows(folder: str | Path, window: int = 256) -> list[np.ndarray]:
    """The bundled calibration texts, tokenized with `folder`'s tokenizer, cut in windows of at
    most `window` tokens and never more positions than the model has (`config.json`), taken in
    turn from each file (the first window of every file, then the second, ...), so that every
    4th window (`split_held_out`) holds out some of every kind of text."""
    import json

    from transformers import AutoTokenizer

    config = json.loads((Path(folder) / "config.json").read_text())
    limits = [config.get(key) for key in ("max_position_embeddings", "n_positions")]
    window = min([window, *(int(v) for v in limits if isinstance(v, int) and v > 1)])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    per_file = []
    for path in sorted(CALIBRATION_DIR.glob("*.txt")):
        ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False, verbose=False)["input_ids"]
        per_file.append([np.array(ids[i : i + window], np.int64) for i in range(0, len(ids), window) if len(ids[i : i + window]) > 1])
    return [w[turn] for turn in range(max(map(len, per_file), default=0)) for w in per_file if turn < len(w)]


def prefill_feeds(inputs: dict, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Feeds for one prefill of `ids` (`[rows, S]`, equal lengths) from an empty past, for a
    session whose inputs are `inputs` (name -> NodeArg): K/V of length 0, or for static-cache exports
    the whole (zero) buffer written from slot 0 with the mask covering the tokens (ids cut to its
    capacity); hybrids' fixed-size states are zero too."""
    static = WRITE_INDICES in inputs
    pasts = {name: info for name, info in inputs.items() if name.startswith("past_")}
    capacity = next((info.shape[2] for name, info in pasts.items() if name.startswith("past_key_values")), None) if static else None
    ids = ids[:, :capacity] if static else ids
    rows, length = ids.shape
    mask = np.zeros((rows, capacity if static else length), np.int64)
    mask[:, :length] = 1
    feeds = {"input_ids": ids, "attention_mask": mask, WRITE_INDICES: np.zeros(rows, np.int64)}
    if "position_ids" in inputs:
        feeds["position_ids"] = np.broadcast_to(np.arange(length, dtype=np.int64), (rows, length)).copy()
    for name, info in pasts.items():
        shape = [rows] + [d if isinstance(d, int) else 0 for d in info.shape[1:]]
        feeds[name] = np.zeros(shape, np.float16 if info.type == "tensor(float16)" else np.float32)
    return feeds


def probe_session(probe: ir.Model, source: ir.Model):
    """An onnxruntime CPU session over `probe` (an edited clone of `source`), its unused nodes
    pruned; the weights still in `source`'s external data are read from its folder."""
    import onnxruntime as ort

    from ...model_file import EXTERNAL_FOLDER_KEY

    RemoveUnusedNodesPass()(probe)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    folder = external_folder(source)
    if folder is not None:
        options.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(folder))
    proto = ir.serde.serialize_model(probe).SerializeToString()
    return ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])


def external_folder(model: ir.Model) -> Path | None:
    for value in model.graph.initializers.values():
        if isinstance(value.const_value, ir.ExternalTensor):
            return Path(value.const_value.base_dir)
    return None


def input_hessians(
    model: ir.Model, activations: Sequence[ir.Value], windows: Sequence[np.ndarray], full: bool = True, chunked: bool = False,
) -> dict[str, np.ndarray]:
    """`{activation name: X^T X / rows}` (float32 `[K, K]`) over the tokens of `windows`, each run
    as one batch-1 prefill of the main graph; with `full=False` only its diagonal (`[K]`, the mean
    square per input channel). `chunked`: the graph runs chunk by chunk (`ChunkedSession`: at most
    `CHUNK_BYTES` of its weights resident), each activation accumulated as soon as its chunk has run."""
    sums: dict[str, np.ndarray] = {}

    def add(name: str, x: np.ndarray) -> None:
        sums[name] = sums.get(name, 0) + (x.T @ x if full else np.einsum("rk,rk->k", x, x))

    rows = _activation_runs(model, activations, windows, add, chunked)
    return {name: (total / rows).astype(np.float32) for name, total in sums.items()}


def input_absmax(
    model: ir.Model, activations: Sequence[ir.Value], windows: Sequence[np.ndarray], chunked: bool = False
) -> dict[str, np.ndarray]:
    """`{activation name: max |X| per input channel}` (float32 `[K]`) over the tokens of `windows`:
    the outlier channels activation smoothing (`_smooth`) moves into the weights."""
    out: dict[str, np.ndarray] = {}

    def peak(name: str, x: np.ndarray) -> None:
        top = np.abs(x).max(axis=0)
        out[name] = top if name not in out else np.maximum(out[name], top)

    _activation_runs(model, activations, windows, peak, chunked)
    return {name: top.astype(np.float32) for name, top in out.items()}


def _activation_runs(
    model: ir.Model, activations: Sequence[ir.Value], windows: Sequence[np.ndarray],
    consume: Callable[[str, np.ndarray], None], chunked: bool = False,
) -> int:
    """Runs each window as one batch-1 prefill of the fp32 main graph with the activations added as
    outputs, calls `consume(name, [tokens, K] float32)` for each activation of each window, and
    returns the tokens run. `chunked`: through a `ChunkedSession` (activations come chunk by chunk)."""
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

    def add(name: str, x: np.ndarray) -> None:
        consume(name, x.reshape(-1, x.shape[-1]).astype(np.float32))

    rows = 0
    if chunked:
        from ...chunked_session import ChunkedSession

        RemoveUnusedNodesPass()(probe)
        session = ChunkedSession(ir.serde.serialize_model(probe), external_folder(model), max_chunk_bytes=CHUNK_BYTES)
        try:
            session.check_types()
        except ValueError as error:
            logger.warning("calibration statistics from one whole-graph session (its weights once in memory): %s", error)
            return _activation_runs(model, activations, windows, consume, chunked=False)
        inputs = {i.name: i for i in session.get_inputs()}
        feeds = []
        for ids in windows:
            window = prefill_feeds(inputs, ids[None])
            rows += min(ids.shape[0], window["input_ids"].shape[1])
            feeds.append({k: v for k, v in window.items() if k in inputs})
        logger.info("calibration statistics: %d windows through %d chunks of the graph", len(feeds), len(session.chunks))
        session.run_many(names, feeds, consume=lambda i, name, x: add(name, x))
        return rows
    session = probe_session(probe, model)
    inputs = {i.name: i for i in session.get_inputs()}  # pruning may have dropped some
    for ids in windows:
        feeds = prefill_feeds(inputs, ids[None])
        rows += min(ids.shape[0], feeds["input_ids"].shape[1])
        for name, x in zip(names, session.run(names, {k: v for k, v in feeds.items() if k in inputs})):
            add(name, x)
    return rows


def split_held_out(windows: Sequence[np.ndarray], every: int = 4) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(fit, held out): every `every`-th calibration window is held out (never used for statistics
    or sensitivities, only to measure a candidate's perplexity change); at least one of each when
    there are two windows or more."""
    held = [w for i, w in enumerate(windows) if i % every == every - 1]
    fit = [w for i, w in enumerate(windows) if i % every != every - 1]
    if not held and len(fit) > 1:
        held = [fit.pop()]
    return fit, held


def first_tokens(windows: Sequence[np.ndarray], tokens: int) -> list[np.ndarray]:
    """The first windows holding `tokens` tokens in all (the last one cut): calibration windows
    come in turn from each kind of text, so a prefix still has every kind."""
    out: list[np.ndarray] = []
    left = tokens
    for window in windows:
        if left < 2:
            break
        out.append(window[:left])
        left -= len(out[-1])
    return out
