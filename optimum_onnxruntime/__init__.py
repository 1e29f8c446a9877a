"""`optimum.onnxruntime` for text-generation decoders on transformers 5, provided by optimum-onnx23.

optimum's own entry points import this module: `optimum.pipelines.pipeline(..., accelerator="ort")`
does `from optimum.onnxruntime import pipeline`, and scripts written for optimum-onnx do
`from optimum.onnxruntime import ORTModelForCausalLM`. optimum-onnx, which owns the name, pins
transformers < 4.58; this package ships the module into optimum's namespace (from its wheel, as
`optimum.commands.register`) with the two names that make sense for its format:

- `pipeline`: optimum-onnx's signature, returning `ORTTextGenerationPipeline` (text-generation).
- `ORTModelForCausalLM`: optimum_onnx23's class, with optimum-onnx's `from_pretrained(...,
  export=True)`, `save_pretrained` and `push_to_hub`.

Every other optimum-onnx name (and submodule) raises a one-line `ImportError` saying what to use.
If optimum-onnx itself is installed, importing this module fails instead of standing in for it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.metadata
import importlib.util
import sys

from optimum_onnx23.errors import ConflictingDistributionError, NotCoveredError


def _optimum_onnx_version() -> str | None:
    try:
        return importlib.metadata.version("optimum-onnx")
    except importlib.metadata.PackageNotFoundError:
        return None


if (_version := _optimum_onnx_version()) is not None:
    raise ConflictingDistributionError(
        f"optimum-onnx {_version} is installed and owns `optimum.onnxruntime`, so optimum-onnx23's copy will not stand in "
        "for it: `pip uninstall optimum-onnx` to use optimum-onnx23 (transformers 5), or `pip uninstall optimum-onnx23` "
        "and reinstall optimum-onnx (transformers < 4.58)."
    )

_PROVIDED = {"ORTModelForCausalLM": "optimum_onnx23.pipelines", "pipeline": f"{__name__}.pipelines"}

# optimum-onnx 0.1.0's public names (optimum/onnxruntime/__init__.py) that this package does not provide.
_OPTIMUM_ONNX_NAMES = frozenset({
    "AutoCalibrationConfig", "AutoOptimizationConfig", "AutoQuantizationConfig", "CalibrationConfig",
    "DECODER_MERGED_ONNX_FILE_PATTERN", "DECODER_ONNX_FILE_PATTERN", "DECODER_WITH_PAST_ONNX_FILE_PATTERN",
    "ENCODER_ONNX_FILE_PATTERN", "ONNX_DECODER_MERGED_NAME", "ONNX_DECODER_NAME", "ONNX_DECODER_WITH_PAST_NAME",
    "ONNX_ENCODER_NAME", "ONNX_FILE_PATTERN", "ONNX_WEIGHTS_NAME", "ORTConfig", "ORTDiffusionPipeline",
    "ORTFluxPipeline", "ORTLatentConsistencyModelImg2ImgPipeline", "ORTLatentConsistencyModelPipeline", "ORTModel",
    "ORTModelForAudioClassification", "ORTModelForAudioFrameClassification", "ORTModelForAudioXVector",
    "ORTModelForCTC", "ORTModelForCustomTasks", "ORTModelForFeatureExtraction", "ORTModelForImageClassification",
    "ORTModelForImageToImage", "ORTModelForMaskedLM", "ORTModelForMultipleChoice", "ORTModelForPix2Struct",
    "ORTModelForQuestionAnswering", "ORTModelForSemanticSegmentation", "ORTModelForSeq2SeqLM",
    "ORTModelForSequenceClassification", "ORTModelForSpeechSeq2Seq", "ORTModelForTokenClassification",
    "ORTModelForVision2Seq", "ORTModelForZeroShotImageClassification", "ORTOptimizer", "ORTPipelineForImage2Image",
    "ORTPipelineForInpainting", "ORTPipelineForText2Image", "ORTQuantizableOperator", "ORTQuantizer",
    "ORTStableDiffusion3Img2ImgPipeline", "ORTStableDiffusion3InpaintPipeline", "ORTStableDiffusion3Pipeline",
    "ORTStableDiffusionImg2ImgPipeline", "ORTStableDiffusionInpaintPipeline", "ORTStableDiffusionPipeline",
    "ORTStableDiffusionXLImg2ImgPipeline", "ORTStableDiffusionXLInpaintPipeline", "ORTStableDiffusionXLPipeline",
    "OptimizationConfig", "QuantizationConfig", "QuantizationMode",
})
# Its submodules that have no counterpart here (ours: modeling_decoder, pipelines).
_OPTIMUM_ONNX_SUBMODULES = frozenset({
    "base", "configuration", "constants", "dummy_objects", "modeling", "modeling_diffusion", "modeling_ort",
    "modeling_seq2seq", "optimization", "preprocessors", "quantization", "utils",
})

__all__ = sorted(_PROVIDED)


def _not_covered(what: str) -> NotCoveredError:
    return NotCoveredError(
        f"{what} is optimum-onnx's: this `optimum.onnxruntime` comes from optimum-onnx23, which covers text-generation "
        "decoders on transformers 5 (ORTModelForCausalLM, pipeline); for other tasks, quantization or optimization, "
        "use optimum-onnx in an environment with transformers < 4.58."
    )


def __getattr__(name: str):
    if name in _PROVIDED:
        return getattr(importlib.import_module(_PROVIDED[name]), name)
    if name in _OPTIMUM_ONNX_NAMES:
        raise _not_covered(f"`optimum.onnxruntime.{name}`")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PROVIDED})


class _NotCoveredSubmodules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import optimum.onnxruntime.quantization` and the like: the same one-line ImportError as the
    names, instead of a bare ModuleNotFoundError. Consulted last, for our own children only."""

    def find_spec(self, fullname, path=None, target=None):
        parent, _, child = fullname.rpartition(".")
        if parent == __name__ and child in _OPTIMUM_ONNX_SUBMODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        raise _not_covered(f"`{spec.name}`")

    def exec_module(self, module) -> None:  # never reached: create_module raises
        raise _not_covered(f"`{module.__name__}`")


if not any(type(finder).__name__ == _NotCoveredSubmodules.__name__ for finder in sys.meta_path):
    sys.meta_path.append(_NotCoveredSubmodules())
