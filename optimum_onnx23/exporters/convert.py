"""Stage 1 of the data flow: export a transformers decoder with torch.export to ONNX.

`export()` checks the arguments, reads the config, and runs the export steps (`steps.STEPS`:
load, trace, optimize, fuse, save, validate against PyTorch, ...) over one context inside a
staging folder that is moved into place only when every step has passed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from ..arguments import LOGITS_MODES, MIN_OPSET, check_export_arguments, max_opset  # noqa: F401 (re-exported)
from ..contract import EXPORT_REPORT_FILE
from ..errors import InvalidArgumentError
from . import steps
from .families import get_export_config
from .output import check_output_folder, staged_output_folder
from .pipeline import ExportContext, ExportOptions, run_steps
from .report import ExportReport
from .steps import DTYPES, ONNX_DATA_NAME, ONNX_FILE_NAME
from .tracing.checkpoint import load_model_config
from .validate import DEFAULT_TOLERANCES

__all__ = ["export", "DTYPES", "MIN_OPSET", "max_opset", "load_model_config", "ONNX_FILE_NAME", "ONNX_DATA_NAME"]

logger = logging.getLogger(__name__)

def _check_device(device: str) -> None:
    """The device to trace on must exist in this torch build and hold real weights."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(f"Unknown device `{device}`; pass --device cpu, cuda or cuda:N.") from None
    if parsed.type == "meta":
        raise InvalidArgumentError("--device meta holds no weights to trace or validate; pass --device cpu or cuda.")
    if parsed.type != "cpu":
        backend = getattr(torch, parsed.type, None)
        available = backend is not None and hasattr(backend, "is_available") and backend.is_available()
        if not available:
            raise InvalidArgumentError(f"--device {device}: this torch build has no {parsed.type} device; pass --device cpu.")
        if parsed.index is not None and parsed.index >= backend.device_count():
            raise InvalidArgumentError(f"--device {device}: there are only {backend.device_count()} {parsed.type} devices.")


def _check_options(options: ExportOptions) -> None:
    """One-line errors for every argument, before anything is loaded or written."""
    check_export_arguments(  # the torch-free ones, which the CLI also runs before its heavy imports
        task=options.task, opset=options.opset, dtype=options.dtype, atol=options.atol, rtol=options.rtol,
        logits=options.logits, cache=options.cache, max_cache_len=options.max_cache_len, variants=options.variants,
        attn_implementation=options.attn_implementation,
    )
    _check_device(options.device)
    from .passes.weight_format import WEIGHT_FORMATS

    if options.weight_format not in WEIGHT_FORMATS:
        raise InvalidArgumentError(f"Unknown weight format `{options.weight_format}`; pass --weight-format with one of: {', '.join(WEIGHT_FORMATS)}.")
    if options.weight_format != "fp32" and (options.dtype != "fp32" or options.opset < 21):
        raise InvalidArgumentError(
            f"--weight-format {options.weight_format} quantizes fp32 graphs of opset 21 or newer (blocked DequantizeLinear); "
            "drop --dtype / pass --opset 23."
        )
    quantizing = [v for v in options.variants if v in ("int4", "int8", "ort-cpu-int4", "ort-cpu-int8")]
    if options.weight_format != "fp32" and quantizing:
        raise InvalidArgumentError(
            f"--weight-format {options.weight_format}: the main graph's linears are already quantized, so variant {quantizing[0]} "
            "has no float weights to quantize; drop one of the two."
        )


def export(
    model_name_or_path: str | os.PathLike,
    output: str | os.PathLike,
    task: str | None = None,
    opset: int = 23,
    dtype: str = "fp32",
    device: str = "cpu",
    fusions_enabled: bool = True,
    atol: float | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    cache_dir: str | None = None,
    token: str | bool | None = None,
    overwrite: bool = False,
    cache: str = "dynamic",
    max_cache_len: int | None = None,
    logits: str = "all",
    variants: Sequence[str] = (),
    rtol: float | None = None,
    gguf_file: str | None = None,
    attn_implementation: str | None = None,
    streamed: bool = False,
    weight_format: str = "fp32",
    quant_budget: float | None = None,
) -> ExportReport:
    """Export a transformers decoder LLM to an ONNX folder with the dynamo exporter.

    Args:
        model_name_or_path: a local model folder or a Hugging Face Hub model id.
        output: the folder to write; refused if it exists and is not empty, unless `overwrite`.
        task: `text-generation-with-past` (default, KV cache as graph I/O) or `text-generation`.
        opset: ONNX opset, 18 up to the newest onnx supports; fusions need 23 or more.
        dtype: `fp32`, `fp16` or `bf16` weights and activations.
        fusions_enabled: run the fusion stage (standard Attention, RMSNormalization, RotaryEmbedding).
        atol, rtol: every output must satisfy max |ONNX - PyTorch| <= atol + rtol * max |PyTorch|,
            and the logits must pick PyTorch's top-1 token (ties within that error excepted).
            Defaults per dtype: fp32 1e-4 and 1e-4, fp16 2e-2 and 1e-2, bf16 1e-1 and 2e-2.
        cache: `dynamic` (default; past and present grow by the step's length) or `static`:
            fixed `[batch, kv_heads, max_cache_len, head_dim]` buffers written in place by
            TensorScatter (opset 24) at the `write_indices` input; see `exporters.passes.static_cache`.
        max_cache_len: the static buffer length N (prompt plus new tokens); static cache only.
        logits: `all` (default: logits for every position) or `last` (the last position only,
            all generation needs; a shorter prefill). Recorded in the ONNX metadata.
        variants: built-in backend variants to attach after validation (`int4`, `int8`,
            `ort-cpu-int4`, `ort-cpu-int8`, `ort-cpu-moe`, `ort-cpu-gqa`, `ort-cpu`, `backend-context`); see
            `optimum_onnx23.variants`.
        quant_budget: the int4 variants' quality budget: the perplexity change allowed on held-out
            calibration text (default 0.10); which groups stay int8 is measured against it.
        gguf_file: export the weights of this GGUF file (llama.cpp format) of the model folder or
            Hub repository, dequantized by transformers' GGUF loader; needs the `gguf` package.
        attn_implementation: `flex_attention` traces transformers' flex attention and exports
            torch's flex_attention op as `ai.onnx.preview.FlexAttention` (score_mod / mask_mod as its
            `score_mod` graph; onnxruntime runs the `ort-cpu-functions` variant, its function body).
            Default None: the family's own attention, fused into opset-23 `Attention`.
        streamed: never hold the model in memory (big models on small machines): only the weights
            outside the decoder layers and those of the 4 traced layers are read; the other
            layers' weights go from the local safetensors files to `model.onnx_data` one tensor at
            a time, and the PyTorch reference of the validation runs one layer's weights at a time.
            Needs a local safetensors folder and a decoder of identical layers; CPU only.
        weight_format: `fp32` (default: the `dtype` weights), `int4` or `int8`: the main graph's
            linear weights as blocked `DequantizeLinear` + `MatMul` (the `int4` variant's form and
            RTN quantizer; the lm_head int8), quantized tensor by tensor as `model.onnx_data` is
            written (with `streamed`, the fp32 form is never held). Validated against PyTorch on
            the same dequantized weights (`exporters.passes.weight_format`). Needs dtype fp32.

    Returns:
        The `ExportReport`, also written as `export_report.json` in `output`.
    """
    options = ExportOptions(
        model=str(model_name_or_path), output=Path(output), task=task or "text-generation-with-past", opset=opset,
        dtype=dtype, device=device, fusions_enabled=fusions_enabled, atol=atol, rtol=rtol,
        trust_remote_code=trust_remote_code, revision=revision, cache_dir=cache_dir, token=token, overwrite=overwrite,
        cache=cache, max_cache_len=max_cache_len, logits=logits, variants=tuple(variants), gguf_file=gguf_file,
        attn_implementation=attn_implementation,
        streamed=streamed,
        weight_format=weight_format,
        quant_budget=quant_budget,
    )
    _check_options(options)
    check_output_folder(options.output, overwrite)
    config = load_model_config(options.model, revision, cache_dir, trust_remote_code, token, gguf_file=gguf_file)
    export_config = get_export_config(config.model_type)
    default = DEFAULT_TOLERANCES[dtype]
    report = ExportReport(
        model=options.model, model_type=config.model_type, task=options.task, opset=opset, dtype=dtype,
        atol=default.atol if atol is None else atol, rtol=default.rtol if rtol is None else rtol,
        cache=cache, max_cache_len=options.static_len, logits=logits, gguf_file=gguf_file,
        attn_implementation=attn_implementation,
    )
    with staged_output_folder(options.output) as staging:
        run_steps(ExportContext(options, report, staging, config, export_config), steps.STEPS)
        report.output = str(options.output.absolute())
        report.save(staging / EXPORT_REPORT_FILE)
        report.files = {p.name: p.stat().st_size for p in sorted(staging.iterdir())}
        report.save(staging / EXPORT_REPORT_FILE)

    checked = f"max |diff| {report.max_abs_diff:.2e}" if report.validation else "NOT validated against PyTorch"
    logger.info("Exported %s to %s (%s)", options.model, options.output, checked)
    return report
