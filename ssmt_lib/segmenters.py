"""The dual-stage paper's segmenters (Sec. 3.5, Table 2) from segmentation_models_pytorch and MONAI.

The paper's second stage segments the nodule (eq. 15-20: encoder-decoder with skips, sigmoid map,
threshold 0.5) and compares seven networks in Table 2. Three already live in the library:
ResNet50-UNet and U-Net (:mod:`ssmt_lib.baselines`, ``"resnet50_unet"``, ``"unet"``) and
TransUNet (SSMT-Net's Table 2 variant ``1_baseline``: the TransUNet-style encoder and decoders
without auxiliary tasks). This file adds the other four, built by libraries, not by hand:

* ``vgg16_unet``, ``vgg19_unet``: ``smp.Unet`` on smp's VGG16 / VGG19 encoder (torchvision's VGG
  layers, so torchvision ImageNet ``features.*`` weights fit ``pretrained_file``).
* ``deeplabv3plus``: ``smp.DeepLabV3Plus`` (atrous spatial pyramid pooling, output stride 16). The
  paper does not name its backbone; ours is ResNet-50 (``paper``) / ResNet-18 (``tiny``).
* ``attention_unet``: MONAI's ``AttentionUnet`` (Oktay et al., "Attention U-Net: Learning Where to
  Look for the Pancreas", MIDL 2018: additive attention gates on the skips), widths 64..1024
  (``paper``) / 8..128 (``tiny``). smp has no attention-gated U-Net.

The loss is a switch of the trainer, not of the model: ``loss.seg_loss="dice"`` trains on the Dice
loss (eq. 24), ``"normalized"`` on (BCE + Dice) / 2, the paper's eq. 21 up to a factor 1/2 (the
paper's text names both). Sizes are values (``SEGMENTER_PRESETS``): ``tiny`` narrows the decoders
(and the MONAI widths, and DeepLabV3+'s backbone), but smp's VGG encoders keep torchvision's fixed
widths, so the tiny VGG-UNets are not CPU-cheap (a 128 px forward pass costs ~5 GFLOPs); on a CPU
use ``unet`` or ``resnet50_unet``. Every model returns :class:`~ssmt_lib.outputs.ModelOutput` with
``nodule_logits`` (B, 1, H, W) and has ``tasks = ("nodule",)``, so ``fit``/``evaluate`` train and
score it like the baselines (``python -m ssmt_lib train --model vgg16_unet ...``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ssmt_lib.classifiers import load_local_weights
from ssmt_lib.config import check_used_fields, coerce_overrides
from ssmt_lib.outputs import ModelOutput

SEGMENTER_NAMES = ("vgg16_unet", "vgg19_unet", "deeplabv3plus", "attention_unet")
SIZES = ("tiny", "paper")
_STRIDES = {"vgg16_unet": 32, "vgg19_unet": 32, "deeplabv3plus": 16, "attention_unet": 16}


@dataclass
class SegmenterConfig:
    """One Table 2 segmenter. Fields a model does not read must keep their defaults (validated)."""

    name: str = "vgg16_unet"  # one of SEGMENTER_NAMES
    size: str = "paper"  # the preset these values came from; recorded, not read
    image_size: int = 224  # intended input side (multiple of the model's stride)
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)  # smp Unet decoder widths, 1/16 .. 1/1
    encoder: str = "resnet50"  # deeplabv3plus only: smp encoder name
    aspp_channels: int = 256  # deeplabv3plus only: ASPP / decoder width
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024)  # attention_unet only: MONAI widths per level
    pretrained_file: str | None = None  # local ImageNet weights of the encoder (smp models); None = random


_MODEL_FIELDS = {"vgg16_unet": {"decoder_channels", "pretrained_file"}, "vgg19_unet": {"decoder_channels", "pretrained_file"},
                 "deeplabv3plus": {"encoder", "aspp_channels", "pretrained_file"}, "attention_unet": {"channels"}}
_COMMON = {"name", "size", "image_size"}

SEGMENTER_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {n: {"image_size": 224} for n in SEGMENTER_NAMES},
    "tiny": {
        "vgg16_unet": {"image_size": 128, "decoder_channels": (64, 32, 16, 8, 8)},
        "vgg19_unet": {"image_size": 128, "decoder_channels": (64, 32, 16, 8, 8)},
        "deeplabv3plus": {"image_size": 128, "encoder": "resnet18", "aspp_channels": 32},
        "attention_unet": {"image_size": 128, "channels": (8, 16, 32, 64, 128)},
    },
}


def validate_segmenter_config(cfg: SegmenterConfig) -> SegmenterConfig:
    """Raise if ``cfg`` names an unknown model, sets a field its model ignores, or cannot be built."""
    if cfg.name not in SEGMENTER_NAMES:
        raise KeyError(f"unknown segmenter {cfg.name!r}; choose one of {list(SEGMENTER_NAMES)}")
    check_used_fields(cfg, "segmenter", _COMMON, _MODEL_FIELDS)
    stride = _STRIDES[cfg.name]
    if cfg.image_size < stride or cfg.image_size % stride:
        raise ValueError(f"segmenter config image_size={cfg.image_size} must be a positive multiple of {stride}")
    if len(cfg.decoder_channels) != 5 or len(cfg.channels) != 5 or min(cfg.decoder_channels + cfg.channels) < 1:
        raise ValueError("segmenter config decoder_channels and channels need 5 positive widths")
    if cfg.pretrained_file is not None and not os.path.isfile(cfg.pretrained_file):
        raise FileNotFoundError(f"segmenter config pretrained_file {cfg.pretrained_file!r} does not exist")
    return cfg


def make_segmenter_config(name: str, size: str = "tiny", **overrides: Any) -> SegmenterConfig:
    """Validated configuration of a named segmenter at a preset size, with field overrides."""
    if size not in SIZES:
        raise ValueError(f"unknown segmenter size {size!r}; choose one of {SIZES}")
    if name not in SEGMENTER_NAMES:
        raise KeyError(f"unknown segmenter {name!r}; choose one of {list(SEGMENTER_NAMES)}")
    overrides = coerce_overrides(SegmenterConfig, "segmenter", overrides, reserved=("name", "size"))
    return validate_segmenter_config(SegmenterConfig(name=name, size=size,
                                                     **{**SEGMENTER_PRESETS[size][name], **overrides}))


class Segmenter(nn.Module):
    """A Table 2 network returning ``ModelOutput(nodule_logits=(B, 1, H, W))``.

    Args:
        cfg: a validated :class:`SegmenterConfig`.
    """

    tasks: tuple[str, ...] = ("nodule",)

    def __init__(self, cfg: SegmenterConfig) -> None:
        super().__init__()
        validate_segmenter_config(cfg)
        self.config = cfg
        self.stride = _STRIDES[cfg.name]
        if cfg.name == "attention_unet":
            from monai.networks.nets import AttentionUnet  # imported on use: MONAI is slow to import

            self.net = AttentionUnet(spatial_dims=2, in_channels=3, out_channels=1, channels=cfg.channels,
                                     strides=(2, 2, 2, 2))
            return
        import segmentation_models_pytorch as smp

        if cfg.name == "deeplabv3plus":
            self.net = smp.DeepLabV3Plus(encoder_name=cfg.encoder, encoder_weights=None, in_channels=3, classes=1,
                                         decoder_channels=cfg.aspp_channels)
        else:
            self.net = smp.Unet(encoder_name=cfg.name.split("_")[0], encoder_weights=None, in_channels=3, classes=1,
                                decoder_channels=cfg.decoder_channels)
        if cfg.pretrained_file is not None:  # ImageNet classifier weights: their head has no place here
            load_local_weights(self.net.encoder, cfg.pretrained_file)

    def forward(self, images: Tensor) -> ModelOutput:
        """Args:
            images: (B, 3, H, W), H and W multiples of ``self.stride``.

        Returns:
            ``ModelOutput`` with ``nodule_logits`` (B, 1, H, W).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.config.name} expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-1] % self.stride or images.shape[-2] % self.stride:
            raise ValueError(f"{self.config.name} needs H and W divisible by {self.stride}; got {tuple(images.shape[-2:])}")
        return ModelOutput(nodule_logits=self.net(images))


def build_segmenter(name: str, size: str = "tiny", **overrides: Any) -> Segmenter:
    """``build_segmenter("vgg16_unet", size="paper")``; fields of :class:`SegmenterConfig` as overrides."""
    return Segmenter(make_segmenter_config(name, size, **overrides))
