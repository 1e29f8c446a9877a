"""`list_variants`: what a model carries beside its main graph."""

from __future__ import annotations

from ._model import AnyModel, as_ir
from .format import VariantInfo, read_info, variant_functions

__all__ = ["list_variants"]


def list_variants(model: AnyModel) -> list[VariantInfo]:
    """The variants of `model` in file order, with the regions they cover and the variants they
    overlap (variants may overlap; only one is selected per session)."""
    m = as_ir(model, copy=False)
    infos = [read_info(m, f) for f in variant_functions(m)]
    for info in infos:
        produced = set(info.produces)
        info.overlaps = [other.name for other in infos if other is not info and produced & set(other.produces)]
    return infos
