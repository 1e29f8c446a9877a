"""torch.export of the flat-tensor wrapper to an ONNX graph (`torch.onnx.export(dynamo=True)`).

Uniform decoders are traced 4 layers deep and the graph is grown to every layer
(`layer_replication`); others are traced whole. The optimizer and the fusions run afterwards as
steps of their own, so `optimize=False` here.
"""

from __future__ import annotations

import logging
import warnings

import onnx_ir as ir
import torch

from . import layer_replication, static_cache
from .configs import DecoderExportConfig

__all__ = ["trace", "strip_trace_metadata"]


def trace(
    wrapper, export_config: DecoderExportConfig, config, with_past: bool, opset: int, dtype, device, max_cache_len: int | None = None
) -> tuple[ir.Model, int]:
    """The ONNX graph of `wrapper` and how many layers torch.export traced."""
    num_layers = export_config.num_layers(config)
    if export_config.replicable and layer_replication.plan(config, num_layers, wrapper):
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
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" x4
    try:
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
                optimize=False,  # the optimizer and fusions run as their own steps, to report what each did
                verbose=False,
            )
    finally:
        registration.setLevel(level)
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
