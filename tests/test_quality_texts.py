"""The bundled quality texts: the calibration split (what calibrated quantization sees) and the
evaluation split (what quality is measured on) are disjoint, and each covers prose, code, chat and
multilingual text. No model: tokenization-free checks on the files themselves."""

from __future__ import annotations

import re
from pathlib import Path

from optimum_onnx23.variants.producers._calibration import CALIBRATION_DIR
from optimum_onnx23.variants.quality import EVAL_DIR, KINDS, kind_of

SHINGLE = 8  # words: a shared run of 8 words would be a shared passage, not a common phrase


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < SHINGLE:  # scripts without spaces (Chinese, Japanese): 8-character runs
        words = [c for c in text if not c.isspace()]
    return {tuple(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def _texts(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


def test_each_split_covers_every_kind():
    for folder in (CALIBRATION_DIR, EVAL_DIR):
        kinds = {kind_of(folder / name) for name in _texts(folder)}
        assert kinds == set(KINDS), f"{folder.name}: {sorted(kinds)}"


def test_multilingual_texts_cover_several_scripts():
    for folder in (CALIBRATION_DIR, EVAL_DIR):
        text = (folder / "multilingual.txt").read_text(encoding="utf-8")
        scripts = {
            "latin accents": re.search(r"[éèàäöüñçãõ]", text), "cyrillic": re.search(r"[а-яА-Я]", text),
            "han": re.search(r"[\u4e00-\u9fff]", text), "kana": re.search(r"[\u3040-\u30ff]", text),
        }
        assert all(scripts.values()), f"{folder.name}: missing {[k for k, v in scripts.items() if not v]}"


def test_calibration_and_evaluation_share_no_passage():
    calibration = {name: _shingles(text) for name, text in _texts(CALIBRATION_DIR).items()}
    for name, text in _texts(EVAL_DIR).items():
        mine = _shingles(text)
        assert len(mine) > 100, name
        for other, theirs in calibration.items():
            shared = mine & theirs
            # a code file may share a boilerplate line (license header, imports) but no passage
            assert len(shared) <= 3, f"eval/{name} and calibration/{other} share {len(shared)} runs of {SHINGLE} words, e.g. {sorted(shared)[:2]}"
