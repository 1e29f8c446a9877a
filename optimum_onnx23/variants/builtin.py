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
from .producers import BUILTIN, portable_opset21, produce
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
            _attach_one(
                model, onnx_path, data_path, name,
                lambda n=name: produce(n, model, **_with_calibration(n, folder, dict((options or {}).get(n, {})))), report,
            )
    # The portable form of every weight-owning variant (int4, int8), whichever was attached first.
    carried = {i.name: i for i in list_variants(model)}
    if portable_opset21.NAME in carried:
        for base in portable_opset21.bases(list(carried.values())):
            derived = portable_opset21.combined_name(base)
            if derived not in carried:
                _attach_one(model, onnx_path, data_path, derived, lambda b=base: portable_opset21.produce(model, base=b), report)
    remove_selected_files(onnx_path)
    report["files_after"] = {onnx_path.name: onnx_path.stat().st_size, data_path.name: data_path.stat().st_size}
    return report


def _attach_one(model, onnx_path: Path, data_path: Path, name: str, make, report: dict) -> None:
    """Produce variant `name` with `make()`, attach it and save; a variant with nothing to rewrite
    is recorded under `skipped` with a warning."""
    start = time.perf_counter()
    size_graph = onnx_path.stat().st_size
    size_data = data_path.stat().st_size
    try:
        spec = make()
    except VariantNotApplicableError as error:
        logger.warning("Variant %s not attached: %s", name, error)
        report["skipped"][name] = str(error)
        return
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
        **spec.report,
    }
    logger.info("Attached variant %s (%d owned bytes) in %.1f s", name, info.owned_bytes, time.perf_counter() - start)
