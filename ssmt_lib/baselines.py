"""Baseline segmentation networks from the seed papers, small and honest.

* ``UNet`` -- Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image
  Segmentation", MICCAI 2015: a contracting path of 4 (conv-conv-maxpool) levels, a bottleneck, and
  an expanding path of 4 (up-conv, concat skip, conv-conv) levels. As in every modern
  re-implementation (and in the TRFE-Net repository) the 3x3 convs are padded and followed by
  BatchNorm, so the output has the input's size and no cropping is needed.
* ``ResNet50UNet`` -- the same expanding path on a timm ResNet-50 encoder (stem at 1/2, stages at
  1/4 .. 1/32), upsampled once more to full resolution.
* ``MTNet`` -- the multi-task baseline of Gong et al. (ISBI 2021): one shared U-Net encoder, two
  independent U-Net decoders (nodule, thyroid gland). The tasks share only the encoder.
* ``TRFENet`` -- Gong et al., "Multi-task learning for thyroid nodule segmentation with thyroid
  region prior" (ISBI 2021): MT-Net plus a region-prior guidance (RPG) module that feeds the gland
  decoder into the nodule decoder at the 1/8, 1/4 and 1/2 levels, so non-thyroid look-alikes
  (vessels, trachea) are suppressed. Variants "A", "B", "C" are documented on
  :class:`RegionPriorGuidance`. Training loss (paper and reference code): nodule Dice
  + ``TRFE_GLAND_WEIGHT`` x gland Dice, with batches that interleave nodule (TN3K) and gland (TG3K)
  images, each image contributing only to the task it is labelled for.

Every model returns :class:`~ssmt_lib.outputs.ModelOutput` and declares ``tasks``. Build them by
name with :func:`build_baseline` (presets ``"tiny"`` for CPU tests/notebooks, ``"paper"``).
"""
from __future__ import annotations

import os
import typing
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import check_used_fields, coerce_value
from .outputs import ModelOutput

# TRFE-Net loss: L = Dice(nodule) + TRFE_GLAND_WEIGHT * Dice(gland) (Gong et al. 2021; the reference
# train.py weights every gland sample's Dice by 0.5). The training code reads this constant.
TRFE_GLAND_WEIGHT: float = 0.5

GUIDANCE_VARIANTS = ("A", "B", "C")
BASELINE_NAMES = ("unet", "resnet50_unet", "mtnet", "trfe")
# Aliases fix the TRFE guidance variant in the name (handy for papermill parameter files).
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "trfe_a": ("trfe", {"guidance": "A"}),
    "trfe_b": ("trfe", {"guidance": "B"}),
    "trfe_c": ("trfe", {"guidance": "C"}),
}
SIZES = ("tiny", "paper")


# ----------------------------------------------------------------------------------------------
# configuration


@dataclass
class BaselineConfig:
    """Architecture of one baseline. Fields a model does not use must keep their defaults."""

    name: str = "unet"  # one of BASELINE_NAMES
    image_size: int = 224  # intended input side; must be a multiple of the model's total stride
    in_chans: int = 3  # input channels (grey ultrasound replicated to 3 so ImageNet weights fit)
    # U-Net family: width of the first level, doubled at each of the 4 downsamplings (w .. 16w).
    # ResNet50UNet: width of the last decoder level, doubled toward the bottleneck (16w .. w).
    base_width: int = 64
    backbone: str = "resnet50"  # resnet50_unet only: timm ResNet-family encoder name
    backbone_channels: tuple[int, ...] | None = None  # resnet50_unet only: timm `channels` of the 4 stages; None = standard
    guidance: str = "A"  # trfe only: region-prior guidance variant, "A" / "B" / "C" (see RegionPriorGuidance)
    pretrained_file: str | None = None  # resnet50_unet only: local timm checkpoint of the encoder; None = random init


# Which optional fields each model reads; any other optional field must stay at its default.
_MODEL_FIELDS: dict[str, set[str]] = {
    "unet": set(),
    "resnet50_unet": {"backbone", "backbone_channels", "pretrained_file"},
    "mtnet": set(),
    "trfe": {"guidance"},
}
_COMMON_FIELDS = {"name", "image_size", "in_chans", "base_width"}

# Presets are values. "paper": published widths (U-Net/MT-Net/TRFE-Net 64..1024, full ResNet-50,
# smp-style decoder 256..16). "tiny": the same networks narrowed so a 2-core CPU trains them.
BASELINE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "unet": {"image_size": 224, "base_width": 64},
        "resnet50_unet": {"image_size": 224, "base_width": 16},
        "mtnet": {"image_size": 224, "base_width": 64},
        "trfe": {"image_size": 224, "base_width": 64},
    },
    "tiny": {
        "unet": {"image_size": 128, "base_width": 8},
        # Same ResNet-50 depth (3-4-6-3 bottlenecks), 8x narrower stages.
        "resnet50_unet": {"image_size": 128, "base_width": 8, "backbone_channels": (8, 16, 32, 64)},
        "mtnet": {"image_size": 128, "base_width": 8},
        "trfe": {"image_size": 128, "base_width": 8},
    },
}

_STRIDES = {"unet": 16, "resnet50_unet": 32, "mtnet": 16, "trfe": 16}


def _resolve_name(name: str) -> tuple[str, dict[str, Any]]:
    """Map a model name or alias to (canonical name, fields the alias fixes)."""
    if name in BASELINE_NAMES:
        return name, {}
    if name in ALIASES:
        return ALIASES[name]
    raise KeyError(f"unknown baseline {name!r}; choose one of {list(BASELINE_NAMES) + list(ALIASES)}")


def validate_baseline_config(cfg: BaselineConfig) -> BaselineConfig:
    """Raise if ``cfg`` names an unknown model, sets a field its model ignores, or cannot be built.

    Args:
        cfg: the configuration to check.

    Returns:
        ``cfg`` unchanged.
    """
    if cfg.name not in BASELINE_NAMES:
        raise KeyError(f"unknown baseline {cfg.name!r}; choose one of {list(BASELINE_NAMES)}")
    check_used_fields(cfg, "baseline", _COMMON_FIELDS, _MODEL_FIELDS)
    if cfg.guidance not in GUIDANCE_VARIANTS:
        raise ValueError(f"baseline config guidance={cfg.guidance!r}; choose one of {GUIDANCE_VARIANTS}")
    if cfg.base_width < 1 or cfg.in_chans < 1:
        raise ValueError(f"baseline config base_width and in_chans must be >= 1, got {cfg.base_width}, {cfg.in_chans}")
    stride = _STRIDES[cfg.name]
    if cfg.image_size < stride or cfg.image_size % stride:
        raise ValueError(f"baseline config image_size={cfg.image_size} must be a positive multiple of {stride} ({cfg.name} total stride)")
    if cfg.backbone_channels is not None and (len(cfg.backbone_channels) != 4 or min(cfg.backbone_channels) < 1):
        raise ValueError(f"baseline config backbone_channels needs 4 positive stage widths, got {cfg.backbone_channels}")
    if cfg.name == "resnet50_unet" and not timm.is_model(cfg.backbone):
        raise ValueError(f"baseline config backbone={cfg.backbone!r} is not a timm model name")
    if cfg.pretrained_file is not None and not os.path.isfile(cfg.pretrained_file):
        raise FileNotFoundError(f"baseline config pretrained_file {cfg.pretrained_file!r} does not exist")
    return cfg


def make_baseline_config(name: str, size: str = "tiny", **overrides: Any) -> BaselineConfig:
    """Build and validate the configuration of a named baseline.

    Args:
        name: one of ``BASELINE_NAMES`` or an alias in ``ALIASES`` (``"trfe_a"`` ...).
        size: preset, ``"tiny"`` (CPU) or ``"paper"`` (published widths).
        **overrides: field values of :class:`BaselineConfig` (``base_width=16``, ``guidance="C"``).

    Returns:
        A validated :class:`BaselineConfig`.
    """
    if size not in SIZES:
        raise ValueError(f"unknown baseline size {size!r}; choose one of {SIZES}")
    canonical, fixed = _resolve_name(name)
    hints = typing.get_type_hints(BaselineConfig)
    for key, value in overrides.items():
        if key not in hints:
            raise KeyError(f"unknown baseline override {key!r}; valid: {sorted(k for k in hints if k != 'name')}")
        overrides[key] = coerce_value(f"baseline config {key}", value, hints[key])
        if key in fixed and overrides[key] != fixed[key]:
            raise ValueError(f"baseline {name!r} fixes {key}={fixed[key]!r}; got {key}={value!r} (use name {canonical!r})")
    values = {**BASELINE_PRESETS[size][canonical], **fixed, **overrides}
    return validate_baseline_config(BaselineConfig(name=canonical, **values))


def build_from_config(cfg: BaselineConfig) -> nn.Module:
    """Instantiate the model a (validated) :class:`BaselineConfig` describes.

    Args:
        cfg: the configuration; ``model.config`` keeps it for checkpoints.

    Returns:
        The model, randomly initialised (or with the encoder loaded from ``cfg.pretrained_file``).
    """
    validate_baseline_config(cfg)
    if cfg.name == "unet":
        model: nn.Module = UNet(cfg.in_chans, cfg.base_width)
    elif cfg.name == "resnet50_unet":
        model = ResNet50UNet(cfg.in_chans, cfg.base_width, cfg.backbone, cfg.backbone_channels, cfg.pretrained_file)
    elif cfg.name == "mtnet":
        model = MTNet(cfg.in_chans, cfg.base_width)
    else:
        model = TRFENet(cfg.in_chans, cfg.base_width, cfg.guidance)
    model.config = cfg
    return model


def build_baseline(name: str, size: str = "tiny", **overrides: Any) -> nn.Module:
    """Build a baseline by name, e.g. ``build_baseline("trfe", guidance="C")``.

    Args:
        name: ``"unet"``, ``"resnet50_unet"``, ``"mtnet"``, ``"trfe"`` or ``"trfe_a"/"trfe_b"/"trfe_c"``.
        size: preset, ``"tiny"`` or ``"paper"``.
        **overrides: :class:`BaselineConfig` fields.

    Returns:
        The model; ``model(images)`` returns a :class:`ModelOutput`.
    """
    return build_from_config(make_baseline_config(name, size, **overrides))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------
# building blocks


def _check_images(images: Tensor, in_chans: int, stride: int, model: str) -> None:
    """Raise a clear error for input a model cannot take (wrong rank/channels, side not divisible)."""
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


# ----------------------------------------------------------------------------------------------
# models


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
        _check_images(images, self.in_chans, self.stride, type(self).__name__)
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
        _check_images(images, self.in_chans, self.stride, type(self).__name__)
        feats = self.encoder(images)  # 5 maps, strides 2, 4, 8, 16, 32
        x = feats[-1]
        skips = [feats[3], feats[2], feats[1], feats[0], None]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return ModelOutput(nodule_logits=self.head(x))


class MTNet(nn.Module):
    """MT-Net: shared U-Net encoder, independent nodule and gland U-Net decoders, no guidance.

    The only coupling of the tasks is the shared encoder, so gland supervision shapes the features
    the nodule decoder reads, but the gland prediction never reaches the nodule decoder.
    """

    tasks: tuple[str, ...] = ("nodule", "gland")
    stride: int = 16

    def __init__(self, in_chans: int = 3, base_width: int = 64) -> None:
        """Args:
        in_chans: image channels.
        base_width: first-level width of the shared encoder (and of both decoders).
        """
        super().__init__()
        self.in_chans = in_chans
        self.encoder = UNetEncoder(in_chans, base_width)
        self.nodule_decoder = UNetDecoder(self.encoder.widths)
        self.gland_decoder = UNetDecoder(self.encoder.widths)

    def forward(self, images: Tensor) -> ModelOutput:
        """Args:
        images: (B, in_chans, H, W), H and W multiples of 16.

        Returns:
            ``ModelOutput`` with ``nodule_logits`` and ``gland_logits``, each (B, 1, H, W).
        """
        _check_images(images, self.in_chans, self.stride, type(self).__name__)
        feats = self.encoder(images)
        nodule, _ = self.nodule_decoder(feats)
        gland, _ = self.gland_decoder(feats)
        return ModelOutput(nodule_logits=nodule, gland_logits=gland)


class RegionPriorGuidance(nn.Module):
    """TRFE-Net's region-prior guidance (RPG): the gland branch enhances the nodule decoder.

    Applied to the nodule decoder's output F at the 1/8, 1/4 and 1/2 levels (not at 1/1), always
    residually, so the unguided path survives where the gland prior is wrong. With G the gland
    decoder's output at the same level and P = sigmoid(gland logits):

    * ``"A"`` -- probability-map attention: F <- F + F * down(P), P area-downsampled to the level.
      The thyroid region acts as a spatial attention mask; no extra parameters (reference
      ``model/trfe.py``, the released TRFE-Net).
    * ``"B"`` -- feature multiplication: F <- F + F * G, the gland decoder's (ReLU) features gate
      the nodule features channel by channel; no extra parameters (reference ``model/trfe1.py``).
    * ``"C"`` -- feature concatenation: F <- F + Fuse([F, G]), Fuse = two 1x1 conv-BN-ReLU from
      2c to c channels; learned fusion (reference ``model/trfe2.py``).

    The letters follow the order of the reference repository (haifangong/TRFE-Net-for-thyroid-
    nodule-segmentation: trfe, trfe1, trfe2); the paper's figure labels were not available to check.
    The gland branch is not detached: the nodule loss also trains the gland decoder.
    """

    def __init__(self, variant: str, widths: list[int]) -> None:
        """Args:
        variant: "A", "B" or "C".
        widths: channels of the guided nodule-decoder levels (1/8, 1/4, 1/2).
        """
        super().__init__()
        if variant not in GUIDANCE_VARIANTS:
            raise ValueError(f"TRFE guidance={variant!r}; choose one of {GUIDANCE_VARIANTS}")
        self.variant = variant
        self.fuse = nn.ModuleList()
        if variant == "C":
            self.fuse.extend(
                nn.Sequential(
                    nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                    nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                )
                for c in widths
            )

    def forward(self, level: int, nodule: Tensor, gland_feat: Tensor, gland_prob: Tensor) -> Tensor:
        """Args:
        level: index of the guided level (0 = 1/8, 1 = 1/4, 2 = 1/2).
        nodule: nodule-decoder map F, (B, c, h, w).
        gland_feat: gland-decoder map G at the same level, (B, c, h, w).
        gland_prob: gland probability P at full resolution, (B, 1, H, W).

        Returns:
            The guided map, (B, c, h, w).
        """
        if self.variant == "A":
            prior = F.interpolate(gland_prob, size=nodule.shape[-2:], mode="area")  # (B, 1, h, w)
            return nodule + nodule * prior
        if self.variant == "B":
            return nodule + nodule * gland_feat
        fused = torch.cat([nodule, gland_feat], dim=1)  # (B, 2c, h, w)
        return nodule + self.fuse[level](fused)


class TRFENet(MTNet):
    """TRFE-Net (Gong et al., ISBI 2021): MT-Net whose gland branch guides the nodule decoder.

    The gland decoder runs first; its level maps and its probability map enter the nodule
    decoder through :class:`RegionPriorGuidance` (variant ``guidance``) at 1/8, 1/4 and 1/2.
    Train with Dice(nodule) + ``TRFE_GLAND_WEIGHT`` x Dice(gland).
    """

    def __init__(self, in_chans: int = 3, base_width: int = 64, guidance: str = "A") -> None:
        """Args:
        in_chans: image channels.
        base_width: first-level width of the shared encoder and both decoders.
        guidance: region-prior guidance variant, "A", "B" or "C".
        """
        super().__init__(in_chans, base_width)
        self.guidance = RegionPriorGuidance(guidance, self.encoder.widths[3:0:-1])  # 8w, 4w, 2w

    def forward(self, images: Tensor) -> ModelOutput:
        """Args:
        images: (B, in_chans, H, W), H and W multiples of 16.

        Returns:
            ``ModelOutput`` with ``nodule_logits`` and ``gland_logits``, each (B, 1, H, W).
        """
        _check_images(images, self.in_chans, self.stride, type(self).__name__)
        feats = self.encoder(images)
        gland, gland_levels = self.gland_decoder(feats)
        gland_prob = gland.sigmoid()  # (B, 1, H, W) thyroid-region prior
        nodule, _ = self.nodule_decoder(feats, guide=lambda i, x: self.guidance(i, x, gland_levels[i], gland_prob))
        return ModelOutput(nodule_logits=nodule, gland_logits=gland)
