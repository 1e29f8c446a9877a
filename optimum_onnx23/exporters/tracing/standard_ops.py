"""torch custom ops that export as opset 27's `LinearAttention` and `CausalConvWithState`.

torch.export traces `torch.ops.optimum_onnx23.linear_attention` / `.causal_conv_with_state` as
single nodes (their fake implementations give the shapes); `TRANSLATIONS` writes each as the ONNX
op, first in a placeholder domain (`PENDING_DOMAIN`): torch's exporter converts the graph to the
requested opset with onnxscript's version converter, which stops at 25 and refuses a default-domain
node newer than its target. After the trace, `adopt_pending_ops` moves them into the default
domain of the (raised) opset. The eager implementations (a token-by-token recurrence, a convolution
over the state and the input) are the ops' specifications, for tests; the export never runs them.

Guarantees: inputs and attributes as the opset-27 specification names them; `LinearAttention`
takes 3-D `[B, S, H*D]` query/key/value, `[B, S, H]` decay and beta, state `[B, H, Dk, Dv]`;
`CausalConvWithState` channels-first `[B, C, S]`, depthwise weight `[C, 1, K]`, state `[B, C, K-1]`.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import torch
import torch.nn.functional as F

__all__ = ["PENDING_DOMAIN", "STANDARD_OPS_OPSET", "TRANSLATIONS", "adopt_pending_ops", "linear_attention", "causal_conv_with_state"]

PENDING_DOMAIN = "pkg.optimum_onnx23.pending"
STANDARD_OPS_OPSET = 27


@torch.library.custom_op("optimum_onnx23::linear_attention", mutates_args=())
def linear_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, past_state: torch.Tensor,
    decay: torch.Tensor, beta: torch.Tensor | None, heads: int, update_rule: str, scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`LinearAttention` with q_num_heads = kv_num_heads = heads, one token at a time."""
    b, s, _ = query.shape
    q, k, v = (t.reshape(b, s, heads, -1).float() for t in (query, key, value))
    state = past_state.float().clone()
    outputs = []
    for t in range(s):
        gate = decay[:, t, :, None, None].float().exp() if update_rule in ("gated", "gated_delta") else 1.0
        state = state * gate
        if update_rule in ("delta", "gated_delta"):
            predicted = torch.einsum("bhkv,bhk->bhv", state, k[:, t])
            update = beta[:, t, :, None].float() * (v[:, t] - predicted)
        else:
            update = v[:, t]
        state = state + k[:, t, :, :, None] * update[:, :, None, :]
        outputs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], state))
    return torch.stack(outputs, 1).reshape(b, s, -1).to(value.dtype), state.to(past_state.dtype)


@linear_attention.register_fake
def _(query, key, value, past_state, decay, beta, heads, update_rule, scale):
    return value.new_empty(value.shape), past_state.new_empty(past_state.shape)


@torch.library.custom_op("optimum_onnx23::causal_conv_with_state", mutates_args=())
def causal_conv_with_state(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, past_state: torch.Tensor, activation: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """`CausalConvWithState`: depthwise causal convolution over [state, x]; the new state is the last K-1."""
    full = torch.cat([past_state, x.to(past_state.dtype)], dim=-1)
    out = F.conv1d(full, weight, bias, groups=x.shape[1])
    if activation in ("silu", "swish"):
        out = F.silu(out)
    return out.to(x.dtype), full[..., x.shape[-1] :].clone()


@causal_conv_with_state.register_fake
def _(x, weight, bias, past_state, activation):
    return x.new_empty(x.shape), past_state.new_empty(past_state.shape)


def _pending_schema(op: str) -> onnx.defs.OpSchema:
    """The opset-27 schema of `op`, restated in PENDING_DOMAIN version 1 (what the tracer needs to
    name inputs and attributes)."""
    real = onnx.defs.get_schema(op, STANDARD_OPS_OPSET, "")
    param = onnx.defs.OpSchema.FormalParameter
    return onnx.defs.OpSchema(
        op, PENDING_DOMAIN, 1, real.doc or "",
        inputs=[param(i.name, i.type_str, param_option=i.option) for i in real.inputs],
        outputs=[param(o.name, o.type_str, param_option=o.option) for o in real.outputs],
        type_constraints=[(t.type_param_str, list(t.allowed_type_strs), t.description) for t in real.type_constraints],
        attributes=[onnx.defs.OpSchema.Attribute(a.name, a.type, a.description, required=a.required) for a in real.attributes.values()],
    )


def _translations() -> dict:
    from onnxscript import values

    pending = values.Opset(PENDING_DOMAIN, 1)
    linear = values.Op(pending, "LinearAttention", _pending_schema("LinearAttention"))
    conv = values.Op(pending, "CausalConvWithState", _pending_schema("CausalConvWithState"))

    def linear_attention_onnx(query, key, value, past_state, decay, beta, heads: int, update_rule: str, scale: float):
        return linear(
            query, key, value, past_state, decay, beta,
            q_num_heads=heads, kv_num_heads=heads, update_rule=update_rule, scale=scale,
        )

    def causal_conv_onnx(x, weight, bias, past_state, activation: str):
        return conv(x, weight, bias, past_state, activation=activation)

    return {
        torch.ops.optimum_onnx23.linear_attention.default: linear_attention_onnx,
        torch.ops.optimum_onnx23.causal_conv_with_state.default: causal_conv_onnx,
    }


TRANSLATIONS = _translations()


def adopt_pending_ops(model: ir.Model) -> int:
    """Move the placeholder-domain nodes into the default domain (whose opset must be >= 27 by
    now) and drop the placeholder import; returns how many moved."""
    moved = 0
    for node in model.graph.all_nodes():
        if node.domain == PENDING_DOMAIN:
            node.domain, node.version = "", None
            moved += 1
    model.opset_imports.pop(PENDING_DOMAIN, None)
    if moved and model.opset_imports.get("", 0) < STANDARD_OPS_OPSET:
        raise ValueError(f"LinearAttention / CausalConvWithState need opset {STANDARD_OPS_OPSET}; the graph imports {model.opset_imports.get('')}.")
    return moved
