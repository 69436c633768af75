"""Architecture map of SSMT-Net: its blocks, the paper equation each implements, and where it lives.

Farooq et al., *Anatomy-Guided Representation Learning Using a Transformer-Based Network for Thyroid
Nodule Segmentation in Ultrasound Images* (arXiv 2512.12662), Sec. 2 and its Fig. 1: a hybrid
ResNet-50 + ViT encoder (Sec. 2.2, eq. 1-3), the dual decoder of Sec. 2.3 (per task a CNN U-Net
decoder and a query decoder with coarse-to-fine masked cross-attention, eq. 4-9), the nodule-size
estimator (Sec. 2.4, eq. 10), the reconstructor on ``F_C + F_T`` (Sec. 2.5, eq. 11) and the losses
(Sec. 2.6, eq. 12-13).

The map is data first: :data:`BLOCKS` lists every box (title, what it does, equation, the
``ssmt_lib`` module that implements it, position), :data:`ARROWS` the data flow between boxes, and
:func:`architecture_map` only draws them. ``tests/test_viz.py`` imports every module a box names,
so the map cannot point at code that is gone.
"""
from __future__ import annotations

from dataclasses import dataclass

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

# Box colours by role: encoder, decoders, reconstruction, heads, losses, groups.
COLORS = {
    "input": "#eeeeee",
    "encoder": "#cfe2f3",
    "fusion": "#d9d2e9",
    "decoder": "#fce5cd",
    "recon": "#d9ead3",
    "head": "#fff2cc",
    "loss": "#f4cccc",
    "group": "none",
}
PHASE1_EDGE = "#674ea7"  # outline of the blocks that phase 1 (reconstruction only) trains


@dataclass(frozen=True)
class Block:
    """One box of the map.

    Args:
        key: Short unique name (also the ``gid`` of the box and its text, for tests).
        title: Bold first line.
        detail: What the block computes, one or two short lines.
        equations: The paper's equation numbers (or section when it has no equation).
        module: The ``ssmt_lib`` module that implements it (importable).
        xy: Lower-left corner in map units (the map is 24 x 14 units).
        size: Width and height in map units.
        role: Key of :data:`COLORS`.
        phase1: Whether phase 1 (reconstruction only) trains it.
    """

    key: str
    title: str
    detail: str
    equations: str
    module: str
    xy: tuple[float, float]
    size: tuple[float, float]
    role: str
    phase1: bool = False

    @property
    def label(self) -> str:
        """The box's text: title, detail, then ``equations · module``."""
        return f"{self.title}\n{self.detail}\n{self.equations} · {self.module}"


# Groups are drawn first as dashed frames; their label sits on top of the frame.
GROUPS: tuple[Block, ...] = (
    Block("ssmtnet", "SSMTNet", "the assembled network (build_model)", "Sec. 2.1",
          "ssmt_lib.model", (2.9, 0.0), (17.2, 14.0), "group"),
    Block("encoder", "hybrid encoder (HybridEncoder)", "", "eq. 1-3", "ssmt_lib.embed",
          (3.2, 3.6), (5.0, 9.0), "group"),
    Block("nodule_decoder", "nodule decoder (primary task)", "", "Sec. 2.3", "ssmt_lib.model",
          (13.3, 9.2), (6.5, 4.2), "group"),
    Block("gland_decoder", "gland decoder (auxiliary task)", "", "Sec. 2.3", "ssmt_lib.model",
          (13.3, 4.7), (6.5, 4.2), "group"),
)

BLOCKS: tuple[Block, ...] = (
    Block("input", "image x", "H x W x 3\n(grey, 3 channels)", "Sec. 2.2", "ssmt_lib.data",
          (0.2, 7.0), (2.3, 2.0), "input"),
    Block("resnet", "ResNet-50 (stages 3, 4, 9)", "F_C at 1/16;\nskips at 1/2, 1/4, 1/8",
          "Sec. 2.2", "ssmt_lib.embed", (3.5, 8.7), (4.4, 2.6), "encoder", phase1=True),
    Block("vit", "ViT-B: tokens + 12 layers",
          "patch 1 on F_C, + E_pos;\nMSA, MLP (pre-norm) -> F_T", "eq. 1-3",
          "ssmt_lib.embed", (3.5, 4.0), (4.4, 2.9), "encoder", phase1=True),
    Block("fusion", "fusion", "proj(F_C) + proj(F_T)\none 1/16 map", "eq. 11", "ssmt_lib.model",
          (9.4, 6.3), (3.4, 2.4), "fusion", phase1=True),
    Block("nodule_cnn", "CNN decoder (U-Net cup)", "up x2 + skip, 1/16 -> 1/1; aux logits",
          "Sec. 2.3", "ssmt_lib.decoders", (13.6, 11.3), (5.9, 1.6), "decoder"),
    Block("nodule_query", "query decoder",
          "masked cross-attn 1/8 -> 1/4 -> 1/2;\nmasks Z_t, classes O", "eq. 4-9",
          "ssmt_lib.query_decoder", (13.6, 9.4), (5.9, 1.7), "decoder"),
    Block("gland_cnn", "CNN decoder (U-Net cup)", "up x2 + skip, 1/16 -> 1/1; aux logits",
          "Sec. 2.3", "ssmt_lib.decoders", (13.6, 6.8), (5.9, 1.6), "decoder"),
    Block("gland_query", "query decoder",
          "masked cross-attn 1/8 -> 1/4 -> 1/2;\nmasks Z_t, classes O", "eq. 4-9",
          "ssmt_lib.query_decoder", (13.6, 4.9), (5.9, 1.7), "decoder"),
    Block("reconstructor", "reconstructor D_REC",
          "CNN cup without skips -> image\n(the only task of phase 1)",
          "eq. 11", "ssmt_lib.decoders", (13.6, 2.3), (5.9, 2.0), "recon", phase1=True),
    Block("size", "size head", "V = sigmoid(MLP(f)), 768-256-128-64-1\non pooled ViT tokens",
          "eq. 10", "ssmt_lib.heads", (13.6, 0.3), (5.9, 1.7), "head"),
    Block("losses", "losses", "L_nodule, L_gland: Dice scale\n(Hungarian matching)\nL_size: MSE\n"
          "L_rec: Charbonnier (eq. 13)\nL = α L_n + β L_g + γ L_s + η L_r", "eq. 12-13",
          "ssmt_lib.losses", (20.5, 4.0), (3.4, 6.0), "loss"),
)

# (from, to, label, style): "-" data, "--" skips, ":" into the losses.
ARROWS: tuple[tuple[str, str, str, str], ...] = (
    ("input", "resnet", "", "-"),
    ("resnet", "vit", "F_C", "-"),
    ("resnet", "fusion", "F_C", "-"),
    ("vit", "fusion", "F_T", "-"),
    ("fusion", "nodule_cnn", "", "-"),
    ("fusion", "gland_cnn", "", "-"),
    ("fusion", "reconstructor", "", "-"),
    ("resnet", "nodule_cnn", "skips 1/2, 1/4, 1/8 (to both CNN decoders)", "--"),
    ("nodule_cnn", "nodule_query", "levels", "-"),
    ("gland_cnn", "gland_query", "levels", "-"),
    ("vit", "size", "tokens", "-"),
    ("nodule_query", "losses", "", ":"),
    ("gland_query", "losses", "", ":"),
    ("reconstructor", "losses", "", ":"),
    ("size", "losses", "", ":"),
)


def _anchor(block: Block, toward: Block) -> tuple[float, float]:
    """The middle of the side of ``block`` that faces ``toward``."""
    (x, y), (w, h) = block.xy, block.size
    cy = y + h / 2
    tx = toward.xy[0] + toward.size[0] / 2
    ty = toward.xy[1] + toward.size[1] / 2
    level = min(max(ty, y + 0.3), y + h - 0.3)  # level with the target where the sides overlap
    if toward.xy[0] >= x + w:  # target to the right
        return x + w, level
    if toward.xy[0] + toward.size[0] <= x:  # target to the left
        return x, level
    return min(max(tx, x + 0.3), x + w - 0.3), (y if ty < cy else y + h)  # above or below


def architecture_map(fontsize: float = 7.5) -> Figure:
    """Draw SSMT-Net's blocks with their paper equations and implementing modules.

    Args:
        fontsize: Size of the box text in points; the figure is 12 x 7 inches (notebook width).

    Returns:
        A matplotlib ``Figure``; every box is a ``FancyBboxPatch`` and its text a ``Text``,
        both with ``gid`` = the block's key.
    """
    fig = Figure(figsize=(12, 7), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(0, 24)
    ax.set_ylim(-0.9, 14.6)
    ax.set_axis_off()
    for g in GROUPS:
        (x, y), (w, h) = g.xy, g.size
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05,rounding_size=0.2",
                                    fill=False, linestyle="--", edgecolor="0.5", gid=g.key))
        ax.text(x + 0.15, y + h - 0.1, f"{g.title} · {g.equations} · {g.module}", gid=g.key,
                ha="left", va="top", fontsize=fontsize, color="0.3", style="italic")
    boxes = {b.key: b for b in BLOCKS}
    for b in BLOCKS:
        (x, y), (w, h) = b.xy, b.size
        edge = PHASE1_EDGE if b.phase1 else "0.25"
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05,rounding_size=0.15",
                                    facecolor=COLORS[b.role], edgecolor=edge,
                                    linewidth=2.0 if b.phase1 else 1.0, gid=b.key))
        head, *rest = b.label.split("\n")
        ax.text(x + w / 2, y + h - 0.2, head, ha="center", va="top", fontsize=fontsize + 0.5,
                weight="bold", gid=f"{b.key}:title")
        ax.text(x + w / 2, y + (h - 0.45) / 2, "\n".join(rest), ha="center", va="center",
                fontsize=fontsize, gid=b.key, linespacing=1.25)  # centred below the title
    for src, dst, label, style in ARROWS:
        a, b = boxes[src], boxes[dst]
        start, end = _anchor(a, b), _anchor(b, a)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10,
                                     linestyle=style, color="0.35", linewidth=1.0,
                                     connectionstyle="arc3,rad=0.0", shrinkA=2, shrinkB=2))
        if label:
            mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
            ax.text(mx, my, label, fontsize=fontsize - 0.5, ha="center", va="center",
                    color="0.2", bbox=dict(facecolor="white", edgecolor="none", pad=0.5))
    ax.text(0.2, -0.6, "purple outline: trained in phase 1 (reconstruction only, Sec. 2.6); "
            "phase 2 trains every block. Dashed arrows: ResNet skips. "
            "Equations: Farooq et al., arXiv 2512.12662.", fontsize=fontsize, ha="left",
            va="center", color="0.25")
    return fig
