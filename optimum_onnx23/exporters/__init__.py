"""Stage 1 of the data flow: the dynamo (torch.export) ONNX exporter for decoder LLMs."""

from .configs import EXPORT_CONFIGS, TASKS, DecoderExportConfig, get_export_config, register_export_config
from .convert import DTYPES, MIN_OPSET, ONNX_DATA_NAME, ONNX_FILE_NAME, export, load_model_config, max_opset
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
