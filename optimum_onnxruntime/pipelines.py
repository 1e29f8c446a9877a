"""`optimum.onnxruntime.pipeline`: optimum-onnx's pipeline factory, for text-generation decoders.

`optimum.pipelines.pipeline(task, model, accelerator="ort", ...)` (optimum 2.x) calls it with
every argument of its own signature; scripts written for optimum-onnx call it directly. Arguments
that have no meaning for an onnxruntime decoder are refused in one line rather than dropped.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoTokenizer

from optimum_onnx23.errors import InvalidArgumentError
from optimum_onnx23.pipelines import ORTModelForCausalLM, ORTTextGenerationPipeline, text_generation

__all__ = ["pipeline"]


def _execution_provider(device) -> tuple[str, dict] | None:
    """transformers' `device=` as an onnxruntime provider (None: leave it to model_kwargs / the default)."""
    if device is None:
        return None
    import torch

    if isinstance(device, int):
        device = torch.device("cpu") if device < 0 else torch.device("cuda", device)
    device = torch.device(device)
    if device.type == "cpu":
        return "CPUExecutionProvider", {}
    if device.type == "cuda":
        return "CUDAExecutionProvider", {"device_id": device.index or 0}
    raise InvalidArgumentError(
        f"device={str(device)!r} has no onnxruntime provider here; pass device='cpu' or 'cuda', or model_kwargs={{'provider': ...}}."
    )


def _tokenizer(tokenizer, model: ORTModelForCausalLM, use_fast: bool, revision, token, trust_remote_code: bool):
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    source = tokenizer if tokenizer is not None else model.folder
    if source is None:
        raise InvalidArgumentError("No tokenizer: pass tokenizer= (a tokenizer, or the folder or Hub id holding one).")
    hub = {"revision": revision, "token": token} if tokenizer is not None else {}
    try:
        return AutoTokenizer.from_pretrained(source, use_fast=use_fast, trust_remote_code=trust_remote_code, **hub)
    except (OSError, ValueError) as error:
        raise InvalidArgumentError(
            f"Could not load a tokenizer from {source} ({type(error).__name__}); pass tokenizer= (a tokenizer, or the "
            "folder or Hub id holding one): save_pretrained() does not save it, as in optimum-onnx."
        ) from None


def pipeline(
    task: str | None = None,
    model: str | os.PathLike | ORTModelForCausalLM | None = None,
    config: Any = None,
    tokenizer: Any = None,
    feature_extractor: Any = None,
    image_processor: Any = None,
    processor: Any = None,
    revision: str | None = None,
    use_fast: bool = True,
    token: str | bool | None = None,
    device: int | str | Any = None,
    trust_remote_code: bool | None = None,
    model_kwargs: dict[str, Any] | None = None,
    pipeline_class: type[ORTTextGenerationPipeline] | None = None,
    accelerator: str | None = None,
    framework: str | None = None,
    device_map: Any = None,
    torch_dtype: Any = None,
    dtype: Any = None,
    **kwargs: Any,
) -> ORTTextGenerationPipeline:
    """optimum-onnx's `pipeline` for `task="text-generation"` (the default here): transformers'
    text-generation pipeline driving an `ORTModelForCausalLM`.

    `model` is an exported folder, a Hub id or a loaded `ORTModelForCausalLM`; a transformers
    checkpoint with `model_kwargs={"export": True}` is exported first (once, see
    `ORTModelForCausalLM.from_pretrained`). `model_kwargs` go to `from_pretrained` (`provider`,
    `session_options`, `export`, ...), with `revision`, `token`, `trust_remote_code` and `config`.
    `device` picks the provider: "cpu" (-1) or "cuda[:N]" (N). The tokenizer defaults to the one
    beside the model. `accelerator` may only be "ort"; `framework`, `device_map` and the dtype
    arguments only their defaults (the export fixes the dtype). Other `kwargs` go to the pipeline
    (`batch_size`, default generation arguments such as `max_new_tokens`)."""
    task = task or "text-generation"
    if task not in text_generation.SUPPORTED_TASKS:
        raise InvalidArgumentError(
            f"Task `{task}` is not covered by optimum-onnx23's optimum.onnxruntime.pipeline, which runs text-generation "
            "decoders on transformers 5; use transformers.pipeline, or optimum-onnx with transformers < 4.58."
        )
    if accelerator not in (None, "ort"):
        raise InvalidArgumentError(f"accelerator={accelerator!r}: optimum.onnxruntime runs onnxruntime only; pass 'ort' or drop it.")
    for name, value in (("feature_extractor", feature_extractor), ("image_processor", image_processor), ("processor", processor)):
        if value is not None:
            raise InvalidArgumentError(f"{name}= has no use in text-generation, which takes a tokenizer; drop it.")
    if framework not in (None, "pt"):
        raise InvalidArgumentError(f"framework={framework!r}: only 'pt' (torch tensors in and out) is supported; drop it.")
    if device_map is not None:
        raise InvalidArgumentError(
            "device_map= places torch weights; onnxruntime runs the graph on one provider: pass device= or model_kwargs={'provider': ...}."
        )
    for name, value in (("torch_dtype", torch_dtype), ("dtype", dtype)):
        if value not in (None, "auto"):
            raise InvalidArgumentError(
                f"{name}={value!r}: the ONNX export fixes the dtype; drop it, or export with model_kwargs={{'export': True, 'dtype': ...}}."
            )
    if model is None:
        raise InvalidArgumentError(
            "pipeline() needs model=: an exported folder, a Hub id, an ORTModelForCausalLM, or a transformers checkpoint "
            "with model_kwargs={'export': True}."
        )
    provider = _execution_provider(device)
    if isinstance(model, ORTModelForCausalLM):
        if model_kwargs or config is not None:
            raise InvalidArgumentError("model_kwargs= and config= apply when loading; the model passed is loaded already.")
        if device is not None:
            model = model.to(device)  # refuses a device its session does not run on
    else:
        load = dict(model_kwargs or {})
        if provider is not None:
            if {"provider", "providers"} & set(load):
                raise InvalidArgumentError("Pass device= or model_kwargs={'provider': ...}, not both.")
            load["provider"] = provider[0]
            if provider[1]:
                load.setdefault("provider_options", provider[1])
        for name, value in (("revision", revision), ("token", token), ("config", config)):
            if value is not None:
                load.setdefault(name, value)
        load.setdefault("trust_remote_code", bool(trust_remote_code))
        model = ORTModelForCausalLM.from_pretrained(model, **load)
    tokenizer = _tokenizer(tokenizer, model, use_fast, revision, token, bool(trust_remote_code))
    return text_generation.pipeline(task, model=model, tokenizer=tokenizer, pipeline_class=pipeline_class, **kwargs)
