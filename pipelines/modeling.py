"""`ORTModelForCausalLM`: an exported decoder in one onnxruntime session, with `generate()`."""

from __future__ import annotations

import copy
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoConfig, Cache, DynamicCache, GenerationConfig, PreTrainedConfig
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


def _flat_cache(cache, io: DecoderIO) -> list[np.ndarray] | None:
    """[k0, v0, k1, v1, ...] (hybrids: the past_* inputs in graph order) as numpy from a
    transformers `Cache`, per-layer pairs or a flat tuple."""
    if cache is None:
        return None
    if isinstance(cache, Cache):
        if any(hasattr(layer, "conv_states") for layer in cache.layers):
            raise InvalidArgumentError(
                "A transformers hybrid Cache cannot be fed as is: pass the tuple of present tensors forward() returned."
            )
        tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    elif cache and isinstance(cache[0], (tuple, list)):
        tensors = [t for pair in cache for t in pair]
    else:
        tensors = list(cache)
    count = len(io.cache)
    if len(tensors) != count or any(t is None for t in tensors):
        layout = "its past_* inputs, in graph order" if io.hybrid else f"a key and a value for each of {io.num_layers} layers"
        raise InvalidArgumentError(f"The cache holds {len(tensors)} tensors; this model takes {count} ({layout}).")
    return [t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in tensors]


def _one_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _providers(
    provider: str, providers: Sequence[str] | None, provider_options: Sequence[dict] | dict | None
) -> list[str | tuple[str, dict]]:
    """optimum-onnx's rules: `providers` wins over `provider`; options are one dict for the first
    provider or one per provider."""
    names = list(providers) if providers is not None else [provider]
    if provider_options is None:
        options = [{}] * len(names)
    elif isinstance(provider_options, dict):
        options = [provider_options] + [{}] * (len(names) - 1)
    else:
        options = list(provider_options)
        if len(options) != len(names):
            raise InvalidArgumentError(
                f"{len(options)} provider_options for {len(names)} providers; pass one dict per provider, or one dict for the first."
            )
    return [(name, dict(opts)) if opts else name for name, opts in zip(names, options)]


def _is_transformers_checkpoint(model_id, subfolder: str, file_name: str | None) -> bool:
    """A local folder with config.json and weights but no ONNX file anywhere optimum-onnx would look
    (a folder with neither weights nor ONNX gets the "no ONNX model" error, not a failed export)."""
    folder = Path(model_id).expanduser() / subfolder
    if file_name is not None or not (folder / "config.json").is_file():
        return False
    has_weights = any(any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin"))
    return has_weights and not any(folder.glob("*.onnx")) and not any((folder / "onnx").glob("*.onnx"))


def _copy_replacing(source: Path, target: Path) -> None:
    """Copy `source` over `target` through a temporary name, so `target` is never half-written."""
    if target.exists() and os.path.samefile(source, target):
        return
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


class ORTModelForCausalLM:
    """A decoder exported by `optimum-cli export onnx --dynamo`, run by onnxruntime.

    The KV cache stays in onnxruntime values on the provider's device between steps (IO binding,
    or `run_with_ort_values` for a dynamic cache on CPU);
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
        self.use_io_binding = True  # optimum-onnx's attribute; generate() always binds (see from_pretrained)

    # ---- loading -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_id: str | os.PathLike,
        config: PreTrainedConfig | str | os.PathLike | None = None,
        export: bool = False,
        subfolder: str = "",
        revision: str | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        provider: str = "CPUExecutionProvider",
        providers: Sequence[str] | None = None,
        provider_options: Sequence[dict[str, Any]] | dict[str, Any] | None = None,
        session_options: ort.SessionOptions | None = None,
        use_io_binding: bool | None = None,
        use_cache: bool = True,
        generation_config: GenerationConfig | None = None,
        dtype: torch.dtype | str | None = None,
        file_name: str | None = None,
        **kwargs: Any,
    ) -> "ORTModelForCausalLM":
        """Open an exported folder (flat, or with the graph under `onnx/`) or a Hub repository; with
        `export=True`, export a transformers checkpoint first. optimum-onnx's arguments and defaults.

        Args:
            model_id: an exported folder or Hub id; with `export=True` a transformers checkpoint
                (folder or Hub id). A local checkpoint folder without any ONNX file is exported
                as if `export=True` were passed (with a warning), as optimum-onnx does.
            config: a `PretrainedConfig` (or where to load one) instead of the model's config.json.
            export: export with this package's dynamo exporter (opset 23, fusions, validated against
                PyTorch) into a cache folder keyed by the checkpoint's content, the options and the
                package versions (`pipelines/export_cache.py`); later calls with the same inputs load
                that folder without exporting. The `[i/N]` steps show on stderr unless logging is set up.
            subfolder, revision, force_download, local_files_only, cache_dir, token: Hub options.
            trust_remote_code: let the export run the repository's model code (off by default).
            provider, providers, provider_options, session_options: the onnxruntime session:
                `providers` (a list) takes precedence over `provider`; `provider_options` is one dict
                for the first provider or one per provider.
            use_io_binding: accepted for optimum-onnx's scripts and kept as `model.use_io_binding`,
                but a no-op: `generate()` always keeps the KV cache in onnxruntime values on every
                provider (bound as outputs and inputs, or passed as OrtValues to
                `run_with_ort_values` on CPU), and `forward()` exchanges torch or
                numpy tensors by definition.
            use_cache: becomes `config.use_cache`, so `forward()` returns the present cache or not.
                The graph always has KV-cache inputs and outputs (one graph serves prefill and decode)
                and `generate()` always uses them: optimum-onnx's cache-less re-run of the whole
                sequence at each step would give the same tokens, only slower.
            generation_config: instead of the model's generation_config.json.
            dtype: with `export=True`, the export's dtype (torch.float32 by default, float16,
                bfloat16). Loading an ONNX model, the graph fixes the dtype: a different one is
                refused ("auto" is accepted).
            file_name: the ONNX file to load (default `model.onnx`); ignored with `export=True`.

        Raises one-line `ModelNotFoundError` when no ONNX file or config is found,
        `UnsafeModelFileError` when the ONNX file is corrupt or points outside its folder and
        `InvalidArgumentError` for arguments this runtime does not take."""
        dtype = None if dtype == "auto" else dtype
        if kwargs:
            raise InvalidArgumentError(
                f"Unknown from_pretrained() argument(s): {', '.join(sorted(kwargs))}; see help(ORTModelForCausalLM.from_pretrained)."
            )
        if not export and _is_transformers_checkpoint(model_id, subfolder, file_name):
            logger.warning(
                "No ONNX model in %s: exporting the checkpoint to ONNX now (export=True); later loads reuse the export.", model_id
            )
            export = True
        if export:
            from .export_cache import cached_export, export_dtype

            if file_name is not None:
                logger.warning("file_name=%s is ignored: the model is exported to model.onnx (export=True).", file_name)
            folder = cached_export(
                model_id, subfolder=subfolder, revision=revision, cache_dir=cache_dir, token=token,
                local_files_only=local_files_only, force_download=force_download,
                trust_remote_code=trust_remote_code, dtype=export_dtype(dtype),
            )
            model_id, subfolder, revision, file_name, dtype = folder, "", None, None, None
        files: ModelFiles = resolve_model_files(
            model_id, revision, cache_dir, subfolder, file_name, local_files_only, token, force_download=force_download
        )
        if not (files.folder / "config.json").is_file() and config is None:
            raise ModelNotFoundError(f"{files.folder} has no config.json next to the ONNX model; re-export the folder.")
        if isinstance(config, PreTrainedConfig):
            config = copy.deepcopy(config)
        else:  # the model's own folder (local: no network), or the config= given
            config = AutoConfig.from_pretrained(config or files.folder, trust_remote_code=trust_remote_code)
        if generation_config is not None:
            generation_config = copy.deepcopy(generation_config)
        else:
            try:
                generation_config = GenerationConfig.from_pretrained(files.folder)
            except OSError:
                generation_config = GenerationConfig.from_model_config(config)
        config.use_cache = generation_config.use_cache = use_cache
        session = create_session(files.onnx_path, _providers(provider, providers, provider_options), session_options)
        model = cls(session, config, generation_config, files.onnx_path)
        model.folder = files.folder
        model.use_io_binding = True if use_io_binding is None else bool(use_io_binding)
        if dtype is not None:
            from .export_cache import export_dtype

            graph_dtype = export_dtype(np.dtype(model.io.dtype).name)
            if export_dtype(dtype) != graph_dtype:
                raise InvalidArgumentError(
                    f"{files.onnx_path} runs in {graph_dtype}, not {dtype}: the export fixes the dtype; drop dtype= "
                    "or export the checkpoint with export=True, dtype=..."
                )
        return model

    # ---- saving (optimum-onnx's surface) --------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any):
        """Write the folder `from_pretrained` loads: the ONNX graph with its external data,
        config.json, generation_config.json (and export_report.json when the model has one).

        As in optimum-onnx the tokenizer is not saved: `tokenizer.save_pretrained(save_directory)`.
        Files of those names are replaced (each written beside its final name, then renamed); other
        files already in the folder stay. With `push_to_hub=True`, then `push_to_hub(save_directory,
        **kwargs)`."""
        from optimum_onnx23.errors import OutputFolderError
        from optimum_onnx23.publish import find_onnx_models

        save_directory = Path(save_directory)
        if save_directory.exists() and not save_directory.is_dir():
            raise OutputFolderError(f"{save_directory} is a file; pass a folder to save_pretrained().")
        if self.model_path is None:
            raise InvalidArgumentError("This model was built from a session, not a file: there is no ONNX file to save.")
        graph = next(m for m in find_onnx_models(self.model_path.parent) if m.model.name == self.model_path.name)
        sources = [graph.model, *graph.external_data]
        report = self.folder / "export_report.json" if self.folder is not None else None
        if report is not None and report.is_file():
            sources.append(report)
        save_directory.mkdir(parents=True, exist_ok=True)
        for source in sources:
            _copy_replacing(source, save_directory / source.name)
        self.config.save_pretrained(save_directory)
        self.generation_config.save_pretrained(save_directory)
        if push_to_hub:
            return self.push_to_hub(save_directory, **kwargs)
        return None

    def push_to_hub(
        self,
        save_directory: str | os.PathLike,
        repository_id: str,
        private: bool | None = None,
        token: str | bool | None = None,
        **kwargs: Any,
    ):
        """Upload `save_directory` (written by `save_pretrained`, or any export folder) to the model
        repo `repository_id`, as optimum-onnx's `push_to_hub(save_directory, repository_id, private,
        token)`, through `optimum_onnx23.publish.push_to_hub`: the Hub layout (graph under `onnx/`),
        a model card and genai_config.json, in one commit. `kwargs` go there too (`commit_message`,
        `revision`, `create_pr`, `dry_run`, ...). Returns the `CommitInfo` (None for a dry run)."""
        from optimum_onnx23.publish import push_to_hub

        return push_to_hub(
            save_directory, repository_id, private=private, token=token if isinstance(token, str) else None, **kwargs
        )

    # ---- optimum-onnx's attributes -------------------------------------------------------------
    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    @property
    def provider(self) -> str:
        return self.providers[0]

    @property
    def model_save_dir(self) -> Path | None:
        """The folder the model was loaded from (optimum-onnx's name)."""
        return self.folder

    @property
    def can_use_cache(self) -> bool:
        return True

    def to(self, device: str | torch.device | int) -> "ORTModelForCausalLM":
        """`self` for the CPU; an onnxruntime session cannot move: pick the provider at load time."""
        if isinstance(device, int):
            device = "cpu" if device < 0 else f"cuda:{device}"
        if torch.device(device).type == "cpu" and self.provider == "CPUExecutionProvider":
            return self
        raise InvalidArgumentError(
            f"Cannot move this onnxruntime session ({self.provider}) to {device}; load it with "
            "from_pretrained(..., provider='CUDAExecutionProvider') (or the provider you want) instead."
        )

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
        `attention_mask` covers past + new positions (ones by default); `position_ids` default,
        as in transformers' forward, to the cache positions `past_length + arange(length)`
        (`generate()` derives them from the mask instead). Returns `CausalLMOutputWithPast` with float32
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
        pasts = _flat_cache(cache if cache is not None else past_key_values, self.io)
        if pasts is None:  # hybrid decoders' states start at zero
            pasts = [np.zeros(shape, c.dtype) for shape, c in zip(self.io.cache_shapes(batch, 0), self.io.cache)]
        past_length = next((p.shape[2] for p, c in zip(pasts, self.io.cache) if not c.is_state), None)
        if past_length is None:  # no attention layer (Mamba-2): the mask says how long the past is
            past_length = 0 if attention_mask is None else _as_int64(attention_mask, "attention_mask").shape[1] - length
        mask = np.ones((batch, past_length + length), np.int64) if attention_mask is None else _as_int64(attention_mask, "attention_mask")
        if mask.shape != (batch, past_length + length):
            raise InvalidArgumentError(
                f"attention_mask has shape {mask.shape}; it must cover the past and new positions: {(batch, past_length + length)}."
            )
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self.io.has_position_ids:
            if position_ids is None:  # transformers' and optimum-onnx's forward: the cache positions, padding or not
                position_ids = np.broadcast_to(np.arange(past_length, past_length + length), (batch, length))
            feeds["position_ids"] = _as_int64(position_ids, "position_ids")
        feeds.update((c.past, np.ascontiguousarray(p, dtype=c.dtype)) for c, p in zip(self.io.cache, pasts))
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        names = ["logits", *(self.io.present_names() if use_cache else [])]
        outputs = self.session.run(names, feeds)
        logits = outputs[0].astype(np.float32, copy=False)
        present = None
        if use_cache and self.io.hybrid:  # the graph's order, as the next call takes it
            present = tuple(torch.from_numpy(o) for o in outputs[1:])
        elif use_cache:
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
