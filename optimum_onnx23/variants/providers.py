"""Provider names and the choice of a variant for a session's providers.

Variants are ahead-of-time forms for the *first* (primary) execution provider: onnxruntime
partitions a graph across its providers, so only the first one's preferred form can be assumed.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InvalidArgumentError
from .format import VariantInfo

__all__ = ["check_provider_names", "provider_name", "choose_variant", "known_providers"]


def known_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_all_providers())


def provider_name(provider) -> str:
    """`"CPUExecutionProvider"` or `("CUDAExecutionProvider", {...})` -> the name."""
    if isinstance(provider, (tuple, list)) and provider:
        provider = provider[0]
    if not isinstance(provider, str):
        raise InvalidArgumentError(f"Execution provider {provider!r} is not a name; pass e.g. 'CPUExecutionProvider'.")
    return provider


def check_provider_names(providers: Sequence) -> list[str]:
    """Names of `providers`, each known to onnxruntime (any build), else a one-line error."""
    names = [provider_name(p) for p in providers]
    if not names:
        raise InvalidArgumentError("No execution provider given; pass at least one, e.g. CPUExecutionProvider.")
    known = known_providers()
    for name in names:
        if name not in known:
            raise InvalidArgumentError(
                f"Unknown execution provider {name!r}; onnxruntime knows: {', '.join(known)}."
            )
    return names


def choose_variant(infos: Sequence[VariantInfo], providers: Sequence) -> VariantInfo | None:
    """The variant for the first provider: highest priority, then file order; None if none targets it."""
    first = check_provider_names(providers)[0]
    matching = [info for info in infos if first in info.providers]
    if not matching:
        return None
    return max(matching, key=lambda info: (info.priority, -infos.index(info)))
