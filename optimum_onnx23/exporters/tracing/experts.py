"""Mixture-of-Experts decoders: the experts computation they are traced with (their entries: families/moe.py).

transformers 5 computes every MoE family's routed experts in one place: the experts module's
forward, chosen by `config._experts_implementation` (`eager` loops over the experts hit,
`grouped_mm` sorts tokens by expert; both have data-dependent shapes and do not convert to ONNX).
The router (softmax/sigmoid, top-k, grouped top-k, normalization, routed scaling) and the shared
experts stay in each family's own modules and are traced as they are, so every gating quirk is
transformers' own code. Only the experts forward is swapped, during tracing only
(`static_experts`), for one with static shapes that computes exactly what transformers' experts do.

Up to `PER_EXPERT_MAX_EXPERTS` experts per layer (`experts` form, the default there):

    per expert e: If(any row selected e) then expert_e(x) * routing[:, e] else 0;  summed over e

Each expert's weights become initializers of their own that its branch reads in place, so a
decode step reads only the k selected experts and copies nothing, and a prefill computes what
the dense form does, one expert at a time. On the Mixtral-shaped benchmark (8 experts, top-2) it
measured faster than the form below in decode, prefill and beam search (benchmarks/moe_bench.py,
docs/moe.md). With more experts every untaken `If` still costs a node per step, so beyond that:

    gathered (few rows): W[top_k_index] -> batched MatMul -> gate/activation -> MatMul -> * weights -> sum over k
    dense (many rows):   every expert on every row, weights scattered into [rows, experts] (zeros off the top-k)

behind one `If` on the row count (`torch.cond`): gathering copies the k selected experts' weights
per row, so it pays while rows * k is below the number of experts (decode); beyond that computing
all experts reads fewer bytes and runs as a few large MatMuls (prefill). `FORMS` lets benchmarks
trace one form alone (`gather_or_dense` is the If on the row count). All forms use the weights as
`x @ W` ([experts, in, out]): transformers' [experts, out, in] layout is transposed once (for the
per-expert form, copied per expert while tracing: the experts' memory twice during an export), and
the optimizer folds that transpose into the initializer.

The validation step then checks the graph against the model with its own experts implementation.

Which modules are experts is read from the interface, not from the family: transformers'
`use_experts_implementation` decorator gives every experts class it wraps the same instance flags
(`has_gate`, `has_bias`, `is_transposed`, `is_concatenated`, `has_post_expert_norm`), and every
such module is traced this way, whatever model holds it (dense MoE decoders, hybrid decoders with
experts such as Qwen3-Next, Qwen3.5-MoE or Granite 4.0-H, families added to transformers later).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["FORMS", "experts_modules", "static_experts", "static_experts_forward"]

EXPERTS_IMPLEMENTATION = "optimum_onnx23_static"
# "auto": "experts" up to PER_EXPERT_MAX_EXPERTS experts, else "gather_or_dense" (the If on the row count).
FORMS = ("auto", "experts", "gather_or_dense", "gather", "dense")
# `auto`: one If per expert up to this many experts per layer; beyond, the If over gathered/all
# experts (each untaken expert still costs its If, the gathered copy grows with k only).
PER_EXPERT_MAX_EXPERTS = 16
# Which form `static_experts` traces by default; benchmarks set another to measure it alone.
DEFAULT_FORM = "auto"


def _weights(experts: torch.nn.Module):
    """(first projection [E, H, 2I or I], its bias [E, 2I or I] | None, down [E, I, H], its bias | None)."""
    first = experts.gate_up_proj if experts.has_gate else experts.up_proj
    down = experts.down_proj
    if not experts.is_transposed:  # [E, out, in] -> [E, in, out]
        first, down = first.transpose(1, 2), down.transpose(1, 2)
    if not experts.has_bias:
        return first, None, down, None
    first_bias = experts.gate_up_proj_bias if experts.has_gate else experts.up_proj_bias
    return first, first_bias, down, experts.down_proj_bias


def _activate(experts: torch.nn.Module, projected: torch.Tensor) -> torch.Tensor:
    # `_apply_gate` is the family's own (gpt-oss: interleaved, clamped SwiGLU); it works on the last axis.
    return experts._apply_gate(projected) if experts.has_gate else experts.act_fn(projected)


def _gathered(experts, hidden, index, weights, first, first_bias, down, down_bias):
    """[T, H] -> [T, H] through the k experts of each row, their weights gathered by index."""
    rows, k = index.shape
    flat = index.reshape(-1)
    up = torch.matmul(hidden[:, None, None, :], first.index_select(0, flat).view(rows, k, *first.shape[1:]))
    up = up.squeeze(2)  # [T, k, 2I]
    if first_bias is not None:
        up = up + first_bias.index_select(0, flat).view(rows, k, -1)
    act = _activate(experts, up)
    out = torch.matmul(act.unsqueeze(2), down.index_select(0, flat).view(rows, k, *down.shape[1:])).squeeze(2)
    if down_bias is not None:
        out = out + down_bias.index_select(0, flat).view(rows, k, -1)
    if experts.has_post_expert_norm:
        out = experts.post_expert_norm(out)
    return (out * weights.unsqueeze(-1)).sum(dim=1)


def _dense(experts, hidden, index, weights, first, first_bias, down, down_bias):
    """[T, H] -> [T, H] through every expert; experts outside a row's top-k get weight 0."""
    up = torch.matmul(hidden, first)  # [E, T, 2I]
    if first_bias is not None:
        up = up + first_bias[:, None, :]
    act = _activate(experts, up)
    out = torch.matmul(act, down)  # [E, T, H]
    if down_bias is not None:
        out = out + down_bias[:, None, :]
    if experts.has_post_expert_norm:
        out = experts.post_expert_norm(out)
    dense = torch.zeros(hidden.shape[0], first.shape[0], dtype=weights.dtype, device=hidden.device)
    dense = dense.scatter(1, index, weights)  # [T, E]
    # Adding the exact zeros of unselected experts leaves transformers' sum over k unchanged.
    return (out * dense.transpose(0, 1).unsqueeze(-1)).sum(dim=0)


PER_EXPERT = "_optimum_onnx23_per_expert"
_PARTS = ("first", "first_bias", "down", "down_bias")


def _split_experts(experts: torch.nn.Module) -> int:
    """Per expert, its first [H, 2I or I], bias, down [I, H] and bias as parameters of their own,
    so that each becomes an initializer a branch reads in place (a slice of the stacked weight
    would be a Gather, i.e. a copy, on every step). Returns the number of experts."""
    stacked = _weights(experts)
    for e in range(stacked[0].shape[0]):
        for label, tensor in zip(_PARTS, stacked):
            if tensor is not None:
                param = torch.nn.Parameter(tensor[e].detach().contiguous().clone(), requires_grad=False)
                experts.register_parameter(f"{PER_EXPERT}_{label}_{e}", param)
    return stacked[0].shape[0]


def _expert_weights(experts: torch.nn.Module, e: int) -> tuple:
    # Read as module attributes, so that tracing names them by their parameter path.
    return tuple(getattr(experts, f"{PER_EXPERT}_{label}_{e}", None) for label in _PARTS)


def _unsplit_experts(experts: torch.nn.Module) -> None:
    for name in [n for n, _ in experts.named_parameters(recurse=False) if n.startswith(PER_EXPERT)]:
        delattr(experts, name)


def _per_expert(experts, hidden, index, weights):
    """[T, H] -> [T, H]: one `If` per expert, taken when any row selected it; the taken branch runs
    the expert on every row, scaled by each row's routing weight for it (exactly 0 where the row did
    not select it). Decode reads only the k selected experts' weights, in place; prefill computes
    what `_dense` does, one expert at a time."""
    count = getattr(experts, PER_EXPERT)
    hit = index.unsqueeze(-1) == torch.arange(count, device=index.device)  # [T, k, E]
    routing = (weights.unsqueeze(-1) * hit.to(weights.dtype)).sum(dim=1)  # [T, E], the dense routing weights
    taken = hit.flatten(0, 1).any(dim=0)  # [E]
    out = None
    for e in range(count):
        first, first_bias, down, down_bias = _expert_weights(experts, e)
        biases = tuple(b for b in (first_bias, down_bias) if b is not None)

        def expert(hidden, weight, first, down, *biases):
            first_bias, down_bias = biases if biases else (None, None)
            up = torch.matmul(hidden, first)
            if first_bias is not None:
                up = up + first_bias
            y = torch.matmul(_activate(experts, up), down)
            if down_bias is not None:
                y = y + down_bias
            if experts.has_post_expert_norm:
                y = experts.post_expert_norm(y)
            return y.to(weight.dtype) * weight

        def skip(hidden, weight, *_):
            return torch.zeros_like(hidden, dtype=weight.dtype)

        # The weights are operands, not closures: they keep their parameter names in the graph
        # (layer replication maps each layer's weights by name). Experts in ascending order, as
        # transformers' eager loop adds them.
        y = torch.cond(taken[e], expert, skip, (hidden, routing[:, e : e + 1], first, down, *biases))
        out = y if out is None else out + y
    return out


def _form_of(experts: torch.nn.Module, form: str) -> str:
    """The form `auto` resolves to for this experts module."""
    if form != "auto":
        return form
    return "experts" if _weights(experts)[0].shape[0] <= PER_EXPERT_MAX_EXPERTS else "gather_or_dense"


def static_experts_forward(self, hidden_states, top_k_index, top_k_weights, form: str | None = None):
    """transformers' experts forward signature; `form` defaults to `DEFAULT_FORM`."""
    form = _form_of(self, form or DEFAULT_FORM)
    first, first_bias, down, down_bias = _weights(self)
    biases = tuple(b for b in (first_bias, down_bias) if b is not None)

    def unpack(args):
        hidden, index, weights, first, down, *rest = args
        first_bias = rest.pop(0) if self.has_bias else None
        down_bias = rest.pop(0) if self.has_bias else None
        return hidden, index, weights, first, first_bias, down, down_bias

    def gathered(*args):
        return _gathered(self, *unpack(args))

    def dense(*args):
        return _dense(self, *unpack(args))

    operands = (hidden_states, top_k_index, top_k_weights, first, down, *biases)
    if form == "experts":
        return _per_expert(self, hidden_states, top_k_index, top_k_weights).to(hidden_states.dtype)
    if form == "gather":
        out = gathered(*operands)
    elif form == "dense":
        out = dense(*operands)
    else:
        # Gather while the selected experts are fewer than all of them.
        few_rows = hidden_states.shape[0] * top_k_index.shape[-1] < first.shape[0]
        out = torch.cond(few_rows, gathered, dense, operands)
    return out.to(hidden_states.dtype)


# The instance attributes transformers' `use_experts_implementation` sets on every experts module.
_INTERFACE_FLAGS = ("has_gate", "has_bias", "is_transposed", "is_concatenated", "has_post_expert_norm")


def experts_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of `model` that dispatch through transformers' experts interface."""
    return [m for m in model.modules() if all(hasattr(m, flag) for flag in _INTERFACE_FLAGS) and hasattr(m, "down_proj")]


@contextlib.contextmanager
def static_experts(model: torch.nn.Module, form: str | None = None) -> Iterator[None]:
    """Within the block, `model`'s experts modules run `static_experts_forward`; restored afterwards.
    A model without any is traced as it is."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    chosen = form or DEFAULT_FORM
    if chosen not in FORMS:
        raise ValueError(f"Unknown MoE experts form `{chosen}`; use one of {', '.join(FORMS)}.")

    def forward(self, hidden_states, top_k_index, top_k_weights):
        return static_experts_forward(self, hidden_states, top_k_index, top_k_weights, chosen)

    found = experts_modules(model)
    if not found:
        yield
        return
    # The experts forward reads its own module's config (a text sub-config in multimodal models):
    # set the implementation there, not through the model's `set_experts_implementation`, which
    # skips classes whose source file does not spell the decorator (modular re-exports).
    configs = list({id(m.config): m.config for m in found}.values())
    saved = [config._experts_implementation_internal for config in configs]
    ALL_EXPERTS_FUNCTIONS[EXPERTS_IMPLEMENTATION] = forward  # this interface instance only
    modules = [m for m in found if _form_of(m, chosen) == "experts"]
    try:
        for module in modules:
            setattr(module, PER_EXPERT, _split_experts(module))
        for config in configs:
            config._experts_implementation_internal = EXPERTS_IMPLEMENTATION
        yield
    finally:
        for module in modules:
            _unsplit_experts(module)
            delattr(module, PER_EXPERT)
        for config, implementation in zip(configs, saved):
            config._experts_implementation_internal = implementation
        del ALL_EXPERTS_FUNCTIONS[EXPERTS_IMPLEMENTATION]
