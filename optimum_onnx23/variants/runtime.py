"""Session-creation helpers: pick the variant for a session's first provider and hand onnxruntime
a plain model.

`select_for_providers` writes the selected model *next to* the original, named after the original
graph's hash and the variant (`model.variant-<name>-<hash12>.onnx`). It is a small graph file that
references the same `model.onnx_data` (no weight is copied, so a 538 MB model costs a few hundred
KB once, and later sessions reuse the file). A read-only folder gets a private temporary folder
with a link to the data file instead, with a warning.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..errors import ModelNotFoundError, VariantNotFoundError
from .folder import check_external_locations, load_model
from .format import VARIANT_DOMAIN, info_from_metadata
from .providers import check_provider_names, choose_variant
from .select import MAIN, select_variant

__all__ = ["select_for_providers", "missing_ops", "create_session", "selected_file_name"]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _kernels() -> dict[str, set[tuple[str, str]]]:
    """provider -> {(domain, op)} with a kernel in this onnxruntime build."""
    import onnxruntime.capi._pybind_state as C

    kernels: dict[str, set[tuple[str, str]]] = {}
    for kernel in C.get_all_opkernel_def():
        kernels.setdefault(kernel.provider, set()).add((kernel.domain or "", kernel.op_name))
    return kernels


def missing_ops(ops: Sequence[str], providers: Sequence[str]) -> list[str]:
    """The ops (`domain::op`) this onnxruntime cannot run for `providers`: contrib/custom-domain ops
    need a kernel in the *first* provider (the variant was built for it); standard ops may run on
    any provider of the session, as onnxruntime's partitioner would place them."""
    import onnxruntime as ort

    kernels = _kernels()
    available = set(ort.get_available_providers())
    first = providers[0]
    first_kernels = kernels.get(first, set()) if first in available else set()
    any_kernels = set().union(*(kernels.get(p, set()) for p in providers if p in available))
    missing = []
    for op in ops:
        domain, _, name = op.rpartition("::")
        domain = "" if domain in ("", "ai.onnx") else domain
        if (domain, name) in (any_kernels if domain == "" else first_kernels):
            continue
        if domain == "" and _runs_without_kernel(name):
            continue
        missing.append(op)
    return missing


def _runs_without_kernel(op: str) -> bool:
    """Standard ops onnxruntime handles without a kernel: `Constant` (folded into an initializer)
    and ops defined as ONNX functions (expanded when no kernel claims them)."""
    import onnx

    if op == "Constant":
        return True
    try:
        schema = onnx.defs.get_schema(op)
    except onnx.defs.SchemaError:
        return False
    return schema.has_function or schema.has_context_dependent_function


def selected_file_name(onnx_path: Path, variant: str) -> str:
    digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()[:12]
    return f"{Path(onnx_path).stem}.variant-{variant}-{digest}.onnx"


def _write_selected(model, onnx_path: Path, name: str) -> Path:
    import onnx_ir as ir

    folder = onnx_path.parent
    target = folder / name
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    except OSError:
        private = Path(tempfile.mkdtemp(prefix="optimum-onnx23-variant-"))
        for value in model.graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor) and not (private / value.const_value.location).exists():
                os.symlink(folder.resolve() / value.const_value.location, private / value.const_value.location)
        target = private / name
        warnings.warn(f"{folder} is read-only: the selected model is written to {private} (linked to the weights).", stacklevel=3)
        ir.save(model, target)
        return target
    os.close(fd)
    try:
        ir.save(model, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def select_for_providers(
    onnx_path: str | os.PathLike, providers: Sequence, variant: str | None = None
) -> tuple[Path, str | None]:
    """What to give `onnxruntime.InferenceSession` for `providers`, and the variant chosen.

    Returns `(onnx_path, None)` for a model without variants. Otherwise the path of a plain model
    beside it and the variant's name, or None with the main graph (variants stripped) when no
    variant targets `providers[0]`, `variant="main"` is asked for, or the variant needs ops this
    onnxruntime lacks for those providers (then with a warning).
    """
    import onnx

    onnx_path = Path(onnx_path)
    names = check_provider_names(providers)
    if not onnx_path.is_file():
        raise ModelNotFoundError(f"{onnx_path} does not exist; pass the model.onnx of an exported folder.")
    # Fast path on the proto alone (no weights, no IR): most models carry no variant, and a cached
    # selection only needs the metadata.
    proto = onnx.load(str(onnx_path), load_external_data=False)
    check_external_locations(proto, onnx_path.parent)
    functions = [f for f in proto.functions if f.domain == VARIANT_DOMAIN]
    if not functions:
        return onnx_path, None
    if variant == MAIN:
        return _materialize(onnx_path, MAIN, names[0]), None
    infos = [
        info_from_metadata({p.key: p.value for p in f.metadata_props}, f"{f.domain}::{f.name}", list(f.input), list(f.output))
        for f in functions
    ]
    if variant is not None:
        info = next((i for i in infos if i.name == variant), None)
        if info is None:
            raise VariantNotFoundError(f"{onnx_path} has no variant {variant!r}; it has: {', '.join(i.name for i in infos)}.")
    else:
        info = choose_variant(infos, names)
    if info is None:
        logger.info("No backend variant for %s in %s; using the main graph.", names[0], onnx_path.name)
        return _materialize(onnx_path, MAIN, names[0]), None
    missing = missing_ops(info.ops, names)
    if missing:
        message = (
            f"Variant {info.name} needs {', '.join(missing)}, which this onnxruntime lacks for {names[0]}; "
            "using the main graph."
        )
        logger.warning(message)
        warnings.warn(message, stacklevel=2)
        return _materialize(onnx_path, MAIN, names[0]), None
    return _materialize(onnx_path, info.name, names[0]), info.name


def _materialize(onnx_path: Path, variant: str, provider: str) -> Path:
    """The plain model for `variant` (MAIN: the main graph with every variant stripped, so that
    onnxruntime neither reads nor logs the variants' weights), written once and then reused."""
    name = selected_file_name(onnx_path, variant)
    cached = onnx_path.parent / name
    label = "the main graph" if variant == MAIN else f"backend variant {variant}"
    if cached.is_file():
        logger.info("Using %s for %s (reusing %s).", label, provider, name)
        return cached
    model = load_model(onnx_path)
    selected = select_variant(model, variant=variant, copy=False)  # loaded for this call only
    path = _write_selected(selected, onnx_path, name)
    logger.info("Using %s for %s (wrote %s).", label, provider, path.name)
    return path


def create_session(onnx_path: str | os.PathLike, providers: Sequence, sess_options=None, variant: str | None = None):
    """An `InferenceSession` on the selected variant; if onnxruntime refuses it, warns and opens the
    main graph instead (a variant never leaves a caller without a session). Returns (session, variant)."""
    import onnxruntime as ort

    path, chosen = select_for_providers(onnx_path, providers, variant)
    try:
        return ort.InferenceSession(str(path), sess_options=sess_options, providers=list(providers)), chosen
    except Exception as error:  # onnxruntime raises its own Fail/NotImplemented/InvalidGraph types
        if chosen is None:
            raise
        message = f"onnxruntime could not load variant {chosen} ({str(error).splitlines()[0][:200]}); using the main graph."
        logger.warning(message)
        warnings.warn(message, stacklevel=2)
        main = _materialize(Path(onnx_path), MAIN, check_provider_names(providers)[0])
        return ort.InferenceSession(str(main), sess_options=sess_options, providers=list(providers)), None
