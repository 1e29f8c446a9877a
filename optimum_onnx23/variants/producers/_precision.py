"""Precision chosen by measurement: which linear groups of an int4 variant stay int8.

Guarantees:

- every group (a linear, or a packed Q/K/V or gate/up, and the lm_head, which is treated like any
  other group) is measured the same way: its weights alone replaced by their int4 form in the fp32
  main graph, run by onnxruntime on calibration tokens, and the KL divergence of the model's
  next-token distribution from the fp32 one (`sensitivities`);
- the assignment is the cheapest the measurements allow: starting from everything int4, groups
  are promoted to int8 in order of measured KL per extra byte until the *measured* perplexity
  change on held-out calibration windows (never used for the statistics or the KL) is within the
  budget (`choose`); each candidate is measured, not predicted; a budget no assignment meets
  leaves everything int8 and says so (`Choice.met` False: the producer warns);
- all runs share one onnxruntime session on the main graph whose linear weights are graph inputs
  (fed fp32 or dequantized), so nothing is re-created per group; runs read weights in the
  initializers' own layout, without copies.

The embedding's `Gather` reads one row a token and stays fp32 (its bytes do not matter to decode);
a tied lm_head is measured and quantized through its own (transposed) use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from ..format import VARIANT_DOMAIN
from ._calibration import external_folder, prefill_feeds
from ._linear import Linear
from ._nbits import QuantizedWeight, dequantize

__all__ = ["Choice", "Probe", "choose", "quantized_bytes"]

logger = logging.getLogger(__name__)


def quantized_bytes(qw: QuantizedWeight) -> int:
    """Bytes a matmul reads for this weight: codes, scales and zero points."""
    return int(qw.packed.nbytes + qw.scales.nbytes + (0 if qw.zero_points is None else qw.zero_points.nbytes))


@dataclass
class Choice:
    bits: list[int]  # per group
    perplexity_change: float  # measured on the held-out windows, relative (0.05 = +5%)
    budget: float
    met: bool
    sensitivity: list[float] = field(default_factory=list)  # KL per group, int4 alone
    measured: list[tuple[int, float]] = field(default_factory=list)  # (int8 groups, perplexity change) per candidate tried
    seconds: float = 0.0


class Probe:
    """The fp32 main graph in onnxruntime with each group's weights as graph inputs."""

    def __init__(self, model: ir.Model, groups: list[list[Linear]]):
        import onnxruntime as ort

        from ...model_file import EXTERNAL_FOLDER_KEY

        probe = model.clone()
        for key in [k for k in probe.functions if k[0].startswith(VARIANT_DOMAIN)]:
            del probe.functions[key]
        for name in [n for n in probe.graph.initializers if n.startswith("variants/")]:
            del probe.graph.initializers[name]
        nodes = {n.name: n for n in probe.graph}
        self.base: dict[str, np.ndarray] = {}  # input name -> fp32 weight in the initializer's layout
        self.slots: list[list[tuple[str, bool]]] = []  # per group, per linear: (input name, transposed)
        for group in groups:
            slots = []
            for linear in group:
                node = nodes[linear.node.name]
                name = f"probe/{linear.weight.name}"
                if name not in self.base:
                    self.base[name] = np.ascontiguousarray(linear.weight.const_value.numpy(), np.float32)
                value = ir.Value(name=name, shape=ir.Shape(self.base[name].shape), type=ir.TensorType(ir.DataType.FLOAT))
                probe.graph.inputs.append(value)
                # the node reading the weight: the MatMul/Gemm itself, or the lm_head's Transpose
                b = node.inputs[1]
                reader, index = (b.producer(), 0) if b.producer() is not None and b.producer().op_type == "Transpose" else (node, 1)
                reader.replace_input_with(index, value)
                slots.append((name, linear.transposed))
            self.slots.append(slots)
        RemoveUnusedNodesPass()(probe)  # the replaced weights' initializers (the presents stay: Attention must produce them)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        folder = external_folder(model)
        if folder is not None:
            options.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(folder))
        proto = ir.serde.serialize_model(probe).SerializeToString()
        self.session = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}

    def weights(self, group: int, qw: QuantizedWeight) -> dict[str, np.ndarray]:
        """Feeds replacing `group`'s weights by the dequantized `qw` (columns split per linear)."""
        w = dequantize(qw)  # [K, sum N]
        out, start = {}, 0
        for name, transposed in self.slots[group]:
            n = self.base[name].shape[0 if transposed else 1]
            part = w[:, start : start + n]
            out[name] = np.ascontiguousarray(part.T if transposed else part)
            start += n
        return out

    def logits(self, ids: np.ndarray, overrides: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Logits `[rows, S, vocab]` of token windows `ids` `[rows, S]` (equal lengths)."""
        feeds = prefill_feeds(self.inputs, ids)
        feeds.update(self.base)
        feeds.update(overrides or {})
        return self.session.run(["logits"], {k: v for k, v in feeds.items() if k in self.inputs})[0]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    peak = x.max(-1, keepdims=True)
    return x - (np.log(np.exp(x - peak).sum(-1, keepdims=True)) + peak)


def _nll(probe: Probe, windows: Sequence[np.ndarray], overrides: dict[str, np.ndarray] | None) -> float:
    total, count = 0.0, 0
    for ids in windows:
        logp = _log_softmax(probe.logits(ids[None], overrides)[0, :-1])
        total += float(-logp[np.arange(len(ids) - 1), ids[1:]].sum())
        count += len(ids) - 1
    return total / count


def choose(
    model: ir.Model,
    groups: list[list[Linear]],
    int4: list[QuantizedWeight],
    int8: Callable[[int], QuantizedWeight],
    fit: Sequence[np.ndarray],
    held_out: Sequence[np.ndarray],
    budget: float,
    sensitivity_tokens: int = 96,
    max_candidates: int = 6,
    sensitivity: list[float] | None = None,
) -> Choice:
    """Bits per group (4 or 8) for the cheapest assignment found whose measured perplexity change
    on `held_out` windows is within `budget`; `int8(i)` quantizes group i to int8 when needed.
    Sensitivity: KL from the fp32 distribution on `sensitivity_tokens` tokens taken in equal rows
    from the `fit` windows (one row per window, as many as fit); `sensitivity` given (measured before
    on the same weights and calibration), it is not measured again."""
    start = time.perf_counter()
    probe = Probe(model, groups)
    rows = max(1, min(len(fit), 2))
    length = max(2, min(sensitivity_tokens // rows, *(len(w) for w in fit[:rows])))
    batch = np.stack([w[:length] for w in fit[:rows]])
    reference = None

    def kl(overrides) -> float:
        nonlocal reference
        if reference is None:
            reference = _log_softmax(probe.logits(batch))
        return float((np.exp(reference) * (reference - _log_softmax(probe.logits(batch, overrides)))).sum(-1).mean())

    if sensitivity is None or len(sensitivity) != len(groups):
        sensitivity = [kl(probe.weights(i, qw)) for i, qw in enumerate(int4)]
    sens_seconds = time.perf_counter() - start
    int8_cache: dict[int, dict[str, np.ndarray]] = {}
    extra = np.array([max(quantized_bytes(int8(i)) - quantized_bytes(qw), 1) for i, qw in enumerate(int4)], np.float64)
    order = sorted(range(len(groups)), key=lambda i: -sensitivity[i] / extra[i])  # most KL per extra byte first
    base_nll = _nll(probe, held_out, None)

    def measure(promoted: int) -> float:
        overrides: dict[str, np.ndarray] = {}
        chosen = set(order[:promoted])
        for i, qw in enumerate(int4):
            if i in chosen:
                if i not in int8_cache:
                    int8_cache[i] = probe.weights(i, int8(i))
                overrides.update(int8_cache[i])
            else:
                overrides.update(probe.weights(i, qw))
        return float(np.exp(_nll(probe, held_out, overrides) - base_nll) - 1)

    total = float(sum(sensitivity)) or 1.0
    remaining = total - np.cumsum([sensitivity[i] for i in order])  # KL left in int4 after promoting a prefix
    measured: list[tuple[int, float]] = []
    promoted, change = 0, measure(0)
    measured.append((0, change))
    low = 0  # the largest prefix measured over budget
    best = None if change > budget else (0, change)
    while best is None or best[0] > low + 1:
        if len(measured) >= max_candidates:
            break
        if best is None:
            # KL left in int4 taken as proportional to the perplexity change: aim at 80% of the budget
            target = total * (budget * 0.8) / max(change, 1e-9) * (remaining[promoted - 1] / total if promoted else 1.0)
            nxt = int(np.searchsorted(-remaining, -target)) + 1
            nxt = min(max(nxt, promoted + 1), len(groups))
        else:
            nxt = (low + best[0]) // 2  # bisect towards fewer int8 groups
            if nxt <= low:
                break
        change = measure(nxt)
        measured.append((nxt, change))
        if change <= budget:
            best = (nxt, change) if best is None or nxt < best[0] else best
        else:
            low = max(low, nxt)
            promoted = nxt
            if nxt == len(groups):
                break
    met = best is not None
    count, change = best if met else (len(groups), measured[-1][1] if measured[-1][0] == len(groups) else measure(len(groups)))
    if not met and measured[-1][0] != len(groups):
        measured.append((len(groups), change))
    chosen = set(order[:count])
    bits = [8 if i in chosen else 4 for i in range(len(groups))]
    logger.info("precision: %d groups measured in %.1f s; %d of %d int8, held-out perplexity %+.2f%% (budget %+.0f%%) in %.1f s",
                len(groups), sens_seconds, count, len(groups), 100 * change, 100 * budget, time.perf_counter() - start)
    return Choice(bits, change, budget, met, sensitivity, measured, time.perf_counter() - start)
