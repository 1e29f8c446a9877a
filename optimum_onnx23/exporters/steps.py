"""The steps of an export, in order (`STEPS`); `convert.export` runs them over one `ExportContext`.

load -> trace -> optimize -> fuse -> [static cache] -> [cache layout] -> save -> validate -> tokenizer -> [variants].
Each step reads what earlier ones left on the context and fills its own part; the ones in
brackets apply only when the options ask for them. Everything is written into the staging folder,
which `export` moves into place only after the last step.
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir
import torch

from .. import fusions
from ..contract import INPLACE_STATES_KEY
from ..errors import UnsupportedArchitectureError
from .families import HybridExportConfig
from .families.cache_layout import CACHE_LAYOUT_KEY
from .memory import free_pytorch_weights
from .passes.inplace_states import inplace_safe_states
from .passes.optimize import optimize
from .passes.static_cache import lower_kv_writes, record_variant
from .pipeline import ExportContext, ExportStep
from .tokenizer import save_tokenizer
from .tracing.checkpoint import dequantized_config, load_causal_lm
from .tracing.signature import build_signature
from .tracing.trace import strip_trace_metadata, trace
from .validate import Tolerance, compare_with_references, pytorch_references

__all__ = ["STEPS", "DTYPES", "ONNX_FILE_NAME", "ONNX_DATA_NAME"]

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ONNX_FILE_NAME = "model.onnx"
ONNX_DATA_NAME = "model.onnx_data"  # optimum-onnx's and transformers.js' name for external weights


def _warn(ctx: ExportContext, message: str) -> None:
    logger.warning(message)
    ctx.report.warnings.append(message)


def _load(ctx: ExportContext) -> None:
    """The model, and the export signature (I/O, sample inputs, wrapper) every later step reads."""
    options = ctx.options
    ctx.config = ctx.export_config.text_config(ctx.config)  # a multimodal checkpoint's text decoder
    ctx.signature = build_signature(
        ctx.export_config, ctx.config, options.with_past, static_len=options.static_len, logits_to_keep=options.logits_to_keep
    )
    model = load_causal_lm(options.model, ctx.config, dtype=DTYPES[options.dtype], **ctx.export_config.load_kwargs(), **options.hub_kwargs())
    ctx.model = model.to(torch.device(options.device)).eval()
    ctx.wrapper = ctx.signature.wrapper(ctx.model)


def _trace(ctx: ExportContext) -> None:
    options = ctx.options
    ctx.onnx_model, ctx.report.traced_layers = trace(
        ctx.wrapper, ctx.signature, options.opset, DTYPES[options.dtype], torch.device(options.device)
    )


def _optimize(ctx: ExportContext) -> None:
    optimize(ctx.onnx_model)
    strip_trace_metadata(ctx.onnx_model)


def _fuse(ctx: ExportContext) -> None:
    """Fuse, then compare what fused with what the architecture has (a gap is a warning)."""
    options, model = ctx.options, ctx.onnx_model
    if options.fusions_enabled:
        fusion_report = fusions.fuse(model)
    else:
        fusion_report = fusions.FusionReport(opset=options.opset, skipped_reason="disabled by --no-fusions")
        fusion_report.op_counts = {op: fusions.count_ops(model).get(op, 0) for op in fusions.standard_ops(options.opset)}
    ctx.report.fusions = fusion_report.to_dict()
    ctx.report.op_histogram = dict(sorted(fusions.count_ops(model).items()))
    if options.fusions_enabled and options.opset >= fusions.MIN_FUSION_OPSET:
        ctx.report.expected_fusions = ctx.export_config.expected_fusions(ctx.config)
        ctx.report.unfused = ctx.export_config.unfused_ops(ctx.config)
        for op, expected in ctx.report.expected_fusions.items():
            got = fusion_report.op_counts.get(op, 0)
            if got != expected:
                _warn(ctx, f"Fusion gap: {got} {op} nodes where the architecture has {expected}.")
    logger.info("  fused: %s", ", ".join(f"{k}={v}" for k, v in fusion_report.op_counts.items() if v))


def _lower_static_cache(ctx: ExportContext) -> None:
    writes = lower_kv_writes(ctx.onnx_model, ctx.signature.kv_inputs)
    expected = ctx.signature.kv_writes
    if writes != expected:
        raise UnsupportedArchitectureError(
            f"Static cache: found {writes} KV writes to lower where the model has {expected}; "
            "this architecture cannot be exported with --cache static yet."
        )
    ctx.report.op_histogram = dict(sorted(fusions.count_ops(ctx.onnx_model).items()))


def _save(ctx: ExportContext) -> None:
    """The graph with external weights, config.json and generation_config.json."""
    options, model = ctx.options, ctx.onnx_model
    if ctx.signature.static or ctx.signature.logits_to_keep:
        record_variant(model, options.cache, options.static_len, options.logits)
    model.graph.name = f"{ctx.config.model_type}_{options.task.replace('-', '_')}"
    ir.save(model, ctx.staging / ONNX_FILE_NAME, external_data=ONNX_DATA_NAME)
    ctx.onnx_model = None
    dequantized_config(ctx.model.config).save_pretrained(ctx.staging)
    if ctx.model.generation_config is not None:
        ctx.model.generation_config.save_pretrained(ctx.staging)


def _attach_function_bodies(ctx: ExportContext) -> None:
    """Before validation: where the saved graph uses a standard op onnxruntime has no kernel for and
    cannot inline (opset 28's SwiGLU: its body's Swish has no kernel either), attach
    `ort-cpu-functions` (the main graph with those ops' ONNX bodies), so onnxruntime validates, and
    our sessions run, the graph it selects; the main graph keeps the op."""
    from ..variants import attach_builtin_variants
    from ..variants.producers import ort_cpu_functions

    graph = ir.load(ctx.staging / ONNX_FILE_NAME)
    ops = ort_cpu_functions.ops_without_kernel(graph.graph, graph.opset_imports.get("", 23))
    if not ops:
        return
    attached = attach_builtin_variants(ctx.staging, [ort_cpu_functions.NAME])
    ctx.report.variants = attached
    _warn(
        ctx,
        f"onnxruntime has no kernel for {', '.join(ops)}: variant {ort_cpu_functions.NAME} (their ONNX function bodies) "
        "is attached and validated; sessions through optimum_onnx23 select it, a plain InferenceSession on model.onnx fails.",
    )


def _validation_session(ctx: ExportContext):
    """The CPU session validation runs on; None (with a warning) where onnxruntime's CPU provider has
    no kernel for the dtype (bf16 MatMul): the graph is then only checked by `onnx.checker`."""
    import onnxruntime as ort

    path = ctx.staging / ONNX_FILE_NAME
    options = ort.SessionOptions()
    # Pre-packing copies MatMul weights into MLAS' layout; three validation runs do not need it
    # (measured: -90 MB peak on the SmolLM-shaped model).
    options.add_session_config_entry("session.disable_prepacking", "1")
    if ctx.signature.static:
        options.log_severity_level = 3  # no IO binding here: TensorScatter's copy warning is expected
    try:
        if "ort-cpu-functions" in ctx.report.variants.get("variants", {}):
            from ..variants.runtime import select_for_providers

            selected, _ = select_for_providers(path, ["CPUExecutionProvider"])
            return selected.session(["CPUExecutionProvider"], options)
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's NotImplemented has no importable Python class
        dtype = ctx.options.dtype
        if dtype == "fp32" or "NOT_IMPLEMENTED" not in str(error):
            raise
        kernel = str(error).split("implementation for", 1)[-1].strip().split(" node")[0]
        onnx.checker.check_model(str(path), full_check=True)
        _warn(
            ctx,
            f"Not validated against PyTorch: onnxruntime's CPU provider has no {dtype} kernel for {kernel}; "
            "onnx.checker passed. Export fp32 (or validate on a GPU provider) for a numeric check.",
        )
        return None


def _validate(ctx: ExportContext) -> None:
    """PyTorch references first, then the PyTorch weights are freed and onnxruntime compares: the
    peak memory is the larger of the two, not their sum."""
    options, report = ctx.options, ctx.report
    references = pytorch_references(ctx.wrapper, ctx.signature, DTYPES[options.dtype], torch.device(options.device))
    free_pytorch_weights(ctx.model)
    ctx.model = ctx.wrapper = None
    session = _validation_session(ctx)
    if session is not None:
        result = compare_with_references(session, references, Tolerance(report.atol, report.rtol))
        report.validation, report.validation_allowed, report.validation_top1 = result.max_abs_diff, result.allowed, result.top1


def _records_cache_layout(ctx: ExportContext) -> bool:
    return isinstance(ctx.export_config, HybridExportConfig) and ctx.options.with_past


def _record_cache_layout(ctx: ExportContext) -> None:
    """Before saving: which layer holds what into the report (`cache_layout`), the ONNX metadata
    and config.json (`optimum_onnx23_cache_layout`), and the states the runtime may bind as input
    and output at once (ONNX metadata `INPLACE_STATES_KEY`, see passes/inplace_states.py)."""
    layout = ctx.signature.layout
    description = layout.describe()
    inplace = inplace_safe_states(ctx.onnx_model, layout.state_pairs())
    description["inplace_states"] = inplace
    ctx.report.cache_layout = description
    ctx.onnx_model.metadata_props[CACHE_LAYOUT_KEY] = layout.to_json()
    ctx.onnx_model.metadata_props[INPLACE_STATES_KEY] = ",".join(inplace)
    setattr(ctx.model.config, CACHE_LAYOUT_KEY, description)


def _attach_variants(ctx: ExportContext) -> None:
    from ..variants import attach_builtin_variants

    options = {}
    if ctx.options.quant_budget is not None:
        options = {name: {"budget": ctx.options.quant_budget} for name in ("int4", "ort-cpu-int4")}
    earlier = ctx.report.variants  # ort-cpu-functions, attached before validation
    ctx.report.variants = attach_builtin_variants(ctx.staging, list(ctx.options.variants), options)
    if earlier:
        ctx.report.variants["variants"] = {**earlier["variants"], **ctx.report.variants["variants"]}
        ctx.report.variants["files_before"] = earlier["files_before"]


def _save_tokenizer(ctx: ExportContext) -> None:
    warning = save_tokenizer(ctx.options.model, ctx.staging, **ctx.options.hub_kwargs())
    if warning:
        ctx.report.warnings.append(warning)


STEPS: list[ExportStep] = [
    ExportStep("load", _load, lambda ctx: f"Loading {ctx.config.model_type} model `{ctx.options.model}`"),
    ExportStep("trace", _trace, lambda ctx: f"Exporting with torch.export to ONNX opset {ctx.options.opset}"),
    ExportStep("optimize", _optimize, lambda ctx: "Optimizing the graph"),
    ExportStep("fuse", _fuse, lambda ctx: "Fusing standard ops"),
    ExportStep(
        "static_cache", _lower_static_cache, lambda ctx: "Writing the static cache in place (TensorScatter)",
        applies=lambda ctx: ctx.options.static_len is not None,
    ),
    ExportStep(
        "cache_layout", _record_cache_layout, lambda ctx: "Recording the cache layout (attention, conv, state layers)",
        applies=_records_cache_layout,
    ),
    ExportStep("save", _save, lambda ctx: "Saving ONNX with external data"),
    ExportStep(
        "function_bodies", _attach_function_bodies, lambda ctx: "Attaching function bodies onnxruntime lacks a kernel for",
        applies=lambda ctx: ctx.options.opset >= fusions.SWIGLU_OPSET and ctx.options.fusions_enabled,
    ),
    ExportStep(
        "validate", _validate, lambda ctx: f"Validating against PyTorch ({Tolerance(ctx.report.atol, ctx.report.rtol)})"
    ),
    ExportStep("tokenizer", _save_tokenizer, lambda ctx: "Saving tokenizer"),
    # after the tokenizer: calibrated variants tokenize their calibration texts with it
    ExportStep(
        "variants", _attach_variants, lambda ctx: f"Attaching backend variants {', '.join(ctx.options.variants)}",
        applies=lambda ctx: bool(ctx.options.variants),
    ),
]
