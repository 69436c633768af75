"""SSMT-Net: hybrid encoder + dual decoder (nodule, gland) + reconstructor + nodule-size head.

    image ──ResNet-50──► F_C (1/16) ─┐ 1x1 proj
            skips 1/2,1/4,1/8   │    ├─ sum ─► F_C+F_T (1/16) ┬─► CNN decoder_t (+skips) ─► aux logits
                                └ViT► F_T ─┘ 1x1 proj        │      └ levels 1/8,1/4,1/2,1/1 ─► query decoder_t ─► masks, classes
                                 │                           └─► reconstructor (no skips) ─► image   (eq. 11; loss eq. 13)
                                 └─ pooled tokens ─► size MLP ─► nodule area fraction   (eq. 10)

Every part is a switch in :class:`~ssmt_lib.config.ModelConfig` (Table 2 variants, query decoder
on/off, masked attention on/off, reported map, ``decoder_input``: fused map or F_T alone into the
segmentation decoders, ``class_token``). ``build_model`` is the single entry point for
SSMT-Net presets and the baselines.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn

from ssmt_lib.config import Config, ModelConfig, make_config
from ssmt_lib.decoders import CNNDecoder
from ssmt_lib.embed import EncoderFeatures, HybridEncoder
from ssmt_lib.heads import SizeHead
from ssmt_lib.outputs import ModelOutput
from ssmt_lib.query_decoder import QueryDecoder, argmax_probabilities, semantic_probabilities
from ssmt_lib.query_decoder_fast import FastQueryDecoder
from ssmt_lib.recording import record_attention

HEADS = ("nodule", "gland", "recon", "size")


def _proj(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class SSMTNet(nn.Module):
    """The full network.

    Args:
        cfg: model configuration (see ``ModelConfig``; ``make_config`` builds validated ones).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tasks: tuple[str, ...] = ("nodule", "gland") if cfg.gland else ("nodule",)
        self.encoder = HybridEncoder(cfg)
        self.proj_c = _proj(cfg.resnet_channels[-1], cfg.fusion_channels)  # F_C -> width
        self.proj_t = _proj(cfg.embed_dim, cfg.fusion_channels)  # F_T -> width
        skips = self.encoder.skip_channels[::-1]  # decoders consume 1/8, 1/4, 1/2
        dc = cfg.decoder_channels
        self.cnn_decoders = nn.ModuleDict({t: CNNDecoder(cfg.fusion_channels, skips, dc, 1, cfg.decoder_convs) for t in self.tasks})
        self.query_decoders = nn.ModuleDict()
        if cfg.use_query_decoder:
            sizes = dict(level_channels=dc[:3], pixel_channels=dc[3], dim=cfg.query_dim, num_heads=cfg.query_heads,
                         ffn=cfg.query_ffn, mask_dim=cfg.mask_dim, num_queries=cfg.num_queries,
                         num_layers=cfg.query_layers, num_classes=cfg.num_classes, masked=cfg.masked_attention,
                         fused=cfg.fused_attn)
            for t in self.tasks:  # the plain form unless a speed-up is switched on (same parameters)
                if cfg.cross_attention_on_tokens or cfg.factored_masks:
                    self.query_decoders[t] = FastQueryDecoder(**sizes, on_tokens=cfg.cross_attention_on_tokens,
                                                              factored=cfg.factored_masks)
                else:
                    self.query_decoders[t] = QueryDecoder(**sizes)
        self.reconstructor = CNNDecoder(cfg.fusion_channels, (), cfg.recon_channels, cfg.in_chans,
                                        cfg.decoder_convs) if cfg.reconstruction else None
        self.size_head = SizeHead(cfg.embed_dim, cfg.size_hidden) if cfg.size else None

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads this configuration has, in ``HEADS`` order."""
        return self.tasks + (("recon",) if self.reconstruction_enabled else ()) + (("size",) if self.size_head else ())

    @property
    def reconstruction_enabled(self) -> bool:
        return self.reconstructor is not None

    def forward_features(self, x: Tensor) -> tuple[EncoderFeatures, Tensor]:
        """Encoder pass (ResNet once, then ViT) and the merged map ``proj(F_C) + proj(F_T)`` (B, C, H/16, W/16)."""
        feats = self.encoder(x)
        return feats, self.proj_c(feats.f_c) + self.proj_t(feats.f_t)

    def forward_task(self, task: str, feats: EncoderFeatures, merged: Tensor) -> dict[str, Any]:
        """CNN decoder and (if on) query decoder of one task; returns logits, aux logits, query predictions."""
        levels, aux = self.cnn_decoders[task](merged, feats.skips[::-1])
        preds = self.query_decoders[task](levels[:3], levels[3]) if task in self.query_decoders else None
        mode = self.cfg.output_mode
        if preds is None or mode == "cnn":
            logits = aux
        else:
            infer = semantic_probabilities if self.cfg.inference == "soft" else argmax_probabilities  # eq. 9
            p = infer(preds[-1])[:, :1].clamp(1e-4, 1 - 1e-4)  # (B, 1, H, W)
            logits = torch.logit(p)
            if mode == "sum":
                logits = logits + aux
        return {"logits": logits, "aux": aux, "queries": preds}

    def forward(self, x: Tensor, heads: Iterable[str] | None = None, return_attention: bool = False) -> ModelOutput:
        """Args:
            x: images (B, C, H, W), H and W multiples of 16.
            heads: subset of ``self.heads`` to run (e.g. ``("recon",)`` in phase 1); None = all.
            return_attention: also return every attention map (explicit softmax path, slower).

        Returns:
            ``ModelOutput``; heads not run stay None.
        """
        wanted = self.heads if heads is None else tuple(heads)
        unknown = set(wanted) - set(self.heads)
        if unknown:
            raise ValueError(f"heads {sorted(unknown)} are not enabled in this model; it has {self.heads}")
        if return_attention:
            with record_attention(self) as maps:
                out = self.forward(x, heads=wanted)
            out.attentions = dict(maps)
            return out
        feats, merged = self.forward_features(x)  # merged = proj(F_C) + proj(F_T), eq. 11's input
        # model.decoder_input: the segmentation decoders read F_C + F_T ("fused") or F_T alone (TransUNet)
        seg_in = merged if self.cfg.decoder_input == "fused" else self.proj_t(feats.f_t)
        out = ModelOutput()
        for task in self.tasks:
            if task in wanted:
                r = self.forward_task(task, feats, seg_in)
                setattr(out, f"{task}_logits", r["logits"])
                setattr(out, f"{task}_aux_logits", r["aux"])
                setattr(out, f"{task}_queries", r["queries"])
        if "recon" in wanted:
            out.recon = self.reconstructor(merged)[1]
        if "size" in wanted:
            out.size = self.size_head(feats.tokens, feats.prefix)
        return out


def build_model(name: str | None = None, variant: str | None = None, config: Config | ModelConfig | None = None,
                *, preset: str | None = None, **overrides: Any) -> nn.Module:
    """Build SSMT-Net from a preset (+ Table 2 variant + overrides), or a baseline by name.

    Args:
        name: "paper" / "tiny" for SSMT-Net (default "tiny"), or a baseline name: "unet", "resnet50_unet", "mtnet", "trfe";
            or a dual-stage paper model: a classifier (``classifiers.CLASSIFIER_NAMES``: "vgg16", "resnet18",
            ...; returns logits) or a Table 2 segmenter (``segmenters.SEGMENTER_NAMES``: "vgg16_unet", ...);
            their size is ``size="tiny"`` (default) or ``"paper"``.
        preset: the width preset, "tiny" or "paper": for a baseline or a dual-stage model its size
            (``build_model("trfe", preset="paper")`` is TRFE-Net at its paper's width, the same as
            ``size="paper"``); for SSMT-Net the same as ``name`` (``build_model(preset="paper")``).
        variant: Table 2 variant (e.g. "1_baseline", "5_all"); SSMT-Net only.
        config: a ready ``Config`` / ``ModelConfig`` (then ``name``, ``preset`` and overrides are not used).
        **overrides: config fields, e.g. ``num_queries=10`` or ``model__depth=4``; validated.

    Returns:
        an ``nn.Module`` whose ``forward(images)`` returns ``ModelOutput`` (classifiers: logits (B, 2)).
    """
    from ssmt_lib import baselines, classifiers, segmenters
    from ssmt_lib.config import PRESETS

    if name is None or name in PRESETS:  # SSMT-Net: name and preset name the same preset
        if name is not None and preset is not None and preset != name:
            raise ValueError(f"build_model: name={name!r} and preset={preset!r} name different SSMT-Net presets")
        name = name or preset or "tiny"
    elif preset is not None:  # a baseline's or dual-stage model's width
        if overrides.get("size", preset) != preset:
            raise ValueError(f"build_model: preset={preset!r} and size={overrides['size']!r} disagree")
        overrides["size"] = preset
    if name in classifiers.CLASSIFIER_NAMES or name in segmenters.SEGMENTER_NAMES:  # dual-stage paper
        if config is not None or variant is not None:
            raise ValueError(f"config and variant apply to SSMT-Net presets, not to {name!r}")
        build = classifiers.build_classifier if name in classifiers.CLASSIFIER_NAMES else segmenters.build_segmenter
        return build(name, **overrides)
    if config is not None:
        if overrides or variant:
            raise ValueError("build_model: pass either config or preset/variant/overrides, not both")
        return SSMTNet(config.model if isinstance(config, Config) else config)
    if name in baselines.BASELINE_NAMES or name in baselines.ALIASES:
        if variant is not None:
            raise ValueError(f"variant applies to SSMT-Net presets, not to baseline {name!r}")
        return baselines.build_baseline(name, **overrides)
    return SSMTNet(make_config(name, variant=variant, **overrides).model)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts per top-level child and in total."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
