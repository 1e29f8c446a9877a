"""The repo's `README.md`: a `huggingface_hub.ModelCard` with validated metadata, the export report
in short, the precisions with their download sizes, and copy-paste usage for this package,
optimum-onnx, transformers.js (one `dtype` per precision present), onnxruntime-genai (saying which
precision its config runs) and onnxruntime's model package."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .errors import ModelCardError
from .precisions import PrecisionFile

__all__ = ["CardInputs", "build_model_card", "validate_model_card", "PACKAGE_TAG", "DEFAULT_LIBRARY_NAME"]

PACKAGE_TAG = "optimum-onnx23"
# The Hub lists a repo under one library; transformers.js is the one whose loader reads this exact
# layout (onnx/ + config at the root) from the Hub, and its snippet/widget needs no custom code.
DEFAULT_LIBRARY_NAME = "transformers.js"
_VERSIONS_SHOWN = ("optimum-onnx23", "torch", "transformers", "onnx", "onnxscript", "onnx-ir", "onnxruntime")


@dataclass
class CardInputs:
    """What the card is made of; `files` maps path in repo -> bytes."""

    repo_id: str
    report: dict[str, Any]
    files: dict[str, int]
    model_type: str
    opset: int
    variants: list[str] = field(default_factory=list)
    base_model: str | None = None
    library_name: str = DEFAULT_LIBRARY_NAME
    license: str | None = None
    has_genai_config: bool = True
    precisions: list[PrecisionFile] = field(default_factory=list)  # the main graph first
    genai_precision: PrecisionFile | None = None  # the graph genai_config.json names
    model_package: bool = False  # onnx/manifest.json is published


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _report_section(report: dict[str, Any], opset: int) -> str:
    lines = ["## Export report", ""]
    if not report:
        return "\n".join(lines + [f"ONNX opset {opset}. The folder had no `export_report.json`, so versions, fusions and parity are unknown."])
    lines.append(
        f"Exported with `optimum-cli export onnx --dynamo` (torch.export), ONNX opset {opset}, "
        f"dtype {report.get('dtype', 'unknown')}, task `{report.get('task', 'text-generation-with-past')}`."
    )
    versions = report.get("versions") or {}
    if versions:
        lines += ["", "| package | version |", "| --- | --- |"]
        lines += [f"| {name} | {versions[name]} |" for name in _VERSIONS_SHOWN if name in versions]
    op_counts = (report.get("fusions") or {}).get("op_counts") or {}
    expected = report.get("expected_fusions") or {}
    if op_counts:
        lines += ["", "Fused standard ops (count in the graph / expected for the architecture):", ""]
        lines += ["| op | fused | expected |", "| --- | --- | --- |"]
        for op, count in op_counts.items():
            lines.append(f"| {op} | {count} | {expected.get(op, '-')} |")
    validation = report.get("validation") or {}
    if validation:
        worst = max((d for per_shape in validation.values() for d in per_shape.values()), default=0.0)
        lines += [
            "",
            f"Parity with PyTorch: max |ONNX − PyTorch| = {worst:.2e} over {len(validation)} input shapes "
            f"(tolerance {report.get('atol', 0):g}), every output checked:",
            "",
            "| shape | max abs diff |",
            "| --- | --- |",
        ]
        lines += [f"| {shape} | {max(d.values(), default=0.0):.2e} |" for shape, d in validation.items()]
    warnings = report.get("warnings") or []
    if warnings:
        lines += ["", "Export warnings:", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines)


def _js_dtype_line(precisions: list[PrecisionFile]) -> tuple[str, str]:
    """The dtype the snippet uses (the smallest download) and a comment listing every dtype present."""
    if not precisions:
        return "fp32", ""
    chosen = min(precisions, key=lambda p: p.size)
    offered = ", ".join(f'"{p.dtype}" ({p.precision}, {_size(p.size)})' for p in sorted(precisions, key=lambda p: p.size))
    return chosen.dtype, f"// dtype: {offered}"


def _quantization_lines(report: dict[str, Any]) -> list[str]:
    """What the int4 variants' measured precision chose and which quantized variants smooth their
    activations (export report), one line each."""
    lines = []
    for name, entry in ((report.get("variants") or {}).get("variants") or {}).items():
        smoothing = entry.get("smoothing") if isinstance(entry, dict) else None
        if smoothing and smoothing.get("groups"):
            how = ("scales searched per group (AWQ-style)" if smoothing.get("alpha") == "search"
                   else f"SmoothQuant, alpha {smoothing.get('alpha')}")
            lines += ["", f"`{name}`: activations smoothed per input channel before {smoothing['groups']} matmuls ({how}, "
                      "from calibration text; the fp32 function unchanged), so that int8 activation blocks keep their precision."]
        q = entry.get("quantization") if isinstance(entry, dict) else None
        if not q:
            continue
        groups = ", ".join(f"{role}: " + " + ".join(f"{n} int{b}" for b, n in ((4, c["int4"]), (8, c["int8"])) if n) for role, c in q["groups"].items())
        verdict = "within" if q["met"] else "**over**"
        lines += ["", f"`{name}`: bits per tensor group chosen by measured sensitivity ({groups}); "
                  f"{q['bytes_read_per_token'] / 1e6:.1f} MB of weights read per token; perplexity change on "
                  f"{q['held_out_tokens']} held-out calibration tokens {100 * q['perplexity_change']:+.2f}%, "
                  f"{verdict} the budget of {100 * q['budget']:+.1f}%."]
    return lines


def _usage_section(inputs: CardInputs) -> str:
    repo_id, prompt = inputs.repo_id, "Hello, my name is"
    dtype, dtype_comment = _js_dtype_line(inputs.precisions)
    parts = [
        "## Usage",
        "",
        "### optimum-onnx23",
        "",
        "```python",
        "from optimum_onnx23 import pipeline",
        "",
        f'generator = pipeline("text-generation", model="{repo_id}", accelerator="ort")',
        f'print(generator("{prompt}", max_new_tokens=32)[0]["generated_text"])',
        "```",
    ]
    if inputs.variants:
        parts += [
            "",
            "It downloads `onnx/model.onnx` and runs the backend variant inside it that suits the session's first "
            "execution provider (" + ", ".join(f"`{v}`" for v in inputs.variants) + "), else the main graph.",
        ]
    parts += [
        "",
        "### optimum-onnx (`ORTModelForCausalLM`)",
        "",
        "```python",
        "from optimum.onnxruntime import ORTModelForCausalLM",
        "from transformers import AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
        f'model = ORTModelForCausalLM.from_pretrained("{repo_id}", subfolder="onnx", file_name="model.onnx")',
        f'inputs = tokenizer("{prompt}", return_tensors="pt")',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0]))",
        "```",
        "",
        "### transformers.js",
        "",
        "```js",
        'import { pipeline } from "@huggingface/transformers";',
        "",
        *([dtype_comment] if len(inputs.precisions) > 1 else []),
        f'const generator = await pipeline("text-generation", "{repo_id}", {{ dtype: "{dtype}" }});',
        f'const output = await generator("{prompt}", {{ max_new_tokens: 32 }});',
        "console.log(output[0].generated_text);",
        "```",
    ]
    if inputs.has_genai_config:
        genai = inputs.genai_precision
        which = (
            f"`genai_config.json` runs `{genai.graph}` ({genai.precision}). "
            if genai is not None else ""
        )
        others = [p for p in inputs.precisions if genai is None or p.graph != genai.graph]
        if others:
            which += (
                "The precision is chosen when publishing (`--genai-precision` "
                + " | ".join(dict.fromkeys(p.precision for p in inputs.precisions)) + ")."
            )
        parts += [
            "",
            "### onnxruntime-genai",
            "",
            *([which.strip(), ""] if which else []),
            "```python",
            "import onnxruntime_genai as og",
            "from huggingface_hub import snapshot_download",
            "",
            f'model = og.Model(snapshot_download("{repo_id}"))',
            "tokenizer = og.Tokenizer(model)",
            "params = og.GeneratorParams(model)",
            "params.set_search_options(max_length=64)",
            "generator = og.Generator(model, params)",
            f'generator.append_tokens(tokenizer.encode("{prompt}"))',
            "while not generator.is_done():",
            "    generator.generate_next_token()",
            "print(tokenizer.decode(generator.get_sequence(0)))",
            "```",
        ]
    if inputs.model_package:
        parts += [
            "",
            "### onnxruntime model package",
            "",
            "`onnx/manifest.json` maps each execution provider to its graph (onnxruntime >= 1.32 picks the first "
            "listed for the session's first provider: the same choice as optimum-onnx23's sessions).",
            "",
            "```python",
            "import onnxruntime as ort",
            "from huggingface_hub import snapshot_download",
            "",
            f'package = ort.ModelPackageContext(snapshot_download("{repo_id}") + "/onnx")',
            "options = ort.SessionOptions()",
            'options.add_provider("CPUExecutionProvider", {})',
            'decoder = package.select_component("decoder", ort.ModelPackageOptions(options))',
            "print(decoder.get_selected_variant_name())",
            "session = decoder.create_session()",
            "```",
        ]
    return "\n".join(parts)


def _summary(inputs: CardInputs, source: str) -> str:
    task = inputs.report.get("task", "text-generation-with-past")
    cache = "with the KV cache as graph inputs and outputs" if task.endswith("-with-past") else "without a KV cache"
    data = sorted(p for p in inputs.files if p.startswith("onnx/") and not p.endswith((".onnx", ".json")))
    weights = "weights in " + ", ".join(f"`{p}`" for p in data) if data else "weights inside the graph"
    runtimes = "optimum-onnx23 or optimum-onnx, and in transformers.js"
    if inputs.has_genai_config:
        runtimes = "optimum-onnx23 or optimum-onnx, in transformers.js, and in onnxruntime-genai (`genai_config.json`)"
    made_with = "made with optimum-onnx23: " if inputs.report else ""
    return (
        f"ONNX export of {source} (`{inputs.model_type}`) for text generation {cache}, {made_with}"
        f"opset-{inputs.opset} ops, optimum's input and output names, {weights}. "
        f"The same files run in onnxruntime through {runtimes}."
    )


def _precisions_section(inputs: CardInputs) -> list[str]:
    """One row per precision: the files a consumer downloads for it and their total size."""
    if not inputs.precisions:
        return []
    lines = [
        "## Precisions",
        "",
        "| precision | transformers.js `dtype` | graph | download | from |",
        "| --- | --- | --- | --- | --- |",
    ]
    for p in inputs.precisions:
        if p.variant:
            origin = f"backend variant `{p.variant}`"
        elif p.graph.endswith("/model.onnx"):
            origin = "main graph" + (" (its data file also holds the in-file variants' weights)" if inputs.variants else "")
        else:
            origin = "file as published"
        lines.append(f"| {p.precision} | `{p.dtype}` | `{p.graph}` | {_size(p.size)} | {origin} |")
    if any(p.variant for p in inputs.precisions):
        lines += [
            "",
            "Each backend variant's file is the graph optimum-onnx23's sessions run when they select it from "
            "`onnx/model.onnx`, with its own external data holding only the tensors it reads.",
        ]
    return lines + [""]


def build_model_card(inputs: CardInputs) -> ModelCard:
    """The card for `inputs`; its metadata passes `validate_model_card`."""
    tags = ["onnx", f"opset-{inputs.opset}", PACKAGE_TAG, "transformers.js", "onnxruntime-genai", inputs.model_type]
    tags += [v for v in inputs.variants if v not in tags]
    if not inputs.has_genai_config:
        tags.remove("onnxruntime-genai")
    data = ModelCardData(
        base_model=inputs.base_model,
        library_name=inputs.library_name,
        pipeline_tag="text-generation",
        license=inputs.license,
        tags=tags,
    )
    source = f"[{inputs.base_model}](https://huggingface.co/{inputs.base_model})" if inputs.base_model else "a transformers checkpoint"
    files = _precisions_section(inputs) + ["## Files", "", "| file | precision | size |", "| --- | --- | --- |"]
    precision_of = {path: p.precision for p in inputs.precisions for path in (p.graph, *p.data)}
    files += [f"| `{path}` | {precision_of.get(path, '-')} | {_size(size)} |" for path, size in sorted(inputs.files.items())]
    if inputs.variants:
        files += ["", "Attached variants: " + ", ".join(f"`{v}`" for v in inputs.variants) + "."]
    files += _quantization_lines(inputs.report)
    body = "\n\n".join(
        [
            f"# {inputs.repo_id.split('/')[-1]} (ONNX)",
            _summary(inputs, source),
            _usage_section(inputs),
            _report_section(inputs.report, inputs.opset),
            "\n".join(files),
        ]
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")
    validate_model_card(card)
    return card


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_repo_ids(field_name: str, value: Any) -> None:
    for repo_id in value if isinstance(value, list) else [value]:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as error:
            raise ModelCardError(
                f"Model card metadata `{field_name}: {repo_id}` is not a Hub model id ({_first_line(error)}); "
                "pass a Hub id such as `org/name`, or leave it out."
            ) from None
        if not isinstance(repo_id, str) or not repo_id:
            raise ModelCardError(f"Model card metadata `{field_name}` must be a Hub model id, got {repo_id!r}.")


def validate_model_card(card: ModelCard | str) -> ModelCard:
    """Check the card's metadata offline, with huggingface_hub's parser and validators.

    Guarantees: YAML metadata that parses to a mapping, a non-empty `library_name`, `pipeline_tag`
    `text-generation`, tags that are a list of non-empty strings including `onnx`, and `base_model`
    entries that are valid Hub ids. Raises `ModelCardError` (one line) otherwise.
    """
    try:
        card = card if isinstance(card, ModelCard) else ModelCard(card)
        # Round-trip through YAML: what the Hub parses is the text, not our objects.
        card = ModelCard(str(card))
    except (ValueError, yaml.YAMLError) as error:
        raise ModelCardError(f"Model card metadata is not valid YAML ({_first_line(error)}); fix README.md's header.") from None
    meta = card.data.to_dict()
    if not isinstance(meta.get("library_name"), str) or not meta["library_name"]:
        raise ModelCardError("Model card metadata has no `library_name`; add `library_name: transformers.js` to README.md's header.")
    if meta.get("pipeline_tag") != "text-generation":
        raise ModelCardError(
            f"Model card metadata `pipeline_tag: {meta.get('pipeline_tag')}` is wrong for a decoder LLM; set `pipeline_tag: text-generation`."
        )
    tags = meta.get("tags")
    if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
        raise ModelCardError(f"Model card metadata `tags` must be a list of non-empty strings, got {tags!r}.")
    if "onnx" not in tags:
        raise ModelCardError("Model card metadata `tags` lacks `onnx`; add it so the Hub lists the repo as an ONNX model.")
    if meta.get("base_model") is not None:
        _check_repo_ids("base_model", meta["base_model"])
    return card
