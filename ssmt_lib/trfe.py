"""MT-Net and TRFE-Net, the multi-task baselines with a thyroid region prior.

Gong et al., "Multi-task learning for thyroid nodule segmentation with thyroid region prior"
(ISBI 2021):

* :class:`MTNet` -- one shared U-Net encoder, two independent U-Net decoders (nodule, thyroid
  gland). The tasks share only the encoder.
* :class:`TRFENet` -- MT-Net plus a region-prior guidance (RPG) module that feeds the gland decoder
  into the nodule decoder at the 1/8, 1/4 and 1/2 levels, so non-thyroid look-alikes (vessels,
  trachea) are suppressed. Variants "A", "B", "C" are documented on :class:`RegionPriorGuidance`.
  Training loss (paper and reference code): nodule Dice + ``TRFE_GLAND_WEIGHT`` x gland Dice, with
  batches that interleave nodule (TN3K) and gland (TG3K) images, each image contributing only to
  the task it is labelled for.

The encoder and decoders are :mod:`ssmt_lib.unet`'s. Build these models by name with
:func:`ssmt_lib.baselines.build_baseline`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmt_lib.outputs import ModelOutput
from ssmt_lib.unet import UNetDecoder, UNetEncoder, check_images

# TRFE-Net loss: L = Dice(nodule) + TRFE_GLAND_WEIGHT * Dice(gland) (Gong et al. 2021; the reference
# train.py weights every gland sample's Dice by 0.5). The training code reads this constant.
TRFE_GLAND_WEIGHT: float = 0.5

GUIDANCE_VARIANTS = ("A", "B", "C")  # the region-prior guidance variants (see RegionPriorGuidance)


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
        check_images(images, self.in_chans, self.stride, type(self).__name__)
        nodule, gland = self.decode(self.encoder(images))
        return ModelOutput(nodule_logits=nodule, gland_logits=gland)

    def decode(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Both decoders on the shared encoder maps, independently (no guidance).

        Args:
            feats: the encoder maps, fine to coarse (:class:`~ssmt_lib.unet.UNetEncoder`).

        Returns:
            nodule and gland logits, each (B, 1, H, W).
        """
        nodule, _ = self.nodule_decoder(feats)
        gland, _ = self.gland_decoder(feats)
        return nodule, gland


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

    def decode(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """As :meth:`MTNet.decode`, but the gland decoder runs first and its level maps and probability
        map guide the nodule decoder (:class:`RegionPriorGuidance`)."""
        gland, gland_levels = self.gland_decoder(feats)
        gland_prob = gland.sigmoid()  # (B, 1, H, W) thyroid-region prior
        nodule, _ = self.nodule_decoder(feats, guide=lambda i, x: self.guidance(i, x, gland_levels[i], gland_prob))
        return nodule, gland
