"""Registers optimum-onnx23's commands with optimum-cli (PEP 420 namespace: no __init__.py here)."""

from optimum.commands.export.base import ExportCommand

from optimum_onnx23.cli.export import ONNXExportCommand
from optimum_onnx23.cli.variants import ONNX23Command

REGISTER_COMMANDS = [(ONNXExportCommand, ExportCommand), ONNX23Command]
