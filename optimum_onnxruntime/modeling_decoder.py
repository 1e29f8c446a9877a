"""`optimum.onnxruntime.modeling_decoder`: where optimum-onnx defines `ORTModelForCausalLM`."""

from optimum_onnx23.pipelines import ORTModelForCausalLM

__all__ = ["ORTModelForCausalLM"]
