"""The export as a list of named steps over one object, in the manner of onnx-ir's `PassManager`.

`ExportOptions` holds what the user asked for (checked once, up front). `ExportContext` is the one
object every step reads and fills: the config, the PyTorch model, the ONNX graph, the report.
`ExportStep` pairs a name (the key of its timing in the report) with the function that does the
work and a predicate saying whether it applies to these options; `run_steps` runs the list,
logging `[i/n]` progress. A new export form (a cache kind, an architecture family) adds a step or a
predicate, not a branch inside one long procedure.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InvalidArgumentError
from ..interrupts import raise_if_stopped
from .report import ExportReport

__all__ = ["ExportOptions", "ExportContext", "ExportStep", "run_steps"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOptions:
    """The arguments of `export()`, as given (see its docstring)."""

    model: str
    output: Path
    task: str = "text-generation-with-past"
    opset: int = 23
    dtype: str = "fp32"
    device: str = "cpu"
    fusions_enabled: bool = True
    atol: float | None = None
    rtol: float | None = None
    trust_remote_code: bool = False
    revision: str | None = None
    cache_dir: str | None = None
    token: str | bool | None = None
    overwrite: bool = False
    cache: str = "dynamic"
    max_cache_len: int | None = None
    logits: str = "all"
    variants: tuple[str, ...] = ()
    quant_budget: float | None = None  # int4's quality budget (None: the producer's default)
    gguf_file: str | None = None
    attn_implementation: str | None = None
    streamed: bool = False
    weight_format: str = "fp32"  # --weight-format: int4 / int8 main-graph linears (passes.weight_format)

    @property
    def with_past(self) -> bool:
        return self.task.endswith("-with-past")

    @property
    def static_len(self) -> int | None:
        """The static buffer length, None for the dynamic cache."""
        return self.max_cache_len if self.cache == "static" else None

    @property
    def logits_to_keep(self) -> int:
        return 1 if self.logits == "last" else 0

    def hub_kwargs(self) -> dict[str, Any]:
        """What every transformers `from_pretrained` of this export takes."""
        kwargs = dict(revision=self.revision, cache_dir=self.cache_dir, trust_remote_code=self.trust_remote_code, token=self.token)
        return {**kwargs, "gguf_file": self.gguf_file} if self.gguf_file else kwargs


@dataclass
class ExportContext:
    """What the steps share. Fields are filled by the step that produces them, in list order."""

    options: ExportOptions
    report: ExportReport
    staging: Path
    config: Any = None  # transformers PretrainedConfig
    export_config: Any = None  # families.DecoderExportConfig
    signature: Any = None  # tracing.signature.ExportSignature, built with the model (the load step)
    model: Any = None  # the PyTorch model; None once its weights are released
    wrapper: Any = None  # the flat-tensor module torch.export traces
    onnx_model: Any = None  # onnx_ir.Model; None once saved
    weights: Any = None  # tracing.streamed.StreamedWeights with --streamed: the checkpoint behind a meta-parameter model


def _always(ctx: ExportContext) -> bool:
    return True


@dataclass(frozen=True)
class ExportStep:
    name: str
    run: Callable[[ExportContext], None]
    label: Callable[[ExportContext], str]
    applies: Callable[[ExportContext], bool] = _always


def run_steps(ctx: ExportContext, steps: Sequence[ExportStep]) -> None:
    """Run the steps that apply to `ctx`, in order, timing each into `ctx.report.timings`."""
    active = [step for step in steps if step.applies(ctx)]
    for index, step in enumerate(active, 1):
        raise_if_stopped()  # a Ctrl-C that Python dropped inside a callback during the last step
        label = step.label(ctx)
        logger.info("[%d/%d] %s...", index, len(active), label)
        start = time.perf_counter()
        step.run(ctx)
        ctx.report.timings[step.name] = round(time.perf_counter() - start, 3)
        logger.info("[%d/%d] %s done in %.1f s", index, len(active), label, ctx.report.timings[step.name])
    raise_if_stopped()


def check_known(value: str, known: Sequence[str], what: str, flag: str) -> None:
    if value not in known:
        raise InvalidArgumentError(f"Unknown {what} `{value}`; pass {flag} with one of: {', '.join(known)}.")
