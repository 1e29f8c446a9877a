"""`optimum-cli onnx23 variants list|attach|select|strip`: backend variants of an exported model.

Only argparse at import time (optimum-cli imports every register module on start-up).
"""

from __future__ import annotations

import json
import sys
from argparse import ArgumentParser
from pathlib import Path

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from .serve import ServeCommand

__all__ = ["ONNX23Command", "VariantsCommand"]

BUILTIN_NAMES = ("int4", "int8", "ort-cpu-int4", "ort-cpu-int8", "ort-cpu-moe", "ort-cpu-gqa", "ort-cpu", "backend-context", "portable-opset21", "ort-cpu-functions")  # checked again in run()


def _model_path(value: Path) -> Path:
    return value / "model.onnx" if value.is_dir() else value


def _add_model(parser: ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="An exported folder or its model.onnx.")


def _run(function) -> None:
    from optimum_onnx23.errors import OptimumOnnx23Error

    try:
        code = function()
    except OptimumOnnx23Error as error:
        print(f"error: {error}", file=sys.stderr)
        code = 1
    if code:
        sys.exit(code)


class VariantsListCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="list", help="List the backend variants a model carries.")

    @staticmethod
    def parse_args(parser: ArgumentParser):
        _add_model(parser)
        parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")

    def run(self):
        def go() -> int:
            from optimum_onnx23.variants import list_variants
            from optimum_onnx23.variants.folder import load_model

            infos = list_variants(load_model(_model_path(self.args.model)))
            if self.args.json:
                print(json.dumps([i.to_dict() for i in infos], indent=2))
                return 0
            if not infos:
                print("no variants: the model is its main graph only")
                return 0
            print(f"{'variant':<18} {'providers':<28} {'replaces':>8} {'own MB':>8} {'prio':>4}  ops / overlaps")
            for i in infos:
                overlaps = f"  overlaps {', '.join(i.overlaps)}" if i.overlaps else ""
                print(f"{i.name:<18} {','.join(i.providers):<28} {len(i.produces):>8} {i.owned_bytes / 1e6:>8.2f} "
                      f"{i.priority:>4}  {', '.join(i.ops)}{overlaps}")
            return 0

        _run(go)


class VariantsAttachCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="attach", help="Attach built-in variants to an exported folder, in place.")

    @staticmethod
    def parse_args(parser: ArgumentParser):
        _add_model(parser)
        parser.add_argument("--variant", action="append", required=True, metavar="NAME",
                            help=f"Built-in variant to attach (repeatable): {', '.join(BUILTIN_NAMES)}.")
        parser.add_argument("--quant-budget", type=float, default=None, metavar="REL",
                            help="int4's quality budget: perplexity change allowed on unseen text (default 0.10; held-out calibration text is held to 0.75 of it).")
        parser.add_argument("--replace", action="store_true",
                            help="Attach again a variant the model already carries (it is stripped first).")

    def run(self):
        def go() -> int:
            from optimum_onnx23.errors import InvalidArgumentError
            from optimum_onnx23.variants import attach_builtin_variants, list_variants
            from optimum_onnx23.variants.folder import load_model, strip_folder

            folder = self.args.model if self.args.model.is_dir() else self.args.model.parent
            carried = {i.name for i in list_variants(load_model(folder / "model.onnx"))}
            again = [name for name in dict.fromkeys(self.args.variant) if name in carried]
            if again and not self.args.replace:
                raise InvalidArgumentError(
                    f"{folder / 'model.onnx'} already carries variant {', '.join(again)}; pass --replace to attach it again, "
                    f"or strip it first (optimum-cli onnx23 variants strip {folder} --variant {again[0]})."
                )
            if again:
                strip_folder(folder / "model.onnx", again)  # truncates its weights off the data file, then attach anew
            from optimum_onnx23.arguments import check_quant_budget

            check_quant_budget(self.args.quant_budget)
            options = {}
            if self.args.quant_budget is not None:
                options = {name: {"budget": self.args.quant_budget} for name in ("int4", "ort-cpu-int4")}
            report = attach_builtin_variants(folder, self.args.variant, options)
            for name, entry in report["variants"].items():
                print(f"attached {name}: {entry['nodes']} nodes, +{entry['data_bytes_added'] / 1e6:.2f} MB weights, "
                      f"+{entry['graph_bytes_added'] / 1e3:.1f} KB graph, {entry['seconds']:.1f} s")
                q = entry.get("quantization")
                if q:
                    print(f"  {q['int8_groups']} of {len(q['bits'])} groups int8, {q['bytes_read_per_token'] / 1e6:.1f} MB read per token, "
                          f"held-out perplexity {100 * q['perplexity_change']:+.2f}% (budget {100 * q['budget']:+.1f}%)")
            for name, reason in report["skipped"].items():
                print(f"skipped {name}: {reason}")
            return 0

        _run(go)


class VariantsSelectCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="select", help="Write the plain model a session on PROVIDER would run.")

    @staticmethod
    def parse_args(parser: ArgumentParser):
        _add_model(parser)
        parser.add_argument("--provider", action="append", default=None, metavar="EP",
                            help="Execution provider, first one decides (repeatable; default CPUExecutionProvider).")
        parser.add_argument("--variant", default=None, help="Select this variant by name (`main` for none) instead of by provider.")
        parser.add_argument("-o", "--output", type=Path, required=True,
                            help="The .onnx file to write; in another folder, its weights go to <output>_data.")

    def run(self):
        def go() -> int:
            import onnx_ir as ir

            from optimum_onnx23.errors import OutputFolderError
            from optimum_onnx23.variants import select_variant
            from optimum_onnx23.variants.folder import load_model

            source = _model_path(self.args.model)
            output = self.args.output
            if output.resolve() == source.resolve():
                raise OutputFolderError(f"--output {output} is the model itself; write the selected model to another file.")
            model = load_model(source)
            selected = select_variant(model, self.args.provider or ["CPUExecutionProvider"], variant=self.args.variant, copy=False)
            output.parent.mkdir(parents=True, exist_ok=True)
            if output.parent.resolve() == source.parent.resolve():
                ir.save(selected, output)  # references the folder's weights file, nothing copied
            else:
                ir.save(selected, output, external_data=output.name + "_data")
            chosen = selected.metadata_props.get("optimum_onnx23.selected_variant") or "main graph"
            print(f"selected {chosen}: wrote {output}")
            return 0

        _run(go)


class VariantsStripCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="strip", help="Remove variants in place (all by default), restoring the original files.")

    @staticmethod
    def parse_args(parser: ArgumentParser):
        _add_model(parser)
        parser.add_argument("--variant", action="append", default=None, metavar="NAME", help="Only strip this variant (repeatable).")

    def run(self):
        def go() -> int:
            from optimum_onnx23.variants.folder import strip_folder

            removed = strip_folder(_model_path(self.args.model), self.args.variant)
            print(f"stripped {', '.join(removed) if removed else 'nothing (no variants)'}")
            return 0

        _run(go)


class VariantsCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="variants", help="Backend variants in one ONNX file: list, attach, select, strip.")
    SUBCOMMANDS = (
        CommandInfo(name="list", help=VariantsListCommand.COMMAND.help, subcommand_class=VariantsListCommand),
        CommandInfo(name="attach", help=VariantsAttachCommand.COMMAND.help, subcommand_class=VariantsAttachCommand),
        CommandInfo(name="select", help=VariantsSelectCommand.COMMAND.help, subcommand_class=VariantsSelectCommand),
        CommandInfo(name="strip", help=VariantsStripCommand.COMMAND.help, subcommand_class=VariantsStripCommand),
    )


class ONNX23Command(BaseOptimumCLICommand):
    """`optimum-cli onnx23 ...`: optimum-onnx23's own tools (other commands register under it)."""

    COMMAND = CommandInfo(name="onnx23", help="optimum-onnx23 tools for exported ONNX models.")
    SUBCOMMANDS = (
        CommandInfo(name="variants", help=VariantsCommand.COMMAND.help, subcommand_class=VariantsCommand),
        CommandInfo(name="serve", help=ServeCommand.COMMAND.help, subcommand_class=ServeCommand),
    )
