"""The structure every model in the library returns.

SSMT-Net and the baselines share one output type so that losses, metrics, training loops and
notebooks never branch on the model. Fields a model does not produce stay ``None``.
Logits are pre-sigmoid; a map's probability is ``logits.sigmoid()``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch.nn.functional as F
from torch import Tensor


class QueryPrediction:
    """One prediction of a query decoder (eq. 4, 7-8): from the raw queries or after a layer.

    Args:
        class_logits: (B, N, K+1), last column = no-object.
        mask_logits: (B, N, H, W) mask logits ``Z`` at full image resolution.

    :class:`ssmt_lib.query_decoder_fast.FactoredQueryPrediction` is the same interface with ``Z``
    kept as its two factors, formed only where it is used.
    """

    def __init__(self, class_logits: Tensor, mask_logits: Tensor) -> None:
        if class_logits.dim() != 3 or mask_logits.dim() != 4 or class_logits.shape[:2] != mask_logits.shape[:2]:
            raise ValueError(f"QueryPrediction: class_logits {tuple(class_logits.shape)} (B, N, K+1) and "
                             f"mask_logits {tuple(mask_logits.shape)} (B, N, H, W) do not fit")
        self.class_logits, self.mask_logits = class_logits, mask_logits

    @property
    def mask_size(self) -> tuple[int, int]:
        """(H, W) of the full-resolution masks."""
        return tuple(self.mask_logits.shape[-2:])

    def mask_logits_resized(self, size: tuple[int, int]) -> Tensor:
        """Mask logits bilinearly resized to ``size`` (align_corners=False), e.g. a feature level: (B, N, h, w)."""
        if tuple(size) == self.mask_size:
            return self.mask_logits
        return F.interpolate(self.mask_logits, size=size, mode="bilinear", align_corners=False)

    def on_grid(self, stride: int, offset: tuple[int, int]) -> "QueryPrediction":
        """The prediction on the pixel grid ``[..., oy::stride, ox::stride]`` (what the loss sees)."""
        oy, ox = offset
        return QueryPrediction(self.class_logits, self.mask_logits[..., oy::stride, ox::stride])


def predictions_on_grid(preds: list[QueryPrediction], stride: int, offset: tuple[int, int] = (0, 0)) -> list[QueryPrediction]:
    """The predictions restricted to the pixel grid ``[..., oy::stride, ox::stride]``.

    Mask2Former computes its mask losses on sampled points; a regular grid with a random offset
    (:func:`ssmt_lib.losses.query_loss`) does the same without an index tensor.

    Returns:
        Predictions whose masks are (B, N, ceil((H - oy) / s), ceil((W - ox) / s)).
    """
    oy, ox = offset
    if stride < 1 or not (0 <= oy < stride and 0 <= ox < stride):
        raise ValueError(f"grid stride {stride} with offset {offset}: need stride >= 1 and 0 <= offset < stride")
    return [p.on_grid(stride, offset) for p in preds]


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
