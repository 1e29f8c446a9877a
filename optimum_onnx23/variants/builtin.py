"""Attach the built-in variants (`producers/`) to an exported folder, in place: the models are
loaded and saved by `folder.py`, calibration windows come from the bundled texts."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..errors import InvalidArgumentError, VariantNotApplicableError
from .folder import data_file, load_model, remove_selected_files, save_model
from .format import VARIANT_DOMAIN, function_id
from .listing import list_variants
from .producers import BUILTIN, produce
from .producers._calibration import calibration_windows
from .producers._quantized import shared_quantization

__all__ = ["attach_builtin_variants"]

logger = logging.getLogger(__name__)


def _with_calibration(name: str, folder: Path, options: dict) -> dict:
    """Producers that take `calibration` get token windows of the bundled calibration texts,
    tokenized with the folder's tokenizer, unless `calibration=False` is passed; a folder without a
    tokenizer gets none, with a warning."""
    import inspect

    if "calibration" not in inspect.signature(BUILTIN[name]).parameters:
        return options
    wanted = options.get("calibration", True)
    if wanted is False or wanted is None:
        options["calibration"] = None
    elif wanted is True:
        try:
            options["calibration"] = calibration_windows(folder)
        except (OSError, ValueError) as error:
            logger.warning("Variant %s: no tokenizer in %s (%s); quantized without calibration.", name, folder, str(error)[:120])
            options["calibration"] = None
    return options


def attach_builtin_variants(model_folder: Path, names: list[str], options: dict | None = None) -> dict:
    """Attach the built-in variants `names` to the exported folder, in place.

    Variants of one scheme in both forms (`int4` and `ort-cpu-int4`) quantize once.
    Returns a report: per variant its bytes (owned weights added to the data file, graph bytes added
    to model.onnx), the ops it uses and the seconds it took; the files' sizes before and after; and
    under `skipped`, with a logged warning, the variants that found nothing to rewrite in this graph.
    """
    folder = Path(model_folder)
    onnx_path = folder / "model.onnx"
    for name in names:
        if name not in BUILTIN:
            raise InvalidArgumentError(f"Unknown built-in variant {name!r}; choose from: {', '.join(BUILTIN)}.")
    model = load_model(onnx_path)
    data_path = folder / data_file(model, onnx_path)
    report: dict = {"files_before": {onnx_path.name: onnx_path.stat().st_size, data_path.name: data_path.stat().st_size}}
    report["variants"] = {}
    report["skipped"] = {}
    with shared_quantization():  # e.g. int4 and ort-cpu-int4 together: one quantization
        for name in names:
            start = time.perf_counter()
            size_graph = onnx_path.stat().st_size
            size_data = data_path.stat().st_size
            try:
                spec = produce(name, model, **_with_calibration(name, folder, dict((options or {}).get(name, {}))))
            except VariantNotApplicableError as error:
                logger.warning("Variant %s not attached: %s", name, error)
                report["skipped"][name] = str(error)
                continue
            spec.attach_to(model)
            save_model(model, onnx_path)
            info = next(i for i in list_variants(model) if i.name == name)
            report["variants"][name] = {
                "owned_bytes": info.owned_bytes,
                "data_bytes_added": data_path.stat().st_size - size_data,
                "graph_bytes_added": onnx_path.stat().st_size - size_graph,
                "nodes": len(list(model.functions[(VARIANT_DOMAIN, function_id(name), "")])),
                "ops": info.ops,
                "seconds": round(time.perf_counter() - start, 3),
            }
            logger.info("Attached variant %s (%d owned bytes) in %.1f s", name, info.owned_bytes, time.perf_counter() - start)
    remove_selected_files(onnx_path)
    report["files_after"] = {onnx_path.name: onnx_path.stat().st_size, data_path.name: data_path.stat().st_size}
    return report
