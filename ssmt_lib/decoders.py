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
logits ``O_t = LN(P_t) W_fc`` over K classes + no-object. ``Z_t`` is returned as its two factors
(see :class:`~ssmt_lib.outputs.QueryPrediction`): the next layer's eq. 6 mask takes it at the
level's resolution and the loss on a pixel grid, so only the reported map is formed in full.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmt_lib.attention import Attention, attention_mask_from_logits
from ssmt_lib.heads import MLP
from ssmt_lib.outputs import QueryPrediction


class ConvBlock(nn.Sequential):
    """``convs`` times 3x3 conv-BN-ReLU (TransUNet: two)."""

    def __init__(self, in_ch: int, out_ch: int, convs: int = 2) -> None:
        if convs < 1:
            raise ValueError(f"ConvBlock needs at least one conv, got convs={convs}")
        layers = []
        for i in range(convs):
            layers += [nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
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


def sine_position_embedding(h: int, w: int, dim: int, device: torch.device | None = None) -> Tensor:
    """DETR's 2-D sine embedding of a (h, w) grid: (h*w, dim); half the channels encode y, half x."""
    if dim % 4:
        raise ValueError(f"sine position embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    freq = 10000 ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)  # (dim/4,)
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    ey = torch.cat([(ys[:, None] * freq).sin(), (ys[:, None] * freq).cos()], dim=1)  # (h, dim/2)
    ex = torch.cat([(xs[:, None] * freq).sin(), (xs[:, None] * freq).cos()], dim=1)  # (w, dim/2)
    grid = torch.cat([ey[:, None].expand(h, w, -1), ex[None].expand(h, w, -1)], dim=-1)  # (h, w, dim)
    return grid.reshape(h * w, dim)  # (h*w, dim)


class QueryLayer(nn.Module):
    """One decoder layer: masked cross-attention -> self-attention -> FFN (post-norm, as Mask2Former)."""

    def __init__(self, dim: int, num_heads: int, ffn: int, fused: bool) -> None:
        super().__init__()
        self.cross_attn = Attention(dim, num_heads, fused)
        self.self_attn = Attention(dim, num_heads, fused)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(inplace=True), nn.Linear(ffn, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, p: Tensor, p_pos: Tensor, keys: Tensor, key_pos: Tensor, allowed: Tensor | None,
                key_proj: nn.Conv2d | None = None) -> Tensor:
        """Args:
            p: queries (B, N, d); p_pos: (1, N, d) query positional embedding.
            keys: (B, h*w, d) one decoder level projected to d; or, with ``key_proj``, the level's
                raw tokens (B, h*w, C_l) and its 1x1 projection C_l -> d.
            key_pos: (1, h*w, d) sine + level embedding.
            allowed: (B, heads, N, h*w) bool or None (unmasked).
        """
        if key_proj is None:  # eq. 4-5 as written: keys + positions, values without
            p = self.norm1(p + self.cross_attn(p + p_pos, keys + key_pos, keys, allowed))
        else:  # the same k = W_k (W_in f + pos), v = W_v W_in f, regrouped: (W_k W_in) f is C_l/d of the work
            ca, w_in, b_in = self.cross_attn, key_proj.weight.flatten(1), key_proj.bias  # w_in: (d, C_l)
            k = F.linear(keys, ca.k.weight @ w_in) + ca.k(key_pos + b_in)  # (B, h*w, d); positions once per batch
            v = F.linear(keys, ca.v.weight @ w_in, ca.v.weight @ b_in + ca.v.bias)  # (B, h*w, d)
            p = self.norm1(p + ca(p + p_pos, k, v, allowed, kv_projected=True))  # eq. 4-5
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
        fused: SDPA attention (False = explicit softmax, hookable).
    """

    def __init__(self, level_channels: tuple[int, ...], pixel_channels: int, dim: int, num_heads: int, ffn: int,
                 mask_dim: int, num_queries: int, num_layers: int, num_classes: int, masked: bool, fused: bool) -> None:
        super().__init__()
        self.masked, self.num_heads = masked, num_heads
        self.query_feat = nn.Embedding(num_queries, dim)  # content part of P_0
        self.query_pos = nn.Embedding(num_queries, dim)  # positional part, added at every attention
        self.level_embed = nn.Embedding(len(level_channels), dim)
        self.input_proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in level_channels)
        self.pixel_proj = nn.Conv2d(pixel_channels, mask_dim, 1)
        self.layers = nn.ModuleList(QueryLayer(dim, num_heads, ffn, fused) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.mask_mlp = MLP((dim, dim, dim, mask_dim))
        self.class_head = nn.Linear(dim, num_classes + 1)

    def predict(self, p: Tensor, pixel_embed: Tensor) -> QueryPrediction:
        """Eq. 7-9 from queries (B, N, d) and the pixel embedding (B, mask_dim, H, W)."""
        p = self.norm(p)
        # Z_t = einsum(MLP(LN(P_t)), E_pixel), kept as its two factors: formed where it is used
        return QueryPrediction(self.class_head(p), mask_embed=self.mask_mlp(p), pixel_embed=pixel_embed)

    def forward(self, levels: list[Tensor], pixel: Tensor) -> list[QueryPrediction]:
        """Args:
            levels: CNN-decoder features at 1/8, 1/4, 1/2.
            pixel: CNN-decoder feature at full resolution.

        Returns:
            T + 1 predictions: from the raw queries, then after each layer.
        """
        b = pixel.shape[0]
        pixel_embed = self.pixel_proj(pixel)  # (B, mask_dim, H, W)
        tokens, key_pos, sizes = [], [], []
        for i, feat in enumerate(levels):
            h, w = feat.shape[-2:]
            tokens.append(feat.flatten(2).transpose(1, 2).contiguous())  # (B, h*w, C_l); no copy if channels_last
            pos = sine_position_embedding(h, w, self.level_embed.weight.shape[-1], feat.device) + self.level_embed.weight[i]
            key_pos.append(pos.to(feat.dtype)[None])  # (1, h*w, d)
            sizes.append((h, w))
        p = self.query_feat.weight[None].expand(b, -1, -1)  # (B, N, d)
        p_pos = self.query_pos.weight[None]  # (1, N, d)
        preds = [self.predict(p, pixel_embed)]
        for t, layer in enumerate(self.layers):
            lvl = t % len(levels)
            allowed = None
            if self.masked:
                with torch.no_grad():  # eq. 6 masks are detached
                    coarse = preds[-1].mask_logits_resized(sizes[lvl])  # (B, N, h, w)
                allowed = attention_mask_from_logits(coarse, sizes[lvl], self.num_heads)
            p = layer(p, p_pos, tokens[lvl], key_pos[lvl], allowed, key_proj=self.input_proj[lvl])
            preds.append(self.predict(p, pixel_embed))
        return preds


def semantic_probabilities(pred: QueryPrediction) -> Tensor:
    """Semantic map from mask classification: sum_q softmax(class_q)[:K] * sigmoid(mask_q).

    Returns:
        (B, K, H, W) per-class scores (may exceed 1 where queries overlap; clamp before use as p).
    """
    cls = pred.class_logits.softmax(-1)[..., :-1]  # (B, N, K)
    return torch.einsum("bnk,bnhw->bkhw", cls, pred.mask_logits.sigmoid())  # (B, K, H, W)
