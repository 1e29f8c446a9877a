"""How much a variant changes a model's predictions on real text: perplexity, and top-1 agreement
with a reference (PyTorch on the same weights), on a fixed evaluation set.

The evaluation texts ship with the package (`data/quality/eval/`, ~10,500 SmolLM2 tokens: original
English prose, a public-domain chapter, Python code from this repository, original JavaScript,
chat turns, and prose in French, German, Spanish, Italian, Portuguese, Russian, Chinese and
Japanese). The texts that calibrated variants are quantized with (`data/quality/calibration/`,
~6,200 tokens of the same four kinds: prose, code (Python, shell, SQL, C), chat, multilingual) are
disjoint from them: other topics, other programs, no shared passage (tests/test_quality_texts.py).
Every file's name starts with its kind (`KINDS`).
Each text is cut into windows of `window` tokens, each scored as one prompt (every position
predicts the next token). `benchmarks/quality_bench.py` prints the table for every variant; the
real-checkpoint tests assert the documented limits on a subset.

    windows = eval_windows(tokenizer)
    reference = score(windows, torch_logits(hf_model))
    variant = score(windows, onnx_logits(ort_model), reference.top1_ids)
    variant.perplexity, variant.agreement
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["EVAL_DIR", "KINDS", "Score", "kind_of", "eval_windows", "score", "torch_logits", "onnx_logits"]

EVAL_DIR = Path(__file__).resolve().parents[1] / "data" / "quality" / "eval"
KINDS = ("prose", "code", "chat", "multilingual")  # each split has every kind; a file's name starts with its kind


def kind_of(path: Path) -> str:
    """The kind of a quality text file, from its name (`code_javascript.txt` -> `code`)."""
    kind = path.stem.split("_")[0]
    if kind not in KINDS:
        raise ValueError(f"{path.name}: a quality text's name must start with one of {', '.join(KINDS)}")
    return kind

LogitsFn = Callable[[np.ndarray], np.ndarray]  # token ids [S] -> float logits [S, vocab]


@dataclass
class Score:
    perplexity: float
    tokens: int  # positions scored (each window's last position predicts nothing)
    agreement: float | None = None  # share of positions whose argmax equals the reference's
    top1_ids: list[np.ndarray] = field(default_factory=list, repr=False)  # argmax per window, for other scores


def eval_windows(tokenizer, window: int = 512, files: Sequence[str] | None = None, max_windows: int | None = None) -> list[np.ndarray]:
    """The evaluation texts (all, or the named files of `EVAL_DIR`) tokenized without special
    tokens and cut into windows of at most `window` tokens; `max_windows` keeps the first ones of
    each file (a subset for tests)."""
    paths = sorted(EVAL_DIR.glob("*.txt")) if files is None else [EVAL_DIR / f for f in files]
    windows: list[np.ndarray] = []
    for path in paths:
        ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        chunks = [np.array(ids[i : i + window], np.int64) for i in range(0, len(ids), window)]
        windows += [c for c in chunks if len(c) > 1][:max_windows]
    return windows


def score(windows: Sequence[np.ndarray], logits: LogitsFn, reference: Sequence[np.ndarray] | None = None, rows: int = 64) -> Score:
    """Perplexity of `logits` on `windows` (exp of the mean next-token negative log-likelihood),
    and with `reference` (another score's `top1_ids`) the share of positions whose argmax agrees."""
    nll, count, agree = 0.0, 0, 0
    top1 = []
    for i, ids in enumerate(windows):
        raw = logits(ids)
        best = np.empty(len(ids) - 1, np.int64)
        for start in range(0, len(ids) - 1, rows):  # float64 in slices: a 262k vocabulary's window is ~1 GB at once
            out = np.asarray(raw[start : min(start + rows, len(ids) - 1)], np.float64)
            peak = out.max(-1)
            log_z = np.log(np.exp(out - peak[:, None]).sum(-1)) + peak
            nll += float((log_z - out[np.arange(len(out)), ids[start + 1 : start + 1 + len(out)]]).sum())
            best[start : start + len(out)] = out.argmax(-1)
        del raw
        count += len(best)
        top1.append(best)
        if reference is not None:
            agree += int((best == reference[i]).sum())
    return Score(float(np.exp(nll / count)), count, agree / count if reference is not None else None, top1)


def torch_logits(model) -> LogitsFn:
    """A transformers causal LM as a `LogitsFn` (fp32 logits, no cache)."""
    import torch

    def run(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(ids)[None], use_cache=False).logits[0].float().numpy()

    return run


def onnx_logits(model) -> LogitsFn:
    """An `ORTModelForCausalLM` (exported with logits for all positions) as a `LogitsFn`."""

    def run(ids: np.ndarray) -> np.ndarray:
        return model(ids[None], use_cache=False).logits[0]

    return run
