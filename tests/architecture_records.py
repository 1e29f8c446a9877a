"""Records of what the test run verified per model type, rendered into docs/architectures.md by
scripts/architectures_doc.py.

A test calls `record(model_type, check, **details)` after its assertions passed: one JSON file per
(model type, check) under `RESULTS` (`build/architectures/` unless OPTIMUM_ONNX23_ARCH_RESULTS says
otherwise), so xdist workers never write the same file and a failed test leaves no record. Any
test may add rows or checks (the MoE and hybrid-cache families record through the same function);
the script renders whatever it finds.

Checks the script knows: `export` (details: `report`, the export_report.json fields it shows),
`generate` (ours: greedy and beam ids equal to transformers), `static_cache`, `optimum_onnx`,
`onnxruntime_genai`, `transformers_js`, `variants` (details: `applied`, the variant names).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["RESULTS", "record", "record_export"]

RESULTS = Path(os.environ.get("OPTIMUM_ONNX23_ARCH_RESULTS", Path(__file__).resolve().parents[1] / "build" / "architectures"))


def record(model_type: str, check: str, **details) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{model_type}.{check}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"model_type": model_type, "check": check, **details}, indent=1, sort_keys=True))
    tmp.replace(path)


def record_export(model_type: str, folder: Path) -> None:
    """The `export` check, with what the export report says about the graph."""
    import onnx

    report = json.loads((Path(folder) / "export_report.json").read_text())
    keep = ("expected_fusions", "unfused", "traced_layers", "max_abs_diff", "opset")
    graph = onnx.load(str(Path(folder) / "model.onnx"), load_external_data=False).graph
    forms = set()
    for node in graph.node:
        if node.op_type == "RotaryEmbedding":
            attributes = {a.name: a.i for a in node.attribute}
            dim, interleaved = attributes.get("rotary_embedding_dim", 0), attributes.get("interleaved", 0)
            forms.add(", ".join((["interleaved"] if interleaved else ["halves"]) + ([f"first {dim} channels"] if dim else [])))
    record(
        model_type,
        "export",
        report={key: report.get(key) for key in keep},
        op_counts=report["fusions"]["op_counts"],
        applied={rule: n for who in report["fusions"]["applied"].values() for rule, n in who.items() if n},
        config_model_type=json.loads((Path(folder) / "config.json").read_text()).get("model_type"),
        rotary_forms=sorted(forms),
    )
