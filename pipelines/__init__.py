"""Generation on onnxruntime for decoders exported by optimum-onnx23.

`ORTModelForCausalLM` keeps the KV cache in onnxruntime values on the provider's device between
steps (IO binding; on CPU, dynamic caches go through `run_with_ort_values`)
and generates like transformers; `pipeline("text-generation", model=..., accelerator="ort")`
mirrors transformers' text-generation pipeline on top of it.
"""

from .modeling import ORTModelForCausalLM
from .session import check_onnx_file, create_session
from .text_generation import ORTTextGenerationPipeline, pipeline

__all__ = ["ORTModelForCausalLM", "ORTTextGenerationPipeline", "check_onnx_file", "create_session", "pipeline"]
