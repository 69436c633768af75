"""The structure every model in the library returns.

SSMT-Net and the baselines share one output type so that losses, metrics, training loops and
notebooks never branch on the model. Fields a model does not produce stay ``None``.
Logits are pre-sigmoid; a map's probability is ``logits.sigmoid()``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from torch import Tensor


@dataclass
class QueryPrediction:
    """One prediction of a Transformer query decoder (eq. 8-9): raw queries or after a layer."""

    class_logits: Tensor  # (B, N, K+1), last column = no-object
    mask_logits: Tensor  # (B, N, H, W) at full image resolution


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
