"""`optimum-cli export onnx`: optimum's familiar flags, plus `--dynamo` for our exporter.

Only argparse happens at import time: optimum-cli imports every register module on start-up,
so torch and transformers are imported inside `run()`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from argparse import ArgumentParser
from pathlib import Path

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from optimum_onnx23.progress import progress_on_stderr

__all__ = ["ONNXExportCommand", "parse_export_args", "run_cli"]


def parse_export_args(parser: ArgumentParser) -> None:
    required = parser.add_argument_group("Required arguments")
    required.add_argument("-m", "--model", type=str, required=True, help="Model ID on huggingface.co or path on disk to load model from.")
    required.add_argument("output", type=Path, help="Path indicating the directory where to store the generated ONNX model.")

    optional = parser.add_argument_group("Optional arguments")
    optional.add_argument(
        "--task",
        default=None,
        help="The task to export the model for: `text-generation` or `text-generation-with-past` "
        "(KV cache as inputs and outputs). Inferred (`text-generation-with-past`) when omitted.",
    )
    optional.add_argument("--dynamo", action="store_true", help="Use the torch.export (dynamo) exporter of optimum-onnx23.")
    optional.add_argument("--opset", type=int, default=None, help="ONNX opset version to export with (default 23 with --dynamo).")
    optional.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="Data type of the exported weights and activations.")
    optional.add_argument("--device", type=str, default="cpu", help='The device to use to do the export. Defaults to "cpu".')
    optional.add_argument("--no-fusions", action="store_true", help="Do not fuse Attention, RMSNormalization and RotaryEmbedding.")
    optional.add_argument(
        "--attn-implementation",
        choices=["flex_attention"],
        default=None,
        help="Trace transformers' flex attention and export torch's flex_attention op as ai.onnx.preview.FlexAttention "
        "(score_mod / mask_mod as its score_mod graph; onnxruntime runs the attached ort-cpu-functions variant). "
        "Default: the model's own attention, fused into opset-23 Attention.",
    )
    optional.add_argument(
        "--atol",
        type=float,
        default=None,
        help="Validation: each output must satisfy max|ONNX - PyTorch| <= atol + rtol * max|PyTorch| (default atol 1e-4 in fp32, 2e-2 fp16).",
    )
    optional.add_argument("--rtol", type=float, default=None, help="Validation: the relative part of the tolerance (default 1e-4 in fp32, 1e-2 fp16).")
    optional.add_argument(
        "--gguf-file",
        type=str,
        default=None,
        help="Export the weights of this GGUF file (llama.cpp) found in the --model folder or Hub repository, dequantized.",
    )
    optional.add_argument(
        "--streamed",
        action="store_true",
        help="Big models on small machines: read the weights of a local safetensors folder tensor by tensor instead of loading the "
        "model (peak memory about one copy of the exported weights, for validation; the PyTorch reference runs layer by layer).",
    )
    optional.add_argument(
        "--weight-format",
        choices=["fp32", "int8", "int4"],
        default="fp32",
        help="The main graph's linear weights: fp32 (default, as --dtype), or int4 / int8 blocks (DequantizeLinear + MatMul, "
        "round-to-nearest, block 32; lm_head int8) quantized tensor by tensor as the weights are written; with --streamed "
        "the fp32 weights are never written nor held (big models on small machines).",
    )
    optional.add_argument("--trust-remote-code", action="store_true", help="Allow custom model code from the Hub. Only use with repositories you trust.")
    optional.add_argument("--revision", type=str, default=None, help="Revision of the model repository (branch, tag or commit).")
    optional.add_argument("--cache_dir", "--cache-dir", dest="cache_dir", type=str, default=None, help="Path indicating where to store cache.")
    optional.add_argument("--overwrite", action="store_true", help="Replace the output folder if it exists and is not empty.")
    optional.add_argument(
        "--cache",
        choices=["dynamic", "static"],
        default="dynamic",
        help="KV cache layout (--dynamo): `dynamic` grows past/present each step; `static` is a fixed buffer of "
        "--max-cache-len positions updated in place by TensorScatter (opset 24) at the `write_indices` input.",
    )
    optional.add_argument("--max-cache-len", type=int, default=None, help="Static cache length N (prompt plus new tokens); needs --cache static.")
    optional.add_argument(
        "--logits",
        choices=["all", "last"],
        default="all",
        help="`all` (default) outputs logits for every position; `last` for the last position only (faster prefill for generation).",
    )
    optional.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=[],
        metavar="NAME",
        help="Attach a built-in backend variant (repeatable): int4, int8 (standard DequantizeLinear + MatMul), ort-cpu-int4, "
        "ort-cpu-int8 (com.microsoft::MatMulNBits, for onnxruntime < 1.25), ort-cpu-moe, ort-cpu-gqa (gpt-oss: GroupQueryAttention with head sinks), ort-cpu, backend-context, portable-opset21 (opset-21 standard ops, for OpenVINO). "
        "The main graph stays as is; onnxruntime sessions of optimum-onnx23 pick the variant for their provider.",
    )
    optional.add_argument(
        "--quant-budget",
        type=float,
        default=None,
        metavar="REL",
        help="Quality budget of the int4 variants: the perplexity change allowed on unseen text (default 0.10 = +10%%; held-out calibration text is held to 0.75 of it). "
        "Which linear groups (lm_head included) stay int8 is measured against it; the attach report and model card state the result.",
    )

    optional.add_argument(
        "--verbose",
        action="store_true",
        help="Also show third-party output (transformers' progress bars and logs, Python warnings); hidden by default.",
    )

    from optimum_onnx23.publish import add_publish_arguments  # lazy package: argparse only

    add_publish_arguments(parser)


def check_cli_arguments(args) -> None:
    """The checks that need no torch, transformers or onnx (under 0.2 s), before anything heavy is
    imported: every flag's value, the publishing flags, and whether the output folder may be written."""
    from optimum_onnx23.arguments import check_export_arguments
    from optimum_onnx23.files import check_output_folder
    from optimum_onnx23.publish.cli import check_publish_args

    check_export_arguments(
        task=args.task or "text-generation-with-past", opset=23 if args.opset is None else args.opset, dtype=args.dtype,
        atol=args.atol, rtol=args.rtol, logits=args.logits, cache=args.cache, max_cache_len=args.max_cache_len,
        variants=args.variants, attn_implementation=args.attn_implementation, quant_budget=args.quant_budget,
    )
    check_publish_args(args)  # offline checks (repo id, token) before an export is spent
    check_output_folder(args.output, args.overwrite)


@contextlib.contextmanager
def quiet_third_parties(verbose: bool = False):
    """Without --verbose, only our `[i/n]` steps and results reach the terminal: transformers' own
    progress bars ("Loading weights") and its info and warning logs, and Python warnings raised
    outside optimum_onnx23, are hidden. Hub download bars stay (a download's progress is worth
    seeing), and so does a TRANSFORMERS_VERBOSITY the user set. Everything is restored on exit
    (the CLI also runs in-process, from tests and scripts)."""
    if verbose:
        yield
        return
    import warnings

    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as transformers_logging

    bars = transformers_logging.is_progress_bar_enabled()
    hub_bars_disabled = hub_utils.are_progress_bars_disabled()
    level = transformers_logging.get_verbosity()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", module=r"optimum_onnx23(\.|$)")
        transformers_logging.disable_progress_bar()  # also turns huggingface_hub's bars off ...
        if not hub_bars_disabled:
            hub_utils.enable_progress_bars()  # ... which downloads keep
        if "TRANSFORMERS_VERBOSITY" not in os.environ:
            transformers_logging.set_verbosity_error()
        try:
            yield
        finally:
            transformers_logging.set_verbosity(level)
            if bars:
                transformers_logging.enable_progress_bar()
            if hub_bars_disabled:
                hub_utils.disable_progress_bars()


def run_cli(args) -> int:
    """Run the export for parsed `args`; returns the process exit code (130 on Ctrl-C)."""
    from optimum_onnx23.errors import OptimumOnnx23Error

    if not args.dynamo:
        if importlib.util.find_spec("optimum.exporters.onnx") is not None:
            from optimum.exporters.onnx.__main__ import main_export  # optimum-onnx's TorchScript exporter

            main_export(
                args.model, output=args.output, task=args.task or "auto", opset=args.opset, device=args.device,
                trust_remote_code=args.trust_remote_code, revision=args.revision, cache_dir=args.cache_dir,
            )
            return 0
        print(
            "error: optimum-onnx's legacy exporter is not installed; pass --dynamo to export with optimum-onnx23's dynamo exporter.",
            file=sys.stderr,
        )
        return 2

    exported = False
    try:
        check_cli_arguments(args)
        with progress_on_stderr(defer_to_root=False), quiet_third_parties(getattr(args, "verbose", False)):
            from optimum_onnx23.exporters import export
            from optimum_onnx23.publish import publish_from_args

            export(
                args.model,
                args.output,
                task=args.task,
                opset=23 if args.opset is None else args.opset,
                dtype=args.dtype,
                device=args.device,
                fusions_enabled=not args.no_fusions,
                atol=args.atol,
                rtol=args.rtol,
                gguf_file=args.gguf_file,
                trust_remote_code=args.trust_remote_code,
                revision=args.revision,
                cache_dir=args.cache_dir,
                overwrite=args.overwrite,
                cache=args.cache,
                max_cache_len=args.max_cache_len,
                logits=args.logits,
                variants=args.variants,
                attn_implementation=args.attn_implementation,
                streamed=args.streamed,
                weight_format=args.weight_format,
                quant_budget=args.quant_budget,
            )
            exported = True
            publish_from_args(args, args.output)
    except OptimumOnnx23Error as error:
        if getattr(args, "verbose", False) and error.__cause__ is not None:
            import traceback

            traceback.print_exception(error.__cause__, file=sys.stderr)  # the chain that led to the one line below
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:  # the staging folder is already gone (exporters.output); no traceback
        from optimum_onnx23.interrupts import Terminated

        what, code = ("terminated", 143) if isinstance(stop, Terminated) else ("interrupted", 130)
        if exported:
            print(f"{what}; the export in {args.output} is complete, the upload did not finish", file=sys.stderr)
        else:
            print(f"{what}; nothing was written", file=sys.stderr)
        return code
    return 0


class ONNXExportCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="onnx", help="Export PyTorch models to ONNX (--dynamo: torch.export, opset 23).")

    @staticmethod
    def parse_args(parser: ArgumentParser):
        return parse_export_args(parser)

    def run(self):
        import signal

        from optimum_onnx23 import interrupts

        with interrupts.installed():
            code = run_cli(self.args)
        if code in (130, 143):
            # Interrupted: a second Ctrl-C (or a late delivery of the first) during interpreter
            # shutdown would otherwise end the process by SIGINT instead of exit status 130.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if code:
            sys.exit(code)
