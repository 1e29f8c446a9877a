"""torch.export of the flat-tensor wrapper to an ONNX graph (`torch.onnx.export(dynamo=True)`).

Uniform decoders are traced 4 layers deep and the graph is grown to every layer
(`layer_replication`); others are traced whole. The optimizer and the fusions run afterwards as
steps of their own, so `optimize=False` here.

torch's exporter converts its graph to the requested opset with onnxscript's version converter,
which stops at opset 25 (`TRACE_MAX_OPSET`): a newer `--opset` is traced at 25 and its default
domain raised afterwards (`raise_opset`). Between 25 and 28 the ops torch emits change only by
accepting more types (Cast, Range, Einsum, Mod, DequantizeLinear: new element types), so the
graph computes the same; the new ops of 26-28 (LinearAttention, CausalConvWithState, SwiGLU) are
written by our own passes.
"""

from __future__ import annotations

import logging
import warnings

import onnx_ir as ir
import torch

from ...errors import OptimumOnnx23Error, TraceError
from ..families import nearest_supported
from ..passes import layer_replication
from .experts import static_experts
from .failure import describe_failure
from .recurrences import standard_ops
from .signature import ExportSignature
from .standard_ops import STANDARD_OPS_OPSET, TRANSLATIONS, adopt_pending_ops

__all__ = ["trace", "strip_trace_metadata", "raise_opset", "TRACE_MAX_OPSET"]

TRACE_MAX_OPSET = 25


def trace(wrapper: torch.nn.Module, signature: ExportSignature, opset: int, dtype: torch.dtype, device: torch.device) -> tuple[ir.Model, int]:
    """The ONNX graph of `wrapper` (`signature.wrapper(model)`) and how many layers torch.export
    traced; every experts module of transformers' experts interface is traced in its static-shape
    form (`experts.static_experts`), whichever family holds it.

    A failure of torch.export or of the ONNX translation raises `TraceError`: one line naming the
    module and operation that failed (`failure.describe_failure`), the original chained to it."""
    try:
        with static_experts(wrapper.model), standard_ops(opset >= STANDARD_OPS_OPSET):
            traced, layers = _trace(wrapper, signature, min(opset, TRACE_MAX_OPSET), dtype, device)
    except OptimumOnnx23Error:
        raise
    except Exception as error:
        model_type = signature.family.model_type
        raise TraceError(describe_failure(error, wrapper.model, model_type, nearest_supported(model_type))) from error
    raise_opset(traced, opset)
    adopt_pending_ops(traced)
    return traced, layers


def raise_opset(model: ir.Model, opset: int) -> None:
    """Import `opset` for the default domain where the graph imports an older one (see above)."""
    if model.opset_imports.get("", 0) < opset:
        model.opset_imports[""] = opset


def _trace(wrapper: torch.nn.Module, signature: ExportSignature, opset: int, dtype: torch.dtype, device: torch.device) -> tuple[ir.Model, int]:
    config, num_layers = signature.config, signature.num_layers
    if signature.family.replicable and layer_replication.plan(config, num_layers, wrapper):
        with layer_replication.truncated_model(wrapper, config, num_layers):
            shallow = _torch_onnx_export(wrapper, signature.first_layers(layer_replication.TRACED_LAYERS), opset, dtype, device)
        model = layer_replication.replicate(shallow, wrapper, num_layers)
        if model is not None:
            return model, layer_replication.TRACED_LAYERS
        del shallow
    return _torch_onnx_export(wrapper, signature, opset, dtype, device), num_layers


def _torch_onnx_export(wrapper: torch.nn.Module, signature: ExportSignature, opset: int, dtype: torch.dtype, device: torch.device) -> ir.Model:
    args = tuple(t.to(device) for t in signature.sample_inputs(dtype=dtype))
    # "torchvision is not installed. Skipping torchvision::nms" x4; torch.export's own logging of a
    # failure, which the TraceError raised from it carries (and --verbose prints).
    loggers = [logging.getLogger("torch.onnx._internal.exporter._registration"), logging.getLogger("torch.export._trace")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.export's deprecation chatter, not actionable by users
            program = torch.onnx.export(
                wrapper,
                args,
                dynamic_shapes=signature.dynamic_shapes(),
                input_names=signature.input_names,
                output_names=signature.output_names,
                opset_version=opset,
                dynamo=True,
                custom_translation_table=TRANSLATIONS,  # opset-27 ops, where recurrences.standard_ops put them
                optimize=False,  # the optimizer and fusions run as their own steps, to report what each did
                verbose=False,
            )
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return program.model


def strip_trace_metadata(model: ir.Model) -> None:
    """Drop torch's per-node debug metadata: stack traces name local files, and it is ~90% of the
    graph proto. The module `namespace` stays, for profiling by layer."""
    for node in model.graph.all_nodes():
        for key in [k for k in node.metadata_props if k.startswith("pkg.torch.")]:
            del node.metadata_props[key]
    for value in model.graph.inputs:
        value.metadata_props.clear()
    for value in model.graph.initializers.values():
        value.metadata_props.clear()
