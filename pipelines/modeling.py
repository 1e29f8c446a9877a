"""`ORTModelForCausalLM`: an exported decoder in one onnxruntime session, with `generate()`.

The class holds the surface optimum-onnx and transformers users call; each job lives in its own
module: loading (`loading.py`), saving (`saving.py`), one forward pass and its cache adapter
(`forward.py`), generation arguments (`generation_args.py`), decoding loops (`generation.py`) over
a `DecoderState` (`state.py`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort
import torch
from transformers import Cache, GenerationConfig, PreTrainedConfig
from transformers.generation import LogitsProcessorList, StoppingCriteriaList
from transformers.modeling_outputs import CausalLMOutputWithPast

from optimum_onnx23.errors import InvalidArgumentError
from optimum_onnx23.model_file import ModelFile

from .forward import run_forward
from .generation import decode_beam_search, decode_greedy_or_sample, single_threaded_torch
from .generation_args import prepare_generation
from .io_spec import DecoderIO, read_decoder_io
from .loading import check_dtype, load, resolve_providers
from .saving import save_model_folder
from .state import DecoderState

__all__ = ["ORTModelForCausalLM"]

logger = logging.getLogger(__name__)


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
        config: PreTrainedConfig,
        generation_config: GenerationConfig | None = None,
        model_path: str | os.PathLike | None = None,
    ) -> None:
        self.session = session
        self.config = config
        self.generation_config = generation_config or GenerationConfig.from_model_config(config)
        self.model_path = Path(model_path) if model_path is not None else None
        # Where config and tokenizer live (the repo root in the Hub layout); from_pretrained sets it.
        self.folder: Path | None = self.model_path.parent if self.model_path is not None else None
        self.io: DecoderIO = read_decoder_io(session, config, str(model_path or "model.onnx"))
        self.use_io_binding = True  # optimum-onnx's attribute; generate() always binds (see from_pretrained)
        self.variant: str | None = None  # the backend variant the session runs (None: the main graph)
        self.model_file: ModelFile | None = None  # the parsed file (from_pretrained sets it): other sessions reuse it

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
        loaded, dtype = load(
            model_id, config, export, subfolder, revision, force_download, local_files_only, trust_remote_code,
            cache_dir, token, resolve_providers(provider, providers, provider_options), session_options, use_cache,
            generation_config, dtype, file_name,
        )
        model = cls(loaded.session, loaded.config, loaded.generation_config, loaded.files.onnx_path)
        model.folder = loaded.files.folder
        model.variant = loaded.variant
        model.model_file = loaded.model_file
        model.use_io_binding = True if use_io_binding is None else bool(use_io_binding)
        if dtype is not None:
            check_dtype(dtype, model.io.dtype, loaded.files.onnx_path)
        return model

    # ---- saving (optimum-onnx's surface) --------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any):
        """Write the folder `from_pretrained` loads: the ONNX graph with its external data,
        config.json, generation_config.json (and export_report.json when the model has one).

        As in optimum-onnx the tokenizer is not saved: `tokenizer.save_pretrained(save_directory)`.
        Files of those names are replaced (each written beside its final name, then renamed); other
        files already in the folder stay. With `push_to_hub=True`, then `push_to_hub(save_directory,
        **kwargs)`."""
        save_model_folder(self.model_path, self.folder, self.config, self.generation_config, save_directory)
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
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        return run_forward(
            self.session, self.io, self.config, input_ids, attention_mask,
            cache if cache is not None else past_key_values, position_ids, use_cache,
        )

    __call__ = forward

    def new_state(self, batch_size: int) -> DecoderState:
        """A fresh decoder state (empty KV cache on the device) for `batch_size` rows."""
        return DecoderState(self.session, self.io, batch_size)

    # ---- generation ----------------------------------------------------------------------------
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
        plan = prepare_generation(
            self.config, self.generation_config, self.io, input_ids, attention_mask, generation_config,
            logits_processor, stopping_criteria, streamer, tokenizer, kwargs,
        )
        if streamer is not None:
            streamer.put(plan.input_ids.cpu())
        # The per-token torch work is tiny; torch's idle OpenMP workers spinning beside
        # onnxruntime's on the same cores cost a third of the decode speed (measured: 30 -> 44 tok/s).
        with single_threaded_torch():
            # Prefill the distinct prompts once, then copy each row's cache to its beams on the device.
            batch_size = plan.prompt_ids.shape[0]
            state = self.new_state(batch_size)
            logits = state.step(plan.prompt_ids.numpy(), plan.attention_mask.numpy())
            if plan.expand_size > 1:
                rows = np.repeat(np.arange(batch_size), plan.expand_size)
                state.reorder(rows)
                logits = logits[torch.from_numpy(rows)]
            if plan.gc.num_beams > 1:
                return decode_beam_search(state, plan.logic, plan.input_ids, logits, plan.processors, plan.criteria, plan.gc)
            return decode_greedy_or_sample(state, plan.input_ids, logits, plan.processors, plan.criteria, plan.gc, streamer)

    def can_generate(self) -> bool:
        return True

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")
