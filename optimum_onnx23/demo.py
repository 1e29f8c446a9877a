"""The main job on a built-in default: export the bundled tiny Llama with the dynamo path at
opset 23, then generate from the ONNX file with onnxruntime and compare with transformers.

    python -m optimum_onnx23.demo [--model FOLDER_OR_HUB_ID] [--output demo-output] [--prompt "ONNX is"] [--overwrite]

`--overwrite` replaces only a previous demo export (its export_report.json names the same model, or
the bundled one); any other non-empty folder is refused, so the demo writes only to its own folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

BUNDLED_MODEL = Path(__file__).parent / "data" / "tiny-llama"
_CHECKOUT = Path(__file__).resolve().parents[1]
# Where the demo writes by default, whatever the working directory: `demo-output` at the top of the
# repository this package is installed from (scripts/env.sh installs it editable), else in the
# working directory (a wheel install has no repository). The README's Generate code reads it.
DEMO_OUTPUT = _CHECKOUT / "demo-output" if (_CHECKOUT / "pyproject.toml").is_file() else Path("demo-output").absolute()

__all__ = ["BUNDLED_MODEL", "DEMO_OUTPUT", "main"]


def _previous_model(output: Path) -> str | None:
    """The model a previous export in `output` was made from, or None (no export of ours there)."""
    try:
        report = json.loads((output / "export_report.json").read_text())
    except (OSError, ValueError):
        return None
    return str(report.get("model")) if isinstance(report, dict) and report.get("model") else None


def _is_demo_export(output: Path, model: str) -> bool:
    previous = _previous_model(output)
    if previous is None:
        return False
    bundled = Path(model).resolve() == BUNDLED_MODEL.resolve()
    # the bundled model from another clone of this repository (the folder moved with it) counts as the demo's
    return previous == model or (bundled and Path(previous).parts[-3:] == BUNDLED_MODEL.parts[-3:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(BUNDLED_MODEL), help="model folder or Hub id (default: the bundled tiny Llama)")
    parser.add_argument("--output", type=Path, default=DEMO_OUTPUT, help=f"the folder to write (default {DEMO_OUTPUT})")
    parser.add_argument("--prompt", default="ONNX is")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--overwrite", action="store_true", help="replace a previous demo export in --output (nothing else)")
    args = parser.parse_args(argv)

    output = args.output.absolute()
    if args.overwrite and output.is_dir() and any(output.iterdir()) and not _is_demo_export(output, args.model):
        previous = _previous_model(output)
        what = f"an export of {previous}" if previous else "files that are not an optimum-onnx23 export"
        print(
            f"error: {output} holds {what}, not a previous demo export; the demo replaces only its own output: "
            "pass another folder (or none, for demo-output) or remove it.",
            file=sys.stderr,
        )
        return 1

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("optimum_onnx23").setLevel(logging.INFO)
    from optimum_onnx23.cli.export import quiet_third_parties
    from optimum_onnx23.errors import OptimumOnnx23Error

    try:
        with quiet_third_parties():
            return _run(args, output)
    except OptimumOnnx23Error as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run(args, output: Path) -> int:
    from optimum_onnx23.exporters import export
    from optimum_onnx23.pipelines import pipeline

    report = export(args.model, output, overwrite=args.overwrite)  # logs "Exported <model> to <folder> ..."
    fused = ", ".join(f"{op} x{n}" for op, n in report.fused_op_counts.items() if n)
    print(f"\nmodel folder: {output}\n  (opset {report.opset}; {fused}; max |onnx - torch| {report.max_abs_diff:.1e})")

    pipe = pipeline("text-generation", model=str(output), accelerator="ort")
    onnx_text = pipe(args.prompt, max_new_tokens=args.max_new_tokens, do_sample=False)[0]["generated_text"]
    print(f"onnxruntime : {onnx_text!r}")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    ids = tokenizer(args.prompt, return_tensors="pt")
    torch_ids = model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=False)
    torch_text = tokenizer.decode(torch_ids[0], skip_special_tokens=True)
    print(f"transformers: {torch_text!r}")
    same = onnx_text == torch_text
    print("greedy text identical to transformers: " + ("yes" if same else "NO"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
