"""The structure every model in the library returns.

SSMT-Net and the baselines share one output type so that losses, metrics, training loops and
notebooks never branch on the model. Fields a model does not produce stay ``None``.
Logits are pre-sigmoid; a map's probability is ``logits.sigmoid()``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor


class QueryPrediction:
    """One prediction of a Transformer query decoder (eq. 7-9): raw queries or after a layer.

    Eq. 7's mask logits are a product, ``Z = einsum("bnd,bdhw->bnhw", mask_embed, pixel_embed)``
    (plus an optional per-query constant ``mask_bias``). The prediction keeps the factors and forms
    ``Z`` only where it is asked for: in full (``mask_logits``, computed on first use, then
    cached), on a regular subset of pixels (:func:`predictions_on_grid`, what the loss uses;
    Mask2Former also computes its mask losses on sampled points), or resized to a feature level
    (the next layer's eq. 6 mask). Because ``Z`` is linear in ``pixel_embed``, sampling or bilinear
    resizing the embedding first gives the same numbers as doing it to ``Z``, for a fraction of the
    work: the full-resolution ``Z`` of an intermediate layer is never formed in training. A
    prediction can also hold ready-made mask logits (tests, other decoders).

    Args:
        class_logits: (B, N, K+1), last column = no-object.
        mask_logits: (B, N, H, W) ready-made mask logits; or else give both factors:
        mask_embed: (B, N, D) per-query mask embedding.
        pixel_embed: (B, D, H, W) full-resolution per-pixel features it is dotted with.
        mask_bias: (B, N) added to every pixel of a query's mask; None = 0.
    """

    def __init__(self, class_logits: Tensor, mask_logits: Tensor | None = None, *,
                 mask_embed: Tensor | None = None, pixel_embed: Tensor | None = None,
                 mask_bias: Tensor | None = None) -> None:
        factored = mask_embed is not None and pixel_embed is not None
        partial = (mask_embed is None) != (pixel_embed is None)
        if partial or (mask_logits is not None) == factored:
            raise ValueError("QueryPrediction needs either mask_logits or both mask_embed and pixel_embed")
        if factored and (mask_embed.dim() != 3 or pixel_embed.dim() != 4 or mask_embed.shape[-1] != pixel_embed.shape[1]):
            raise ValueError(f"mask_embed {tuple(mask_embed.shape)} (B, N, D) does not fit pixel_embed "
                             f"{tuple(pixel_embed.shape)} (B, D, H, W)")
        if mask_bias is not None and (not factored or mask_bias.shape != mask_embed.shape[:2]):
            raise ValueError(f"mask_bias needs shape (B, N) = {tuple(mask_embed.shape[:2]) if factored else '?'} "
                             f"and the factored form, got {tuple(mask_bias.shape)}")
        self.class_logits = class_logits
        self.mask_embed, self.pixel_embed, self.mask_bias = mask_embed, pixel_embed, mask_bias
        self._mask_logits = mask_logits

    def _masks_from(self, pixel_embed: Tensor) -> Tensor:
        z = torch.einsum("bnd,bdhw->bnhw", self.mask_embed, pixel_embed)  # (B, N, h, w)
        return z if self.mask_bias is None else z + self.mask_bias[..., None, None]

    @property
    def mask_logits(self) -> Tensor:
        """(B, N, H, W) mask logits at full image resolution."""
        if self._mask_logits is None:
            self._mask_logits = self._masks_from(self.pixel_embed)
        return self._mask_logits

    @property
    def mask_size(self) -> tuple[int, int]:
        """(H, W) of the full-resolution masks."""
        src = self._mask_logits if self._mask_logits is not None else self.pixel_embed
        return tuple(src.shape[-2:])

    def mask_logits_resized(self, size: tuple[int, int]) -> Tensor:
        """Mask logits bilinearly resized to ``size`` (align_corners=False), e.g. a feature level.

        Returns:
            (B, N, h, w)
        """
        if tuple(size) == self.mask_size:
            return self.mask_logits
        if self._mask_logits is not None:
            return F.interpolate(self._mask_logits, size=size, mode="bilinear", align_corners=False)
        return self._masks_from(F.interpolate(self.pixel_embed, size=size, mode="bilinear", align_corners=False))


def predictions_on_grid(preds: list[QueryPrediction], stride: int, offset: tuple[int, int] = (0, 0)) -> list[QueryPrediction]:
    """The predictions restricted to the pixel grid ``[..., oy::stride, ox::stride]``.

    The T+1 predictions of one decoder share their pixel embedding; it is sliced (and copied to a
    contiguous tensor) once, so its gradient gets one full-size buffer rather than one per prediction.

    Returns:
        Predictions whose masks are (B, N, ceil((H - oy) / s), ceil((W - ox) / s)).
    """
    oy, ox = offset
    if stride < 1 or not (0 <= oy < stride and 0 <= ox < stride):
        raise ValueError(f"grid stride {stride} with offset {offset}: need stride >= 1 and 0 <= offset < stride")
    sliced: dict[int, Tensor] = {}
    out = []
    for p in preds:
        if p.pixel_embed is None:
            out.append(QueryPrediction(p.class_logits, p.mask_logits[..., oy::stride, ox::stride]))
            continue
        key = id(p.pixel_embed)
        if key not in sliced:
            # contiguous once here, or every prediction's einsum would copy the strided slice
            sliced[key] = p.pixel_embed[..., oy::stride, ox::stride].contiguous()  # (B, D, h', w')
        out.append(QueryPrediction(p.class_logits, mask_embed=p.mask_embed, pixel_embed=sliced[key], mask_bias=p.mask_bias))
    return out


@dataclass
class ModelOutput:
    """What ``model(images)`` returns. Keys also work dict-style: ``out["nodule_logits"]``."""

    nodule_logits: Tensor | None = None  # (B, 1, H, W) reported nodule map (None when not run, e.g. phase 1)
    gland_logits: Tensor | None = None  # (B, 1, H, W) the reported gland map
    recon: Tensor | None = None  # (B, C, H, W) reconstructed (normalized) image
    size: Tensor | None = None  # (B,) predicted nodule area / image area, in [0, 1]
    nodule_aux_logits: Tensor | None = None  # (B, 1, H, W) CNN decoder's auxiliary head
    gland_aux_logits: Tensor | None = None  # (B, 1, H, W)
    nodule_queries: list[QueryPrediction] | None = None  # T+1 predictions, deep supervision
    gland_queries: list[QueryPrediction] | None = None
    attentions: dict[str, Tensor] = field(default_factory=dict)  # filled when weights are requested

    def __getitem__(self, key: str):
        return getattr(self, key)

    def keys(self) -> list[str]:
        """Names of the fields that hold a value."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def logits(self, task: str) -> Tensor | None:
        """Reported logits of ``task`` ("nodule" or "gland")."""
        return getattr(self, f"{task}_logits")

    def aux_logits(self, task: str) -> Tensor | None:
        return getattr(self, f"{task}_aux_logits")

    def queries(self, task: str) -> list[QueryPrediction] | None:
        return getattr(self, f"{task}_queries")
