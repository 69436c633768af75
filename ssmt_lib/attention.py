"""Multi-head attention you can look at, and the masked cross-attention rule (paper eq. 4-6).

``Attention`` computes ``softmax(Q K^T / sqrt(d) + M) V`` (eq. 4-5). With ``fused=True`` it calls
``F.scaled_dot_product_attention`` (fast, no weights); otherwise it runs the explicit path through
``self.softmax`` (an ``nn.Softmax`` submodule), where a forward hook can read the weights.
``record_attention`` does exactly that for every attention layer of a model, ours and timm's,
so notebooks never have to edit a model to see inside it.

Mask convention: a boolean ``allowed`` mask, True = "may attend" (the ``scaled_dot_product_attention``
convention; ``nn.MultiheadAttention`` uses the opposite). Eq. 6's mask blocks pixels where the
previous layer's mask prediction is below 0.5. A query whose mask is empty would have a row of
``-inf`` scores and a NaN softmax, so ``attention_mask_from_logits`` lets such a query attend
everywhere (Mask2Former's rule).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def attention_mask_from_logits(mask_logits: Tensor, size: tuple[int, int], num_heads: int) -> Tensor:
    """Eq. 6: the cross-attention mask of the next layer from the current mask prediction.

    Args:
        mask_logits: (B, N, H, W) query mask logits, at full resolution or already at ``size``.
        size: (h, w) of the feature level the next layer attends to.
        num_heads: heads of that layer (the mask is repeated per head).

    Returns:
        allowed: (B, num_heads, N, h*w) bool, True where the query may attend. Detached.
    """
    resized = mask_logits.detach().float()
    if tuple(resized.shape[-2:]) != tuple(size):
        resized = F.interpolate(resized, size=size, mode="bilinear", align_corners=False)  # (B, N, h, w)
    allowed = resized.sigmoid().flatten(2) >= 0.5  # (B, N, h*w)
    empty = ~allowed.any(dim=-1, keepdim=True)  # (B, N, 1): nothing above 0.5
    allowed = allowed | empty  # empty-mask rule: attend everywhere instead of NaN
    return allowed.unsqueeze(1).expand(-1, num_heads, -1, -1)  # (B, heads, N, h*w)


class Attention(nn.Module):
    """Multi-head attention with separate query / key / value inputs.

    Args:
        dim: token width.
        num_heads: number of heads (``dim`` must divide by it).
        fused: use SDPA when True; the explicit path (hookable ``self.softmax``) when False.
    """

    def __init__(self, dim: int, num_heads: int, fused: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.fused = num_heads, dim // num_heads, fused
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)  # a module, so record_attention can hook the weights

    def split_heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, n, dh)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, allowed: Tensor | None = None) -> Tensor:
        """Args:
            query: (B, Nq, D); key, value: (B, Nk, D).
            allowed: optional bool (B, heads, Nq, Nk) or broadcastable; True = may attend.

        Returns:
            (B, Nq, D)
        """
        q, k, v = self.split_heads(self.q(query)), self.split_heads(self.k(key)), self.split_heads(self.v(value))
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        else:
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (B, heads, Nq, Nk)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            out = self.softmax(scores) @ v  # (B, heads, Nq, dh)
        b, _, nq, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, nq, -1))  # (B, Nq, D)
