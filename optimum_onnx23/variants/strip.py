"""`strip_variants`: remove variants, restoring the model as it was before they were attached."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import VariantNotFoundError
from ._model import AnyModel, as_ir, like
from .format import KEYS, helper_domain, read_info, update_index, variant_functions

__all__ = ["strip_variants"]


def strip_variants(model: AnyModel, names: Sequence[str] | None = None) -> AnyModel:
    """Remove the variants `names` (all when None): their functions, helper functions and owned
    weights. In place for an `ir.Model`. Attaching then stripping gives back the graph byte for byte:
    attach only appends, and this removes exactly what it appended."""
    m = as_ir(model, copy=False)
    functions = {f.metadata_props.get(KEYS.NAME, f.name): f for f in variant_functions(m)}
    if names is None:
        names = list(functions)
    for name in names:
        if name not in functions:
            raise VariantNotFoundError(
                f"The model has no variant {name!r}; it has: {', '.join(functions) or 'none'}."
            )
    for name in names:
        function = functions[name]
        info = read_info(m, function)
        for init_name in info.owned_initializers:
            m.graph.initializers.pop(init_name, None)
        for key in [k for k, f in m.functions.items() if f.domain == helper_domain(name)]:
            del m.functions[key]
        del m.functions[function.identifier()]
    update_index(m)
    return like(model, m)
