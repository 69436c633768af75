"""Joint nodule mask + TI-RADS category on one shared encoder, with a radiomics-guided embedding.

The clinically guided multitask model of the RLAR paper (Liu et al., *Representation-Level
Adversarial Regularization for Clinically Aligned Multitask Thyroid Ultrasound Assessment*,
arXiv 2603.21095): "jointly predicts the nodule mask and TI-RADS category within a single model"
and "guide[s] the classification embedding using a compact TI-RADS aligned radiomics target during
training, while preserving complementary deep features". Only the abstract is public; the
architecture below is **ours**:

    image ─► shared encoder ─► z (B, C, H/16, W/16) ──► CNN decoder (+ encoder skips) ─► nodule logits
                                │                        (BCE + Dice)
                                └─ mean pool (B, C) ─┬─► deep MLP ─► e_deep (B, deep_dim)        (free)
                                                     └─► linear ──► e_rad (B, R)  ── MSE ─► standardised
                                                                                  radiomics target (training)
                      [e_deep ‖ e_rad] ─► dropout ─► linear ─► TI-RADS logits (B, K)   (cross-entropy)

``z`` is the latent RLAR probes (:mod:`ssmt_lib.rlar`). The encoder is SSMT-Net's hybrid encoder
(ResNet + ViT fused map, :class:`ssmt_lib.embed.HybridEncoder`, at a preset's widths) or a CNN
(timm ``resnet10t``, random init). The decoder is SSMT-Net's CNN decoder (the query decoder is
left out: one binary mask per image is all the TI-RADS task needs, and it keeps CPU runs short).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import timm
import torch
from torch import Tensor, nn

from ssmt_lib.decoders import CNNDecoder
from ssmt_lib.radiomics import FEATURE_NAMES
from ssmt_lib.rlar import check_rlar

METHODS = ("single_seg", "single_cls", "equal", "uncertainty", "pcgrad", "rlar")
ENCODERS = ("hybrid", "cnn")
# Label sets: the phantom's five ACR levels; DDTI's six categories, or grouped into four ordered
# risk groups (ours: 2-3 low, 4a, 4b, 4c-5 high), for small DDTI splits where 4c and 5 are rare.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "acr": ("TR1", "TR2", "TR3", "TR4", "TR5"),
    "ddti": ("2", "3", "4a", "4b", "4c", "5"),
    "ddti_grouped": ("2-3", "4a", "4b", "4c-5"),
}


@dataclass
class TiradsConfig:
    """The joint model and how its two tasks are trained (see the module and :mod:`ssmt_lib.rlar`)."""

    encoder: str = "hybrid"  # "hybrid": SSMT-Net's ResNet+ViT encoder; "cnn": timm resnet10t
    preset: str = "tiny"  # SSMT-Net preset whose encoder/decoder widths the hybrid encoder takes
    labels: str = "acr"  # label set, a key of CATEGORIES (phantom: "acr"; DDTI: "ddti" or "ddti_grouped")
    deep_dim: int = 32  # width of the free deep embedding e_deep
    radiomics_features: tuple[str, ...] = FEATURE_NAMES  # the radiomics target (ssmt_lib.radiomics)
    dropout: float = 0.1  # before the TI-RADS linear layer
    method: str = "rlar"  # single_seg / single_cls / equal / uncertainty / pcgrad / rlar
    seg_weight: float = 1.0  # weight of BCE + Dice (equal, pcgrad, rlar)
    cls_weight: float = 1.0  # weight of the TI-RADS cross-entropy
    radiomics_weight: float = 0.5  # weight of the radiomics MSE, part of the TI-RADS task's loss (ours)
    class_weight: str = "balanced"  # "balanced" (inverse training frequency) or "none" for the cross-entropy
    # ordinal term: squared earth mover's distance between predicted and true cumulative distributions
    # over the ordered categories (Hou, Yu, Samaras, "Squared Earth Mover's Distance-based Loss", 2016)
    ordinal_weight: float = 0.0  # 0 = off (plain cross-entropy)
    rlar_lambda: float = 1.0  # RLAR lambda (0 = off); only used by method "rlar"
    rlar_tau: float = 0.0  # RLAR tau: alignment above this cosine is penalised, in [-1, 1]
    pcgrad_seed: int = 0  # task order of PCGrad's projections

    @property
    def categories(self) -> tuple[str, ...]:
        return CATEGORIES[self.labels]

    @property
    def num_classes(self) -> int:
        return len(CATEGORIES[self.labels])


def check_config(cfg: TiradsConfig) -> TiradsConfig:
    """Validate every field (clear ``ValueError`` naming it); returns ``cfg``."""
    if cfg.encoder not in ENCODERS:
        raise ValueError(f"TiradsConfig.encoder must be one of {ENCODERS}, got {cfg.encoder!r}")
    if cfg.method not in METHODS:
        raise ValueError(f"TiradsConfig.method must be one of {METHODS}, got {cfg.method!r}")
    if cfg.labels not in CATEGORIES:
        raise ValueError(f"TiradsConfig.labels must be one of {sorted(CATEGORIES)}, got {cfg.labels!r}")
    if cfg.class_weight not in ("balanced", "none"):
        raise ValueError(f"TiradsConfig.class_weight must be 'balanced' or 'none', got {cfg.class_weight!r}")
    unknown = [n for n in cfg.radiomics_features if n not in FEATURE_NAMES]
    if unknown or not cfg.radiomics_features:
        raise ValueError(f"TiradsConfig.radiomics_features: unknown or empty {unknown}; choose from "
                         f"{list(FEATURE_NAMES)}")
    for name in ("seg_weight", "cls_weight", "radiomics_weight", "ordinal_weight"):
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"TiradsConfig.{name} must be >= 0, got {getattr(cfg, name)!r}")
    if not (isinstance(cfg.deep_dim, int) and cfg.deep_dim >= 1):
        raise ValueError(f"TiradsConfig.deep_dim must be an int >= 1, got {cfg.deep_dim!r}")
    if not 0 <= cfg.dropout < 1:
        raise ValueError(f"TiradsConfig.dropout must be in [0, 1), got {cfg.dropout!r}")
    check_rlar(cfg.rlar_lambda, cfg.rlar_tau)
    return cfg


def tirads_config(**options: Any) -> TiradsConfig:
    """A validated :class:`TiradsConfig` from keyword options (unknown names raise)."""
    names = {f.name for f in fields(TiradsConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"unknown TI-RADS model option(s) {unknown}; known: {sorted(names)}")
    if "radiomics_features" in options:
        options["radiomics_features"] = tuple(options["radiomics_features"])
    return check_config(TiradsConfig(**options))


class _CNNEncoder(nn.Module):
    """timm resnet10t features at 1/2, 1/4, 1/8, 1/16; the 1/16 map projected to ``width``."""

    def __init__(self, in_chans: int, width: int) -> None:
        super().__init__()
        self.body = timm.create_model("resnet10t", features_only=True, pretrained=False, in_chans=in_chans,
                                      out_indices=(0, 1, 2, 3))
        ch = self.body.feature_info.channels()
        self.skip_channels = tuple(ch[:3])  # 1/2, 1/4, 1/8
        self.proj = nn.Sequential(nn.Conv2d(ch[3], width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        f = self.body(x)
        return self.proj(f[3]), f[:3]


class _HybridEncoder(nn.Module):
    """SSMT-Net's encoder and fusion: ``proj(F_C) + proj(F_T)`` and the ResNet skips."""

    def __init__(self, preset: str, image_size: int) -> None:
        super().__init__()
        from ssmt_lib.config import make_config
        from ssmt_lib.model import SSMTNet

        mcfg = make_config(preset, model__image_size=image_size, model__use_query_decoder=False,
                           model__output_mode="cnn", model__gland=False, model__reconstruction=False,
                           model__size=False, model__resnet_norm="batch").model
        net = SSMTNet(mcfg)
        self.encoder, self.proj_c, self.proj_t = net.encoder, net.proj_c, net.proj_t
        self.skip_channels = tuple(net.encoder.skip_channels)  # 1/2, 1/4, 1/8
        self.width = mcfg.fusion_channels  # width of z
        self.decoder_channels, self.decoder_convs = mcfg.decoder_channels, mcfg.decoder_convs

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        feats = self.encoder(x)
        return self.proj_c(feats.f_c) + self.proj_t(feats.f_t), feats.skips


class TiradsNet(nn.Module):
    """Shared encoder, nodule decoder and the radiomics-guided TI-RADS head.

    Args:
        cfg: the model configuration.
        image_size: input side (multiple of 16).
        in_chans: image channels.
    """

    def __init__(self, cfg: TiradsConfig, image_size: int = 128, in_chans: int = 3) -> None:
        super().__init__()
        self.config = check_config(cfg)
        if image_size % 16:
            raise ValueError(f"TiradsNet: image_size must be a multiple of 16, got {image_size}")
        if cfg.encoder == "hybrid":
            self.encoder = _HybridEncoder(cfg.preset, image_size)
            width, dc, convs = self.encoder.width, self.encoder.decoder_channels, self.encoder.decoder_convs
        else:
            width, dc, convs = 64, (32, 16, 8, 8), 1  # the tiny preset's decoder widths
            self.encoder = _CNNEncoder(in_chans, width)
        self.decoder = CNNDecoder(width, self.encoder.skip_channels[::-1], dc, 1, convs)
        r = len(cfg.radiomics_features)
        # no batch norm in the head: the samples' RLAR directions stay separate
        self.deep = nn.Sequential(nn.Linear(width, cfg.deep_dim), nn.GELU())
        self.radiomics = nn.Linear(width, r)  # regresses the standardised radiomics target
        self.classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.deep_dim + r, cfg.num_classes))

    def encode(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The shared latent ``z`` (B, C, H/16, W/16) and the skips at 1/2, 1/4, 1/8."""
        return self.encoder(x)

    def heads(self, z: Tensor, skips: list[Tensor]) -> dict[str, Tensor]:
        """Both task heads on ``z``: ``nodule_logits`` (B, 1, H, W), ``tirads_logits`` (B, K), ``radiomics`` (B, R)."""
        _, seg = self.decoder(z, skips[::-1])
        pooled = z.mean(dim=(2, 3))  # (B, C)
        e_rad = self.radiomics(pooled)  # (B, R)
        logits = self.classifier(torch.cat([self.deep(pooled), e_rad], dim=1))  # (B, K)
        return {"nodule_logits": seg, "tirads_logits": logits, "radiomics": e_rad}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Args: x (B, C, H, W). Returns :meth:`heads`' dict plus ``z``."""
        z, skips = self.encode(x)
        return {"z": z, **self.heads(z, skips)}

    def shared_parameters(self) -> list[nn.Parameter]:
        """The encoder's parameters (what PCGrad operates on)."""
        return list(self.encoder.parameters())


def build_tirads_model(cfg: TiradsConfig | dict[str, Any], image_size: int = 128, in_chans: int = 3) -> TiradsNet:
    """:class:`TiradsNet` from a config or a dict of its fields (as stored in checkpoints)."""
    if isinstance(cfg, dict):
        cfg = tirads_config(**cfg)
    return TiradsNet(cfg, image_size, in_chans)
