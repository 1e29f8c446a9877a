"""Precision chosen by measurement: which linear groups of an int4 variant stay int8.

Guarantees:

- every group (a linear, or a packed Q/K/V or gate/up, and the lm_head, which is treated like any
  other group) is measured the same way: its weights alone replaced by their int4 form in the fp32
  main graph, run by onnxruntime on one short calibration row, and the KL divergence of the model's
  next-token distribution from the fp32 one (32 tokens: only the order of the groups is used),
  estimated for a decoder's layers x projections grid from runs of whole layers and of whole
  projections (`_sensitivities`), the lm_head alone (a relative output error per linear from the
  activation statistics, with no model run, was tried instead and ordered them badly: SmolLM2
  needed 103 int8 groups for +5.8% where the KL order needs 50 for +7.0%);
- the assignment is the cheapest found whose *measured* perplexity change on held-out calibration
  windows (never used for statistics) is within `aim` times the budget: groups are promoted to
  int8 in order of sensitivity per extra byte, the number aimed from the measured changes and each
  candidate measured (`choose`), a few in all; a budget no assignment meets leaves everything int8
  and says so (`Choice.met` False: the producer warns);
- all runs share one onnxruntime session on the main graph whose linear weights are graph inputs
  (fed fp32 or dequantized), so nothing is re-created per candidate; the dequantized weights are
  built in their initializers' layout and released after each candidate.

The embedding's `Gather` reads one row a token and stays fp32 (its bytes do not matter to decode);
a tied lm_head is quantized and measured through its own (transposed) use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..format import VARIANT_DOMAIN
from ._calibration import first_tokens, prefill_feeds, probe_session
from ._linear import Linear
from ._nbits import QuantizedWeight, dequantize, unpack_codes
from ._smooth import ChannelTransform

__all__ = ["Choice", "Probe", "choose", "column_slice", "layer_grid", "quantized_bytes"]

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
    sensitivity: list[float] = field(default_factory=list)  # per group, int4 (the order of promotion)
    measured: list[tuple[int, float]] = field(default_factory=list)  # (int8 groups, perplexity change) per candidate tried
    seconds: float = 0.0
    aim: float = 0.0  # the held-out change aimed at: budget times the margin
    held_out_tokens: int = 0


class Probe:
    """The fp32 main graph in onnxruntime with each group's weights as graph inputs."""

    def __init__(self, model: ir.Model, groups: list[list[Linear]], smoothing: Sequence[ChannelTransform | None] | None = None):
        # smoothed / reordered groups' quantized weights hold the transformed `W`: fed restored
        # (the variant transforms the activation instead: the same product)
        self.smoothing = list(smoothing) if smoothing is not None else [None] * len(groups)
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
        # pruned: the replaced weights' initializers (the presents stay: Attention must produce them)
        self.session = probe_session(probe, model)
        self.inputs = {i.name: i for i in self.session.get_inputs()}

    def weights(self, group: int, qw: QuantizedWeight) -> dict[str, np.ndarray]:
        """Feeds replacing `group`'s weights by the dequantized `qw` (columns split per linear),
        each built in its initializer's layout (a transposed one, e.g. a tied lm_head, straight
        from the `[N, K]` blocks: no second full-size copy)."""
        out, start = {}, 0
        for name, transposed in self.slots[group]:
            n = self.base[name].shape[0 if transposed else 1]
            part = column_slice(qw, start, start + n)
            out[name] = _dequantize_nk(part) if transposed else dequantize(part)
            transform = self.smoothing[group]
            if transform is not None:
                out[name] = transform.restore(out[name], transposed)
            start += n
        return out

    def logits(self, ids: np.ndarray, overrides: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Logits `[rows, S, vocab]` of token windows `ids` `[rows, S]` (equal lengths)."""
        feeds = prefill_feeds(self.inputs, ids)
        feeds.update(self.base)
        feeds.update(overrides or {})
        return self.session.run(["logits"], {k: v for k, v in feeds.items() if k in self.inputs})[0]


def _dequantize_nk(qw: QuantizedWeight) -> np.ndarray:
    """`dequantize(qw).T` as a contiguous float32 `[N, K]` array, computed in that layout."""
    k_blocks = qw.packed.shape[1]
    w = unpack_codes(qw.packed, qw.bits, qw.block_size).astype(np.float32)
    if qw.zero_points is None:
        w -= np.float32(1 << (qw.bits - 1))
    else:
        w -= unpack_codes(qw.zero_points.reshape(qw.n, -1), qw.bits, k_blocks).astype(np.float32)[..., None]
    w *= qw.scales.reshape(qw.n, k_blocks, 1)
    w = w.reshape(qw.n, -1)
    return w if w.shape[1] == qw.k else np.ascontiguousarray(w[:, : qw.k])


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    peak = x.max(-1, keepdims=True)
    return x - (np.log(np.exp(x - peak).sum(-1, keepdims=True)) + peak)


def _nll(probe: Probe, windows: Sequence[np.ndarray], overrides: dict[str, np.ndarray] | None) -> float:
    total, count = 0.0, 0
    for ids in windows:
        logits = probe.logits(ids[None], overrides)[0]
        # a static cache shorter than the window: prefill_feeds ran its first positions only
        n = min(len(ids), logits.shape[0])
        logp = _log_softmax(logits[: n - 1])
        total += float(-logp[np.arange(n - 1), ids[1:n]].sum())
        count += n - 1
        del logits, logp
    return total / count


def column_slice(qw: QuantizedWeight, start: int, end: int) -> QuantizedWeight:
    """Output columns `[start, end)` of a quantized weight (its own blocks: columns are independent)."""
    k_blocks = qw.packed.shape[1]
    zero = None if qw.zero_points is None else qw.zero_points.reshape(qw.n, -1)[start:end].reshape(-1)
    scales = qw.scales.reshape(qw.n, k_blocks)[start:end].reshape(-1)
    return QuantizedWeight(qw.packed[start:end], scales, zero, qw.bits, qw.block_size, qw.k, end - start)


def layer_grid(groups: list[list[Linear]]) -> tuple[int, int]:
    """(layers, groups per layer): the longest leading run of groups whose weight shapes repeat
    with a period (a decoder's layers, in graph order), as `layers * period` groups; the groups
    after it (the lm_head) stand alone. (0, 0) when nothing repeats."""
    shapes = [(g[0].weight_kn_shape()[0], sum(l.weight_kn_shape()[1] for l in g)) for g in groups]
    for tail in range(0, min(3, len(shapes))):
        body = shapes[: len(shapes) - tail]
        for period in range(1, len(body) // 2 + 1):
            if len(body) % period == 0 and all(body[i] == body[i % period] for i in range(len(body))):
                return len(body) // period, period
    return 0, 0


def _sensitivities(probe: Probe, groups: list[list[Linear]], int4: list[QuantizedWeight], batch: np.ndarray) -> list[float]:
    """KL from fp32 of each group's int4 weights, estimated from whole-model runs on `batch`.

    A decoder's `layers x period` grid (`layer_grid`) is measured by its margins: each layer's
    groups together, then each position in the layer (the same projection of every layer)
    together, and a group's KL taken as `layer * position / total` (the independence estimate of a
    table from its sums: KL adds up over small independent errors); groups off the grid (the
    lm_head) alone. `layers + period + rest` runs instead of one per group (SmolLM2: 35, not 121)."""
    reference = _log_softmax(probe.logits(batch))
    reference_p = np.exp(reference)

    def kl(members) -> float:
        overrides: dict[str, np.ndarray] = {}
        for i in members:
            overrides.update(probe.weights(i, int4[i]))
        logp = _log_softmax(probe.logits(batch, overrides))
        return float((reference_p * (reference - logp)).sum(-1).mean())

    layers, period = layer_grid(groups)
    grid = layers * period
    if layers < 2 or period < 2:
        return [kl([i]) for i in range(len(groups))]
    by_layer = [kl(range(l * period, (l + 1) * period)) for l in range(layers)]
    by_position = [kl(range(p, grid, period)) for p in range(period)]
    total = max(sum(by_layer), 1e-12)
    out = [max(by_layer[i // period], 0.0) * max(by_position[i % period], 0.0) / total for i in range(grid)]
    return out + [kl([i]) for i in range(grid, len(groups))]


def choose(
    model: ir.Model,
    groups: list[list[Linear]],
    int4: list[QuantizedWeight],
    int8: Callable[[int], QuantizedWeight],
    fit: Sequence[np.ndarray],
    held_out: Sequence[np.ndarray],
    budget: float,
    sensitivity: Sequence[float] | None = None,
    aim: float = 0.75,
    sensitivity_tokens: int = 32,
    held_out_tokens: int = 768,
    max_candidates: int = 5,
    smoothing: Sequence[ChannelTransform | None] | None = None,
) -> Choice:
    """Bits per group (4 or 8) for the cheapest assignment found whose perplexity change measured
    on the `held_out` windows (their first `held_out_tokens` tokens, in turn from each kind of
    text) is within `aim * budget`: the margin for what a few hundred held-out tokens cannot predict
    of unseen text (SmolLM2: held-out +9.9% was +12.7% on the evaluation split).

    Sensitivity: each group's int4 weights in the fp32 graph, the KL divergence of the next-token
    distribution from fp32 over `sensitivity_tokens` tokens of the first `fit` window
    (`_sensitivities`: a decoder's grid estimated from its layer and projection margins; only
    the order is used); `sensitivity` given (measured before on the same weights and
    calibration), it is not measured again. Groups are promoted to
    int8 in order of KL per extra byte; the number promoted is aimed from the measured changes (the
    change taken as proportional to the KL left in int4), each candidate measured, at most
    `max_candidates` (all int4 first). `smoothing`: per group the `_smooth.ChannelTransform` its
    quantized weights were made with, None where none."""
    start = time.perf_counter()
    target = budget * aim
    windows = first_tokens(held_out, held_out_tokens)
    probe = Probe(model, groups, smoothing)
    if sensitivity is None or len(sensitivity) != len(groups):
        sensitivity = _sensitivities(probe, groups, int4, fit[0][None, :sensitivity_tokens])
    sens_seconds = time.perf_counter() - start
    extra = np.array([max(quantized_bytes(int8(i)) - quantized_bytes(qw), 1) for i, qw in enumerate(int4)], np.float64)
    sensitivity = [float(s) for s in sensitivity]
    order = sorted(range(len(groups)), key=lambda i: -sensitivity[i] / extra[i])  # most KL per extra byte first
    total = float(sum(sensitivity)) or 1.0
    remaining = np.maximum(total - np.cumsum([sensitivity[i] for i in order]), 0.0) / total  # share left in int4 after a prefix
    base_nll = _nll(probe, windows, None)

    def measure(promoted: int) -> float:
        chosen = set(order[:promoted])
        overrides: dict[str, np.ndarray] = {}
        for i, qw in enumerate(int4):
            overrides.update(probe.weights(i, int8(i) if i in chosen else qw))
        change = float(np.exp(_nll(probe, windows, overrides) - base_nll) - 1)
        del overrides
        return change

    measured = [(0, measure(0))]
    best = (0, measured[0][1]) if measured[0][1] <= target else None
    low = 0  # the largest prefix measured over the aim
    while best is None or best[0] > low + 1:
        if len(measured) >= max_candidates:
            break
        if best is None:
            # the change left taken as proportional to the sensitivity left in int4, scaled by the
            # last measurement over the aim; aimed at 85% of the aim
            last_n, last_change = low, next(c for n, c in measured if n == low)
            share = (remaining[last_n - 1] if last_n else 1.0) * 0.85 * target / max(last_change, 1e-9)
            nxt = int(np.searchsorted(-remaining, -share)) + 1
            if len(measured) > 1:  # the proportional guess already missed once: no more than halfway to all int8
                nxt = min(nxt, low + max(1, (len(groups) - low) // 2))
            nxt = min(max(nxt, low + 1), len(groups))
        else:
            nxt = (low + best[0]) // 2  # bisect towards fewer int8 groups
            if nxt <= low:
                break
        change = measure(nxt)
        measured.append((nxt, change))
        if change <= target:
            best = (nxt, change) if best is None or nxt < best[0] else best
        else:
            low = max(low, nxt)
            if nxt == len(groups):
                break
    met = best is not None
    if met:
        count, change = best
    else:
        count = len(groups)
        change = next((c for n, c in measured if n == count), None)
        if change is None:
            change = measure(count)
            measured.append((count, change))
    chosen = set(order[:count])
    bits = [8 if i in chosen else 4 for i in range(len(groups))]
    seconds = time.perf_counter() - start
    logger.info("precision: %d groups' sensitivity in %.1f s; %d of %d int8, held-out perplexity %+.2f%% (aim %+.1f%%, budget "
                "%+.0f%%) over %d tokens, %d candidates; %.1f s in all", len(groups), sens_seconds, count, len(groups), 100 * change,
                100 * target, 100 * budget, sum(len(w) for w in windows), len(measured), seconds)
    return Choice(bits, change, budget, met, sensitivity, measured, seconds, target, int(sum(len(w) for w in windows)))
