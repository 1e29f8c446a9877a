"""The steps of an export, in order (`STEPS`); `convert.export` runs them over one `ExportContext`.

load -> trace -> optimize -> fuse -> [static cache] -> [cache layout] -> save -> validate -> tokenizer -> [variants].
Each step reads what earlier ones left on the context and fills its own part; the ones in
brackets apply only when the options ask for them. Everything is written into the staging folder,
which `export` moves into place only after the last step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from pathlib import Path

import onnx
import onnx_ir as ir
import torch

from .. import fusions
from ..contract import INPLACE_STATES_KEY
from ..errors import InvalidArgumentError, UnsupportedArchitectureError
from ..resources import whole_model_fits
from .families import HybridExportConfig
from .families.cache_layout import CACHE_LAYOUT_KEY
from .memory import CHUNK_BYTES, MemoryEstimate, available_bytes, free_pytorch_weights
from .passes import layer_replication, weight_format
from .passes.inplace_states import inplace_safe_states
from .passes.optimize import optimize
from .passes.static_cache import lower_kv_writes, record_variant
from .passes.weight_format import fake_quantized
from .pipeline import ExportContext, ExportOptions, ExportStep
from .tokenizer import save_tokenizer
from .tracing import streamed
from .tracing.checkpoint import check_weight_files, dequantized_config, load_causal_lm
from .tracing.flex_attention import FLEX_DOMAIN, flex_masks, keep_modifier_constants
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


def _check_memory(options: ExportOptions) -> bool:
    """Estimate the export's peak memory from a local safetensors checkpoint's tensor sizes; refuse
    in one line, naming the flag that would make it fit, when it exceeds what is available. True
    when the export is to be streamed although `--streamed` was not given: the in-memory export
    would hold more than half of the available memory (`resources.whole_model_fits`) and the
    streamed one fits (a one-line notice says so)."""
    folder = Path(options.model).expanduser()
    if not folder.is_dir() or options.gguf_file:
        return False
    check_weight_files(folder)  # a corrupt or truncated file: its one line before its header is read
    index = streamed.checkpoint_index(folder)
    if index is None:
        return False
    layer_numel, layers = 0, set()
    for name, entry in index.entries.items():
        match = re.search(r"\.(\d+)\.", name)  # model.layers.N.*, transformer.h.N.*: inside a decoder layer
        if match:
            layers.add(match.group(1))
            layer_numel += entry.nbytes // entry.dtype.itemsize

    def estimate(dtype: str) -> MemoryEstimate:
        return MemoryEstimate.of(index.numel(), layer_numel, len(layers), DTYPES[dtype].itemsize, layer_replication.TRACED_LAYERS)

    streamable = len(layers) > layer_replication.TRACED_LAYERS

    def need(dtype: str, streamed: bool, weight_format: str = "fp32") -> int:
        if weight_format != "fp32" and streamed:
            return estimate("fp32").streamed_int4  # int8: int4's bound holds (the traced fp32 tensors dominate)
        return estimate(dtype).streamed if streamed else estimate(dtype).in_memory

    wanted = need(options.dtype, options.streamed, options.weight_format)
    available = available_bytes()
    gb = lambda n: f"{n / 1e9:.1f} GB"  # noqa: E731
    logger.info(
        "  peak memory estimate: %s (%s of %s weights%s)%s", gb(wanted), gb(estimate(options.dtype).weights), options.dtype,
        f", linears {options.weight_format}" if options.weight_format != "fp32" else "",
        f", {gb(available)} available" if available is not None else "",
    )
    if streamable and not options.streamed and available is not None and not whole_model_fits(wanted, available) \
            and need(options.dtype, True, options.weight_format) <= available:
        logger.warning(
            "Exporting with --streamed: in memory this export would need about %s, more than half of the %s available; "
            "streamed it needs about %s (the same graph and weights, read from the checkpoint tensor by tensor).",
            gb(wanted), gb(available), gb(need(options.dtype, True, options.weight_format)),
        )
        return True
    if available is None or wanted <= available:
        return False
    options_to_try = []
    if streamable and not options.streamed:
        options_to_try.append(("--streamed", options.dtype, True, options.weight_format))
    if streamable and options.dtype == "fp32" and options.weight_format != "int4":
        options_to_try.append(("--streamed --weight-format int4", "fp32", True, "int4"))
    if options.dtype == "fp32" and options.weight_format == "fp32":
        options_to_try.append(("--streamed --dtype fp16" if streamable else "--dtype fp16", "fp16", streamable, "fp32"))
    fix = next((f"pass {flag} (about {gb(need(*rest))})" for flag, *rest in options_to_try if need(*rest) <= available), None)
    raise InvalidArgumentError(
        f"Exporting `{options.model}` needs about {gb(wanted)} of memory and {gb(available)} is available; "
        + (fix or "free memory or export on a machine with more")
        + "."
    )


def _load(ctx: ExportContext) -> None:
    """The model, and the export signature (I/O, sample inputs, wrapper) every later step reads."""
    if _check_memory(ctx.options):
        ctx.options = dataclasses.replace(ctx.options, streamed=True)
        ctx.report.warnings.append("Exported with --streamed: the in-memory export would hold more than half of the available memory.")
    options = ctx.options
    ctx.report.streamed = options.streamed
    ctx.config = ctx.export_config.text_config(ctx.config)  # a multimodal checkpoint's text decoder
    ctx.signature = build_signature(
        ctx.export_config, ctx.config, options.with_past, static_len=options.static_len, logits_to_keep=options.logits_to_keep
    )
    architecture = ctx.export_config.load_kwargs()
    if options.attn_implementation:
        _check_flex_support(ctx)
        architecture["attn_implementation"] = options.attn_implementation
        ctx.report.attn_implementation = options.attn_implementation
    if options.streamed:
        return _load_streamed(ctx, architecture)
    model = load_causal_lm(options.model, ctx.config, dtype=DTYPES[options.dtype], **architecture, **options.hub_kwargs())
    ctx.model = model.to(torch.device(options.device)).eval()
    ctx.wrapper = ctx.signature.wrapper(ctx.model)


# Families transformers marks flex-capable whose flex path cannot be traced on CPU.
_FLEX_REFUSED = {"gpt_oss": "has attention sinks, which transformers' flex path runs on CUDA only"}


def _check_flex_support(ctx: ExportContext) -> None:
    """flex_attention is for the dense families whose transformers class supports it (one line otherwise)."""
    from transformers import AutoModelForCausalLM

    if isinstance(ctx.export_config, HybridExportConfig):
        raise UnsupportedArchitectureError(
            f"--attn-implementation flex_attention: {ctx.config.model_type} is a hybrid decoder (recurrent layers); "
            "drop the flag for its own attention."
        )
    if ctx.config.model_type in _FLEX_REFUSED:
        raise UnsupportedArchitectureError(
            f"--attn-implementation flex_attention: {ctx.config.model_type} {_FLEX_REFUSED[ctx.config.model_type]}; drop the flag."
        )
    model_class = AutoModelForCausalLM._model_mapping.get(type(ctx.config), None)
    if model_class is not None and not getattr(model_class, "_supports_flex_attn", False):
        raise UnsupportedArchitectureError(
            f"--attn-implementation flex_attention: transformers' {model_class.__name__} does not support flex attention; drop the flag."
        )


def _load_streamed(ctx: ExportContext, architecture: dict) -> None:
    """`--streamed`: the model with its parameters on meta; only the weights outside the decoder
    layers and those of the traced layers are read (tracing.streamed)."""
    options = ctx.options
    folder = Path(options.model).expanduser()
    if options.gguf_file or not folder.is_dir():
        raise InvalidArgumentError("--streamed reads the safetensors files of a local model folder; download the checkpoint or export without --streamed.")
    if torch.device(options.device).type != "cpu":
        raise InvalidArgumentError("--streamed exports on the CPU; pass --device cpu or export without --streamed.")
    check_weight_files(folder)
    index = streamed.checkpoint_index(folder)
    if index is None:
        raise InvalidArgumentError(f"--streamed: {folder} has no .safetensors weights; export without --streamed.")
    ctx.model = streamed.skeleton(folder, ctx.config, DTYPES[options.dtype], **architecture)
    ctx.wrapper = ctx.signature.wrapper(ctx.model)
    num_layers = ctx.signature.num_layers
    layers = layer_replication.decoder_layers(ctx.wrapper, num_layers)
    if not ctx.export_config.replicable or layers is None or not layer_replication.plan(ctx.config, num_layers, ctx.wrapper):
        raise InvalidArgumentError(
            f"--streamed needs a decoder of more than {layer_replication.TRACED_LAYERS} identical layers "
            "(traced 4 deep, the others cloned); export this model without --streamed."
        )
    ctx.weights = streamed.StreamedWeights(index, ctx.model, DTYPES[options.dtype])
    ctx.weights.materialize(ctx.model, skip=tuple(layers[layer_replication.TRACED_LAYERS :]))


def _trace(ctx: ExportContext) -> None:
    options = ctx.options
    ctx.onnx_model, ctx.report.traced_layers = trace(
        ctx.wrapper, ctx.signature, options.opset, DTYPES[options.dtype], torch.device(options.device), ctx.weights,
        flex=options.attn_implementation == "flex_attention",
    )


def _optimize(ctx: ExportContext) -> None:
    optimize(ctx.onnx_model)
    if ctx.options.attn_implementation == "flex_attention":
        keep_modifier_constants(ctx.onnx_model)
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
        if options.attn_implementation == "flex_attention":  # one FlexAttention per layer stands for Attention
            ctx.report.expected_fusions.pop("Attention", None)
            flex = f"{FLEX_DOMAIN}::FlexAttention"
            fusion_report.op_counts[flex] = ctx.report.op_histogram.get(flex, 0)
            ctx.report.expected_fusions[flex] = ctx.export_config.num_layers(ctx.config)
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


def _quantize_weights(ctx: ExportContext) -> None:
    """`--weight-format int4|int8`: the linears become DequantizeLinear + MatMul whose tensors are
    quantized when the graph is saved (passes.weight_format)."""
    done = weight_format.apply(ctx.onnx_model, weight_format.BITS[ctx.options.weight_format], getattr(ctx.config, "vocab_size", None))
    ctx.report.weight_format = {
        "format": ctx.options.weight_format, "block_size": weight_format.BLOCK_SIZE, "method": "rtn",
        "linears": {f"int{b}": n for b, n in sorted(done.counts.items(), reverse=True)},
        "quantized_bytes": done.nbytes, "fp32_bytes": done.float_nbytes,
    }
    ctx.report.op_histogram = dict(sorted(fusions.count_ops(ctx.onnx_model).items()))
    logger.info("  %s", done.describe())


def _fake_quantize_reference(ctx: ExportContext) -> None:
    """The PyTorch reference on the weights the graph dequantizes: every `nn.Linear` weight (those
    of the decoder layers, already materialized or read layer by layer with --streamed, and the
    lm_head, untied from the embedding it may share) replaced by its fake-quantized float32 form."""
    bits = weight_format.BITS[ctx.options.weight_format]
    head = ctx.model.get_output_embeddings()
    graph_counts = ctx.report.weight_format["linears"]
    linears = [(name, m) for name, m in ctx.model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]
    if sum(graph_counts.values()) != len(linears) + (head is not None):
        _warn(ctx, f"--weight-format: the graph has {sum(graph_counts.values())} quantized linears and the PyTorch model "
              f"{len(linears) + (head is not None)} nn.Linear: the validation's reference may not be the graph's weights.")
    if ctx.weights is not None:  # read again per validation shape: quantized once, dequantized each time
        ctx.weights.transform = weight_format.FakeQuantizer({f"{name}.weight": bits for name, _ in linears})
    with torch.no_grad():
        for _, module in linears:
            if module.weight.device.type != "meta":
                module.weight = torch.nn.Parameter(fake_quantized(module.weight, bits).to(module.weight.dtype), requires_grad=False)
        if head is not None:
            head.weight = torch.nn.Parameter(fake_quantized(head.weight, weight_format.LM_HEAD_BITS).to(head.weight.dtype), requires_grad=False)


def _save(ctx: ExportContext) -> None:
    """The graph with external weights, config.json and generation_config.json."""
    options, model = ctx.options, ctx.onnx_model
    if ctx.signature.static or ctx.signature.logits_to_keep:
        record_variant(model, options.cache, options.static_len, options.logits)
    model.graph.name = f"{ctx.config.model_type}_{options.task.replace('-', '_')}"
    ir.save(model, ctx.staging / ONNX_FILE_NAME, external_data=ONNX_DATA_NAME)
    # onnxscript's rewrite rules keep their last graph alive: drop its tensors (the optimizer's
    # transposed copies of the weights; the traced layers' ones with --streamed) so validation
    # does not hold them beside onnxruntime's copy. Measured on the 1.07 B Llama, --streamed: -1.1 GB.
    for value in model.graph.initializers.values():
        value.const_value = None
    ctx.onnx_model = None
    dequantized_config(ctx.model.config).save_pretrained(ctx.staging)
    if ctx.model.generation_config is not None:
        ctx.model.generation_config.save_pretrained(ctx.staging)


def _attach_function_bodies(ctx: ExportContext) -> None:
    """Before validation: where the saved graph uses a standard op onnxruntime has no kernel for and
    cannot inline (opset 28's SwiGLU: its body's Swish has no kernel either; the preview
    FlexAttention, which onnxruntime 1.32 does not know at all), attach
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
    if ctx.options.weight_format != "fp32":
        # DequantizeLinear + MatMul fuse into MatMulNBits: accuracy level 0 computes in float32 on the
        # dequantized weights (the reference's); sessions for generation use level 4 (int8 activations).
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
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


def _chunked_validation_session(ctx: ExportContext):
    """--streamed: onnxruntime runs the saved graph chunk by chunk (`ChunkedSession`, at most
    `CHUNK_BYTES` of weights resident), so validation never holds the weights whole either. It
    computes the same outputs as one session (the same kernels and weights, prepacking off in both;
    tests/test_chunked_session.py) and is compared with the PyTorch references the same way."""
    from ..chunked_session import ChunkedSession

    session = ChunkedSession(ctx.staging / ONNX_FILE_NAME, max_chunk_bytes=CHUNK_BYTES)
    try:
        session.check_types()
    except ValueError as error:
        _warn(ctx, f"Validation runs one onnxruntime session over the whole graph (its weights once in memory): {error}")
        return _validation_session(ctx)
    ctx.report.validation_chunks = len(session.chunks)
    logger.info("  onnxruntime runs the graph in %d chunks of at most %.1f GB of weights", len(session.chunks), CHUNK_BYTES / 1e9)
    return session


def _validate(ctx: ExportContext) -> None:
    """PyTorch references first, then the PyTorch weights are freed and onnxruntime compares: the
    peak memory is the larger of the two, not their sum."""
    options, report = ctx.options, ctx.report
    if options.weight_format != "fp32":
        _fake_quantize_reference(ctx)
    with contextlib.ExitStack() as stack:
        if ctx.weights is not None:  # --streamed: one decoder layer's weights resident at a time
            stack.enter_context(ctx.weights.layer_by_layer(layer_replication.decoder_layers(ctx.wrapper, ctx.signature.num_layers)))
        # flex_attention: PyTorch runs torch's flex_attention uncompiled (its math path) on the same mask functions
        # (transformers would compile it, and its block mask, with inductor: minutes on CPU, and a C++ toolchain).
        if options.attn_implementation == "flex_attention":
            stack.enter_context(flex_masks())
        references = pytorch_references(ctx.wrapper, ctx.signature, DTYPES[options.dtype], torch.device(options.device))
    chunked = ctx.weights is not None and "ort-cpu-functions" not in report.variants.get("variants", {}) \
        and options.weight_format == "fp32"  # an int4 / int8 graph's onnxruntime copy is small: validated whole
    ctx.weights = None
    free_pytorch_weights(ctx.model)
    ctx.model = ctx.wrapper = None
    session = _chunked_validation_session(ctx) if chunked else _validation_session(ctx)
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
    elif ctx.options.streamed:  # big model on a small machine: the int4 forms stay within its memory bound too
        options = {name: {"bounded_memory": True} for name in ("int4", "ort-cpu-int4")}
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
    ExportStep(
        "weight_format", _quantize_weights, lambda ctx: f"Quantizing the linear weights to {ctx.options.weight_format} as they are saved",
        applies=lambda ctx: ctx.options.weight_format != "fp32",
    ),
    ExportStep("save", _save, lambda ctx: "Saving ONNX with external data"),
    ExportStep(
        "function_bodies", _attach_function_bodies, lambda ctx: "Attaching function bodies onnxruntime lacks a kernel for",
        applies=lambda ctx: (ctx.options.opset >= fusions.SWIGLU_OPSET and ctx.options.fusions_enabled)
        or ctx.options.attn_implementation == "flex_attention",
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
