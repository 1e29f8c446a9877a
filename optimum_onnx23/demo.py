"""The main job on a built-in default: export the bundled tiny Llama with the dynamo path at
opset 23, then generate from the ONNX file with onnxruntime and compare with transformers.

    python -m optimum_onnx23.demo [--model FOLDER_OR_HUB_ID] [--output demo-output] [--prompt "ONNX is"]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

BUNDLED_MODEL = Path(__file__).parent / "data" / "tiny-llama"

__all__ = ["BUNDLED_MODEL", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(BUNDLED_MODEL), help="model folder or Hub id (default: the bundled tiny Llama)")
    parser.add_argument("--output", type=Path, default=Path("demo-output"))
    parser.add_argument("--prompt", default="ONNX is")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("optimum_onnx23").setLevel(logging.INFO)
    from optimum_onnx23.errors import OptimumOnnx23Error
    from optimum_onnx23.exporters import export
    from optimum_onnx23.pipelines import pipeline

    try:
        report = export(args.model, args.output, overwrite=args.overwrite)
    except OptimumOnnx23Error as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    fused = ", ".join(f"{op} x{n}" for op, n in report.fused_op_counts.items() if n)
    print(f"\nExported {args.model} -> {args.output} (opset {report.opset}; {fused}; max |onnx - torch| {report.max_abs_diff:.1e})")

    pipe = pipeline("text-generation", model=str(args.output), accelerator="ort")
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
