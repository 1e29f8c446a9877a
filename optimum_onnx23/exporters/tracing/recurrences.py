"""Exportable forms of transformers' state-space and linear-attention scans, swapped in while tracing.

transformers' torch fallbacks for these kernels cannot be traced with a symbolic sequence length:
`mamba2_chunk_scan` (Mamba-2, Bamba, Granite 4, Falcon-H1, Nemotron-H) branches on
`pad_size > 0`, and `torch_chunk_gated_delta_rule` (Qwen3.5, Qwen3-Next) loops `for i in
range(num_chunks)` and, under torch.export, forward-substitutes a 64x64 triangular system row by
row. The functions here compute the same math in forms that trace once for every length; they
replace transformers' functions in the model's module only while torch.export runs
(`exportable`), so the validation against PyTorch compares them with transformers' own.

Guarantees, both functions:
- One computation for prefill and decode: the chunk length is `min(sequence_length, chunk_size)`,
  a graph value, so a one-token step is a chunk of one (no 256-wide padding per decode step) and a
  long prompt is cut in chunks of `chunk_size` as transformers does.
- Standard ONNX ops only. Mamba-2's inter-chunk recurrence is a scalar decay per head, so it stays
  loop-free (transformers' segment-sum over chunk boundaries). Gated DeltaNet's state update is a
  matrix recurrence (the delta rule reads the state it writes), which no fixed set of tensor ops
  computes for an unbounded number of chunks: it is an ONNX `Scan` over chunks
  (`torch._higher_order_ops.scan`), with everything inside a chunk batched outside the loop.
  Measured on 2 cores (8 value heads of 64x64, one layer, `benchmarks/hybrid_bench.py` has the
  table): a 512-token prefill takes ~100 ms with the chunked Scan (8 iterations) against ~185 ms
  with a Scan over tokens (transformers' recurrent form, 512 iterations); a one-token step is the
  same (~0.15 ms) in both.
- transformers' own decode step does not clamp Mamba-2's dt to `time_step_limit` while its
  chunked prefill does; the exportable scan clamps only multi-token steps, so prefill and decode
  both match what transformers computes.
- The unit-lower-triangular inverse of the UT transform, which transformers computes with
  `solve_triangular` (no ONNX op) or, under export, 63 unrolled row updates, is the product
  (I + N)(I + N^2)(I + N^4)...(I + N^32) with N its strictly-lower part: exact for chunks of up
  to 64 because N^64 = 0, in 10 batched matmuls.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from typing import Iterator

import torch
import torch.nn.functional as F

__all__ = [
    "mamba2_chunk_scan", "chunk_gated_delta_rule", "REPLACEMENTS", "exportable",
    "mamba2_linear_attention", "gated_delta_linear_attention", "causal_conv1d_with_state", "STANDARD_REPLACEMENTS", "standard_ops",
]


def _segment_sum(x: torch.Tensor) -> torch.Tensor:
    """transformers' `segment_sum`: out[..., i, j] = sum(x[..., j+1 : i+1]) for j <= i, -inf above."""
    n = x.size(-1)
    x = x[..., None].expand(*x.size(), n)
    strict = torch.tril(torch.ones(n, n, device=x.device, dtype=torch.bool), diagonal=-1)
    x = x.masked_fill(~strict, 0)
    out = torch.cumsum(x, dim=-2)
    lower = torch.tril(torch.ones(n, n, device=x.device, dtype=torch.bool), diagonal=0)
    return out.masked_fill(~lower, -torch.inf)


def _chunks(sequence_length, chunk_size: int):
    """(chunk length, number of chunks, right padding) with chunk = min(S, chunk_size)."""
    chunk = torch.sym_min(sequence_length, chunk_size)
    count = (sequence_length + chunk - 1) // chunk
    return chunk, count, count * chunk - sequence_length


def mamba2_chunk_scan(
    hidden_states: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_final_states: bool = False,
    **kwargs,
):
    """transformers' `mamba2_chunk_scan` (the SSD chunked scan), same arguments and results."""
    batch, length, heads, head_dim = hidden_states.shape
    groups = B.shape[2]
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    # transformers clamps dt to `time_step_limit` in this chunked path only: its one-token decode
    # (`mamba2_selective_state_update`) does not (Nemotron-H's limit is (time_step_min, inf), so it
    # matters there). One graph for both: clamp unless the step is a single token.
    multi_token = torch.ones_like(dt[0, :, 0]).sum() > 1
    dt = torch.where(multi_token, torch.clamp(dt, min=dt_limit[0], max=dt_limit[1]), dt)
    x = hidden_states.float()
    B = B.float().repeat_interleave(heads // groups, dim=2, output_size=heads)
    C = C.float().repeat_interleave(heads // groups, dim=2, output_size=heads)
    chunk, count, pad = _chunks(length, chunk_size)
    residual = D[..., None] * x if D is not None else None
    x = x * dt[..., None].float()
    A = A.to(x.dtype) * dt.float()

    def chunked(t: torch.Tensor) -> torch.Tensor:  # [b, S, ...] -> [b, c, l, ...]
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(batch, count, chunk, *t.shape[2:])

    x, A, B, C = chunked(x), chunked(A), chunked(B), chunked(C)
    A = A.permute(0, 3, 1, 2)  # b h c l
    A_cumsum = torch.cumsum(A, dim=-1)
    # 1. within each chunk: a masked, decayed C.B^T "attention"
    L = torch.exp(_segment_sum(A))
    G = torch.einsum("bclhn,bcshn->bclsh", C, B)
    Y_diag = torch.einsum("bclsh,bcshp->bclhp", G * L.permute(0, 2, 3, 4, 1), x)
    # 2. each chunk's contribution to the state at its end
    decay_states = torch.exp(A_cumsum[:, :, :, -1:] - A_cumsum)
    states = torch.einsum("bclhn,bclhp->bchpn", B * decay_states.permute(0, -2, -1, 1)[..., None], x)
    # 3. states at chunk boundaries: a scalar decay per head, so a segment sum over chunks
    previous = initial_states[:, None].to(states.dtype) if initial_states is not None else torch.zeros_like(states[:, :1])
    states = torch.cat([previous, states], dim=1)
    decay_chunk = torch.exp(_segment_sum(F.pad(A_cumsum[:, :, :, -1], (1, 0)))).transpose(1, 3)
    new_states = torch.einsum("bzch,bzhpn->bchpn", decay_chunk, states)
    states, final_state = new_states[:, :-1], new_states[:, -1]
    # 4. the boundary states read by each position
    Y_off = torch.einsum("bclhn,bchpn->bclhp", C, states) * torch.exp(A_cumsum).permute(0, 2, 3, 1)[..., None]
    output = (Y_diag + Y_off).reshape(batch, count * chunk, heads, head_dim)[:, :length]
    if residual is not None:
        output = output + residual
    return (output, final_state) if return_final_states else output


def _l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(dim=dim, keepdim=True) + eps)


_MAX_GDN_CHUNK = 64  # the inverse below is exact up to this chunk length


def chunk_gated_delta_rule(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    **kwargs,
):
    """transformers' `torch_chunk_gated_delta_rule`, same arguments and results."""
    from torch._higher_order_ops.scan import scan

    if chunk_size > _MAX_GDN_CHUNK:
        raise ValueError(f"chunk_size {chunk_size} > {_MAX_GDN_CHUNK}: the triangular inverse needs more squarings")
    initial_dtype = query.dtype
    batch, length, k_heads, k_dim = key.shape
    v_heads, v_dim = value.shape[-2:]
    if k_heads != v_heads:
        query = query.repeat_interleave(v_heads // k_heads, dim=2)
        key = key.repeat_interleave(v_heads // k_heads, dim=2)
    query, key, value, beta, g = [x.transpose(1, 2).to(torch.float32) for x in (query, key, value, beta, g)]
    if use_qk_l2norm_in_kernel:
        query, key = _l2norm(query), _l2norm(key)
    query = query * query.shape[-1] ** -0.5
    chunk, count, pad = _chunks(length, chunk_size)
    query, key, value = (F.pad(x, (0, 0, 0, pad)) for x in (query, key, value))
    beta, g = (F.pad(x, (0, pad)) for x in (beta, g))
    v_beta = value * beta.unsqueeze(-1)
    k_beta = key * beta.unsqueeze(-1)
    query, key, k_beta, v_beta = [x.reshape(batch, v_heads, count, chunk, x.shape[-1]) for x in (query, key, k_beta, v_beta)]
    g = g.reshape(batch, v_heads, count, chunk)
    ones = torch.ones(chunk, chunk, dtype=torch.bool, device=query.device)
    cum = g.cumsum(dim=3)
    pairwise = (cum.unsqueeze(4) - cum.unsqueeze(3)).masked_fill(ones.triu(1), float("-inf")).exp()
    ut_system = (k_beta @ key.transpose(-1, -2)) * pairwise
    intra = (query @ key.transpose(-1, -2)) * pairwise
    decayed_k_beta = k_beta * cum.exp().unsqueeze(-1)
    # (I + strictly_lower(ut))^-1 = prod_k (I + N^(2^k)), N = -strictly_lower(ut)
    N = -ut_system.masked_fill(~ones.tril(-1), 0)
    inverse = torch.eye(chunk, dtype=N.dtype, device=N.device) + N
    power = N
    for _ in range(5):  # N^2 ... N^32
        power = power @ power
        inverse = inverse + inverse @ power
    new_values, k_cumdecay = inverse @ v_beta, inverse @ decayed_k_beta
    if initial_state is None:
        state = new_values.new_zeros(batch, v_heads, k_dim, v_dim)
    else:
        state = initial_state.to(new_values)
    query = query * cum.exp().unsqueeze(-1)
    key = key * (cum[..., -1:] - cum).exp().unsqueeze(-1)
    chunk_decay = cum[..., -1].exp()[..., None, None]

    def step(state, xs):
        values, k_cum, q, k, attn, decay = xs
        v_new = values - k_cum @ state
        out = q @ state + attn @ v_new
        return (state * decay + k.transpose(-1, -2) @ v_new).clone(), out

    per_chunk = [t.movedim(2, 0) for t in (new_values, k_cumdecay, query, key, intra, chunk_decay)]
    final_state, out = scan(step, state, per_chunk)
    out = out.movedim(0, 2).reshape(batch, v_heads, count * chunk, v_dim)[:, :, :length]
    out = out.transpose(1, 2).contiguous().to(initial_dtype)
    return out, (final_state if output_final_state else None)


def mamba2_linear_attention(
    hidden_states: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_final_states: bool = False,
    **kwargs,
):
    """`mamba2_chunk_scan` as one opset-27 `LinearAttention(update_rule="gated")`.

    The SSD recurrence per head is h_t = exp(dt_t A) h_{t-1} + B_t (dt_t x_t)^T, y_t = C_t^T h_t
    + D x_t: `gated` with decay g_t = dt_t A (a scalar per head and token, the op's `[B, S, H]`
    decay), key B_t (d_state), value dt_t x_t (head_dim), query C_t, scale 1. The groups' B and C
    are repeated to the heads first (the op's grouping shares a state between query heads; here
    the heads share B and C but each has its own state). The op's state is `[B, H, d_state,
    head_dim]`, transformers' `[B, H, head_dim, d_state]`: transposed at both ends."""
    batch, length, heads, head_dim = hidden_states.shape
    groups, state_size = B.shape[2], B.shape[3]
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    multi_token = torch.ones_like(dt[0, :, 0]).sum() > 1  # see mamba2_chunk_scan
    dt = torch.where(multi_token, torch.clamp(dt, min=dt_limit[0], max=dt_limit[1]), dt).float()
    x = hidden_states.float()
    key = B.float().repeat_interleave(heads // groups, dim=2, output_size=heads).reshape(batch, length, heads * state_size)
    query = C.float().repeat_interleave(heads // groups, dim=2, output_size=heads).reshape(batch, length, heads * state_size)
    value = (x * dt[..., None]).reshape(batch, length, heads * head_dim)
    decay = A.float() * dt
    if initial_states is None:
        past = x.new_zeros(batch, heads, state_size, head_dim)
    else:
        past = initial_states.float().transpose(-1, -2)
    out, present = torch.ops.optimum_onnx23.linear_attention(query, key, value, past, decay, None, heads, "gated", 1.0)
    output = out.reshape(batch, length, heads, head_dim)
    if D is not None:
        output = output + D[..., None] * x
    final_state = present.transpose(-1, -2)
    return (output, final_state) if return_final_states else output


def gated_delta_linear_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    **kwargs,
):
    """`torch_chunk_gated_delta_rule` as one opset-27 `LinearAttention(update_rule="gated_delta")`:
    the gated delta rule is the op's rule term for term (decay exp(g_t) on the state before the
    delta update, beta the update rate, output q^T S_t after the update, scale k_dim^-0.5); the
    q/k L2 norm and transformers' repeat of key heads to value heads stay outside."""
    initial_dtype = query.dtype
    batch, length, k_heads, k_dim = key.shape
    v_heads, v_dim = value.shape[-2:]
    if k_heads != v_heads:
        query = query.repeat_interleave(v_heads // k_heads, dim=2)
        key = key.repeat_interleave(v_heads // k_heads, dim=2)
    query, key, value, beta, g = (x.to(torch.float32) for x in (query, key, value, beta, g))
    if use_qk_l2norm_in_kernel:
        query, key = _l2norm(query), _l2norm(key)
    past = query.new_zeros(batch, v_heads, k_dim, v_dim) if initial_state is None else initial_state.to(torch.float32)
    out, present = torch.ops.optimum_onnx23.linear_attention(
        query.reshape(batch, length, v_heads * k_dim), key.reshape(batch, length, v_heads * k_dim),
        value.reshape(batch, length, v_heads * v_dim), past, g, beta, v_heads, "gated_delta", k_dim**-0.5,
    )
    out = out.reshape(batch, length, v_heads, v_dim).to(initial_dtype)
    return out, (present if output_final_state else None)


def causal_conv1d_with_state(conv1d, hidden_states, cache, layer_idx, activation=None, state_idx=0, **kwargs):
    """transformers' `causal_conv1d_forward` as one opset-27 `CausalConvWithState`, the layer's
    conv state its `past_state` / `present_state` (the graph's `past_conv.{i}` / `present_conv.{i}`)."""
    if activation not in (None, "silu", "swish"):
        raise NotImplementedError(f"CausalConvWithState fuses SiLU only, not {activation!r}")
    kernel = conv1d.weight.shape[-1]
    past = cache.get_conv_state(layer_idx, state_idx=state_idx) if cache is not None else None
    if past is None:  # no cache I/O (--task text-generation): a zero state is "no past"
        past = hidden_states.new_zeros(*hidden_states.shape[:2], kernel - 1)
    out, present = torch.ops.optimum_onnx23.causal_conv_with_state(
        hidden_states, conv1d.weight, conv1d.bias, past.to(hidden_states.dtype), activation or "none"
    )
    if cache is not None:
        cache.layers[layer_idx].present_conv = present
    return out


# transformers' function name -> its exportable form; looked up in the model's own module.
REPLACEMENTS = {
    "mamba2_chunk_scan": mamba2_chunk_scan,
    "torch_chunk_gated_delta_rule": chunk_gated_delta_rule,
}


# At opset >= 27 (`standard_ops`): the same functions as the opset-27 ops, one node a layer.
STANDARD_REPLACEMENTS = {
    "mamba2_chunk_scan": mamba2_linear_attention,
    "torch_chunk_gated_delta_rule": gated_delta_linear_attention,
    "causal_conv1d_forward": causal_conv1d_with_state,
}

_STANDARD_OPS = contextvars.ContextVar("optimum_onnx23_standard_ops", default=False)


@contextlib.contextmanager
def standard_ops(enabled: bool) -> Iterator[None]:
    """Within the block, `exportable` swaps in STANDARD_REPLACEMENTS (the trace step sets it for
    --opset 27 and above)."""
    token = _STANDARD_OPS.set(enabled)
    try:
        yield
    finally:
        _STANDARD_OPS.reset(token)


@contextlib.contextmanager
def exportable(model: torch.nn.Module) -> Iterator[list[str]]:
    """Within the block, the modules defining `model`'s classes call the exportable forms; yields
    the names replaced."""
    modules = {sys.modules[type(m).__module__] for m in model.modules() if type(m).__module__ in sys.modules}
    saved = []
    table = STANDARD_REPLACEMENTS if _STANDARD_OPS.get() else REPLACEMENTS
    for module in modules:
        for name, replacement in table.items():
            if hasattr(module, name):
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, replacement)
    try:
        yield sorted({name for _, name, _ in saved})
    finally:
        for module, name, original in reversed(saved):
            setattr(module, name, original)
