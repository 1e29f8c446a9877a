"""Activation smoothing (SmoothQuant, Xiao et al. 2023) and channel reordering: per input channel
transforms moved from a linear layer's activation into its weight rows before the weight is
quantized.

`X @ W == (X / s)[:, p] @ (s[:, None] * W)[p]` for any positive `s` and permutation `p`, so the
fp32 function is unchanged; what changes is what the quantizers see. onnxruntime's `MatMulNBits`
at accuracy level 4 (the fast CPU kernel; the fusion of `DequantizeLinear` + `MatMul` uses it too)
quantizes the *activation* to int8 per block of 32 input channels, so an outlier channel (Gemma-3
has channels hundreds of times the others) flattens its block's other 31 to a few codes.

- smoothing: `s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)` (over calibration tokens, over the
  group's weight rows) brings the activation's channels closer in range; the weight rows, quantized
  per block after scaling, take the difference;
- reordering: the input channels sorted by their activation maximum, so each block of 32 holds
  channels of like range (the outliers share blocks with each other, not with small channels) in
  the activation and in the weight alike.

Guarantees: `s` is positive and finite (1 where a channel or a weight row is all zero), `p` a
permutation; the regions apply them with one `Gather` and one `Mul` on the activation (the
variant's own `[K]` tensors) and to the weight rows before quantizing; the main graph is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_ALPHA", "SEARCH_GRID", "ChannelTransform", "smoothing_scales", "channel_transform", "searched_transform"]

DEFAULT_ALPHA = 0.5
SEARCH_GRID = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)


@dataclass(frozen=True)
class ChannelTransform:
    """`x -> (x / scale)[..., perm]` on a linear's activation, `W -> (scale[:, None] * W)[perm]` on
    its `[K, N]` weight (either part None: not applied)."""

    scale: np.ndarray | None = None
    perm: np.ndarray | None = None

    def weight(self, w_kn: np.ndarray) -> np.ndarray:
        if self.scale is not None:
            w_kn = w_kn * self.scale[:, None]
        return w_kn[self.perm] if self.perm is not None else w_kn

    def restore(self, w: np.ndarray, transposed: bool) -> np.ndarray:
        """The inverse of `weight` on a `[K, N]` (or `[N, K]` when `transposed`) array."""
        if self.perm is not None:
            inverse = np.argsort(self.perm)
            w = w[:, inverse] if transposed else w[inverse]
        if self.scale is not None:
            w = w / (self.scale[None, :] if transposed else self.scale[:, None])
        return np.ascontiguousarray(w, np.float32)

    def hessian(self, h: np.ndarray) -> np.ndarray:
        """The statistics (`[K]` mean squares or `[K, K]`) of the transformed activation."""
        if self.scale is not None:
            h = h / (self.scale * self.scale) if h.ndim == 1 else h / np.outer(self.scale, self.scale)
        if self.perm is not None:
            h = h[self.perm] if h.ndim == 1 else h[np.ix_(self.perm, self.perm)]
        return h.astype(np.float32)

    def key(self) -> bytes:
        return b"".join(b"-" if a is None else np.ascontiguousarray(a).tobytes() for a in (self.scale, self.perm))


def smoothing_scales(activation_absmax: np.ndarray, weight_kn: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """`s` (float32 `[K]`) for a `[K, N]` weight read by an activation whose channel maxima are
    `activation_absmax` (`[K]`), normalised to a geometric mean of 1 (only ratios matter)."""
    x = np.asarray(activation_absmax, np.float64)
    w = np.abs(weight_kn).max(axis=1).astype(np.float64)
    live = (x > 0) & (w > 0) & np.isfinite(x) & np.isfinite(w)
    s = np.ones_like(x)
    s[live] = x[live] ** alpha / w[live] ** (1.0 - alpha)
    if live.any():
        s[live] /= np.exp(np.log(s[live]).mean())
    return s.astype(np.float32)


def channel_transform(activation_absmax: np.ndarray, weight_kn: np.ndarray, alpha: float | None, reorder: bool) -> ChannelTransform:
    """Smoothing with `alpha` (None: none) and, with `reorder`, the channels sorted by their
    activation maximum after smoothing (largest first)."""
    scale = smoothing_scales(activation_absmax, weight_kn, alpha) if alpha is not None else None
    perm = None
    if reorder:
        after = activation_absmax / scale if scale is not None else activation_absmax
        perm = np.argsort(-np.asarray(after), kind="stable").astype(np.int64)
    return ChannelTransform(scale, perm)


def searched_transform(
    mean_square: np.ndarray, weight_kn: np.ndarray, roundtrip, grid: tuple[float, ...] = SEARCH_GRID
) -> ChannelTransform | None:
    """AWQ-style (Lin et al. 2024) for weight-only quantization: `s = rms(X)^alpha` (geometric mean
    1) with `alpha` from `grid` minimising the output error estimated from the activation's mean
    square per channel, `sum_k E[x_k^2] * sum_n (roundtrip(s W)[k, n] / s_k - W[k, n])^2`
    (`roundtrip`: quantize then dequantize a `[K, N]` array); None when `alpha` 0 (no scaling) wins."""
    h = np.asarray(mean_square, np.float64)
    rms = np.sqrt(np.maximum(h, 0))
    live = rms > 0
    best, best_error = None, None
    for alpha in grid:
        scale = np.ones_like(rms)
        if alpha and live.any():
            scale[live] = rms[live] ** alpha
            scale[live] /= np.exp(np.log(scale[live]).mean())
        scale = scale.astype(np.float32)
        error = float(h @ np.square(roundtrip(weight_kn * scale[:, None]) / scale[:, None] - weight_kn).sum(axis=1))
        if best_error is None or error < best_error:
            best, best_error = (None if not alpha else scale), error
    return None if best is None else ChannelTransform(best, None)
