"""Stage 1 of the data flow: export a transformers decoder with torch.export to ONNX.

`export()` loads the model, traces the flat-tensor wrapper with `torch.onnx.export(dynamo=True)`,
runs onnxscript's graph optimizer and the fusion stage, checks the result against PyTorch in
onnxruntime, and only then moves a complete folder into place.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import onnx
import onnx_ir as ir
import torch

from .. import fusions
from ..errors import InvalidArgumentError, ModelNotFoundError, UnsupportedArchitectureError
from .configs import TASKS, DecoderExportConfig, get_export_config
from .optimize import optimize
from .output import check_output_folder, staged_output_folder
from . import layer_replication, static_cache
from .report import ExportReport
from .tokenizer import save_tokenizer
from .validate import compare_with_references, pytorch_references
from .wrapper import DecoderWrapper

__all__ = ["export", "DTYPES", "MIN_OPSET", "max_opset", "load_model_config", "ONNX_FILE_NAME", "ONNX_DATA_NAME"]

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MIN_OPSET = 18
ONNX_FILE_NAME = "model.onnx"
ONNX_DATA_NAME = "model.onnx_data"  # optimum-onnx's and transformers.js' name for external weights
DEFAULT_ATOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1}
LOGITS_MODES = ("all", "last")


def _free_pytorch_weights(model: torch.nn.Module) -> None:
    """Free the PyTorch weights before onnxruntime loads its own copy.

    Tensors are emptied in place because onnxscript's pattern matchers keep their last graph
    (which wraps these tensors) alive. transformers maps safetensors files into memory and that
    mapping outlives the tensors, so the pages of the mappings that held this model's weights
    are dropped with madvise (nothing reads them again), and glibc's freed heap is trimmed.
    Measured on the SmolLM-135M-shaped export: peak RSS 1.69 -> 1.17 GB (3.1x -> 2.2x the weights).
    """
    import ctypes
    import gc

    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    addresses = sorted({t.data_ptr() for t in tensors if t.numel()})
    with torch.no_grad():
        for tensor in tensors:
            tensor.data = torch.empty(0, dtype=tensor.dtype)
    del tensors
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.malloc_trim(0)
        maps = Path("/proc/self/maps").read_text().splitlines()
    except (OSError, AttributeError):  # not Linux/glibc: nothing to release by hand
        return
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            continue  # only file mappings: anonymous memory was freed above
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if any(start <= address < end for address in addresses):
            libc.madvise(start, end - start, 4)  # MADV_DONTNEED


def max_opset() -> int:
    return onnx.defs.onnx_opset_version()


def _check_arguments(task: str | None, opset: int, dtype: str, atol: float | None) -> None:
    if task is not None and task not in TASKS:
        raise InvalidArgumentError(f"Unknown task `{task}`; the dynamo exporter supports: {', '.join(TASKS)}.")
    if not MIN_OPSET <= opset <= max_opset():
        raise InvalidArgumentError(
            f"Opset {opset} is out of range: pass --opset between {MIN_OPSET} and {max_opset()} "
            f"(the newest onnx {onnx.__version__} knows); 23 or more gets the fused Attention ops."
        )
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"Unknown dtype `{dtype}`; pass one of: {', '.join(DTYPES)}.")
    if atol is not None and not atol > 0:
        raise InvalidArgumentError(f"--atol must be a positive number, got {atol}.")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _looks_like_path(name: str) -> bool:
    """Anything that cannot be a Hub id (`name` or `org/name`) is taken as a local path."""
    return not _HUB_ID.match(name)


def load_model_config(model: str, revision=None, cache_dir=None, trust_remote_code=False, token=None):
    """`AutoConfig` for a local folder or a Hub id, with one-line errors for what is missing."""
    from transformers import AutoConfig

    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{model} is a file; pass the model folder that holds config.json.")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{model} is not a model folder: it has no config.json.")
    elif _looks_like_path(model):
        raise ModelNotFoundError(f"Model folder {model} does not exist; pass an existing folder or a Hub model id.")
    try:
        return AutoConfig.from_pretrained(
            str(path) if path.exists() else model,
            revision=revision,
            cache_dir=cache_dir,
            trust_remote_code=trust_remote_code,
            token=token,
        )
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "trust_remote_code" in str(error):
            raise ModelNotFoundError(
                f"`{model}` needs custom code from its repository; pass --trust-remote-code if you trust it."
            ) from error
        raise ModelNotFoundError(
            f"Could not load the config of `{model}` ({first_line}); pass a local model folder or a Hub id that is "
            "reachable (or already in the HF cache when offline)."
        ) from error


@contextmanager
def _step(report: ExportReport, index: int, total: int, name: str):
    logger.info("[%d/%d] %s...", index, total, name)
    start = time.perf_counter()
    yield
    report.timings[name] = round(time.perf_counter() - start, 3)
    logger.info("[%d/%d] %s done in %.1f s", index, total, name, report.timings[name])


def _trace(
    wrapper, export_config: DecoderExportConfig, config, with_past, opset, dtype, device, max_cache_len: int | None = None
) -> tuple[ir.Model, int]:
    """The ONNX graph of `wrapper` and how many layers torch.export traced: uniform decoders are
    traced 4 layers deep and the graph grown to every layer (`layer_replication`), others whole."""
    num_layers = export_config.num_layers(config)
    if layer_replication.plan(config, num_layers, wrapper):
        with layer_replication.truncated_model(wrapper, config, num_layers):
            shallow = _torch_onnx_export(wrapper, export_config, config, with_past, opset, dtype, device, max_cache_len)
        model = layer_replication.replicate(shallow, wrapper, num_layers)
        if model is not None:
            return model, layer_replication.TRACED_LAYERS
        del shallow
    return _torch_onnx_export(wrapper, export_config, config, with_past, opset, dtype, device, max_cache_len), num_layers


def _torch_onnx_export(wrapper, export_config, config, with_past, opset, dtype, device, max_cache_len) -> ir.Model:
    if max_cache_len is None:
        args = tuple(t.to(device) for t in export_config.dummy_inputs(config, with_past, dtype=dtype))
        dynamic_shapes = export_config.dynamic_shapes(config, with_past)
        input_names = export_config.input_names(config, with_past)
    else:  # static cache: fixed-length buffers plus write positions
        args = tuple(t.to(device) for t in static_cache.static_dummy_inputs(export_config, config, max_cache_len, dtype=dtype))
        dynamic_shapes = static_cache.static_dynamic_shapes(export_config, config)
        input_names = static_cache.static_input_names(export_config, config)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's deprecation chatter, not actionable by users
        program = torch.onnx.export(
            wrapper,
            args,
            dynamic_shapes=dynamic_shapes,
            input_names=input_names,
            output_names=export_config.output_names(config, with_past),
            opset_version=opset,
            dynamo=True,
            optimize=False,  # we run the optimizer and fusions ourselves to report what each did
            verbose=False,
        )
    return program.model


def _validation_session(path: Path, options, dtype: str, report: ExportReport):
    """The CPU session validation runs on; None (with a warning) where onnxruntime's CPU provider has
    no kernel for the dtype (bf16 MatMul): the graph is then only checked by `onnx.checker`."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's NotImplemented has no importable Python class
        if dtype == "fp32" or "NOT_IMPLEMENTED" not in str(error):
            raise
        kernel = str(error).split("implementation for", 1)[-1].strip().split(" node")[0]
        message = (
            f"Not validated against PyTorch: onnxruntime's CPU provider has no {dtype} kernel for {kernel}; "
            "onnx.checker passed. Export fp32 (or validate on a GPU provider) for a numeric check."
        )
        onnx.checker.check_model(str(path), full_check=True)
        logger.warning(message)
        report.warnings.append(message)
        return None


def _check_variant_names(names: Sequence[str]) -> None:
    if not names:
        return
    from ..variants.producers import BUILTIN

    unknown = [name for name in names if name not in BUILTIN]
    if unknown:
        raise InvalidArgumentError(f"Unknown variant {', '.join(unknown)}; pass --variant with one of: {', '.join(BUILTIN)}.")


def _strip_trace_metadata(model: ir.Model) -> None:
    """Drop torch's per-node debug metadata: stack traces name local files, and it is ~90% of the
    graph proto. The module `namespace` stays, for profiling by layer."""
    for node in model.graph.all_nodes():
        for key in [k for k in node.metadata_props if k.startswith("pkg.torch.")]:
            del node.metadata_props[key]
    for value in model.graph.inputs:
        value.metadata_props.clear()
    for value in model.graph.initializers.values():
        value.metadata_props.clear()


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
) -> ExportReport:
    """Export a transformers decoder LLM to an ONNX folder with the dynamo exporter.

    Args:
        model_name_or_path: a local model folder or a Hugging Face Hub model id.
        output: the folder to write; refused if it exists and is not empty, unless `overwrite`.
        task: `text-generation-with-past` (default, KV cache as graph I/O) or `text-generation`.
        opset: ONNX opset, 18 up to the newest onnx supports; fusions need 23 or more.
        dtype: `fp32`, `fp16` or `bf16` weights and activations.
        fusions_enabled: run the fusion stage (standard Attention, RMSNormalization, RotaryEmbedding).
        atol: max |ONNX - PyTorch| allowed on every output; default 1e-4 for fp32.
        cache: `dynamic` (default; past and present grow by the step's length) or `static`:
            fixed `[batch, kv_heads, max_cache_len, head_dim]` buffers written in place by
            TensorScatter (opset 24) at the `write_indices` input; see `exporters.static_cache`.
        max_cache_len: the static buffer length N (prompt plus new tokens); static cache only.
        logits: `all` (default: logits for every position) or `last` (the last position only,
            all generation needs; a shorter prefill). Recorded in the ONNX metadata.
        variants: built-in backend variants to attach after validation (`ort-cpu-int4`,
            `ort-cpu-int8`, `ort-cpu`, `backend-context`); see `optimum_onnx23.variants`.

    Returns:
        The `ExportReport`, also written as `export_report.json` in `output`.
    """
    model_name = str(model_name_or_path)
    _check_arguments(task, opset, dtype, atol)
    atol = DEFAULT_ATOL[dtype] if atol is None else atol
    output = Path(output)
    check_output_folder(output, overwrite)
    config = load_model_config(model_name, revision, cache_dir, trust_remote_code, token)
    export_config = get_export_config(config.model_type)
    task = task or "text-generation-with-past"
    with_past = task.endswith("-with-past")
    static_cache.check_static_arguments(cache, max_cache_len, with_past, opset)
    if logits not in LOGITS_MODES:
        raise InvalidArgumentError(f"Unknown logits mode `{logits}`; pass --logits all or --logits last.")
    static_len = max_cache_len if cache == "static" else None
    logits_to_keep = 1 if logits == "last" else 0
    _check_variant_names(variants)
    report = ExportReport(
        model=model_name, model_type=config.model_type, task=task, opset=opset, dtype=dtype, atol=atol,
        cache=cache, max_cache_len=static_len, logits=logits,
    )
    torch_dtype = DTYPES[dtype]
    torch_device = torch.device(device)
    total = 7 if variants else 6

    from transformers import AutoModelForCausalLM

    with staged_output_folder(output) as staging:
        with _step(report, 1, total, f"Loading {config.model_type} model `{model_name}`"):
            model = AutoModelForCausalLM.from_pretrained(
                model_name,
                config=config,
                revision=revision,
                cache_dir=cache_dir,
                trust_remote_code=trust_remote_code,
                token=token,
                dtype=torch_dtype,
            )
            model = model.to(torch_device).eval()
            if static_len is None:
                wrapper = DecoderWrapper(model, export_config.num_layers(config), with_past, logits_to_keep)
            else:
                wrapper = static_cache.StaticCacheWrapper(model, export_config.num_layers(config), logits_to_keep)

        with _step(report, 2, total, f"Exporting with torch.export to ONNX opset {opset}"):
            onnx_model, report.traced_layers = _trace(
                wrapper, export_config, config, with_past, opset, torch_dtype, torch_device, static_len
            )
            optimize(onnx_model)
            _strip_trace_metadata(onnx_model)

        with _step(report, 3, total, "Fusing standard ops"):
            if fusions_enabled:
                fusion_report = fusions.fuse(onnx_model)
            else:
                fusion_report = fusions.FusionReport(opset=opset, skipped_reason="disabled by --no-fusions")
                fusion_report.op_counts = {op: fusions.count_ops(onnx_model).get(op, 0) for op in fusions.STANDARD_OPS}
            report.fusions = fusion_report.to_dict()
            report.op_histogram = dict(sorted(fusions.count_ops(onnx_model).items()))
            if fusions_enabled and opset >= fusions.MIN_FUSION_OPSET:
                report.expected_fusions = export_config.expected_fusions(config)
                for op, expected in report.expected_fusions.items():
                    got = fusion_report.op_counts.get(op, 0)
                    if got != expected:
                        message = f"Fusion gap: {got} {op} nodes where the architecture has {expected}."
                        logger.warning(message)
                        report.warnings.append(message)
            logger.info("  fused: %s", ", ".join(f"{k}={v}" for k, v in fusion_report.op_counts.items() if v))
            if static_len is not None:
                writes = static_cache.lower_kv_writes(onnx_model)
                expected_writes = 2 * export_config.num_layers(config)
                if writes != expected_writes:
                    raise UnsupportedArchitectureError(
                        f"Static cache: found {writes} KV writes to lower where the model has {expected_writes}; "
                        "this architecture cannot be exported with --cache static yet."
                    )
                report.op_histogram = dict(sorted(fusions.count_ops(onnx_model).items()))
            if static_len is not None or logits_to_keep:
                static_cache.record_variant(onnx_model, cache, static_len, logits)

        with _step(report, 4, total, "Saving ONNX with external data"):
            onnx_model.graph.name = f"{config.model_type}_{task.replace('-', '_')}"
            ir.save(onnx_model, staging / ONNX_FILE_NAME, external_data=ONNX_DATA_NAME)
            del onnx_model

        with _step(report, 5, total, f"Validating against PyTorch (atol={atol:g})"):
            import onnxruntime as ort

            references = pytorch_references(
                wrapper, export_config, config, with_past, torch_dtype, torch_device, max_cache_len=static_len
            )
            model.config.save_pretrained(staging)
            if model.generation_config is not None:
                model.generation_config.save_pretrained(staging)
            _free_pytorch_weights(model)
            del model, wrapper
            options = ort.SessionOptions()
            # Pre-packing copies MatMul weights into MLAS' layout; three validation runs do not
            # need it (measured: -90 MB peak on the SmolLM-shaped model).
            options.add_session_config_entry("session.disable_prepacking", "1")
            if static_len is not None:
                options.log_severity_level = 3  # no IO binding here: TensorScatter's copy warning is expected
            session = _validation_session(staging / ONNX_FILE_NAME, options, dtype, report)
            if session is not None:
                report.validation = compare_with_references(session, references, atol)
            del session

        if variants:
            with _step(report, 6, total, f"Attaching backend variants {', '.join(variants)}"):
                from ..variants import attach_builtin_variants

                report.variants = attach_builtin_variants(staging, list(variants))

        with _step(report, total, total, "Saving tokenizer"):
            warning = save_tokenizer(
                model_name, staging, revision=revision, cache_dir=cache_dir, trust_remote_code=trust_remote_code, token=token
            )
            if warning:
                report.warnings.append(warning)

        report.output = str(output.absolute())
        report.save(staging / "export_report.json")
        report.files = {p.name: p.stat().st_size for p in sorted(staging.iterdir())}
        report.save(staging / "export_report.json")

    checked = f"max |diff| {report.max_abs_diff:.2e}" if report.validation else "NOT validated against PyTorch"
    logger.info("Exported %s to %s (%s)", model_name, output, checked)
    return report
