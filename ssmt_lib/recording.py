"""What the model computed, read through forward hooks; the model is never edited.

Each recorder is a context manager: it registers hooks on entry, yields a dict that the hooks fill
while the ``with`` block runs the model, and removes every hook (and restores every flag it
changed) on exit, also when the block raises.

* :func:`record_attention`: the weights ``softmax(Q K^T / sqrt(d) + M)`` of every attention layer
  (SSMT-Net paper, *Anatomy-Guided Representation Learning Using a Transformer-Based Network for
  Thyroid Nodule Segmentation in Ultrasound Images*, eq. 2 for the ViT, eq. 5 for the query
  decoder), this library's :class:`~ssmt_lib.attention.Attention` and timm's ViT attention alike;
* :func:`record_attention_masks`: the boolean mask each of this library's attention layers received,
  i.e. the eq. 6 mask really used;
* :func:`record_activation_and_gradient`: one layer's output and the gradient that flows back into
  it (what Grad-CAM needs, :func:`ssmt_lib.viz.cam.grad_cam`).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import Tensor, nn

from ssmt_lib.attention import Attention

__all__ = ["record_attention", "record_attention_masks", "record_activation_and_gradient"]


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Record the attention weights of every attention layer of ``model`` during the ``with`` block.

    Works on this library's :class:`~ssmt_lib.attention.Attention` (hooks ``softmax``) and timm's
    ViT ``Attention`` (hooks ``attn_drop``, which sees the softmax output). Fused attention has no
    weights to read, so it is switched off inside the block and restored afterwards.

    Args:
        model: any module; every attention layer inside it is recorded.

    Yields:
        dict module name -> (B, heads, Nq, Nk) weights, detached.

    Example::

        with record_attention(model) as maps:
            model(images)
        maps["encoder.vit.blocks.0.attn"]  # ViT self-attention of layer 0
    """
    maps: dict[str, Tensor] = {}
    handles, restore = [], []
    for name, m in model.named_modules():
        if isinstance(m, Attention):
            restore.append((m, "fused", m.fused))
            m.fused = False
            target = m.softmax
        elif hasattr(m, "fused_attn") and hasattr(m, "attn_drop"):  # timm's ViT attention
            restore.append((m, "fused_attn", m.fused_attn))
            m.fused_attn = False
            target = m.attn_drop
        else:
            continue

        def hook(_module, _inputs, output, name=name):
            maps[name] = output.detach()

        handles.append(target.register_forward_hook(hook))
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()
        for m, attr, value in restore:
            setattr(m, attr, value)


@contextlib.contextmanager
def record_attention_masks(model: nn.Module) -> Iterator[dict[str, Tensor | None]]:
    """Record the boolean mask every attention layer of ``model`` receives (eq. 6) during the block.

    A forward pre-hook reads the ``allowed`` argument of each :class:`~ssmt_lib.attention.Attention`;
    ``None`` means the layer attended everywhere (self-attention, or ``masked_attention=False``).

    Args:
        model: any module containing ``Attention`` layers (SSMT-Net, a query decoder ...).

    Yields:
        dict module name -> (B, heads, Nq, Nk) bool (True = may attend), or None.

    Raises:
        ValueError: ``model`` has no ``Attention`` layer (nothing would be recorded).
    """
    masks: dict[str, Tensor | None] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, Attention):
            def hook(_module, args, kwargs, name=name):
                allowed = kwargs.get("allowed", args[3] if len(args) > 3 else None)
                masks[name] = None if allowed is None else allowed.detach()

            handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    if not handles:
        raise ValueError(f"record_attention_masks: {type(model).__name__} has no ssmt_lib Attention layer")
    try:
        yield masks
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def record_activation_and_gradient(layer: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Record ``layer``'s output and, once ``backward`` runs, the gradient of the loss with respect to it.

    Args:
        layer: the module to watch (e.g. a classifier's last convolutional block).

    Yields:
        dict with ``"activation"`` (the layer's output, still in the graph) after the forward pass
        and ``"gradient"`` (same shape) after the backward pass; the last call wins if the layer
        runs more than once.
    """
    kept: dict[str, Tensor] = {}

    def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        kept["activation"] = output
        output.register_hook(lambda grad: kept.__setitem__("gradient", grad))

    handle = layer.register_forward_hook(hook)
    try:
        yield kept
    finally:
        handle.remove()
