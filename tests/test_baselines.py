"""Baselines: shapes, gradients, TRFE guidance variants, config validation, parameter counts."""
from __future__ import annotations

import math

import pytest
import timm
import torch

from ssmt_lib.baselines import (
    ALIASES,
    BASELINE_NAMES,
    BaselineConfig,
    build_baseline,
    build_from_config,
    count_parameters,
    make_baseline_config,
)
from ssmt_lib.outputs import ModelOutput
from ssmt_lib.trfe import TRFE_GLAND_WEIGHT

ALL_NAMES = list(BASELINE_NAMES) + list(ALIASES)
OTHER_FIELDS = ("recon", "size", "nodule_aux_logits", "gland_aux_logits", "nodule_queries", "gland_queries")



def _images(b: int = 2, side: int = 64, seed: int = 0, chans: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, chans, side, side, generator=g)


def _build(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_baseline(name, "tiny", **overrides)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_forward_backward_shapes_tasks(name: str) -> None:
    model = _build(name).train()
    out = model(_images())
    assert isinstance(out, ModelOutput)
    for task in ("nodule", "gland"):
        logits = out.logits(task)
        assert (logits is not None) == (task in model.tasks), (name, task, model.tasks)
        if logits is not None:
            assert logits.shape == (2, 1, 64, 64)
            assert torch.isfinite(logits).all()
    assert all(getattr(out, f) is None for f in OTHER_FIELDS)
    loss = sum(out.logits(t).sigmoid().mean() for t in model.tasks)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), f"{name}: a parameter got no/NaN gradient"
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_rectangular_input_and_grey_channels() -> None:
    model = _build("unet", in_chans=1).eval()
    out = model(torch.randn(1, 1, 64, 96))
    assert out.nodule_logits.shape == (1, 1, 64, 96)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize(("name", "side"), [("unet", 72), ("trfe", 40), ("mtnet", 100), ("resnet50_unet", 80)])
def test_indivisible_input_size_raises(name: str, side: int) -> None:
    model = _build(name).eval()
    with pytest.raises(ValueError, match=f"{side}x{side}"):
        model(torch.randn(1, 3, side, side))


def test_trfe_variants_differ() -> None:
    models = {v: _build(f"trfe_{v.lower()}", seed=3).eval() for v in "ABC"}
    counts = {v: count_parameters(m) for v, m in models.items()}
    # A and B are parameter-free guidance: the same weights as MT-Net; C adds 1x1 fusion convs.
    assert counts["A"] == counts["B"] == count_parameters(_build("mtnet")) < counts["C"]
    sd_a, sd_b = models["A"].state_dict(), models["B"].state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    x = _images(seed=1)
    with torch.no_grad():
        outs = {v: m(x) for v, m in models.items()}
    # Identical weights, different guidance -> different nodule maps; gland maps are unguided.
    assert not torch.allclose(outs["A"].nodule_logits, outs["B"].nodule_logits, atol=1e-5)
    assert torch.allclose(outs["A"].gland_logits, outs["B"].gland_logits)
    assert not torch.allclose(outs["A"].nodule_logits, outs["C"].nodule_logits, atol=1e-5)
    assert {m.guidance.variant for m in models.values()} == {"A", "B", "C"}


def _perturb(module: torch.nn.Module, seed: int = 7) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("variant", ["A", "B", "C"])
def test_trfe_gland_branch_drives_nodule_output(variant: str) -> None:
    model = _build("trfe", guidance=variant).eval()
    x = _images(seed=2)
    with torch.no_grad():
        before = model(x).nodule_logits.clone()
        _perturb(model.gland_decoder)
        after = model(x).nodule_logits
    assert (after - before).abs().max().item() > 1e-4, f"TRFE-{variant}: nodule map ignores the gland branch"
    # And the nodule loss trains the gland decoder (the prior is not detached): A reads the gland
    # probability map (the whole gland decoder), B/C read the 1/8, 1/4, 1/2 gland blocks.
    model.zero_grad()
    model(x).nodule_logits.mean().backward()
    used = model.gland_decoder if variant == "A" else model.gland_decoder.blocks[:3]
    grads = [p.grad for p in used.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum().item() for g in grads) > 0


def test_trfe_a_uses_the_gland_probability_map() -> None:
    model = _build("trfe", guidance="A").eval()
    x = _images(seed=4)
    with torch.no_grad():
        before = model(x).nodule_logits.clone()
        model.gland_decoder.head.bias.add_(3.0)  # only the gland head -> only P changes
        after = model(x).nodule_logits
    assert (after - before).abs().max().item() > 1e-4


def test_mtnet_has_no_guidance() -> None:
    model = _build("mtnet").eval()
    x = _images(seed=2)
    with torch.no_grad():
        before = model(x)
        nodule, gland = before.nodule_logits.clone(), before.gland_logits.clone()
        _perturb(model.gland_decoder)
        after = model(x)
    assert torch.equal(after.nodule_logits, nodule)
    assert not torch.allclose(after.gland_logits, gland)


def test_parameter_counts_tiny_below_paper() -> None:
    for name in BASELINE_NAMES:
        tiny, paper = count_parameters(build_baseline(name, "tiny")), count_parameters(build_baseline(name, "paper"))
        print(f"{name:14s} tiny {tiny:>11,d}  paper {paper:>11,d}")
        assert 0 < tiny < paper
    # Paper U-Net (64..1024, BatchNorm, transposed up-convs) is the well-known ~31.0M network.
    assert math.isclose(count_parameters(build_baseline("unet", "paper")), 31.04e6, rel_tol=0.01)


def test_config_round_trip_and_gland_weight() -> None:
    cfg = make_baseline_config("trfe_c", base_width=4)
    assert (cfg.name, cfg.guidance, cfg.base_width, cfg.image_size) == ("trfe", "C", 4, 128)
    model = build_from_config(cfg)
    assert model.config == cfg and model.guidance.variant == "C"
    assert make_baseline_config("resnet50_unet", backbone_channels=[8, 8, 8, 8]).backbone_channels == (8, 8, 8, 8)
    assert TRFE_GLAND_WEIGHT == 0.5


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (lambda: build_baseline("segnet"), KeyError, "unet.*resnet50_unet.*mtnet.*trfe"),
        (lambda: build_baseline("unet", width=8), KeyError, "base_width"),
        (lambda: build_baseline("unet", size="huge"), ValueError, "tiny"),
        (lambda: build_baseline("unet", guidance="B"), ValueError, "guidance"),
        (lambda: build_baseline("mtnet", backbone="resnet18"), ValueError, "backbone"),
        (lambda: build_baseline("trfe", guidance="D"), ValueError, "'A', 'B', 'C'"),
        (lambda: build_baseline("trfe_b", guidance="C"), ValueError, "fixes guidance"),
        (lambda: build_baseline("unet", base_width="8"), TypeError, "base_width"),
        (lambda: build_baseline("unet", image_size=100), ValueError, "image_size=100"),
        (lambda: build_baseline("resnet50_unet", image_size=144), ValueError, "multiple of 32"),
        (lambda: build_baseline("resnet50_unet", backbone="resnet5"), ValueError, "resnet5"),
        (lambda: build_baseline("resnet50_unet", backbone_channels=(8, 16)), ValueError, "backbone_channels"),
        (lambda: build_baseline("resnet50_unet", pretrained_file="/nonexistent/w.pth"), FileNotFoundError, "/nonexistent/w.pth"),
        (lambda: build_from_config(BaselineConfig(name="vgg16")), KeyError, "vgg16"),
    ],
)
def test_invalid_configs_raise(call, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        call()


def test_resnet_unet_loads_local_weights(tmp_path) -> None:
    torch.manual_seed(5)
    reference = timm.create_model("resnet50", pretrained=False, channels=(8, 16, 32, 64))
    path = tmp_path / "encoder.pth"
    torch.save(reference.state_dict(), path)
    model = build_baseline("resnet50_unet", pretrained_file=str(path))
    assert torch.equal(model.encoder.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.encoder.layer4[0].conv2.weight, reference.layer4[0].conv2.weight)
    fresh = build_baseline("resnet50_unet")
    assert not torch.equal(fresh.encoder.conv1.weight, reference.conv1.weight)


def test_smaller_timm_backbone() -> None:
    model = _build("resnet50_unet", backbone="resnet18", backbone_channels=(8, 16, 32, 64)).eval()
    assert model.encoder.feature_info.channels()[1:] == [8, 16, 32, 64]  # BasicBlock: no expansion
    with torch.no_grad():
        assert model(_images()).nodule_logits.shape == (2, 1, 64, 64)
