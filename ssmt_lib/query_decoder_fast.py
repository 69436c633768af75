"""Speed-ups of the query decoder (paper eq. 4-9): the same numbers as :mod:`ssmt_lib.query_decoder`, less work.

Read :mod:`ssmt_lib.query_decoder` first; this module changes how, never what, it computes. Each
speed-up is a switch of :class:`~ssmt_lib.config.ModelConfig`, has a parity test against the plain
form (``tests/test_query_decoder.py``) and keeps the plain decoder's parameter names, so a
checkpoint loads into either form.

**Cross-attention on the level's tokens** (``model.cross_attention_on_tokens``). Eq. 5 projects a
level's ``h*w`` tokens ``f`` (C_l wide) to keys and values of width d. With
``k(x) = W_k (W_in f_x + b_in + pos_x) + b_k`` and ``v(x) = W_v (W_in f_x + b_in) + b_v``, per head::

    q . k(x)        = (W_in^T W_k^T q) . f_x  +  q . W_k pos_x  +  q . (W_k b_in + b_k)
    sum_x a_x v(x)  = W_v W_in (sum_x a_x f_x)  +  W_v b_in + b_v      (the a_x sum to 1)

so the N queries move into the token space instead of the h*w tokens into the query space, the
sine part of ``W_k pos_x`` is a row score plus a column score (the embedding is separable), and the
value projection follows the weighted sum: nothing h*w x d is formed. The weights still pass
through the attention's ``softmax`` module, so the recorders see them.

**Factored masks** (``model.factored_masks``). ``Z = MLP(LN(P)) . (W_p F + b_p) = (m W_p) . F + m . b_p``
with ``m = MLP(LN(P))``: the 1x1 pixel projection is applied to the N query embeddings rather than
the H*W pixels, and ``Z`` is kept as its factors (:class:`FactoredQueryPrediction`), formed where
it is used: on the loss's pixel grid, at a level's size for the next eq. 6 mask (bilinear resizing
is linear, so resizing ``F`` first gives the same numbers), and in full only for the reported map.
The T + 1 predictions of one decoder share one :class:`PixelFeatures`, which slices and resizes
``F`` once for all of them.

Measured gains (``python benchmarks/run.py --only query_decoder``: a training step's forward +
eq. 12 loss + backward, one CPU thread, the four forms timed alternately; three runs on the shared
2-core VM, 2026-12-01, so read the ranges, not the digits):

=========================  ==================================  ==================================
form                       tiny (128 px, batch 8), step gain   paper (224 px, batch 2), step gain
=========================  ==================================  ==================================
plain                      1 (0.26-0.43 s)                     1 (6.2-7.5 s)
cross-attention on tokens  1.04-1.16x                          1.27-1.57x
factored masks             1.08-1.16x                          1.12-1.24x
both (the presets)         1.09-1.46x                          1.31-1.56x
=========================  ==================================  ==================================

At the notebooks' 64 px the levels are small and the gain is too: notebook 03's main training run
(``fit``, tiny, 64 px, 5 + 20 epochs, 2 threads) took 36.4-38.2 s plain and 34.0-37.8 s with both
(about 1.04x; two runs each). Both pay on the paper preset, so both presets switch them on.

A third trick, running CPU batch norm of channels_last tensors in NCHW layout, was dropped: its
training-step gain was 0.96-1.0x (tiny) and 0.98x (paper) on one thread, 1.05x (tiny) and 1.01x
(paper) on two.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmt_lib.attention import Attention
from ssmt_lib.outputs import QueryPrediction
from ssmt_lib.query_decoder import QueryDecoder, QueryLayer, key_positions, sine_axis_embeddings


# ----------------------------------------------------------------------------- cross-attention on tokens


@dataclass
class TokenKeys:
    """What one level's keys are made of, without forming them: its 1x1 projection and positions.

    The positions are the 2-D sine embedding of the (h, w) grid plus the level embedding. The sine
    embedding is separable, ``[e_y(i), e_x(j)]``, so a linear map of it is a row term plus a column
    term (:meth:`projected_positions`): O((h + w) d^2) work instead of O(h w d^2).
    """

    h: int  # grid rows
    w: int  # grid columns
    level: Tensor  # (d,) learned level embedding
    proj: nn.Conv2d  # the level's 1x1 input projection C_l -> d (W_in, b_in)

    def dense_positions(self) -> Tensor:
        """(1, h*w, d) positions, as the plain decoder adds them to the keys."""
        return key_positions(self.h, self.w, self.level)

    def projected_positions(self, linear: nn.Linear, shift: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``linear(self.dense_positions() + shift)`` as ``rows[i] + cols[j] + const``.

        Returns:
            rows (h, d_out), cols (w, d_out), const (d_out,) (level, shift and the bias).
        """
        d = self.level.shape[-1]
        ey, ex = sine_axis_embeddings(self.h, self.w, d, self.level.device)  # (h, d/2), (w, d/2)
        rows = F.linear(ey, linear.weight[:, : d // 2])  # (h, d_out)
        cols = F.linear(ex, linear.weight[:, d // 2:])  # (w, d_out)
        return rows, cols, linear(self.level if shift is None else self.level + shift)


class TokenCrossAttention(Attention):
    """Eq. 5 on a level's raw tokens: the queries move into token space (see the module docstring).

    Same parameters as :class:`~ssmt_lib.attention.Attention`. Always the explicit path: with few
    queries it is cheaper than SDPA on formed keys, and ``self.softmax`` stays hookable.
    """

    def forward(self, query: Tensor, tokens: Tensor, keys: TokenKeys, allowed: Tensor | None = None) -> Tensor:
        """Args:
            query: (B, N, d) queries with their positional embedding.
            tokens: (B, h*w, C_l) the level's raw tokens (keys and values come from them).
            keys: the level's projection and positions.
            allowed: (B, heads, N, h*w) bool or None.

        Returns:
            (B, N, d)
        """
        if not isinstance(keys, TokenKeys):
            raise TypeError(f"TokenCrossAttention needs the level's TokenKeys, got {type(keys).__name__}")
        (b, n, d), (h, w) = query.shape, (keys.h, keys.w)
        c, heads, dh = tokens.shape[-1], self.num_heads, self.head_dim
        w_in, b_in = keys.proj.weight.flatten(1), keys.proj.bias  # (d, C_l), (d,)
        q = self.split_heads(self.q(query)) * dh**-0.5  # (B, heads, N, dh), scaled as in eq. 5
        q_tok = torch.einsum("bhnd,hdc->bhnc", q, (self.k.weight @ w_in).view(heads, dh, c))  # (B, heads, N, C_l)
        scores = q_tok.reshape(b, heads * n, c) @ tokens.transpose(1, 2)  # (B, heads*N, h*w)
        rows, cols, const = keys.projected_positions(self.k, shift=b_in)  # (h, d), (w, d), (d,)
        # the constant is the same for every key, so softmax ignores it; kept so the scores equal eq. 5's
        s_rows = torch.einsum("bhnd,ihd->bhni", q, rows.view(h, heads, dh)) \
            + torch.einsum("bhnd,hd->bhn", q, const.view(heads, dh))[..., None]  # (B, heads, N, h)
        s_cols = torch.einsum("bhnd,jhd->bhnj", q, cols.view(w, heads, dh))  # (B, heads, N, w)
        scores = scores.view(b, heads, n, h, w) + s_rows[..., None] + s_cols[..., None, :]  # (B, heads, N, h, w)
        scores = scores.view(b, heads, n, h * w)  # (B, heads, N, h*w)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        attn = self.softmax(scores)  # (B, heads, N, h*w)
        mixed = (attn.reshape(b, heads * n, h * w) @ tokens).view(b, heads, n, c)  # sum_x a_x f_x: (B, heads, N, C_l)
        out = torch.einsum("bhnc,hdc->bhnd", mixed, (self.v.weight @ w_in).view(heads, dh, c))  # (B, heads, N, dh)
        out = out + (self.v.weight @ b_in + self.v.bias).view(heads, 1, dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, d)


class TokenQueryLayer(QueryLayer):
    """:class:`~ssmt_lib.query_decoder.QueryLayer` whose cross-attention reads raw tokens (same parameters)."""

    def make_cross_attention(self, dim: int, num_heads: int, fused: bool) -> Attention:
        return TokenCrossAttention(dim, num_heads, fused)

    def forward(self, p: Tensor, p_pos: Tensor, tokens: Tensor, keys: TokenKeys, allowed: Tensor | None) -> Tensor:
        """Args: as the plain layer, with the level's raw tokens (B, h*w, C_l) and its :class:`TokenKeys`."""
        p = self.norm1(p + self.cross_attn(p + p_pos, tokens, keys, allowed))  # eq. 5
        return self.self_attention_and_ffn(p, p_pos)


# ----------------------------------------------------------------------------- factored masks


class PixelFeatures:
    """The full-resolution CNN feature ``F`` (B, C, H, W) shared by a decoder's T + 1 predictions.

    Slices (the loss's pixel grid) and bilinear resizes (eq. 6 levels) are made once and reused by
    every prediction that shares this object; the slice is copied to a contiguous tensor, so its
    gradient gets one buffer rather than one per prediction.
    """

    def __init__(self, features: Tensor) -> None:
        self.features = features
        self._views: dict[tuple, Tensor] = {}

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.features.shape[-2:])

    def on_grid(self, stride: int, offset: tuple[int, int]) -> "PixelFeatures":
        """``F[..., oy::stride, ox::stride]``, made contiguous once."""
        key = ("grid", stride, *offset)
        if key not in self._views:
            self._views[key] = self.features[..., offset[0]::stride, offset[1]::stride].contiguous()  # (B, C, h', w')
        return PixelFeatures(self._views[key])

    def resized(self, size: tuple[int, int]) -> Tensor:
        """``F`` bilinearly resized to ``size`` (align_corners=False): (B, C, h, w)."""
        if tuple(size) == self.size:
            return self.features
        key = ("resized", *size)
        if key not in self._views:
            self._views[key] = F.interpolate(self.features, size=size, mode="bilinear", align_corners=False)
        return self._views[key]


class FactoredQueryPrediction(QueryPrediction):
    """A :class:`~ssmt_lib.outputs.QueryPrediction` whose masks ``Z = mask_embed . F + mask_bias`` stay factored.

    Args:
        class_logits: (B, N, K+1).
        mask_embed: (B, N, C) ``m W_p``: the query embedding with the pixel projection moved onto it.
        pixels: the shared full-resolution feature ``F`` (C channels).
        mask_bias: (B, N) ``m . b_p``, added to every pixel of a query's mask.
    """

    def __init__(self, class_logits: Tensor, mask_embed: Tensor, pixels: PixelFeatures, mask_bias: Tensor) -> None:
        f = pixels.features
        if mask_embed.dim() != 3 or f.dim() != 4 or mask_embed.shape[-1] != f.shape[1]:
            raise ValueError(f"mask_embed {tuple(mask_embed.shape)} (B, N, C) does not fit the pixel features "
                             f"{tuple(f.shape)} (B, C, H, W)")
        if mask_bias.shape != mask_embed.shape[:2]:
            raise ValueError(f"mask_bias needs shape (B, N) = {tuple(mask_embed.shape[:2])}, got {tuple(mask_bias.shape)}")
        self.class_logits, self.mask_embed, self.pixels, self.mask_bias = class_logits, mask_embed, pixels, mask_bias
        self._formed: Tensor | None = None

    def _masks_from(self, features: Tensor) -> Tensor:
        z = torch.einsum("bnc,bchw->bnhw", self.mask_embed, features)  # (B, N, h, w)
        return z + self.mask_bias[..., None, None]

    @property
    def mask_logits(self) -> Tensor:
        """(B, N, H, W) mask logits at full resolution, formed on first use."""
        if self._formed is None:
            self._formed = self._masks_from(self.pixels.features)
        return self._formed

    @property
    def formed(self) -> bool:
        """Whether the full-resolution masks have been formed (only the reported map needs them)."""
        return self._formed is not None

    @property
    def mask_size(self) -> tuple[int, int]:
        return self.pixels.size

    def mask_logits_resized(self, size: tuple[int, int]) -> Tensor:
        if tuple(size) == self.mask_size:
            return self.mask_logits
        return self._masks_from(self.pixels.resized(size))

    def on_grid(self, stride: int, offset: tuple[int, int]) -> "FactoredQueryPrediction":
        return FactoredQueryPrediction(self.class_logits, self.mask_embed, self.pixels.on_grid(stride, offset),
                                       self.mask_bias)


# ----------------------------------------------------------------------------- the decoder


class FastQueryDecoder(QueryDecoder):
    """:class:`~ssmt_lib.query_decoder.QueryDecoder` with the speed-ups switched on; same parameters.

    Args:
        *args: as :class:`~ssmt_lib.query_decoder.QueryDecoder`.
        on_tokens: cross-attention on the levels' raw tokens (``model.cross_attention_on_tokens``).
        factored: masks kept as factors (``model.factored_masks``).
    """

    def __init__(self, *args, on_tokens: bool, factored: bool, **kwargs) -> None:
        self.on_tokens, self.factored = on_tokens, factored  # make_layer reads on_tokens
        super().__init__(*args, **kwargs)

    def make_layer(self, dim: int, num_heads: int, ffn: int, fused: bool) -> QueryLayer:
        return (TokenQueryLayer if self.on_tokens else QueryLayer)(dim, num_heads, ffn, fused)

    def level_keys(self, levels: list[Tensor]) -> list[tuple[Tensor, Tensor | TokenKeys]]:
        if not self.on_tokens:
            return super().level_keys(levels)
        keys = []
        for i, feat in enumerate(levels):
            h, w = feat.shape[-2:]
            tokens = feat.flatten(2).transpose(1, 2).contiguous()  # (B, h*w, C_l); no copy if channels_last
            keys.append((tokens, TokenKeys(h, w, self.level_embed.weight[i], self.input_proj[i])))
        return keys

    def pixel_embedding(self, pixel: Tensor) -> Tensor | PixelFeatures:
        # factored: F itself; the projection W_p is applied to the queries in predict
        return PixelFeatures(pixel) if self.factored else super().pixel_embedding(pixel)

    def predict(self, p: Tensor, pixel_embed: Tensor | PixelFeatures) -> QueryPrediction:
        if not self.factored:
            return super().predict(p, pixel_embed)
        p = self.norm(p)
        m = self.mask_mlp(p)  # (B, N, mask_dim)
        w_p = self.pixel_proj.weight.flatten(1)  # (mask_dim, C)
        return FactoredQueryPrediction(self.class_head(p), m @ w_p, pixel_embed, m @ self.pixel_proj.bias)
