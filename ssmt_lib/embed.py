"""Hybrid CNN-Transformer encoder of SSMT-Net (paper eq. 1-3; TransUNet's R50-ViT-B/16).

A ResNet-50 (stages of 3, 4 and 9 bottleneck blocks) turns the image into a 1/16 feature map
``F_C``. The ViT tokenizes that map with patch size 1 (eq. 1: ``z_0 = [x_1 E; ...; x_N E] + E_pos``,
here ``E`` is a 1x1 convolution; timm's ViT also prepends a class token, which eq. 1 does not have:
``ModelConfig.class_token=False`` drops it), then runs ``depth`` pre-norm Transformer layers
(eq. 2: ``z' = MSA(LN(z)) + z``, eq. 3: ``z = MLP(LN(z')) + z'``). The patch tokens, reshaped back
to a map, are ``F_T``.

Both networks are timm's own classes (``ResNetV2`` inside ``HybridEmbed`` inside
``VisionTransformer``), so with the ``paper`` preset the module *is* ``vit_base_r50_s16_224``
and loads its weights. ``forward`` walks the ResNet stage by stage, once, keeping the 1/2, 1/4 and
1/8 maps as decoder skips, instead of calling ``vit.forward_features`` (which would hide them).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import BatchNormAct2d, GroupNormAct, StdConv2dSame, create_conv2d, resample_abs_pos_embed
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_hybrid import HybridEmbed
from torch import Tensor, nn

from ssmt_lib.config import ModelConfig


@dataclass
class EncoderFeatures:
    """Everything the decoders need from one encoder pass."""

    skips: list[Tensor]  # ResNet maps at 1/2, 1/4, 1/8: (B, C_s, H/s, W/s)
    f_c: Tensor  # (B, C16, H/16, W/16) ResNet output, the CNN half of the fusion
    tokens: Tensor  # (B, prefix + h*w, D) ViT output after the final norm (class token first, if any)
    grid: tuple[int, int]  # (h, w) token grid = H/16, W/16
    prefix: int = 1  # tokens before the patch grid: 1 (class token) or 0 (model.class_token=False)

    @property
    def f_t(self) -> Tensor:
        """Patch tokens as a map: (B, D, h, w)."""
        h, w = self.grid
        patch = self.tokens[:, self.prefix:]  # (B, h*w, D)
        return patch.transpose(1, 2).reshape(patch.shape[0], -1, h, w)  # (B, D, h, w)


def build_vit(cfg: ModelConfig) -> VisionTransformer:
    """The timm R50-ViT with this config's widths (equal to ``vit_base_r50_s16_224`` for ``paper``)."""
    backbone = ResNetV2(
        layers=list(cfg.resnet_layers),
        channels=tuple(cfg.resnet_channels),
        stem_chs=cfg.stem_channels,
        num_classes=0,
        global_pool="",
        in_chans=cfg.in_chans,
        preact=False,
        stem_type="same",
        conv_layer=partial(StdConv2dSame, eps=1e-8) if cfg.resnet_norm == "group" else
        partial(create_conv2d, padding="same"),
        norm_layer=partial(GroupNormAct, num_groups=cfg.norm_groups) if cfg.resnet_norm == "group" else
        BatchNormAct2d,
    )
    vit = VisionTransformer(
        img_size=cfg.image_size,
        patch_size=1,
        in_chans=cfg.in_chans,
        num_classes=0,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        embed_layer=partial(HybridEmbed, backbone=backbone),
        class_token=cfg.class_token,
        global_pool="token" if cfg.class_token else "avg",  # unused (num_classes=0); timm checks it
    )
    set_fused_attn(vit, cfg.fused_attn)
    return vit


def set_fused_attn(module: nn.Module, fused: bool) -> None:
    """Switch every timm/our attention layer in ``module`` between SDPA and the explicit softmax path."""
    for m in module.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
        if hasattr(m, "fused") and isinstance(getattr(m, "fused"), bool):
            m.fused = fused


def load_pretrained(vit: VisionTransformer, file: str) -> None:
    """Copy weights of timm's ``vit_base_r50_s16_224`` from a local ``file`` (never the hub).

    Position embeddings are resampled to ``vit``'s grid by timm's checkpoint filter.
    """
    import os

    import timm

    if not os.path.isfile(file):
        raise FileNotFoundError(f"model.pretrained_file={file!r} does not exist")
    grid = vit.patch_embed.grid_size
    ref = timm.create_model(
        "vit_base_r50_s16_224", pretrained=True, pretrained_cfg_overlay=dict(file=file),
        num_classes=0, img_size=grid[0] * 16,
    )
    weights = ref.state_dict()
    if vit.cls_token is None:  # the paper's eq. 1: patch tokens only, so drop the class token's entries
        weights.pop("cls_token")
        weights["pos_embed"] = weights["pos_embed"][:, ref.num_prefix_tokens:]  # (1, h*w, D)
    missing, unexpected = vit.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"weights in {file} do not fit this encoder (use the 'paper' preset widths): "
            f"missing {missing[:5]}..., unexpected {unexpected[:5]}..."
        )


class HybridEncoder(nn.Module):
    """ResNet-50 + ViT-Base; returns skips, ``F_C`` and the tokens (``F_T``) in one pass.

    Args:
        cfg: model configuration (``resnet_*``, ``embed_dim``, ``depth``, ``num_heads`` ...).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.vit = build_vit(cfg)
        if cfg.pretrained_file:
            load_pretrained(self.vit, cfg.pretrained_file)
        self.skip_channels = (cfg.stem_channels, cfg.resnet_channels[0], cfg.resnet_channels[1])

    @property
    def backbone(self) -> ResNetV2:
        return self.vit.patch_embed.backbone

    def pos_embed(self, h: int, w: int) -> Tensor:
        """Learned position embeddings (class token, if any, + h*w grid), resampled if the grid changed."""
        pos = self.vit.pos_embed  # (1, prefix + h0*w0, D)
        if (h, w) != tuple(self.vit.patch_embed.grid_size):
            pos = resample_abs_pos_embed(pos, new_size=[h, w], old_size=list(self.vit.patch_embed.grid_size),
                                         num_prefix_tokens=self.vit.num_prefix_tokens)
        return pos

    def forward(self, x: Tensor) -> EncoderFeatures:
        """Args:
            x: images (B, C, H, W), H and W multiples of 16.
        """
        bb = self.backbone
        s2 = bb.stem.norm(bb.stem.conv(x))  # (B, stem, H/2, W/2)
        s4 = bb.stages[0](bb.stem.pool(s2))  # (B, C4, H/4, W/4)
        s8 = bb.stages[1](s4)  # (B, C8, H/8, W/8)
        f_c = bb.norm(bb.stages[2](s8))  # (B, C16, H/16, W/16)
        z = self.vit.patch_embed.proj(f_c)  # eq. 1, x_p E: (B, D, h, w)
        h, w = z.shape[-2:]
        z = z.flatten(2).transpose(1, 2)  # (B, h*w, D)
        if self.vit.cls_token is not None:
            cls = self.vit.cls_token.expand(z.shape[0], -1, -1)  # (B, 1, D)
            z = torch.cat([cls, z], dim=1)  # (B, 1 + h*w, D)
        z = z + self.pos_embed(h, w)  # (B, prefix + h*w, D)
        z = self.vit.norm_pre(self.vit.pos_drop(z))
        z = self.vit.blocks(z)  # eq. 2-3, `depth` times
        z = self.vit.norm(z)
        return EncoderFeatures(skips=[s2, s4, s8], f_c=f_c, tokens=z, grid=(h, w), prefix=self.vit.num_prefix_tokens)
