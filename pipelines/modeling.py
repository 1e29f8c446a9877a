"""`ORTModelForCausalLM`: an exported decoder in one onnxruntime session, with `generate()`."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoConfig, Cache, DynamicCache, GenerationConfig
from transformers.generation import GenerationMode, LogitsProcessorList, StoppingCriteriaList
from transformers.modeling_outputs import CausalLMOutputWithPast

from optimum_onnx23.errors import InvalidArgumentError, ModelNotFoundError

from .generation import TransformersLogic, decode_beam_search, decode_greedy_or_sample, fast_processors, single_threaded_torch
from .hub import ModelFiles, resolve_model_files
from .io_spec import DecoderIO, read_decoder_io
from .session import create_session
from .state import DecoderState

__all__ = ["ORTModelForCausalLM"]

logger = logging.getLogger(__name__)

_SUPPORTED_MODES = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE, GenerationMode.BEAM_SEARCH, GenerationMode.BEAM_SAMPLE)


def _as_int64(value, name: str) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim != 2:
        raise InvalidArgumentError(f"{name} must be a [batch, length] array, got shape {array.shape}.")
    return np.ascontiguousarray(array, dtype=np.int64)


def _flat_cache(cache, count: int) -> list[np.ndarray] | None:
    """[k0, v0, k1, v1, ...] as numpy from a transformers `Cache`, per-layer pairs or a flat tuple."""
    if cache is None:
        return None
    if isinstance(cache, Cache):
        tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    elif cache and isinstance(cache[0], (tuple, list)):
        tensors = [t for pair in cache for t in pair]
    else:
        tensors = list(cache)
    if len(tensors) != count or any(t is None for t in tensors):
        raise InvalidArgumentError(
            f"The cache holds {len(tensors)} tensors; this model takes {count} (a key and a value for each of {count // 2} layers)."
        )
    return [t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in tensors]


def _one_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class ORTModelForCausalLM:
    """A decoder exported by `optimum-cli export onnx --dynamo`, run by onnxruntime.

    The KV cache stays in onnxruntime values on the provider's device between steps (IO binding);
    `generate()` takes transformers' `GenerationConfig` arguments and returns what
    `transformers.generate()` returns for the same weights: prompt + new tokens, rows that
    finish early padded with `pad_token_id`.
    """

    main_input_name = "input_ids"

    def __init__(
        self,
        session: ort.InferenceSession,
        config,
        generation_config: GenerationConfig | None = None,
        model_path: str | os.PathLike | None = None,
    ):
        self.session = session
        self.config = config
        self.generation_config = generation_config or GenerationConfig.from_model_config(config)
        self.model_path = Path(model_path) if model_path is not None else None
        # Where config and tokenizer live (the repo root in the Hub layout); from_pretrained sets it.
        self.folder: Path | None = self.model_path.parent if self.model_path is not None else None
        self.io: DecoderIO = read_decoder_io(session, config, str(model_path or "model.onnx"))

    # ---- loading -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | os.PathLike,
        provider: str = "CPUExecutionProvider",
        session_options: ort.SessionOptions | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        subfolder: str = "",
        file_name: str | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        provider_options: dict | None = None,
    ) -> "ORTModelForCausalLM":
        """Open a local exported folder (flat, or with the graph under `onnx/`) or a Hub repository.

        Raises one-line `ModelNotFoundError` when no ONNX file or config is found and
        `UnsafeModelFileError` when the ONNX file is corrupt or points outside its folder."""
        files: ModelFiles = resolve_model_files(
            model_id_or_path, revision, cache_dir, subfolder, file_name, local_files_only, token
        )
        if not (files.folder / "config.json").is_file():
            raise ModelNotFoundError(f"{files.folder} has no config.json next to the ONNX model; re-export the folder.")
        config = AutoConfig.from_pretrained(files.folder)  # a local folder: no remote code, no network
        try:
            generation_config = GenerationConfig.from_pretrained(files.folder)
        except OSError:
            generation_config = GenerationConfig.from_model_config(config)
        providers: Sequence = [(provider, provider_options) if provider_options else provider]
        session = create_session(files.onnx_path, providers, session_options)
        model = cls(session, config, generation_config, files.onnx_path)
        model.folder = files.folder
        return model

    # ---- one forward ---------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | np.ndarray,
        attention_mask: torch.Tensor | np.ndarray | None = None,
        past_key_values: Cache | tuple | None = None,
        position_ids: torch.Tensor | np.ndarray | None = None,
        use_cache: bool | None = None,
        cache: Cache | tuple | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """One forward pass, as transformers' and optimum-onnx's `ORTModelForCausalLM.forward`.

        `cache` (transformers 5's name) or `past_key_values` (optimum-onnx's) is a transformers
        `Cache`, a tuple of `(key, value)` pairs per layer, or the flat tuple; None starts empty.
        `attention_mask` covers past + new positions (ones by default) and `position_ids` default
        to transformers' cumsum of the mask. Returns `CausalLMOutputWithPast` with float32
        `logits` `[batch, seq, vocab]` (`[batch, 1, vocab]` for `--logits last` exports) and,
        with `use_cache` (default: the config's), the presents as a `DynamicCache`. numpy inputs give
        numpy logits. Static-cache exports are driven by `generate()`/`new_state()` instead."""
        if kwargs:
            raise InvalidArgumentError(f"Unknown forward() argument(s): {', '.join(sorted(kwargs))}.")
        if cache is not None and past_key_values is not None:
            raise InvalidArgumentError("Pass the cache as `cache` or `past_key_values`, not both.")
        if self.io.static:
            raise InvalidArgumentError(
                "forward() runs dynamic-cache exports; this one has a static cache (write_indices): use "
                "generate() or new_state(), or re-export without --cache static."
            )
        use_torch = isinstance(input_ids, torch.Tensor)
        ids = _as_int64(input_ids, "input_ids")
        batch, length = ids.shape
        pasts = _flat_cache(cache if cache is not None else past_key_values, 2 * self.io.num_layers)
        if pasts is None:
            pasts = [np.zeros(shape, self.io.dtype) for shape in self.io.cache_shapes(batch, 0)]
        past_length = pasts[0].shape[2]
        mask = np.ones((batch, past_length + length), np.int64) if attention_mask is None else _as_int64(attention_mask, "attention_mask")
        if mask.shape != (batch, past_length + length):
            raise InvalidArgumentError(
                f"attention_mask has shape {mask.shape}; it must cover the past and new positions: {(batch, past_length + length)}."
            )
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self.io.has_position_ids:
            if position_ids is None:
                position_ids = np.where(mask == 0, 0, mask.cumsum(-1) - 1)[:, past_length:]
            feeds["position_ids"] = _as_int64(position_ids, "position_ids")
        feeds.update(zip(self.io.past_names(), (np.ascontiguousarray(p, dtype=self.io.dtype) for p in pasts)))
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        names = ["logits", *(self.io.present_names() if use_cache else [])]
        outputs = self.session.run(names, feeds)
        logits = outputs[0].astype(np.float32, copy=False)
        present = None
        if use_cache:
            tensors = [torch.from_numpy(o) for o in outputs[1:]]
            present = DynamicCache()
            for i in range(self.io.num_layers):
                present.update(tensors[2 * i], tensors[2 * i + 1], i)
        return CausalLMOutputWithPast(logits=torch.from_numpy(logits) if use_torch else logits, cache=present)

    __call__ = forward

    def new_state(self, batch_size: int) -> DecoderState:
        """A fresh decoder state (empty KV cache on the device) for `batch_size` rows."""
        return DecoderState(self.session, self.io, batch_size)

    # ---- generation ----------------------------------------------------------------------------
    @staticmethod
    def _validate(gc: GenerationConfig) -> None:
        """One-line errors for values transformers accepts silently or reports in several lines."""
        if gc.max_new_tokens is not None and gc.max_new_tokens <= 0:
            raise InvalidArgumentError(f"max_new_tokens must be a positive integer, got {gc.max_new_tokens}.")
        if gc.num_beams is None or gc.num_beams < 1:
            raise InvalidArgumentError(f"num_beams must be >= 1, got {gc.num_beams}.")
        if gc.do_sample and gc.top_p is not None and not 0.0 < gc.top_p <= 1.0:
            raise InvalidArgumentError(f"top_p must be in (0, 1], got {gc.top_p}.")
        if gc.do_sample and gc.top_k is not None and gc.top_k < 0:
            raise InvalidArgumentError(f"top_k must be >= 0, got {gc.top_k}.")
        if gc.do_sample and gc.temperature is not None and not gc.temperature > 0:
            raise InvalidArgumentError(f"temperature must be > 0 when sampling, got {gc.temperature}.")

    def _prepare_config(
        self, generation_config: GenerationConfig | None, kwargs: dict
    ) -> tuple[GenerationConfig, dict, bool, bool]:
        """transformers' precedence: kwargs > `generation_config` > the model's generation_config.json."""
        logic = TransformersLogic(self.config, self.generation_config)

        def unset(name: str) -> bool:
            return (
                kwargs.get(name) is None
                and (generation_config is None or getattr(generation_config, name) is None)
                and getattr(self.generation_config, name) is None
            )

        has_default_max_length, has_default_min_length = unset("max_length"), unset("min_length")
        max_new = kwargs.get("max_new_tokens")
        if max_new is not None and (not isinstance(max_new, int) or max_new <= 0):
            raise InvalidArgumentError(f"max_new_tokens must be a positive integer, got {max_new!r}.")
        if kwargs.get("num_beams") is not None and kwargs["num_beams"] < 1:
            raise InvalidArgumentError(f"num_beams must be >= 1, got {kwargs['num_beams']}.")
        top_p = kwargs.get("top_p")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise InvalidArgumentError(f"top_p must be in (0, 1], got {top_p}.")
        try:
            gc, model_kwargs = logic._prepare_generation_config(copy.deepcopy(generation_config), **kwargs)
        except ValueError as error:
            raise InvalidArgumentError(f"Invalid generation arguments: {_one_line(error)}") from None
        return gc, model_kwargs, has_default_max_length, has_default_min_length

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | np.ndarray | list | None = None,
        attention_mask: torch.Tensor | np.ndarray | list | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        streamer=None,
        tokenizer=None,
        **kwargs: Any,
    ) -> torch.LongTensor:
        """Generate like `transformers.GenerationMixin.generate` (greedy, sampling, beam search).

        `kwargs` are `GenerationConfig` fields (max_new_tokens, num_beams, do_sample, top_k, top_p,
        temperature, repetition_penalty, min_new_tokens, eos_token_id, stop_strings (needs
        `tokenizer`), ...). Bad arguments raise a one-line `InvalidArgumentError`."""
        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)
        if input_ids is None:
            raise InvalidArgumentError("generate() needs input_ids: tokenize the prompt first (e.g. tokenizer(text, return_tensors='pt')).")
        input_ids = torch.as_tensor(np.asarray(input_ids) if isinstance(input_ids, list) else input_ids, dtype=torch.long)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise InvalidArgumentError(
                f"input_ids must be a non-empty [batch, length] tensor, got shape {tuple(input_ids.shape)}: the prompt is empty."
            )
        gc, model_kwargs, has_default_max_length, has_default_min_length = self._prepare_config(generation_config, kwargs)
        model_kwargs.pop("use_cache", None)
        if model_kwargs:
            raise InvalidArgumentError(
                f"Unknown generate() argument(s): {', '.join(sorted(model_kwargs))}; pass GenerationConfig fields only."
            )
        self._validate(gc)
        mode = gc.get_generation_mode()
        if mode not in _SUPPORTED_MODES:
            raise InvalidArgumentError(
                f"Generation mode `{mode.value}` is not supported by the onnxruntime runtime; use greedy, sampling or beam search."
            )
        if streamer is not None and gc.num_beams > 1:
            raise InvalidArgumentError("`streamer` cannot be used with beam search; pass num_beams=1 to stream.")
        if gc.stop_strings is not None and tokenizer is None:
            raise InvalidArgumentError("stop_strings needs the tokenizer: pass tokenizer=... to generate().")

        logic = TransformersLogic(self.config, self.generation_config)
        batch_size = input_ids.shape[0]
        kwargs_has_attention_mask = attention_mask is not None
        logic._prepare_special_tokens(gc, kwargs_has_attention_mask, device=torch.device("cpu"), batch_size=batch_size)
        if attention_mask is None:
            attention_mask = logic._prepare_attention_mask_for_generation(input_ids, gc, {})
        attention_mask = torch.as_tensor(np.asarray(attention_mask) if isinstance(attention_mask, list) else attention_mask, dtype=torch.long)
        if attention_mask.shape != input_ids.shape:
            raise InvalidArgumentError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}; they must match.")
        if batch_size > 1 and bool((attention_mask[:, -1] == 0).any()):
            raise InvalidArgumentError("Right padding detected: tokenize batches with padding_side='left' for decoder-only generation.")

        expand_size = max(gc.num_beams, gc.num_return_sequences)
        prompt_ids = input_ids
        input_ids = input_ids.repeat_interleave(expand_size, dim=0)
        if streamer is not None:
            streamer.put(input_ids.cpu())
        input_ids_length = input_ids.shape[1]
        try:
            gc = logic._prepare_generated_length(
                generation_config=gc,
                has_default_max_length=has_default_max_length,
                has_default_min_length=has_default_min_length,
                model_input_name="input_ids",
                inputs_tensor=input_ids,
                input_ids_length=input_ids_length,
            )
            logic._validate_generated_length(gc, input_ids_length, has_default_max_length)
        except ValueError as error:
            raise InvalidArgumentError(f"Invalid generation length: {_one_line(error)}") from None
        if self.io.static and gc.max_length > self.io.max_cache_len:
            raise InvalidArgumentError(
                f"Prompt ({input_ids_length} tokens) plus {gc.max_length - input_ids_length} new tokens need "
                f"{gc.max_length} cache positions but this static-cache export holds {self.io.max_cache_len}; "
                "lower max_new_tokens or re-export with a larger --max-cache-len."
            )
        try:
            processors = fast_processors(logic._get_logits_processor(
                generation_config=gc,
                input_ids_seq_length=input_ids_length,
                encoder_input_ids=input_ids,
                logits_processor=logits_processor if logits_processor is not None else LogitsProcessorList(),
                device=torch.device("cpu"),
                model_kwargs={"attention_mask": attention_mask.repeat_interleave(expand_size, dim=0)},
            ))
            criteria = logic._get_stopping_criteria(generation_config=gc, stopping_criteria=stopping_criteria if stopping_criteria is not None else StoppingCriteriaList(), tokenizer=tokenizer)
        except ValueError as error:
            raise InvalidArgumentError(f"Invalid generation arguments: {_one_line(error)}") from None

        # The per-token torch work is tiny; torch's idle OpenMP workers spinning beside
        # onnxruntime's on the same cores cost a third of the decode speed (measured: 30 -> 44 tok/s).
        with single_threaded_torch():
            # Prefill the distinct prompts once, then copy each row's cache to its beams on the device.
            state = self.new_state(batch_size)
            logits = state.step(prompt_ids.numpy(), attention_mask.numpy())
            if expand_size > 1:
                rows = np.repeat(np.arange(batch_size), expand_size)
                state.reorder(rows)
                logits = logits[torch.from_numpy(rows)]
            if gc.num_beams > 1:
                return decode_beam_search(state, logic, input_ids, logits, processors, criteria, gc)
            return decode_greedy_or_sample(state, input_ids, logits, processors, criteria, gc, streamer)

    def can_generate(self) -> bool:
        return True

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")
