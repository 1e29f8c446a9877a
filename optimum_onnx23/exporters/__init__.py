"""Stage 1 of the data flow: the dynamo (torch.export) ONNX exporter for decoder LLMs.

By role: `families/` (which model types export, as data), `tracing/` (the export signature, the
flat-tensor wrapper and the torch-side code torch.export traces), `passes/` (graph passes on the
traced ONNX), and here the pipeline: `convert.export` runs the steps of `steps.py` over one
`pipeline.ExportContext`, validates (`validate.py`) and writes the report (`report.py`).
"""

from .convert import DTYPES, MIN_OPSET, ONNX_DATA_NAME, ONNX_FILE_NAME, export, load_model_config, max_opset
from .families import EXPORT_CONFIGS, TASKS, DecoderExportConfig, get_export_config, register_export_config
from .report import ExportReport

__all__ = [
    "DTYPES",
    "EXPORT_CONFIGS",
    "MIN_OPSET",
    "ONNX_DATA_NAME",
    "ONNX_FILE_NAME",
    "TASKS",
    "DecoderExportConfig",
    "ExportReport",
    "export",
    "get_export_config",
    "load_model_config",
    "max_opset",
    "register_export_config",
]
