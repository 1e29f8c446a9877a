"""Session-creation helpers: pick the variant for a session's first provider and hand onnxruntime
a plain model, without writing anything into the model's folder.

`select_for_providers` substitutes the variant in memory and returns the plain model's bytes: the
graph only (a few hundred KB); its initializers still point at the folder's `model.onnx_data`,
which onnxruntime reads from the folder named by the session option
`session.model_external_initializers_file_folder_path` (`Selected.session_options` sets it), so no weight
is copied or held twice and a read-only folder (the Hugging Face cache) works. The plain graph is
cached in our own cache folder (`~/.cache/optimum-onnx23/selected`, or `$OPTIMUM_ONNX23_CACHE`),
keyed by the sha256 of `model.onnx`, so the substitution is paid once per file and variant.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import VariantNotFoundError
from ..files import replacing
from ..model_file import EXTERNAL_FOLDER_KEY, ModelFile
from .format import info_from_metadata
from .providers import check_provider_names, choose_variant
from .select import MAIN, select_variant

__all__ = ["QDQ_ACCURACY_KEY", "QDQ_ACCURACY_LEVEL", "Selected", "select_for_providers", "missing_ops", "has_kernel", "create_session", "cache_dir", "EXTERNAL_FOLDER_KEY"]

logger = logging.getLogger(__name__)

# onnxruntime's CPU provider fuses blocked `DequantizeLinear` + `MatMul` (the `int4` / `int8`
# variants) into `MatMulNBits` with this accuracy level: 4 (int8 activations per block, integer
# dot products) is what `ort-cpu-int4` / `ort-cpu-int8` carry as an attribute.
QDQ_ACCURACY_KEY = "session.qdq_matmulnbits_accuracy_level"
QDQ_ACCURACY_LEVEL = 4
# The first onnxruntime whose CPU provider fuses 8-bit blocked `DequantizeLinear` + `MatMul` too
# (1.23 and 1.24 fuse 4-bit only: the rest would dequantize every weight at every run).
QDQ_FUSION_ONNXRUNTIME = (1, 25)


@functools.lru_cache(maxsize=1)
def _kernels() -> dict[str, set[tuple[str, str]]] | None:
    """provider -> {(domain, op)} with a kernel in this onnxruntime build; None where the build
    cannot list them: onnxruntime-openvino 1.24.1 crashes (SIGSEGV) in `get_all_opkernel_def`."""
    import onnxruntime as ort
    import onnxruntime.capi._pybind_state as C

    if "OpenVINOExecutionProvider" in ort.get_available_providers():
        return None

    kernels: dict[str, set[tuple[str, str]]] = {}
    for kernel in C.get_all_opkernel_def():
        kernels.setdefault(kernel.provider, set()).add((kernel.domain or "", kernel.op_name))
    return kernels


def has_kernel(op: str, provider: str = "CPUExecutionProvider", domain: str = "") -> bool | None:
    """Whether this onnxruntime build registers a kernel for `op` on `provider`; None where the
    build cannot list its kernels (onnxruntime-openvino)."""
    kernels = _kernels()
    return None if kernels is None else (domain, op) in kernels.get(provider, set())


def missing_ops(ops: Sequence[str], providers: Sequence[str]) -> list[str]:
    """The ops (`domain::op`) this onnxruntime cannot run for `providers`: contrib/custom-domain ops
    need a kernel in the *first* provider (the variant was built for it); standard ops may run on
    any provider of the session, as onnxruntime's partitioner would place them. A provider that
    compiles subgraphs has no kernel list to consult: ops it may take are not reported here."""
    import onnxruntime as ort

    kernels = _kernels()
    if kernels is None:  # nothing to check against: session creation decides (`create_session`)
        return []
    available = set(ort.get_available_providers())
    first = providers[0]
    first_kernels = kernels.get(first, set()) if first in available else set()
    any_kernels = set().union(*(kernels.get(p, set()) for p in providers if p in available))
    # Providers that compile subgraphs (OpenVINO, TensorRT, QNN, ...) register no per-op kernels:
    # what they take is only known when the session is created (`create_session` decides then).
    compiling = {p for p in providers if p in available and p not in kernels}
    missing = []
    for op in ops:
        domain, _, name = op.rpartition("::")
        domain = "" if domain in ("", "ai.onnx") else domain
        if (domain, name) in (any_kernels if domain == "" else first_kernels):
            continue
        if first in compiling or (domain == "" and compiling):
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


_CACHE_FORMAT = "1"  # bump when the substitution changes what it produces


@dataclass
class Selected:
    """What to open: the plain model's bytes (the file's own when it has no variants), whose
    external data lives in `folder`."""

    model: bytes
    folder: Path

    def session_options(self, options=None):
        """`options` (or new ones) set to read external data from `folder` when `model` is bytes,
        and `QDQ_ACCURACY_KEY` to `QDQ_ACCURACY_LEVEL` unless the caller set it; the caller's
        object is updated in place."""
        import onnxruntime as ort

        options = options if options is not None else ort.SessionOptions()
        options.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(self.folder))
        try:
            options.get_session_config_entry(QDQ_ACCURACY_KEY)
        except RuntimeError:  # not set: onnxruntime raises rather than returning a default
            options.add_session_config_entry(QDQ_ACCURACY_KEY, str(QDQ_ACCURACY_LEVEL))
        return options

    def session(self, providers: Sequence, sess_options=None):
        import onnxruntime as ort

        return ort.InferenceSession(self.model, sess_options=self.session_options(sess_options), providers=list(providers))

    def proto(self):
        """The model proto without weights (for inspection)."""
        import onnx

        return onnx.load_model_from_string(self.model)


def cache_dir() -> Path:
    """Where selected graphs are cached: `$OPTIMUM_ONNX23_CACHE/selected`, else
    `$XDG_CACHE_HOME/optimum-onnx23/selected` (`~/.cache/...`)."""
    root = os.environ.get("OPTIMUM_ONNX23_CACHE")
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "optimum-onnx23"
    return Path(root) / "selected"


def _cache_path(digest: str, variant: str) -> Path:
    return cache_dir() / f"{digest}-{variant}-f{_CACHE_FORMAT}.onnx"


def _cache_write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:  # the user's umask, not mkstemp's 0600
            tmp.write_bytes(data)
    except OSError as error:  # a read-only home: select again next time
        logger.info("Could not cache the selected graph in %s (%s); it is selected in memory each time.", path.parent, error)


def _as_model_file(model: ModelFile | str | os.PathLike) -> ModelFile:
    return model if isinstance(model, ModelFile) else ModelFile.open(model)


def select_for_providers(
    model: ModelFile | str | os.PathLike, providers: Sequence, variant: str | None = None
) -> tuple[Selected, str | None]:
    """What to give `onnxruntime.InferenceSession` for `providers` (`Selected.session()` opens it),
    and the variant chosen. `model` is an opened `ModelFile` (nothing is parsed again) or a path.

    A model without variants is returned as its own bytes. Otherwise the plain model's bytes with
    the variant for `providers[0]` substituted (or the one named `variant`), or with the main graph
    (variants stripped, so onnxruntime neither reads nor logs their weights) when no variant targets
    `providers[0]`, `variant="main"` is asked for, or the variant needs ops this onnxruntime lacks
    for those providers (then with a warning). Nothing is written into the model's folder.
    """
    model = _as_model_file(model)
    names = check_provider_names(providers)
    functions = model.variant_functions
    if not functions:
        return Selected(*model.for_onnxruntime(model.raw)), None
    if variant == MAIN:
        return _materialize(model, MAIN, names[0]), None
    infos = [
        info_from_metadata({p.key: p.value for p in f.metadata_props}, f"{f.domain}::{f.name}", list(f.input), list(f.output))
        for f in functions
    ]
    if variant is not None:
        info = next((i for i in infos if i.name == variant), None)
        if info is None:
            raise VariantNotFoundError(f"{model.path} has no variant {variant!r}; it has: {', '.join(i.name for i in infos)}.")
    else:
        info = choose_variant(infos, names)
        if info is not None and not _fused_here(info, names[0]):
            fallback = choose_variant([i for i in infos if _fused_here(i, names[0])], names)
            logger.warning(
                "Variant %s is standard DequantizeLinear + MatMul, which onnxruntime %s does not fuse into MatMulNBits "
                "(>= %s does): %s.", info.name, _ort_version_text(), ".".join(map(str, QDQ_FUSION_ONNXRUNTIME)),
                f"using {fallback.name} instead" if fallback else "it runs unfused (slower); upgrade onnxruntime",
            )
            info = fallback or info
    if info is None:
        logger.info("No backend variant for %s in %s; using the main graph.", names[0], model.path.name)
        return _materialize(model, MAIN, names[0]), None
    missing = missing_ops(info.ops, names)
    if missing:
        message = (
            f"Variant {info.name} needs {', '.join(missing)}, which this onnxruntime lacks for {names[0]}; "
            "using the main graph."
        )
        logger.warning(message)
        warnings.warn(message, stacklevel=2)
        return _materialize(model, MAIN, names[0]), None
    return _materialize(model, info.name, names[0]), info.name


def _ort_version_text() -> str:
    import onnxruntime as ort

    return ort.__version__


def _fused_here(info, provider: str) -> bool:
    """False for a standard-op quantized variant (`DequantizeLinear`) on an onnxruntime CPU provider
    too old to fuse it into `MatMulNBits`: automatic selection then prefers the next variant (the
    contrib form, when the file has it; else the variant runs unfused, with a warning)."""
    if provider != "CPUExecutionProvider" or "ai.onnx::DequantizeLinear" not in info.ops:
        return True
    parts = []
    for part in _ort_version_text().split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts) >= QDQ_FUSION_ONNXRUNTIME


def _materialize(model: ModelFile, variant: str, provider: str) -> Selected:
    """The plain model for `variant` (MAIN: the main graph with every variant stripped), from our
    cache or substituted now (from the already parsed proto) and cached."""
    import onnx_ir as ir

    label = "the main graph" if variant == MAIN else f"backend variant {variant}"
    cached = _cache_path(model.digest, variant)
    if cached.is_file():
        logger.info("Using %s for %s (cached selection).", label, provider)
        return Selected(*model.for_onnxruntime(cached.read_bytes()))
    selected = select_variant(model.to_ir(), variant=variant, copy=False)  # built for this call only
    model.restore_locations(selected)  # the cached graph names the data as the file does
    data = ir.serde.serialize_model(selected).SerializeToString()
    _cache_write(cached, data)
    logger.info("Using %s for %s (selected in memory).", label, provider)
    return Selected(*model.for_onnxruntime(data))


def create_session(model: ModelFile | str | os.PathLike, providers: Sequence, sess_options=None, variant: str | None = None):
    """An `InferenceSession` on the selected variant; if onnxruntime refuses it, warns and opens the
    main graph instead (a variant never leaves a caller without a session). Returns (session, variant).
    `model` is parsed once (a path is opened as a `ModelFile`); `sess_options` is updated in place
    with the external-data folder (`Selected.session_options`)."""
    model = _as_model_file(model)
    selected, chosen = select_for_providers(model, providers, variant)
    try:
        return selected.session(providers, sess_options), chosen
    except Exception as error:  # onnxruntime raises its own Fail/NotImplemented/InvalidGraph types
        if chosen is None:
            raise
        message = f"onnxruntime could not load variant {chosen} ({str(error).splitlines()[0][:200]}); using the main graph."
        logger.warning(message)
        warnings.warn(message, stacklevel=2)
        main, _ = select_for_providers(model, providers, MAIN)
        return main.session(providers, sess_options), None
