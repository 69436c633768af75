"""The baseline segmentation networks by name: their configuration, presets and builder.

The models themselves live in one module per paper:

* :mod:`ssmt_lib.unet` -- ``UNet`` (Ronneberger et al., "U-Net: Convolutional Networks for
  Biomedical Image Segmentation", MICCAI 2015) and ``ResNet50UNet`` (its decoder on a timm ResNet-50).
* :mod:`ssmt_lib.trfe` -- ``MTNet`` and ``TRFENet`` (Gong et al., "Multi-task learning for thyroid
  nodule segmentation with thyroid region prior", ISBI 2021), with region-prior guidance A/B/C.

Every model returns :class:`~ssmt_lib.outputs.ModelOutput` and declares ``tasks``. Build them by
name with :func:`build_baseline` (presets ``"tiny"`` for CPU tests/notebooks, ``"paper"``); a
:class:`BaselineConfig` names the fields each model reads, and :func:`validate_baseline_config`
rejects any other that is set.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import timm
from torch import nn

from ssmt_lib.config import check_used_fields, coerce_overrides
from ssmt_lib.trfe import GUIDANCE_VARIANTS, MTNet, TRFENet
from ssmt_lib.unet import ResNet50UNet, UNet

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
    overrides = coerce_overrides(BaselineConfig, "baseline", overrides)
    for key, value in overrides.items():
        if key in fixed and value != fixed[key]:
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
