"""Decoders of SSMT-Net: the CNN "cup", the reconstructor and the Transformer query decoder.

CNN decoder (TransUNet): from the fused 1/16 map, four steps of (upsample x2, concatenate the
ResNet skip of that scale if any, two 3x3 conv-BN-ReLU; ``ModelConfig.decoder_convs``) reach full
resolution; a 1x1 conv gives auxiliary per-pixel logits. The reconstructor is the same cup **without skips** (with skips it
could copy the input instead of learning features) and an image-valued head.

Query decoder (paper eq. 4-9, after TransUNet v2 / Mask2Former): N learnable queries
``P_0`` (content + positional embedding). Layer t cross-attends to one CNN-decoder level, coarse
to fine (1/8, 1/4, 1/2), with sine positional + level embeddings on the keys and the eq. 6 mask
built from the previous prediction; then query self-attention, then an FFN (each residual +
LayerNorm). After the raw queries and after every layer, a prediction (eq. 7-9):
``Z_t = MLP(LN(P_t)) . E_pixel`` (an einsum with the full-resolution pixel embedding) and class
logits ``O_t = LN(P_t) W_fc`` over K classes + no-object. ``Z_t`` is returned as its factors
(see :class:`~ssmt_lib.outputs.QueryPrediction`): the next layer's eq. 6 mask takes it at the
level's resolution and the loss on a pixel grid, so only the reported map is formed in full.
The pixel embedding ``E_pixel = W_p F + b_p`` is a 1x1 conv of the full-resolution feature
``F``, so ``Z_t = (m_t W_p) . F + m_t . b_p`` with ``m_t = MLP(LN(P_t))``: the projection is
applied to the N query embeddings instead of the H*W pixels, and the mask_dim-channel
full-resolution map is never formed. For the same reason the cross-attention
(:class:`TokenCrossAttention`) never forms a level's h*w keys and values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmt_lib.attention import Attention, attention_mask_from_logits
from ssmt_lib.heads import MLP
from ssmt_lib.outputs import QueryPrediction


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that normalizes channels_last CPU tensors in NCHW layout.

    PyTorch's CPU batch-norm kernels are about 3x slower on channels_last tensors than on NCHW
    ones (forward + backward, 4-32 channels, torch 2.x), while 3x3 convolutions are faster in
    channels_last. Two layout copies around the norm cost less than the slow kernel, so the
    convolutions keep channels_last and the norm gets NCHW. Same parameters and state dict.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


class ConvBlock(nn.Sequential):
    """``convs`` times 3x3 conv-BN-ReLU (TransUNet: two)."""

    def __init__(self, in_ch: int, out_ch: int, convs: int = 2) -> None:
        if convs < 1:
            raise ValueError(f"ConvBlock needs at least one conv, got convs={convs}")
        layers = []
        for i in range(convs):
            layers += [nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=False), BatchNorm2d(out_ch),
                       nn.ReLU(inplace=True)]
        super().__init__(*layers)


class CNNDecoder(nn.Module):
    """TransUNet cup: 1/16 -> 1/8 -> 1/4 -> 1/2 -> 1/1.

    Args:
        in_channels: width of the fused 1/16 map.
        skip_channels: widths of the skips at 1/8, 1/4, 1/2 (empty tuple = no skips, the reconstructor).
        widths: output widths at 1/8, 1/4, 1/2, 1/1.
        out_channels: channels of the 1x1 head (1 for logits, C for an image).
        convs: 3x3 conv-BN-ReLU per step (TransUNet: 2).
    """

    def __init__(self, in_channels: int, skip_channels: tuple[int, ...], widths: tuple[int, ...], out_channels: int,
                 convs: int = 2) -> None:
        super().__init__()
        skips = list(skip_channels) + [0] * (len(widths) - len(skip_channels))
        ins = [in_channels, *widths[:-1]]
        self.blocks = nn.ModuleList(ConvBlock(i + s, w, convs) for i, s, w in zip(ins, skips, widths))
        self.head = nn.Conv2d(widths[-1], out_channels, 1)

    def forward(self, x: Tensor, skips: list[Tensor] | None = None) -> tuple[list[Tensor], Tensor]:
        """Args:
            x: (B, C, H/16, W/16) fused map.
            skips: maps at 1/8, 1/4, 1/2 (finest last) or None.

        Returns:
            features at 1/8, 1/4, 1/2, 1/1 and the head output (B, out_channels, H, W).
        """
        skips = skips or []
        feats = []
        for i, block in enumerate(self.blocks):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            if i < len(skips):
                x = torch.cat([x, skips[i]], dim=1)
            x = block(x)
            feats.append(x)
        return feats, self.head(x)


def sine_axis_embeddings(h: int, w: int, dim: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """The two halves of DETR's 2-D sine embedding: rows (h, dim/2) and columns (w, dim/2)."""
    if dim % 4:
        raise ValueError(f"sine position embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    freq = 10000 ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)  # (dim/4,)
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    ey = torch.cat([(ys[:, None] * freq).sin(), (ys[:, None] * freq).cos()], dim=1)  # (h, dim/2)
    ex = torch.cat([(xs[:, None] * freq).sin(), (xs[:, None] * freq).cos()], dim=1)  # (w, dim/2)
    return ey, ex


def sine_position_embedding(h: int, w: int, dim: int, device: torch.device | None = None) -> Tensor:
    """DETR's 2-D sine embedding of a (h, w) grid: (h*w, dim); half the channels encode y, half x."""
    ey, ex = sine_axis_embeddings(h, w, dim, device)
    grid = torch.cat([ey[:, None].expand(h, w, -1), ex[None].expand(h, w, -1)], dim=-1)  # (h, w, dim)
    return grid.reshape(h * w, dim)  # (h*w, dim)


@dataclass
class KeyPositions:
    """Positional part of one level's keys: 2-D sine embedding of its (h, w) grid + level embedding.

    The sine embedding is separable, ``[e_y(i), e_x(j)]``, so a linear map of it is a row term plus
    a column term (:meth:`projected_parts`): O((h + w) d^2) work instead of O(h w d^2).
    """

    h: int  # grid rows
    w: int  # grid columns
    level: Tensor  # (d,) learned level embedding

    def dense(self) -> Tensor:
        """(1, h*w, d) positions, as added to the keys in eq. 4."""
        d = self.level.shape[-1]
        return (sine_position_embedding(self.h, self.w, d, self.level.device) + self.level)[None]  # (1, h*w, d)

    def projected_parts(self, linear: nn.Linear, shift: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``linear(self.dense() + shift)`` as ``rows[i] + cols[j] + const``.

        Returns:
            rows (h, d_out), cols (w, d_out), const (d_out,) (level, shift and the bias).
        """
        d = self.level.shape[-1]
        ey, ex = sine_axis_embeddings(self.h, self.w, d, self.level.device)  # (h, d/2), (w, d/2)
        rows = F.linear(ey, linear.weight[:, : d // 2])  # (h, d_out)
        cols = F.linear(ex, linear.weight[:, d // 2:])  # (w, d_out)
        return rows, cols, linear(self.level if shift is None else self.level + shift)


class TokenCrossAttention(Attention):
    """Cross-attention (eq. 4-5) that can attend a level's raw tokens without forming its keys and values.

    Called like :class:`~ssmt_lib.attention.Attention` it is exactly that (keys and values already
    d wide). Called with ``key_proj`` and ``key_pos``, ``key`` and ``value`` are the level's raw
    tokens ``f`` (C_l wide). With ``k(x) = W_k (W_in f_x + b_in + pos_x) + b_k`` and
    ``v(x) = W_v (W_in f_x + b_in) + b_v``, per head::

        q . k(x)        = (W_in^T W_k^T q) . f_x  +  q . W_k pos_x  +  q . (W_k b_in + b_k)
        sum_x a_x v(x)  = W_v W_in (sum_x a_x f_x)  +  W_v b_in + b_v      (the a_x sum to 1)

    so the queries move into the C_l-wide token space, the sine part of ``W_k pos_x`` is a row score
    plus a column score (:class:`KeyPositions`), and the value projection follows the weighted sum:
    nothing h*w x d is formed. Same numbers as the plain path (tested). With few queries this
    explicit path is cheaper than SDPA on the formed keys, so it is used whether or not ``fused``
    is set; the weights still pass through ``self.softmax`` for the recorders.
    """

    def forward(self, query: Tensor, key: Tensor, value: Tensor, allowed: Tensor | None = None, *,
                key_proj: nn.Conv2d | None = None, key_pos: KeyPositions | None = None) -> Tensor:
        """Args:
            query: (B, N, d) queries with their positional embedding.
            key, value: (B, h*w, d) as in ``Attention``; or, with ``key_proj``, both the level's raw
                tokens (B, h*w, C_l), ``key_proj`` its 1x1 projection C_l -> d, ``key_pos`` its positions.
            allowed: (B, heads, N, h*w) bool or None.

        Returns:
            (B, N, d)
        """
        if key_proj is None:
            return super().forward(query, key, value, allowed)
        if not isinstance(key_pos, KeyPositions) or key is not value:
            raise TypeError("attention on raw tokens needs key is value (the tokens) and key_pos as KeyPositions")
        tokens, (b, n, d), (h, w) = key, query.shape, (key_pos.h, key_pos.w)
        c, heads, dh = tokens.shape[-1], self.num_heads, self.head_dim
        w_in, b_in = key_proj.weight.flatten(1), key_proj.bias  # (d, C_l), (d,)
        q = self.split_heads(self.q(query)) * dh**-0.5  # (B, heads, N, dh), scaled as in eq. 4
        q_tok = torch.einsum("bhnd,hdc->bhnc", q, (self.k.weight @ w_in).view(heads, dh, c))  # (B, heads, N, C_l)
        scores = q_tok.reshape(b, heads * n, c) @ tokens.transpose(1, 2)  # (B, heads*N, h*w)
        rows, cols, const = key_pos.projected_parts(self.k, shift=b_in)  # (h, d), (w, d), (d,)
        # the constant is the same for every key, so softmax ignores it; kept so eq. 4 is computed as written
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


class QueryLayer(nn.Module):
    """One decoder layer: masked cross-attention -> self-attention -> FFN (post-norm, as Mask2Former)."""

    def __init__(self, dim: int, num_heads: int, ffn: int, fused: bool) -> None:
        super().__init__()
        self.cross_attn = TokenCrossAttention(dim, num_heads, fused)
        self.self_attn = Attention(dim, num_heads, fused)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(inplace=True), nn.Linear(ffn, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, p: Tensor, p_pos: Tensor, keys: Tensor, key_pos: Tensor | KeyPositions, allowed: Tensor | None,
                key_proj: nn.Conv2d | None = None) -> Tensor:
        """Args:
            p: queries (B, N, d); p_pos: (1, N, d) query positional embedding.
            keys: (B, h*w, d) one decoder level projected to d; or, with ``key_proj``, the level's
                raw tokens (B, h*w, C_l) and its 1x1 projection C_l -> d (``key_pos`` must then
                be :class:`KeyPositions`; see :class:`TokenCrossAttention`).
            key_pos: (1, h*w, d) sine + level embedding, or the same as :class:`KeyPositions`.
            allowed: (B, heads, N, h*w) bool or None (unmasked).
        """
        if key_proj is None:  # eq. 4-5 as written: keys + positions, values without
            pos = key_pos.dense() if isinstance(key_pos, KeyPositions) else key_pos
            p = self.norm1(p + self.cross_attn(p + p_pos, keys + pos, keys, allowed))
        else:  # the same numbers, without forming the level's keys and values
            p = self.norm1(p + self.cross_attn(p + p_pos, keys, keys, allowed, key_proj=key_proj, key_pos=key_pos))
        q = p + p_pos
        p = self.norm2(p + self.self_attn(q, q, p))
        return self.norm3(p + self.ffn(p))


class QueryDecoder(nn.Module):
    """Mask classification with coarse-to-fine masked cross-attention (eq. 4-9).

    Args:
        level_channels: CNN-decoder widths at 1/8, 1/4, 1/2 (attended coarse to fine).
        pixel_channels: CNN-decoder width at full resolution (the pixel embedding's input).
        dim, num_heads, ffn: query width, heads, FFN hidden width.
        mask_dim: width of the pixel embedding and the mask MLP's output (eq. 7).
        num_queries: N.
        num_layers: T (layer t attends to level t mod 3).
        num_classes: K foreground classes; the class head has K + 1 outputs.
        masked: apply eq. 6 masks (False = plain cross-attention, the ablation switch).
        fused: SDPA in the query self-attention (False = explicit softmax, hookable); the
            cross-attention on raw tokens always takes an explicit path,
            which never forms keys and is cheaper than SDPA with so few queries (see ``TokenCrossAttention``).
    """

    def __init__(self, level_channels: tuple[int, ...], pixel_channels: int, dim: int, num_heads: int, ffn: int,
                 mask_dim: int, num_queries: int, num_layers: int, num_classes: int, masked: bool, fused: bool) -> None:
        super().__init__()
        self.masked, self.num_heads = masked, num_heads
        self.query_feat = nn.Embedding(num_queries, dim)  # content part of P_0
        self.query_pos = nn.Embedding(num_queries, dim)  # positional part, added at every attention
        self.level_embed = nn.Embedding(len(level_channels), dim)
        self.input_proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in level_channels)
        self.pixel_proj = nn.Conv2d(pixel_channels, mask_dim, 1)  # E_pixel; used through its weights (see predict)
        self.layers = nn.ModuleList(QueryLayer(dim, num_heads, ffn, fused) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.mask_mlp = MLP((dim, dim, dim, mask_dim))
        self.class_head = nn.Linear(dim, num_classes + 1)

    def predict(self, p: Tensor, pixel: Tensor) -> QueryPrediction:
        """Eq. 7-9 from queries (B, N, d) and the full-resolution CNN feature ``F`` (B, C, H, W)."""
        p = self.norm(p)
        m = self.mask_mlp(p)  # (B, N, mask_dim)
        # Z_t = m . (W_p F + b_p) = (m W_p) . F + m . b_p, kept as factors: formed where it is used
        w_p = self.pixel_proj.weight.flatten(1)  # (mask_dim, C)
        return QueryPrediction(self.class_head(p), mask_embed=m @ w_p, pixel_embed=pixel, mask_bias=m @ self.pixel_proj.bias)

    def forward(self, levels: list[Tensor], pixel: Tensor) -> list[QueryPrediction]:
        """Args:
            levels: CNN-decoder features at 1/8, 1/4, 1/2.
            pixel: CNN-decoder feature at full resolution.

        Returns:
            T + 1 predictions: from the raw queries, then after each layer.
        """
        b = pixel.shape[0]
        tokens, key_pos, sizes = [], [], []
        for i, feat in enumerate(levels):
            h, w = feat.shape[-2:]
            tokens.append(feat.flatten(2).transpose(1, 2).contiguous())  # (B, h*w, C_l); no copy if channels_last
            key_pos.append(KeyPositions(h, w, self.level_embed.weight[i]))
            sizes.append((h, w))
        p = self.query_feat.weight[None].expand(b, -1, -1)  # (B, N, d)
        p_pos = self.query_pos.weight[None]  # (1, N, d)
        preds = [self.predict(p, pixel)]
        for t, layer in enumerate(self.layers):
            lvl = t % len(levels)
            allowed = None
            if self.masked:
                with torch.no_grad():  # eq. 6 masks are detached
                    coarse = preds[-1].mask_logits_resized(sizes[lvl])  # (B, N, h, w)
                allowed = attention_mask_from_logits(coarse, sizes[lvl], self.num_heads)
            p = layer(p, p_pos, tokens[lvl], key_pos[lvl], allowed, key_proj=self.input_proj[lvl])
            preds.append(self.predict(p, pixel))
        return preds


def semantic_probabilities(pred: QueryPrediction) -> Tensor:
    """Semantic map from mask classification: sum_q softmax(class_q)[:K] * sigmoid(mask_q).

    Returns:
        (B, K, H, W) per-class scores (may exceed 1 where queries overlap; clamp before use as p).
    """
    cls = pred.class_logits.softmax(-1)[..., :-1]  # (B, N, K)
    return torch.einsum("bnk,bnhw->bkhw", cls, pred.mask_logits.sigmoid())  # (B, K, H, W)


def argmax_probabilities(pred: QueryPrediction) -> Tensor:
    """Eq. 9 inference: per class k, the union of the masks of the queries whose argmax class is k.

    Each query's class is ``argmax`` of its K+1 scores (eq. 8-9; "no object" included, so a
    query predicting "no object" contributes nothing); class k's map is the pixel-wise maximum of
    ``sigmoid(mask_q)`` over the queries of class k, so thresholding it at 0.5 gives the union of
    their binarised masks (eq. 7). No query of class k: an all-zero map.

    Returns:
        (B, K, H, W) scores in [0, 1].
    """
    cls = pred.class_logits.argmax(-1)  # (B, N), values 0..K (K = no object)
    masks = pred.mask_logits.sigmoid()  # (B, N, H, W)
    k = pred.class_logits.shape[-1] - 1
    chosen = cls[:, :, None] == torch.arange(k, device=cls.device)  # (B, N, K)
    weights = chosen.to(masks.dtype)[..., None, None]  # (B, N, K, 1, 1)
    return (masks[:, :, None] * weights).amax(dim=1)  # (B, K, H, W)
