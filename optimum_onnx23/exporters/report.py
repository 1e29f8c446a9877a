"""What an export did, written as `export_report.json` beside the model."""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["ExportReport", "package_versions"]

_PACKAGES = ("optimum-onnx23", "torch", "transformers", "optimum", "onnx", "onnx-ir", "onnxscript", "onnxruntime")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class ExportReport:
    model: str
    model_type: str
    task: str
    opset: int
    dtype: str
    cache: str = "dynamic"
    max_cache_len: int | None = None
    logits: str = "all"
    # Layers torch.export traced; fewer than the model has when the others were grown from the
    # last traced one in the graph (exporters.passes.layer_replication).
    traced_layers: int | None = None
    attn_implementation: str | None = None  # None: the family's own attention (fused into Attention)
    streamed: bool = False  # --streamed (given, or chosen by the memory estimate)
    validation_chunks: int = 0  # --streamed: onnxruntime validated the graph in this many chunks (0: one session)
    output: str = ""
    files: dict[str, int] = field(default_factory=dict)  # file name -> bytes on disk
    fusions: dict = field(default_factory=dict)
    expected_fusions: dict[str, int] = field(default_factory=dict)
    # Per standard op: why the architecture has none or fewer (ALiBi, learned positions, MLA).
    unfused: dict[str, str] = field(default_factory=dict)
    op_histogram: dict[str, int] = field(default_factory=dict)
    gguf_file: str | None = None
    # Hybrid decoders: per layer, the cache tensors it holds (exporters.families.cache_layout); {} otherwise.
    cache_layout: dict = field(default_factory=dict)
    # Per validation shape and output: max |ONNX - PyTorch|, and the error allowed
    # (atol + rtol * max |PyTorch|); per shape, positions whose logits picked another top-1 token.
    validation: dict[str, dict[str, float]] = field(default_factory=dict)
    validation_allowed: dict[str, dict[str, float]] = field(default_factory=dict)
    validation_top1: dict[str, dict[str, int]] = field(default_factory=dict)
    variants: dict = field(default_factory=dict)  # attach_builtin_variants' report
    # --weight-format int4|int8: the quantized linears (counts per bit width, bytes); {} for float weights
    weight_format: dict = field(default_factory=dict)
    atol: float = 0.0
    rtol: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds
    versions: dict[str, str] = field(default_factory=package_versions)
    warnings: list[str] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max((d for per_shape in self.validation.values() for d in per_shape.values()), default=0.0)

    @property
    def fused_op_counts(self) -> dict[str, int]:
        return dict(self.fusions.get("op_counts", {}))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["max_abs_diff"] = self.max_abs_diff
        return data

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    @classmethod
    def load(cls, path: Path) -> "ExportReport":
        data = json.loads(Path(path).read_text())
        data.pop("max_abs_diff", None)
        return cls(**data)
