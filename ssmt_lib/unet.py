"""U-Net and the U-Net decoder on a ResNet encoder, the single-task baselines.

* :class:`UNet` -- Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image
  Segmentation", MICCAI 2015: a contracting path of 4 (conv-conv-maxpool) levels, a bottleneck, and
  an expanding path of 4 (up-conv, concat skip, conv-conv) levels. As in every modern
  re-implementation (and in the TRFE-Net repository) the 3x3 convs are padded and followed by
  BatchNorm, so the output has the input's size and no cropping is needed.
* :class:`ResNet50UNet` -- the same expanding path on a timm ResNet-50 encoder (stem at 1/2, stages
  at 1/4 .. 1/32), upsampled once more to full resolution (the dual-stage paper's segmenter).

:class:`UNetEncoder` and :class:`UNetDecoder` are also the shared encoder and the two decoders of
MT-Net and TRFE-Net (:mod:`ssmt_lib.trfe`). Build these models by name with
:func:`ssmt_lib.baselines.build_baseline`.
"""
from __future__ import annotations

import os
import typing
from typing import Any

import timm
import torch
from torch import Tensor, nn

from ssmt_lib.outputs import ModelOutput


def check_images(images: Tensor, in_chans: int, stride: int, model: str) -> None:
    """Raise a clear error for input a model cannot take (wrong rank/channels, side not divisible).

    Args:
        images: the model's input, expected (B, in_chans, H, W).
        in_chans: the channels the model takes.
        stride: the model's total stride; H and W must be multiples of it.
        model: the model's name, for the message.
    """
    if images.ndim != 4 or images.shape[1] != in_chans:
        raise ValueError(f"{model} expects images of shape (B, {in_chans}, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h % stride or w % stride:
        raise ValueError(f"{model} needs H and W divisible by its total stride {stride}; got image size {h}x{w}")


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) x 2, the U-Net unit; padding keeps the spatial size."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        """Args:
        in_ch: input channels.
        out_ch: output channels of both convs.
        """
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Upsample x2, concatenate the encoder skip, DoubleConv (one expanding-path level).

    ``transpose=True`` is the U-Net "up-conv 2x2" that also halves the channels; ``False`` is
    nearest upsampling (the usual decoder on a ResNet encoder, fewer parameters).
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, transpose: bool = True) -> None:
        """Args:
        in_ch: channels of the coarser input.
        skip_ch: channels of the skip (0 = no skip).
        out_ch: output channels.
        transpose: learned 2x2 transposed conv (halving channels) instead of nearest upsampling.
        """
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, 2, stride=2) if transpose else nn.Upsample(scale_factor=2.0, mode="nearest")
        up_ch = in_ch // 2 if transpose else in_ch
        self.conv = DoubleConv(up_ch + skip_ch, out_ch)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """Args:
        x: (B, in_ch, h, w).
        skip: (B, skip_ch, 2h, 2w) or None.

        Returns:
            (B, out_ch, 2h, 2w).
        """
        x = self.up(x)  # (B, up_ch, 2h, 2w)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)  # (B, up_ch + skip_ch, 2h, 2w)
        return self.conv(x)


class UNetEncoder(nn.Module):
    """Contracting path: DoubleConv at 1/1, then 4 x (maxpool, DoubleConv) to 1/16; widths w .. 16w."""

    def __init__(self, in_chans: int, base_width: int) -> None:
        """Args:
        in_chans: image channels.
        base_width: width w of the first level.
        """
        super().__init__()
        self.widths = [base_width * 2**i for i in range(5)]  # w, 2w, 4w, 8w, 16w
        self.inc = DoubleConv(in_chans, self.widths[0])
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), DoubleConv(a, b)) for a, b in zip(self.widths, self.widths[1:]))

    def forward(self, x: Tensor) -> list[Tensor]:
        """Args:
        x: (B, C, H, W).

        Returns:
            Five maps, (B, w, H, W), (B, 2w, H/2, W/2), ..., (B, 16w, H/16, W/16).
        """
        feats = [self.inc(x)]
        for down in self.downs:
            feats.append(down(feats[-1]))
        return feats


class UNetDecoder(nn.Module):
    """Expanding path: 4 x UpBlock from 1/16 to 1/1 with skips, then a 1x1 head to one logit map."""

    def __init__(self, widths: list[int]) -> None:
        """Args:
        widths: encoder widths [w, 2w, 4w, 8w, 16w]; level i of the decoder outputs widths[3 - i].
        """
        super().__init__()
        rev = widths[::-1]  # 16w, 8w, 4w, 2w, w
        self.blocks = nn.ModuleList(UpBlock(a, b, b) for a, b in zip(rev, rev[1:]))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, feats: list[Tensor], guide: typing.Callable[[int, Tensor], Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        """Args:
        feats: encoder maps, fine to coarse (see :class:`UNetEncoder`).
        guide: optional ``guide(level, x) -> x`` applied after each of the first 3 blocks
            (1/8, 1/4, 1/2), the hook TRFE-Net's region-prior guidance uses.

        Returns:
            logits (B, 1, H, W) and the 4 block outputs (1/8, 1/4, 1/2, 1/1), after guidance.
        """
        x, levels = feats[-1], []
        for i, (block, skip) in enumerate(zip(self.blocks, reversed(feats[:-1]))):
            x = block(x, skip)
            if guide is not None and i < len(self.blocks) - 1:
                x = guide(i, x)
            levels.append(x)
        return self.head(x), levels


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015): 4 down / 4 up levels with skip concatenation."""

    tasks: tuple[str, ...] = ("nodule",)
    stride: int = 16

    def __init__(self, in_chans: int = 3, base_width: int = 64) -> None:
        """Args:
        in_chans: image channels.
        base_width: first-level width (paper: 64, so 64 .. 1024).
        """
        super().__init__()
        self.in_chans = in_chans
        self.encoder = UNetEncoder(in_chans, base_width)
        self.decoder = UNetDecoder(self.encoder.widths)

    def forward(self, images: Tensor) -> ModelOutput:
        """Args:
        images: (B, in_chans, H, W), H and W multiples of 16.

        Returns:
            ``ModelOutput`` with ``nodule_logits`` (B, 1, H, W).
        """
        check_images(images, self.in_chans, self.stride, type(self).__name__)
        logits, _ = self.decoder(self.encoder(images))
        return ModelOutput(nodule_logits=logits)


class ResNet50UNet(nn.Module):
    """U-Net decoder on a timm ResNet encoder (ResNet-50 by default).

    The encoder is ``timm.create_model(backbone, features_only=True)``: stem (1/2) and 4 stages
    (1/4 .. 1/32). The decoder goes up 4 times with those skips to 1/2, then once more without a
    skip to full resolution, widths (16w, 8w, 4w, 2w, w) (w = 16 gives smp's 256 .. 16).
    """

    tasks: tuple[str, ...] = ("nodule",)
    stride: int = 32

    def __init__(
        self,
        in_chans: int = 3,
        base_width: int = 16,
        backbone: str = "resnet50",
        backbone_channels: tuple[int, ...] | None = None,
        pretrained_file: str | None = None,
    ) -> None:
        """Args:
        in_chans: image channels (timm adapts pretrained stem weights when != 3).
        base_width: width of the last decoder level.
        backbone: timm ResNet-family model name ("resnet50", "resnet18", ...).
        backbone_channels: timm ``channels`` of the 4 stages (narrow tiny encoders); None = standard.
        pretrained_file: local timm checkpoint for the encoder (never the hub); None = random init.
        """
        super().__init__()
        self.in_chans = in_chans
        kwargs: dict[str, Any] = {"in_chans": in_chans}
        if backbone_channels is not None:
            kwargs["channels"] = tuple(backbone_channels)
        if pretrained_file is not None:
            if not os.path.isfile(pretrained_file):
                raise FileNotFoundError(f"ResNet50UNet pretrained_file {pretrained_file!r} does not exist")
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=pretrained_file))
        else:
            kwargs["pretrained"] = False
        self.encoder = timm.create_model(backbone, features_only=True, **kwargs)
        reductions = self.encoder.feature_info.reduction()
        if list(reductions) != [2, 4, 8, 16, 32]:
            raise ValueError(f"ResNet50UNet backbone {backbone!r} must give 5 maps at strides 2..32, got {reductions}")
        enc = self.encoder.feature_info.channels()  # stem, stage1..4
        dec = [base_width * 2**i for i in range(4, -1, -1)]  # 16w, 8w, 4w, 2w, w
        ins = [enc[4]] + dec[:-1]
        skips = [enc[3], enc[2], enc[1], enc[0], 0]  # last block has no skip (full resolution)
        self.blocks = nn.ModuleList(UpBlock(i, s, o, transpose=False) for i, s, o in zip(ins, skips, dec))
        self.head = nn.Conv2d(dec[-1], 1, 1)

    def forward(self, images: Tensor) -> ModelOutput:
        """Args:
        images: (B, in_chans, H, W), H and W multiples of 32.

        Returns:
            ``ModelOutput`` with ``nodule_logits`` (B, 1, H, W).
        """
        check_images(images, self.in_chans, self.stride, type(self).__name__)
        feats = self.encoder(images)  # 5 maps, strides 2, 4, 8, 16, 32
        x = feats[-1]
        skips = [feats[3], feats[2], feats[1], feats[0], None]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return ModelOutput(nodule_logits=self.head(x))
