"""The query decoder of SSMT-Net (paper Sec. 2.3, eq. 4-9), written as the paper writes it.

SSMT-Net follows TransUNet v2 / Mask2Former: ``N`` learnable queries ``P_0`` (content + positional
embedding) are refined by ``T`` layers; each layer reads one CNN-decoder level, coarse to fine
(1/8, 1/4, 1/2), and after the raw queries and after every layer the queries predict masks and
classes:

* **eq. 4, the first masks.** ``Z_0 = g(P_0 . E^T)`` from the raw queries, with ``g`` the
  sigmoid then 0.5 threshold and ``E = W_p F + b_p`` the per-pixel embedding of the full-resolution
  CNN feature ``F`` (a 1x1 conv); the product runs through an MLP of the normed queries, as in
  Mask2Former.
* **eq. 5, cross-attention.** The level (B, C_l, h, w) is projected to the query width ``d`` by a
  1x1 conv and flattened to ``h*w`` tokens; keys carry a 2-D sine position plus a learned level
  embedding, values do not. ``P_{t+1} = P_t + softmax(Q K^T / sqrt(d) + M_t) V`` (multi-head, then
  LayerNorm, as Mask2Former's post-norm layer), then query self-attention and an FFN, each
  residual + LayerNorm.
* **eq. 6, the attention mask.** ``M_t(x) = 0`` where the current mask ``sigmoid(Z_t)``, bilinearly
  resized to the level, is >= 0.5, and ``-inf`` elsewhere. A query whose mask is empty everywhere
  would get a row of ``-inf`` and a NaN softmax; it attends everywhere instead (Mask2Former's rule,
  :func:`attention_mask_from_logits`). The mask is detached.
* **eq. 7-8, prediction.** After every layer the masks ``Z_t = MLP(LN(P_t)) . E`` (eq. 7 for the
  last layer, deep supervision on all of them) and the class logits ``O_t = LN(P_t) W_fc`` over K
  classes + "no object" (eq. 8).
* **eq. 9, inference.** The reported map unites the masks of the queries whose arg-max class is
  foreground (:func:`argmax_probabilities`); :func:`semantic_probabilities` is Mask2Former's soft
  semantic inference, ``sum_q softmax(O_q)[:K] sigmoid(Z_q)``.

This module is the plain form: every tensor the equations name is formed. The same numbers can be
had with less work; :mod:`ssmt_lib.query_decoder_fast` holds those speed-ups as named alternatives
(``ModelConfig.cross_attention_on_tokens`` and ``ModelConfig.factored_masks``), each with a parity
test and its measured gain.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmt_lib.attention import Attention
from ssmt_lib.heads import MLP
from ssmt_lib.outputs import QueryPrediction


def attention_mask_from_logits(mask_logits: Tensor, size: tuple[int, int], num_heads: int = 1,
                               threshold: float = 0.5) -> Tensor:
    """Eq. 6: where each query may attend in the next layer, from the current mask logits.

    Args:
        mask_logits: (B, N, H, W) query mask logits, at full resolution or already at ``size``.
        size: (h, w) of the feature level the next layer attends to.
        num_heads: heads of that layer (the mask is repeated per head).
        threshold: probability a position needs to stay visible (the paper: 0.5).

    Returns:
        allowed: (B, num_heads, N, h*w) bool, True where the query may attend. Detached.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    resized = mask_logits.detach().float()
    if tuple(resized.shape[-2:]) != tuple(size):
        resized = F.interpolate(resized, size=size, mode="bilinear", align_corners=False)  # (B, N, h, w)
    allowed = resized.sigmoid().flatten(2) >= threshold  # (B, N, h*w)
    empty = ~allowed.any(dim=-1, keepdim=True)  # (B, N, 1): nothing above the threshold
    allowed = allowed | empty  # empty-mask rule: attend everywhere instead of NaN
    return allowed.unsqueeze(1).expand(-1, num_heads, -1, -1)  # (B, heads, N, h*w)


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


def key_positions(h: int, w: int, level_embedding: Tensor) -> Tensor:
    """Eq. 5's key positions of one level: its 2-D sine grid plus the learned level embedding: (1, h*w, d)."""
    d = level_embedding.shape[-1]
    return (sine_position_embedding(h, w, d, level_embedding.device) + level_embedding)[None]  # (1, h*w, d)


class QueryLayer(nn.Module):
    """One decoder layer: masked cross-attention (eq. 5-6) -> self-attention -> FFN, post-norm.

    Args:
        dim: query width d.
        num_heads: heads of both attentions.
        ffn: hidden width of the FFN.
        fused: SDPA in both attentions when no weights are recorded (False = explicit softmax).
    """

    def __init__(self, dim: int, num_heads: int, ffn: int, fused: bool) -> None:
        super().__init__()
        self.cross_attn = self.make_cross_attention(dim, num_heads, fused)
        self.self_attn = Attention(dim, num_heads, fused)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(inplace=True), nn.Linear(ffn, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def make_cross_attention(self, dim: int, num_heads: int, fused: bool) -> Attention:
        """The cross-attention module (the fast layer builds its own kind, with the same parameters)."""
        return Attention(dim, num_heads, fused)

    def forward(self, p: Tensor, p_pos: Tensor, keys: Tensor, key_pos: Tensor, allowed: Tensor | None) -> Tensor:
        """Args:
            p: queries (B, N, d); p_pos: (1, N, d) their positional embedding.
            keys: (B, h*w, d) one CNN-decoder level projected to d (the values too).
            key_pos: (1, h*w, d) sine + level embedding, added to the keys only.
            allowed: (B, heads, N, h*w) bool eq. 6 mask, or None (plain cross-attention).

        Returns:
            (B, N, d) the refined queries.
        """
        p = self.norm1(p + self.cross_attn(p + p_pos, keys + key_pos, keys, allowed))  # eq. 5
        return self.self_attention_and_ffn(p, p_pos)

    def self_attention_and_ffn(self, p: Tensor, p_pos: Tensor) -> Tensor:
        """The rest of the layer: query self-attention, then the FFN, each residual + LayerNorm."""
        q = p + p_pos
        p = self.norm2(p + self.self_attn(q, q, p))
        return self.norm3(p + self.ffn(p))


class QueryDecoder(nn.Module):
    """Mask classification with coarse-to-fine masked cross-attention (eq. 4-9).

    Args:
        level_channels: CNN-decoder widths at 1/8, 1/4, 1/2 (attended coarse to fine).
        pixel_channels: CNN-decoder width at full resolution (the pixel embedding's input).
        dim: query width d.
        num_heads: attention heads.
        ffn: FFN hidden width.
        mask_dim: width of the pixel embedding E and the mask MLP's output (eq. 7).
        num_queries: N.
        num_layers: T (layer t attends to level t mod 3).
        num_classes: K foreground classes; the class head has K + 1 outputs.
        masked: apply eq. 6 masks (False = plain cross-attention, the ablation switch).
        fused: SDPA in the attentions (False = explicit softmax; recorders switch it off anyway).
    """

    def __init__(self, level_channels: tuple[int, ...], pixel_channels: int, dim: int, num_heads: int, ffn: int,
                 mask_dim: int, num_queries: int, num_layers: int, num_classes: int, masked: bool, fused: bool) -> None:
        super().__init__()
        self.masked, self.num_heads = masked, num_heads
        self.query_feat = nn.Embedding(num_queries, dim)  # content part of P_0
        self.query_pos = nn.Embedding(num_queries, dim)  # positional part, added at every attention
        self.level_embed = nn.Embedding(len(level_channels), dim)
        self.input_proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in level_channels)
        self.pixel_proj = nn.Conv2d(pixel_channels, mask_dim, 1)  # E = W_p F + b_p (eq. 7)
        self.layers = nn.ModuleList(self.make_layer(dim, num_heads, ffn, fused) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.mask_mlp = MLP((dim, dim, dim, mask_dim))
        self.class_head = nn.Linear(dim, num_classes + 1)

    def make_layer(self, dim: int, num_heads: int, ffn: int, fused: bool) -> QueryLayer:
        """One decoder layer (the fast decoder builds its own kind, with the same parameters)."""
        return QueryLayer(dim, num_heads, ffn, fused)

    def level_keys(self, levels: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Eq. 5's keys of each level: the 1x1-projected tokens (B, h*w, d) and their positions (1, h*w, d)."""
        keys = []
        for i, feat in enumerate(levels):
            h, w = feat.shape[-2:]
            tokens = self.input_proj[i](feat).flatten(2).transpose(1, 2)  # (B, h*w, d)
            keys.append((tokens, key_positions(h, w, self.level_embed.weight[i])))  # (B, h*w, d), (1, h*w, d)
        return keys

    def pixel_embedding(self, pixel: Tensor) -> Tensor:
        """Eq. 4/7's per-pixel embedding ``E = W_p F + b_p``: (B, mask_dim, H, W)."""
        return self.pixel_proj(pixel)

    def predict(self, p: Tensor, pixel_embed: Tensor) -> QueryPrediction:
        """Eq. 4/7-8: masks ``Z = MLP(LN(P)) . E`` (B, N, H, W) and class logits (B, N, K+1).

        Args:
            p: queries (B, N, d).
            pixel_embed: what :meth:`pixel_embedding` returned for this image batch.
        """
        p = self.norm(p)
        z = torch.einsum("bnc,bchw->bnhw", self.mask_mlp(p), pixel_embed)  # (B, N, H, W)
        return QueryPrediction(self.class_head(p), z)

    def forward(self, levels: list[Tensor], pixel: Tensor) -> list[QueryPrediction]:
        """Args:
            levels: CNN-decoder features at 1/8, 1/4, 1/2 (B, C_l, h, w).
            pixel: CNN-decoder feature at full resolution ``F`` (B, C, H, W).

        Returns:
            T + 1 predictions: from the raw queries, then after each layer.
        """
        keys = self.level_keys(levels)
        pixel_embed = self.pixel_embedding(pixel)
        p = self.query_feat.weight[None].expand(pixel.shape[0], -1, -1)  # P_0: (B, N, d)
        p_pos = self.query_pos.weight[None]  # (1, N, d)
        preds = [self.predict(p, pixel_embed)]
        for t, layer in enumerate(self.layers):
            level = t % len(levels)  # coarse to fine, then round again
            allowed = None
            if self.masked:  # eq. 6 from the previous prediction, at this level's size
                size = tuple(levels[level].shape[-2:])
                with torch.no_grad():
                    allowed = attention_mask_from_logits(preds[-1].mask_logits_resized(size), size, self.num_heads)
            p = layer(p, p_pos, *keys[level], allowed)
            preds.append(self.predict(p, pixel_embed))
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
