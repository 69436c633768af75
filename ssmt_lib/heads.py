"""Small heads of SSMT-Net.

- ``MLP``: the mask-embedding MLP of eq. 7 (``MLP(LN(P_t))``) and the building block of the others.
- ``SizeHead``: nodule-size estimator (paper Sec. 2.4, eq. 10: ``V = sigmoid(MLP(f))``), an MLP
  768-256-128-64-1 with ReLU on mean-pooled ViT patch tokens, predicting nodule area / image area.
"""
from __future__ import annotations

import math

from torch import Tensor, nn


class MLP(nn.Sequential):
    """Linear layers with ReLU between them (none after the last).

    Args:
        widths: layer widths, input first, e.g. (768, 256, 128, 64, 1).
    """

    def __init__(self, widths: tuple[int, ...] | list[int]) -> None:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SizeHead(nn.Module):
    """Nodule area fraction from the ViT's patch tokens.

    Args:
        embed_dim: token width (768 for ViT-Base).
        hidden: hidden widths, (256, 128, 64) in the paper.
        prior: initial output (area fraction) before training.
    """

    def __init__(self, embed_dim: int, hidden: tuple[int, ...], prior: float = 0.05) -> None:
        super().__init__()
        self.mlp = MLP((embed_dim, *hidden, 1))
        # Start at a typical nodule area instead of sigmoid(0) = 0.5 (RetinaNet's prior-bias trick);
        # otherwise short runs spend their steps just walking the output down from 50% of the image.
        nn.init.constant_(self.mlp[-1].bias, math.log(prior / (1 - prior)))

    def forward(self, tokens: Tensor, prefix: int = 1) -> Tensor:
        """Args:
            tokens: (B, prefix + h*w, D), class token first (it is left out of the pooling).
            prefix: tokens before the patch grid (1: a class token; 0: none, the paper's eq. 1).

        Returns:
            (B,) area fraction in [0, 1].
        """
        pooled = tokens[:, prefix:].mean(dim=1)  # (B, D)
        return self.mlp(pooled).squeeze(-1).sigmoid()  # (B,)
