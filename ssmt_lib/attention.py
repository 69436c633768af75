"""Multi-head attention you can look at (paper eq. 5, Sec. 2.3; the ViT's self-attention too).

``Attention`` computes ``softmax(Q K^T / sqrt(d) + M) V``. With ``fused=True`` it calls
``F.scaled_dot_product_attention`` (fast, no weights); otherwise it runs the explicit path through
``self.softmax`` (an ``nn.Softmax`` submodule), where a forward hook can read the weights.
:func:`ssmt_lib.recording.record_attention` does exactly that for every attention layer of a
model, ours and timm's, so notebooks never have to edit a model to see inside it.

Mask convention: a boolean ``allowed`` mask, True = "may attend" (the ``scaled_dot_product_attention``
convention; ``nn.MultiheadAttention`` uses the opposite). The query decoder's eq. 6 mask comes from
:func:`ssmt_lib.query_decoder.attention_mask_from_logits`.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


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
