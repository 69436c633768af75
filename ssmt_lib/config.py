"""Configuration dataclasses and presets for SSMT-Net.

Like nanoGPT's ``GPTConfig``: every knob is a typed field with a comment, and a preset is just a
named set of field values (``PRESETS``), never a separate code path. ``make_config`` validates
overrides (unknown keys, wrong types, loss weights that break eq. 12's constraints) before any
work starts, so a typo in a notebook or papermill parameter fails loudly.

Table 2 of the paper (ablation variants) is the ``VARIANTS`` dict: each variant switches tasks on
or off in the same network.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

TASKS = ("nodule", "gland")


@dataclass
class ModelConfig:
    """Architecture of SSMT-Net (encoder, dual decoders, reconstructor, size head)."""

    # --- hybrid encoder (paper eq. 1-3; timm vit_base_r50_s16_224) ---
    image_size: int = 224  # input side in pixels; position embeddings are resized for other sizes
    in_chans: int = 3  # grey ultrasound replicated to 3 channels so ImageNet weights fit
    stem_channels: int = 64  # ResNet stem width (1/2 map, first skip)
    resnet_layers: tuple[int, ...] = (3, 4, 9)  # bottleneck blocks per ResNet-50 stage used by R50-ViT
    resnet_channels: tuple[int, ...] = (256, 512, 1024)  # stage outputs at 1/4, 1/8, 1/16
    norm_groups: int = 32  # GroupNorm groups in the ResNet (timm R50 uses 32; must divide every width)
    # "group": GroupNorm + weight-standardised convs, as timm's vit_base_r50_s16_224 (needed for its
    # weights); "batch": BatchNorm + plain convs, which train faster from scratch on a CPU budget
    resnet_norm: str = "group"
    embed_dim: int = 768  # ViT-Base token width
    depth: int = 12  # ViT-Base pre-norm Transformer layers
    num_heads: int = 12  # ViT-Base attention heads
    mlp_ratio: float = 4.0  # ViT FFN width / token width
    fused_attn: bool = True  # use SDPA when attention weights are not requested
    pretrained_file: str | None = None  # local timm checkpoint for vit_base_r50_s16_224; None = random init
    # timm's ViT prepends a class token (as vit_base_r50_s16_224 is pretrained); the paper's eq. 1 has
    # patch tokens only: False. No head reads the class token (F_T and the size head use the patches).
    class_token: bool = True

    # --- fusion of F_C (ResNet 1/16 map) and F_T (ViT tokens as a map) ---
    fusion_channels: int = 256  # both maps are projected to this width and summed
    # the CNN decoders' input: "fused" = proj(F_C) + proj(F_T), like the reconstructor (eq. 11);
    # "tokens" = proj(F_T) only, TransUNet's decoder input (the paper names F_C + F_T for eq. 11 only)
    decoder_input: str = "fused"

    # --- CNN decoder, one per task (TransUNet cup) ---
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16)  # widths at 1/8, 1/4, 1/2, 1/1
    decoder_convs: int = 2  # 3x3 conv-BN-ReLU per upsampling step, CNN decoders and reconstructor (TransUNet: 2)

    # --- Transformer query decoder, one per task (paper eq. 4-9) ---
    use_query_decoder: bool = True  # False = CNN decoder output only (TransUNet v1 style)
    masked_attention: bool = True  # eq. 6 masks on cross-attention; False = plain cross-attention
    # Speed-ups of the query decoder (ssmt_lib.query_decoder_fast): the same numbers as the plain form
    cross_attention_on_tokens: bool = True  # eq. 5 on the levels' raw tokens: keys and values never formed
    factored_masks: bool = True  # eq. 4/7 masks kept as factors, formed on the loss grid / eq. 6 level
    num_queries: int = 20  # N learnable queries per task
    query_layers: int = 3  # T decoder layers, one per CNN level (1/8, 1/4, 1/2), coarse to fine
    query_dim: int = 256  # d, query / key width and pixel-embedding width
    query_heads: int = 8  # heads in cross- and self-attention
    query_ffn: int = 2048  # FFN hidden width
    mask_dim: int = 64  # width of the full-resolution pixel embedding and mask MLP output (eq. 7)
    num_classes: int = 1  # K foreground classes per task (binary nodule or gland); +1 no-object
    output_mode: str = "transformer"  # reported map: "transformer", "cnn", or "sum" (logits added)
    # How the query decoder's map is formed: "soft" = sum over queries of softmax(class) x
    # sigmoid(mask) (Mask2Former's semantic inference); "argmax" = the paper's eq. 9: the masks of the
    # queries whose argmax class is foreground, united (query_decoder.argmax_probabilities)
    inference: str = "soft"

    # --- tasks (the Table 2 switches) ---
    gland: bool = True  # gland decoder (multi-task)
    reconstruction: bool = True  # reconstructor path (phase 1 and the rec loss)
    size: bool = True  # nodule-size estimator
    recon_channels: tuple[int, ...] = (128, 64, 32, 16)  # reconstructor widths at 1/8 .. 1/1, no skips
    size_hidden: tuple[int, ...] = (256, 128, 64)  # size MLP: embed_dim -> 256 -> 128 -> 64 -> 1

    # --- baselines (fit's model_name) ---
    baseline_size: str = "paper"  # width of a baseline: "paper" (its paper's) or "tiny"; make_config: the preset


@dataclass
class LossConfig:
    """Eq. 12: L = alpha L_nodule + beta L_gland + gamma L_size + eta L_rec."""

    alpha: float = 0.8  # nodule segmentation weight
    beta: float = 0.1  # gland segmentation weight
    gamma: float = 0.05  # nodule-size regression weight
    eta: float = 0.05  # reconstruction (Charbonnier, eq. 13) weight
    charbonnier_eps: float = 1e-6  # epsilon of eq. 13
    matching: str = "hungarian"  # "hungarian" (per prediction) or "fixed" (query i <-> class i)
    cost_class: float = 2.0  # Mask2Former matching / loss weight of the class term
    cost_bce: float = 5.0  # Mask2Former weight of the mask BCE term
    cost_dice: float = 5.0  # Mask2Former weight of the mask Dice term
    no_object_weight: float = 0.1  # class weight of "no object" in the query cross-entropy
    aux_weight: float = 1.0  # weight of the CNN auxiliary head's BCE+Dice inside L_nodule / L_gland
    # Scale of L_nodule / L_gland (paper Sec. 2.6: "based on the Dice loss"), see losses.task_loss:
    # "normalized": Mask2Former's 2 CE + 5 BCE + 5 Dice divided by its weights (12) and the CNN head's
    #   BCE + Dice by 2, then averaged: each term lies on the Dice scale (~[0, 1]), so eq. 12's
    #   alpha..eta weigh what the paper says. "dice": soft Dice of the reported map plus the CNN
    #   head's Dice, averaged (the paper's words, no matching). "mask2former": the raw sum (~5-10).
    seg_loss: str = "normalized"
    deep_supervision: bool = True  # supervise the prediction of every query-decoder layer
    # matching and mask loss on a random-offset pixel grid of at most this many points; None = every pixel
    points: int | None = 12544  # Mask2Former's number of sampled points
    # Query targets: "instances" = one target per connected component of a mask (8-connected), so each
    # nodule (gland region) is matched to its own query, as the paper represents "each nodule and gland"
    # by a query (Sec. 2.3); "semantic" = one target per class (all nodules of an image merged)
    targets: str = "instances"
    # The training objective: "eq12" (SSMT-Net's eq. 12, all of the above); the baselines' own losses
    # (losses.baseline_loss, set by BASELINE_SETTINGS): "trfe" (TRFE-Net eq. 4: sum of per-image
    # nodule Dice + 0.5 x sum of per-image gland Dice), "bce_dice" (the dual-stage paper's eq. 21).
    objective: str = "eq12"


@dataclass
class TrainConfig:
    """Optimisation and schedule for the two phases (paper: 300 epochs, batch 32, Adam 1e-3)."""

    epochs_pretrain: int = 50  # phase 1: reconstruction only on unlabeled images
    epochs: int = 300  # phase 2: all enabled tasks
    batch_size: int = 32  # images per step
    lr: float = 1e-3  # Adam learning rate, annealed by cosine to min_lr
    min_lr: float = 1e-6  # end of cosine annealing
    weight_decay: float = 0.01  # weight decay (paper: 0.01 with Adam)
    optimizer: str = "adam"  # "adam": decay as L2 in the gradient (the paper); "adamw": decoupled decay
    seed: int = 42  # global seed
    mask_ratio: float = 0.0  # phase 1 masked-image modelling (beyond the paper); 0 = plain rec
    num_workers: int = 4  # DataLoader workers (pinned memory on CUDA)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # channels_last memory format (faster convolutions on CUDA and on CPU)
    # Budgets: each phase ends when its steps or its share of max_minutes run out, and the cosine
    # schedule ends at min_lr there (schedule.BudgetCosine). Phase 2 also gets whatever phase 1
    # left unused of its share.
    max_minutes: float | None = None  # wall-clock budget of the whole run; None = no time limit
    val_every: int | None = None  # phase-2 steps between validations (at epoch ends); None = every epoch
    pretrain_share: float | None = None  # share of max_minutes for phase 1, in (0, 1); None = by planned steps
    steps: int | None = None  # phase-2 optimizer steps (overrides epochs); None = epochs x steps/epoch
    steps_pretrain: int | None = None  # phase-1 optimizer steps (overrides epochs_pretrain)
    grad_clip: float | None = 1.0  # gradient-norm clipping; None disables
    freeze_encoder: bool = False  # phase 2 trains decoders and heads only (Table 3 fine-tuning)
    label_fraction: float = 1.0  # share of training images whose masks are used (rest: phase 1 only)
    # --- multi-GPU (torchrun) and the baselines' own protocols (BASELINE_SETTINGS) ---
    # under torchrun: BatchNorm -> SyncBatchNorm, statistics over the global batch (CUDA only; off =
    # per-GPU statistics, what a single-GPU run of batch_size sees)
    sync_batchnorm: bool = False
    task_pairs: bool = False  # phase-2 batches alternate nodule and gland images (TRFE-Net); even batch_size
    momentum: float = 0.9  # SGD momentum (train.optimizer="sgd"; TRFE-Net's reference code uses 0.9)


@dataclass
class Config:
    """Everything one run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# Presets are values. "paper": the published configuration (GPU). "tiny": the same network with
# small widths and depths at 128 px, so a 2-core CPU trains it in minutes (notebooks and tests).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": {
        "model.image_size": 128,
        "model.stem_channels": 16,
        "model.resnet_layers": (1, 1, 1),
        "model.resnet_channels": (32, 64, 96),
        "model.norm_groups": 8,
        "model.embed_dim": 96,
        "model.depth": 2,
        "model.num_heads": 3,
        "model.fusion_channels": 64,
        "model.decoder_channels": (32, 16, 8, 8),
        # Judged by test Dice per CPU-minute (benchmarks/quality.py), not by images/s. In 3-minute
        # single-seed runs at 128 px, lr 2e-3, a BatchNorm encoder, decoders twice as wide, two convs
        # per step and batch 16 at lr 3e-3 all landed within +-0.04 Dice of these values (noise at
        # one seed), so the widths stay. One conv per decoder step keeps a step ~1.7x a U-Net's.
        "model.decoder_convs": 1,
        "model.num_queries": 6,
        "model.query_dim": 16,
        "model.query_heads": 2,
        "model.query_ffn": 32,
        "model.mask_dim": 8,
        "model.recon_channels": (16, 8, 8, 4),
        "model.size_hidden": (32, 16, 8),
        "train.epochs_pretrain": 2,
        "train.epochs": 6,
        "train.batch_size": 8,
        "train.num_workers": 0,
        # Short CPU runs: L2 decay inside Adam shrinks weights with small gradients by ~lr per step,
        # which flattens the small ViT's attention to uniform within minutes; decoupled decay does not.
        "train.optimizer": "adamw",
    },
}

# Table 2 of the paper: which auxiliary tasks each ablation variant trains.
VARIANTS: dict[str, dict[str, Any]] = {
    "1_baseline": {"model.gland": False, "model.reconstruction": False, "model.size": False},
    "2_rec": {"model.gland": False, "model.reconstruction": True, "model.size": False},
    "3_rec_gland": {"model.gland": True, "model.reconstruction": True, "model.size": False},
    "4_rec_size": {"model.gland": False, "model.reconstruction": True, "model.size": True},
    "5_all": {"model.gland": True, "model.reconstruction": True, "model.size": True},
}

# Each baseline trained as its paper trains it: config values that make_config(preset, baseline=name)
# applies after the preset and before the caller's overrides (so --epochs etc. still win). The
# baseline's width follows the preset too (model.baseline_size). TRFE-Net (Gong et al., ISBI 2021,
# Sec. 2.3 and 4.1) trains U-Net, MT-Net and TRFE-Net alike: SGD at lr 1e-3 for 60 epochs, batch 8
# (half nodule, half gland images for the two multi-task nets), Dice losses (eq. 4); its reference
# train.py adds momentum 0.9, no weight decay, no schedule (constant lr: min_lr = lr) and no
# gradient clipping. The dual-stage paper's ResNet50-UNet trains on BCE + Dice (its eq. 21) and states
# no optimizer settings, so SSMT-Net's (the preset's) are kept. Under "tiny" only the losses and the
# paired batches are kept: the CPU schedule of the preset stays (U-Net keeps the project's BCE + Dice
# at tiny, the loss benchmarks/quality.py compares SSMT-Net against).
_TRFE_PROTOCOL: dict[str, Any] = {
    "loss.objective": "trfe", "train.optimizer": "sgd", "train.lr": 1e-3, "train.min_lr": 1e-3,
    "train.momentum": 0.9, "train.weight_decay": 0.0, "train.epochs": 60, "train.batch_size": 8,
    "train.grad_clip": None,
}
BASELINE_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "unet": _TRFE_PROTOCOL,
        "mtnet": {**_TRFE_PROTOCOL, "train.task_pairs": True},
        "trfe": {**_TRFE_PROTOCOL, "train.task_pairs": True},
        "resnet50_unet": {"loss.objective": "bce_dice"},
    },
    "tiny": {
        "mtnet": {"loss.objective": "trfe", "train.task_pairs": True},
        "trfe": {"loss.objective": "trfe", "train.task_pairs": True},
        "resnet50_unet": {"loss.objective": "bce_dice"},
    },
}

_SECTIONS = {"model": ModelConfig, "loss": LossConfig, "train": TrainConfig}
_CHOICES = {
    "model.output_mode": ("transformer", "cnn", "sum"),
    "loss.matching": ("hungarian", "fixed"),
    "train.optimizer": ("adam", "adamw", "sgd"),
    "model.baseline_size": ("paper", "tiny"),
    "model.decoder_input": ("fused", "tokens"),
    "model.inference": ("soft", "argmax"),
    "loss.targets": ("instances", "semantic"),
    "loss.objective": ("eq12", "trfe", "bce_dice"),
    "loss.seg_loss": ("normalized", "dice", "mask2former"),
    "model.resnet_norm": ("group", "batch"),
}


def _resolve_key(key: str) -> tuple[str, str]:
    """Map ``"model.depth"`` or a bare unique field name like ``"depth"`` to (section, field)."""
    if "." in key:
        section, name = key.split(".", 1)
        if section not in _SECTIONS:
            raise KeyError(f"unknown config section {section!r} in {key!r}; sections: {sorted(_SECTIONS)}")
        if name not in {f.name for f in fields(_SECTIONS[section])}:
            raise KeyError(f"unknown config key {key!r}; fields of {section}: {[f.name for f in fields(_SECTIONS[section])]}")
        return section, name
    owners = [s for s, cls in _SECTIONS.items() if key in {f.name for f in fields(cls)}]
    if not owners:
        raise KeyError(f"unknown config key {key!r}")
    if len(owners) > 1:
        raise KeyError(f"config key {key!r} is ambiguous; write one of {[f'{s}.{key}' for s in owners]}")
    return owners[0], key


def coerce_overrides(config_class: type, kind: str, overrides: dict[str, Any],
                     reserved: tuple[str, ...] = ("name",)) -> dict[str, Any]:
    """Type-checked field overrides of a config dataclass (baseline, classifier, segmenter).

    Args:
        config_class: the dataclass whose fields may be overridden.
        kind: its name in messages ("baseline", "classifier", ...).
        overrides: field -> value as a caller passed them.
        reserved: fields set by the builder, never by an override (the model's name, its size).

    Returns:
        The overrides with each value coerced to its field's type (:func:`coerce_value`).
    """
    hints = typing.get_type_hints(config_class)
    valid = sorted(set(hints) - set(reserved))
    coerced = {}
    for key, value in overrides.items():
        if key not in valid:
            raise KeyError(f"unknown {kind} override {key!r}; valid: {valid}")
        coerced[key] = coerce_value(f"{kind} config {key}", value, hints[key])
    return coerced


def coerce_value(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation; accept ints for floats and lists for tuples."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        annotation = next(a for a in args if a is not type(None))
    if value is None:
        raise TypeError(f"{key} may not be None")
    if typing.get_origin(annotation) is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise TypeError(f"{key} must be a list of ints, got {value!r}")
        return tuple(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, bool) or not isinstance(value, annotation):
        raise TypeError(f"{key} must be {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


def check_used_fields(cfg: Any, kind: str, common: set[str], model_fields: dict[str, set[str]]) -> None:
    """Raise if a config dataclass sets a field its named model does not read (shared by the
    baseline, classifier and segmenter configs: a silently ignored setting is a wrong experiment).

    Args:
        cfg: a dataclass instance with a ``name`` field; its class's defaults are the reference.
        kind: what it configures, for the message ("baseline", "classifier", ...).
        common: fields every model reads.
        model_fields: per model name, the extra fields it reads.
    """
    defaults = type(cfg)()
    reads = common | model_fields[cfg.name]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name not in reads and value != getattr(defaults, f.name):
            users = [n for n, s in model_fields.items() if f.name in s]
            raise ValueError(f"{kind} config {f.name}={value!r} is not used by {cfg.name!r} (only by {users}); "
                             f"{cfg.name!r} reads {sorted(reads)}")


def validate(cfg: Config) -> Config:
    """Raise ``ValueError`` if the configuration breaks a constraint of the paper or the code."""
    m, loss, t = cfg.model, cfg.loss, cfg.train
    for key, allowed in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ValueError(f"config {key}={value!r}; choose one of {allowed}")
    weights = {"alpha": loss.alpha, "beta": loss.beta, "gamma": loss.gamma, "eta": loss.eta}
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"loss weights must be >= 0, got {weights}")
    if abs(sum(weights.values()) - 1.0) > 1e-6:
        raise ValueError(f"loss weights alpha+beta+gamma+eta must sum to 1 (eq. 12), got {sum(weights.values()):.6f} from {weights}")
    if not loss.alpha > loss.beta + loss.gamma + loss.eta:
        raise ValueError(f"eq. 12 needs alpha > beta + gamma + eta (the nodule task dominates), got {weights}")
    if m.pretrained_file and m.resnet_norm != "group":
        raise ValueError("model.pretrained_file holds timm's GroupNorm R50 weights: it needs model.resnet_norm='group'")
    if m.image_size % 16:
        raise ValueError(f"model.image_size must be a multiple of 16 (ResNet to 1/16), got {m.image_size}")
    if len(m.resnet_layers) != 3 or len(m.resnet_channels) != 3:
        raise ValueError("model.resnet_layers and model.resnet_channels need 3 stages (1/4, 1/8, 1/16)")
    if m.decoder_convs < 1:
        raise ValueError(f"model.decoder_convs must be >= 1, got {m.decoder_convs}")
    if len(m.decoder_channels) != 4 or len(m.recon_channels) != 4:
        raise ValueError("model.decoder_channels and model.recon_channels need 4 widths (1/8, 1/4, 1/2, 1/1)")
    if m.embed_dim % m.num_heads or m.query_dim % m.query_heads:
        raise ValueError("model.embed_dim must divide by num_heads and query_dim by query_heads")
    if m.use_query_decoder and m.query_layers < 1:
        raise ValueError("model.query_layers must be >= 1 when the query decoder is on")
    if not m.use_query_decoder and m.output_mode != "cnn":
        # Without queries the only map is the CNN one; say so instead of silently switching.
        raise ValueError("model.use_query_decoder=False needs model.output_mode='cnn'")
    if loss.points is not None and loss.points < 1:
        raise ValueError(f"loss.points must be >= 1 or None (every pixel), got {loss.points}")
    if loss.matching == "fixed" and m.num_queries < m.num_classes:
        raise ValueError("loss.matching='fixed' needs num_queries >= num_classes")
    if t.val_every is not None and t.val_every < 1:
        raise ValueError(f"train.val_every must be >= 1 or None, got {t.val_every}")
    for name in ("steps", "steps_pretrain"):
        if getattr(t, name) is not None and getattr(t, name) < 0:
            raise ValueError(f"train.{name} must be >= 0 or None, got {getattr(t, name)}")
    if t.pretrain_share is not None and not 0.0 < t.pretrain_share < 1.0:
        # no phase 1 at all is epochs_pretrain=0, not a zero share
        raise ValueError(f"train.pretrain_share must be in (0, 1) or None, got {t.pretrain_share}")
    if t.max_minutes is not None and t.max_minutes <= 0:
        raise ValueError(f"train.max_minutes must be > 0 or None, got {t.max_minutes}")
    if t.batch_size < 1 or t.epochs < 0 or t.epochs_pretrain < 0:
        raise ValueError("train.batch_size must be >= 1 and epochs >= 0")
    if t.task_pairs and t.batch_size % 2:
        raise ValueError(f"train.task_pairs needs an even train.batch_size (half nodule, half gland), got {t.batch_size}")
    if not 0.0 < t.label_fraction <= 1.0:
        raise ValueError(f"train.label_fraction must be in (0, 1], got {t.label_fraction}")
    if not 0.0 <= t.mask_ratio < 1.0:
        raise ValueError(f"train.mask_ratio must be in [0, 1), got {t.mask_ratio}")
    return cfg


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of ``cfg`` with ``{"section.field" or "field": value}`` applied and type-checked."""
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model), loss=dataclasses.replace(cfg.loss), train=dataclasses.replace(cfg.train)
    )
    for key, value in overrides.items():
        section, name = _resolve_key(key)
        obj = getattr(cfg, section)
        annotation = typing.get_type_hints(type(obj))[name]
        setattr(obj, name, coerce_value(f"config {section}.{name}", value, annotation))
    return cfg


def make_config(preset: str = "tiny", variant: str | None = None, baseline: str | None = None,
                **overrides: Any) -> Config:
    """Build and validate a :class:`Config`.

    Args:
        preset: ``"paper"`` or ``"tiny"``.
        variant: optional Table 2 variant name (see ``VARIANTS``), applied after the preset.
        baseline: optional baseline name (``fit``'s ``model_name``: "unet", "trfe", "trfe_c" ...):
            its training protocol ``BASELINE_SETTINGS[preset][name]`` is applied after the preset.
        **overrides: field values as ``section__field=value`` or unique bare names (``depth=4``).

    Returns:
        A validated configuration.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    # the preset's name is recorded as the width a baseline is built at (fit's model_name)
    cfg = apply_overrides(Config(), {"model.baseline_size": preset, **PRESETS[preset]})
    if variant is not None:
        cfg = apply_overrides(cfg, VARIANTS[variant])
    if baseline is not None:
        from ssmt_lib.baselines import ALIASES, BASELINE_NAMES

        if variant is not None:
            raise ValueError(f"variant {variant!r} applies to SSMT-Net, not to baseline {baseline!r}")
        if baseline not in BASELINE_NAMES and baseline not in ALIASES:
            raise ValueError(f"unknown baseline {baseline!r}; choose one of {[*BASELINE_NAMES, *ALIASES]}")
        canonical = ALIASES[baseline][0] if baseline in ALIASES else baseline
        cfg = apply_overrides(cfg, BASELINE_SETTINGS[preset].get(canonical, {}))
    cfg = apply_overrides(cfg, {k.replace("__", "."): v for k, v in overrides.items()})
    return validate(cfg)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (JSON / checkpoint friendly)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> Config:
    """Inverse of :func:`to_dict`, validated."""
    flat = {f"{section}.{k}": v for section, values in data.items() for k, v in values.items()}
    return validate(apply_overrides(Config(), flat))
