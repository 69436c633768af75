"""The CNN decoders of SSMT-Net: the U-Net "cup" of each task and the reconstructor (paper Sec. 2.3, 2.5).

CNN decoder (TransUNet): from the fused 1/16 map, four steps of (upsample x2, concatenate the
ResNet skip of that scale if any, ``ModelConfig.decoder_convs`` 3x3 conv-BN-ReLU; TransUNet: two)
reach full resolution; a 1x1 conv gives auxiliary per-pixel logits. Its features at 1/8, 1/4, 1/2
and 1/1 feed the task's query decoder (:mod:`ssmt_lib.query_decoder`). The reconstructor (eq. 11,
trained first on unlabeled images) is the same cup **without skips** (with skips it could copy the
input instead of learning features) and an image-valued head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
