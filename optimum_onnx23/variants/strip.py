"""`strip_variants`: remove variants, restoring the model as it was before they were attached."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..errors import VariantNotFoundError
from ._model import AnyModel, as_ir, like
from .format import KEYS, helper_domain, read_info, update_index, variant_functions

__all__ = ["strip_variants", "dependents"]

logger = logging.getLogger(__name__)


def dependents(model, names: Sequence[str]) -> list[str]:
    """Variants, other than `names`, that read a weight one of `names` owns (`portable-opset21.X`
    reads X's packed weights), directly or through another dependent."""
    infos = {f.metadata_props.get(KEYS.NAME, f.name): (read_info(model, f), {v.name for v in f.inputs}) for f in variant_functions(model)}
    gone = set(names)
    found: list[str] = []
    changed = True
    while changed:
        changed = False
        owned = {n for name in gone for n in infos[name][0].owned_initializers if name in infos}
        for name, (_, consumed) in infos.items():
            if name not in gone and consumed & owned:
                gone.add(name)
                found.append(name)
                changed = True
    return found


def strip_variants(model: AnyModel, names: Sequence[str] | None = None) -> AnyModel:
    """Remove the variants `names` (all when None): their functions, helper functions and owned
    weights. In place for an `ir.Model`. Attaching then stripping gives back the graph byte for byte:
    attach only appends, and this removes exactly what it appended. A variant that reads weights of
    one stripped here is stripped too (it could not run without them), with a warning."""
    m = as_ir(model, copy=False)
    functions = {f.metadata_props.get(KEYS.NAME, f.name): f for f in variant_functions(m)}
    if names is None:
        names = list(functions)
    for name in names:
        if name not in functions:
            raise VariantNotFoundError(
                f"The model has no variant {name!r}; it has: {', '.join(functions) or 'none'}."
            )
    extra = dependents(m, names)
    if extra:
        logger.warning("Also stripping %s: %s the weights of %s.", ", ".join(extra), "it reads" if len(extra) == 1 else "they read",
                       ", ".join(names))
    for name in [*names, *extra]:
        function = functions[name]
        info = read_info(m, function)
        for init_name in info.owned_initializers:
            m.graph.initializers.pop(init_name, None)
        for key in [k for k, f in m.functions.items() if f.domain == helper_domain(name)]:
            del m.functions[key]
        del m.functions[function.identifier()]
    update_index(m)
    return like(model, m)
