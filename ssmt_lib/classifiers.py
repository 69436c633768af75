"""Benign/malignant classifiers of the dual-stage paper (Sec. 3.4, Table 1), built from torchvision/timm.

The paper classifies each ultrasound image as benign or malignant (eq. 2-4) with transfer-learned
CNNs: VGG16 (its main model, Sec. 3.4.3), VGG19, ResNet18, ResNet34, AlexNet and a hybrid
ResNet18-Transformer; two-class softmax (eq. 8), cross-entropy (eq. 9), Adam (Sec. 3.4.9), input
z-scored per image (eq. 1: ``(I - mu) / sigma``). Here:

* ``vgg16``, ``vgg19``: torchvision's ``VGG`` on ``make_layers`` of the standard configurations D
  and E; the fully connected classifier keeps torchvision's layout (Linear-ReLU-Dropout x 2, then
  Linear), so torchvision ImageNet weights load into it.
* ``resnet18``, ``resnet34``: timm's ResNet (the same network and parameter names as torchvision's).
* ``alexnet``: torchvision's ``AlexNet``.
* ``resnet18_transformer``: the hybrid, whose details the paper does not give; ours: the ResNet18
  1/32 feature map, 1x1 projection to ``embed_dim``, one token per position plus a class token
  and learned position embeddings, a pre-norm ``nn.TransformerEncoder`` (``depth`` layers), and a
  linear head on the normalised class token.

Sizes are values (``CLASSIFIER_PRESETS``): ``"paper"`` = the published networks at 224 px;
``"tiny"`` = the same structures narrowed for a 2-core CPU at 128 px (VGG stage widths 8..64 and a
128-wide classifier; ResNet stage widths 16..128 after the standard 64-wide stem; AlexNet keeps
torchvision's convolutions, which are cheap, with a 256-wide classifier; the hybrid on the tiny
ResNet18 with 64-wide, 2-layer attention).
Every model returns logits (B, num_classes); ``model.cam_layer`` is the last convolutional block
(Grad-CAM, :mod:`ssmt_lib.viz.cam`); ``model.config`` the :class:`ClassifierConfig` for checkpoints.

**Pretrained weights only from a local file** (``pretrained_file``): nothing is downloaded. Download
the ImageNet weights yourself (torchvision's ``vgg16-397923af.pth``, ``resnet18-f37072fd.pth``, ...,
or timm's ``resnet18`` ``.safetensors``) and pass the path; the ImageNet head (1000 classes) is
dropped, every other tensor must fit (``paper`` size), otherwise the error names the file.
"""
from __future__ import annotations

import os
import typing
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from ssmt_lib.config import check_used_fields, coerce_overrides, coerce_value

CLASSIFIER_NAMES = ("vgg16", "vgg19", "resnet18", "resnet34", "alexnet", "resnet18_transformer")
SIZES = ("tiny", "paper")
_VGG_CFG = {"vgg16": [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"],  # x width
            "vgg19": [1, 1, "M", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M"]}
_HEADS = {"vgg16": "classifier.6.", "vgg19": "classifier.6.", "alexnet": "classifier.6.", "resnet18": "fc.",
          "resnet34": "fc.", "resnet18_transformer": "head."}  # parameters a pretrained file does not provide


@dataclass
class ClassifierConfig:
    """One classifier. Fields a model does not read must keep their defaults (validated)."""

    name: str = "resnet18"  # one of CLASSIFIER_NAMES
    size: str = "paper"  # the preset these values came from ("tiny" / "paper"); recorded, not read
    image_size: int = 224  # input side in pixels (multiple of 32)
    num_classes: int = 2  # benign, malignant (softmax, eq. 8)
    width: int = 64  # first-stage width, doubled per stage (VGG 64..512, ResNet 64..512); not alexnet
    head_width: int = 4096  # hidden width of the fully connected classifier (vgg, alexnet)
    dropout: float = 0.5  # dropout in the fully connected classifier (vgg, alexnet; torchvision's)
    input_norm: str = "zscore"  # "zscore": eq. 1 per image (over C, H, W); "none": use the input as is
    class_weight: str = "balanced"  # cross-entropy class weights: "balanced" (n / (2 n_c)) or "none"
    pretrained_file: str | None = None  # local ImageNet weights (see module docstring); None = random init
    embed_dim: int = 256  # hybrid: token width after the 1x1 projection
    depth: int = 4  # hybrid: Transformer encoder layers
    num_heads: int = 8  # hybrid: attention heads
    attn_dropout: float = 0.1  # hybrid: dropout inside the Transformer layers


_MODEL_FIELDS = {"vgg16": {"width", "head_width", "dropout"}, "vgg19": {"width", "head_width", "dropout"},
                 "resnet18": {"width"}, "resnet34": {"width"}, "alexnet": {"head_width", "dropout"},
                 "resnet18_transformer": {"width", "embed_dim", "depth", "num_heads", "attn_dropout"}}
_COMMON = {"name", "size", "image_size", "num_classes", "input_norm", "class_weight", "pretrained_file"}

CLASSIFIER_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {n: {"image_size": 224} for n in CLASSIFIER_NAMES},
    "tiny": {
        "vgg16": {"image_size": 128, "width": 8, "head_width": 128},
        "vgg19": {"image_size": 128, "width": 8, "head_width": 128},
        "resnet18": {"image_size": 128, "width": 16},
        "resnet34": {"image_size": 128, "width": 16},
        "alexnet": {"image_size": 128, "head_width": 256},
        "resnet18_transformer": {"image_size": 128, "width": 16, "embed_dim": 64, "depth": 2, "num_heads": 2},
    },
}


def validate_classifier_config(cfg: ClassifierConfig) -> ClassifierConfig:
    """Raise if ``cfg`` names an unknown model, sets a field its model ignores, or cannot be built."""
    if cfg.name not in CLASSIFIER_NAMES:
        raise KeyError(f"unknown classifier {cfg.name!r}; choose one of {list(CLASSIFIER_NAMES)}")
    check_used_fields(cfg, "classifier", _COMMON, _MODEL_FIELDS)
    if cfg.size not in SIZES:
        raise ValueError(f"classifier config size={cfg.size!r}; choose one of {SIZES}")
    if cfg.image_size < 64 or cfg.image_size % 32:
        raise ValueError(f"classifier config image_size={cfg.image_size} must be a multiple of 32, >= 64")
    if cfg.num_classes < 2 or cfg.width < 1 or cfg.head_width < 1 or not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"classifier config needs num_classes >= 2, width and head_width >= 1, dropout in [0, 1); "
                         f"got {cfg.num_classes}, {cfg.width}, {cfg.head_width}, {cfg.dropout}")
    if cfg.input_norm not in ("zscore", "none") or cfg.class_weight not in ("balanced", "none"):
        raise ValueError(f"classifier config input_norm must be 'zscore'/'none' and class_weight 'balanced'/'none', "
                         f"got {cfg.input_norm!r}, {cfg.class_weight!r}")
    if cfg.embed_dim % cfg.num_heads:
        raise ValueError(f"classifier config embed_dim={cfg.embed_dim} must divide by num_heads={cfg.num_heads}")
    if cfg.pretrained_file is not None and not os.path.isfile(cfg.pretrained_file):
        raise FileNotFoundError(f"classifier config pretrained_file {cfg.pretrained_file!r} does not exist")
    return cfg


def make_classifier_config(name: str, size: str = "tiny", **overrides: Any) -> ClassifierConfig:
    """Validated configuration of a named classifier at a preset size, with field overrides.

    Args:
        name: one of ``CLASSIFIER_NAMES``.
        size: ``"tiny"`` (CPU) or ``"paper"``.
        **overrides: :class:`ClassifierConfig` fields (``pretrained_file=...``, ``class_weight="none"``).
    """
    if size not in SIZES:
        raise ValueError(f"unknown classifier size {size!r}; choose one of {SIZES}")
    if name not in CLASSIFIER_NAMES:
        raise KeyError(f"unknown classifier {name!r}; choose one of {list(CLASSIFIER_NAMES)}")
    overrides = coerce_overrides(ClassifierConfig, "classifier", overrides, reserved=("name", "size"))
    values = {**CLASSIFIER_PRESETS[size][name], **overrides}
    return validate_classifier_config(ClassifierConfig(name=name, size=size, **values))


# ----------------------------------------------------------------------------------------------
# weights from a local file


def load_local_weights(module: nn.Module, path: str | os.PathLike, skip_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Load a state dict from a local ``.pth``/``.pt``/``.safetensors`` file into ``module``.

    Args:
        module: the network (or its encoder) to fill.
        path: the file; never downloaded.
        skip_prefixes: parameter names (prefixes) that stay randomly initialised (a new head).

    Returns:
        The keys of the file that were not used (the old head, for instance).

    Raises:
        FileNotFoundError / ValueError naming the file when it is missing, unreadable, or does not
        provide every parameter outside ``skip_prefixes`` with the right shape.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file {path} does not exist")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file
        raise ValueError(f"cannot read pretrained weights {path}: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    own = module.state_dict()
    wanted = {k for k in own if not k.startswith(skip_prefixes)}
    missing = sorted(wanted - set(state))
    wrong = sorted(k for k in wanted & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or wrong:
        raise ValueError(f"pretrained weights {path} do not fit {type(module).__name__}: "
                         f"{len(missing)} missing (e.g. {missing[:3]}), {len(wrong)} of another shape "
                         f"(e.g. {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:2]]}); "
                         f"pretrained weights fit the 'paper' size only")
    module.load_state_dict({k: state[k] for k in wanted}, strict=False)
    return sorted(set(state) - wanted)


# ----------------------------------------------------------------------------------------------
# models


def _fc_head(in_features: int, hidden: int, num_classes: int, dropout: float, dropout_first: bool) -> nn.Sequential:
    """torchvision's VGG (Linear-ReLU-Dropout x 2, Linear) or AlexNet (Dropout first) classifier layout."""
    if dropout_first:  # AlexNet: Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                             nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                             nn.Linear(hidden, num_classes))
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


def _resnet(name: str, width: int, num_classes: int) -> nn.Module:
    """timm ResNet18/34 with stage widths (w, 2w, 4w, 8w); the plain 7x7 stem stays 64 wide (timm, torchvision)."""
    return timm.create_model(name, pretrained=False, num_classes=num_classes,
                             channels=tuple(width * 2**i for i in range(4)))


class ResNetTransformer(nn.Module):
    """The hybrid of Table 1: ResNet18 feature map -> tokens -> Transformer encoder -> class token.

    Args:
        width: ResNet18 first-stage width.
        embed_dim, depth, num_heads, attn_dropout: the Transformer encoder.
        num_classes: output classes.
        grid: tokens per side at the configured image size (image_size / 32).
    """

    def __init__(self, width: int, embed_dim: int, depth: int, num_heads: int, attn_dropout: float,
                 num_classes: int, grid: int) -> None:
        super().__init__()
        self.backbone = _resnet("resnet18", width, 0)  # num_classes=0: no fc, forward_features gives layer4
        self.proj = nn.Conv2d(8 * width, embed_dim, 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, embed_dim) * 0.02)
        self.grid = grid
        layer = nn.TransformerEncoderLayer(embed_dim, num_heads, 4 * embed_dim, attn_dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def _positions(self, h: int, w: int) -> Tensor:
        """Position embeddings for an h x w token grid (bilinear resize of the learned grid)."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)  # (1, D, h, w)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)  # (1, 1 + h*w, D)

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: (B, 3, H, W).

        Returns:
            logits (B, num_classes).
        """
        f = self.proj(self.backbone.forward_features(x))  # (B, D, H/32, W/32)
        b, _, h, w = f.shape
        tokens = f.flatten(2).transpose(1, 2)  # (B, h*w, D)
        z = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1) + self._positions(h, w)  # (B, 1+h*w, D)
        return self.head(self.norm(self.encoder(z))[:, 0])  # (B, num_classes)


class Classifier(nn.Module):
    """Eq. 1 input normalisation, then one of the Table 1 networks; ``forward`` returns logits (B, K).

    Args:
        cfg: a validated :class:`ClassifierConfig` (``make_classifier_config``).
    """

    task = "classify"

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        validate_classifier_config(cfg)
        self.config = cfg
        k, w = cfg.num_classes, cfg.width
        if cfg.name in _VGG_CFG:
            layers = torchvision.models.vgg.make_layers([v if v == "M" else v * w for v in _VGG_CFG[cfg.name]])
            self.net = torchvision.models.VGG(layers, num_classes=k, init_weights=True)
            self.net.classifier = _fc_head(8 * w * 49, cfg.head_width, k, cfg.dropout, dropout_first=False)
            self.cam_layer = self.net.features[-2]  # ReLU after the last conv (1/16)
        elif cfg.name == "alexnet":
            self.net = torchvision.models.AlexNet(num_classes=k, dropout=cfg.dropout)
            self.net.classifier = _fc_head(256 * 36, cfg.head_width, k, cfg.dropout, dropout_first=True)
            self.cam_layer = self.net.features[-2]  # ReLU after the fifth conv
        elif cfg.name in ("resnet18", "resnet34"):
            self.net = _resnet(cfg.name, w, k)
            self.cam_layer = self.net.layer4
        else:
            self.net = ResNetTransformer(w, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.attn_dropout, k,
                                         cfg.image_size // 32)
            self.cam_layer = self.net.backbone.layer4
        if cfg.pretrained_file is not None:
            target = self.net.backbone if cfg.name == "resnet18_transformer" else self.net
            skip = () if cfg.name == "resnet18_transformer" else (_HEADS[cfg.name],)
            load_local_weights(target, cfg.pretrained_file, skip)

    def forward(self, images: Tensor) -> Tensor:
        """Args:
            images: (B, 3, H, W), any normalisation (eq. 1 z-scores each image again).

        Returns:
            logits (B, num_classes); ``softmax(logits)[:, 1]`` is P(malignant).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.config.name} expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if self.config.input_norm == "zscore":
            mean = images.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
            std = images.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)  # (B, 1, 1, 1)
            images = (images - mean) / std
        return self.net(images)


def build_classifier(name: str, size: str = "tiny", **overrides: Any) -> Classifier:
    """``build_classifier("vgg16", size="paper", pretrained_file="vgg16-397923af.pth")``.

    Args:
        name: one of ``CLASSIFIER_NAMES``.
        size: ``"tiny"`` or ``"paper"``.
        **overrides: :class:`ClassifierConfig` fields.
    """
    return Classifier(make_classifier_config(name, size, **overrides))


def classifier_from_dict(values: dict[str, Any]) -> Classifier:
    """Rebuild a classifier from ``dataclasses.asdict(model.config)`` (what checkpoints store)."""
    hints = typing.get_type_hints(ClassifierConfig)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise KeyError(f"classifier config has unknown fields {unknown}")
    cfg = ClassifierConfig(**{k: coerce_value(f"classifier config {k}", v, hints[k]) for k, v in values.items()})
    return Classifier(cfg)


def class_weights(labels: torch.Tensor | list[int], num_classes: int = 2) -> Tensor:
    """Balanced cross-entropy weights ``n / (K n_c)`` (scikit-learn's "balanced"); all 1 when fewer than
    two classes are present (nothing to balance)."""
    y = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(y, minlength=num_classes).float()  # (K,)
    if int((counts > 0).sum()) < 2:
        return torch.ones(num_classes)
    w = y.numel() / (num_classes * counts.clamp_min(1))
    return torch.where(counts > 0, w, torch.ones_like(w))
