"""The query decoder (eq. 4-9): the plain form against its speed-ups, which must give the same numbers.

Each speed-up of ``ssmt_lib.query_decoder_fast`` is checked here against the plain module written
as the paper writes it: values and gradients with ``allclose``, on the same parameters.
"""
import pytest
import torch
import torch.nn.functional as F

from ssmt_lib import build_model
from ssmt_lib.config import make_config
from ssmt_lib.outputs import QueryPrediction, predictions_on_grid
from ssmt_lib.query_decoder import QueryDecoder, QueryLayer, attention_mask_from_logits, sine_position_embedding
from ssmt_lib.query_decoder_fast import (FactoredQueryPrediction, FastQueryDecoder, PixelFeatures, TokenKeys,
                                         TokenQueryLayer)
from ssmt_lib.recording import record_attention

SWITCHES = [(True, False), (False, True), (True, True)]  # (cross_attention_on_tokens, factored_masks)


def _decoders(masked: bool, on_tokens: bool, factored: bool) -> tuple[QueryDecoder, FastQueryDecoder]:
    sizes = dict(level_channels=(12, 8, 8), pixel_channels=8, dim=16, num_heads=2, ffn=32, mask_dim=12,
                 num_queries=5, num_layers=4, num_classes=1, masked=masked, fused=True)
    plain = QueryDecoder(**sizes)
    fast = FastQueryDecoder(**sizes, on_tokens=on_tokens, factored=factored)
    fast.load_state_dict(plain.state_dict())  # same parameter names: a checkpoint loads into either form
    torch.nn.init.normal_(plain.pixel_proj.bias)
    fast.pixel_proj.bias.data.copy_(plain.pixel_proj.bias)
    return plain, fast


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("on_tokens,factored", SWITCHES)
def test_fast_decoder_equals_the_plain_decoder(masked, on_tokens, factored):
    torch.manual_seed(0)
    plain, fast = _decoders(masked, on_tokens, factored)
    levels = [torch.randn(2, c, s, s) for c, s in ((12, 4), (8, 8), (8, 16))]
    pixel = torch.randn(2, 8, 32, 32)
    preds_plain, preds_fast = plain(levels, pixel), fast(levels, pixel)
    assert len(preds_plain) == len(preds_fast) == 5  # T + 1
    for a, b in zip(preds_plain, preds_fast):
        torch.testing.assert_close(b.class_logits, a.class_logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b.mask_logits, a.mask_logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b.mask_logits_resized((8, 8)), a.mask_logits_resized((8, 8)), rtol=1e-4, atol=1e-4)
    weights = torch.randn(2, 5, 32, 32)

    def objective(preds):
        return sum((p.mask_logits * weights).sum() + p.class_logits.square().sum() for p in preds)

    g_plain = torch.autograd.grad(objective(preds_plain), list(plain.parameters()), allow_unused=True)
    g_fast = torch.autograd.grad(objective(preds_fast), list(fast.parameters()), allow_unused=True)
    for (name, _), a, b in zip(plain.named_parameters(), g_plain, g_fast):
        if a is None or b is None:  # e.g. the level embedding on no attention path: unused in both
            assert a is None and b is None or (a if b is None else b).abs().max() < 1e-5, name
            continue
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize("on_tokens,factored", SWITCHES + [(False, False)])
def test_model_switches_pick_the_decoder_and_keep_parameters(on_tokens, factored):
    model = build_model("tiny", image_size=32, cross_attention_on_tokens=on_tokens, factored_masks=factored)
    qd = model.query_decoders["nodule"]
    assert type(qd) is (FastQueryDecoder if on_tokens or factored else QueryDecoder)
    assert isinstance(qd.layers[0], TokenQueryLayer) == on_tokens
    plain = build_model("tiny", image_size=32, cross_attention_on_tokens=False, factored_masks=False)
    assert model.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x).nodule_logits, plain.eval()(x).nodule_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("masked", [True, False])
def test_cross_attention_on_tokens_equals_eq5_as_written(masked):
    """TokenQueryLayer never forms keys/values; the plain layer projects the level and adds positions."""
    torch.manual_seed(0)
    plain, fast = QueryLayer(32, 4, 64, True), TokenQueryLayer(32, 4, 64, True)
    fast.load_state_dict(plain.state_dict())
    proj, level = torch.nn.Conv2d(8, 32, 1), torch.randn(2, 8, 6, 5)
    keys = TokenKeys(6, 5, torch.randn(32, requires_grad=True), proj)
    p, p_pos = torch.randn(2, 7, 32), torch.randn(1, 7, 32)
    allowed = None
    if masked:
        allowed = torch.rand(2, 4, 7, 30) > 0.3
        allowed[..., 0] = True  # no empty row
    params = [proj.weight, proj.bias, keys.level]
    out_plain = plain(p, p_pos, proj(level).flatten(2).transpose(1, 2), keys.dense_positions(), allowed)
    out_fast = fast(p, p_pos, level.flatten(2).transpose(1, 2), keys, allowed)
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-5, atol=1e-5)
    g_plain = torch.autograd.grad(out_plain.square().sum(), params + list(plain.parameters()))
    g_fast = torch.autograd.grad(out_fast.square().sum(), params + list(fast.parameters()))
    for a, b in zip(g_fast, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # the level embedding shifts every score of a query alike: softmax ignores it
    assert g_plain[2].abs().max() < 1e-5
    with pytest.raises(TypeError, match="TokenKeys"):
        fast(p, p_pos, level.flatten(2).transpose(1, 2), keys.dense_positions(), allowed)


def test_cross_attention_on_tokens_is_recorded():
    layer = TokenQueryLayer(16, 2, 32, True)
    keys = TokenKeys(3, 4, torch.randn(16), torch.nn.Conv2d(8, 16, 1))
    with record_attention(layer) as maps:
        layer(torch.randn(1, 5, 16), torch.randn(1, 5, 16), torch.randn(1, 12, 8), keys, None)
    weights = maps["cross_attn"]
    assert weights.shape == (1, 2, 5, 12)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 5))


@pytest.mark.parametrize("shift", [None, "random"])
def test_separable_key_positions_equal_the_dense_projection(shift):
    """rows[i] + cols[j] + const equals linear(sine grid + level + shift), gradients too."""
    level, linear = torch.randn(16, requires_grad=True), torch.nn.Linear(16, 24)
    b = torch.randn(16) if shift else None
    keys = TokenKeys(5, 7, level, torch.nn.Conv2d(4, 16, 1))
    dense = keys.dense_positions()
    torch.testing.assert_close(dense, (sine_position_embedding(5, 7, 16) + level)[None])
    expected = linear(dense + (0 if b is None else b))  # (1, 35, 24)
    rows, cols, const = keys.projected_positions(linear, shift=b)
    got = (rows[:, None] + cols[None] + const).reshape(1, 35, 24)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(expected)
    g_expected = torch.autograd.grad((expected * weights).sum(), [linear.weight, linear.bias, level])
    g_got = torch.autograd.grad((got * weights).sum(), [linear.weight, linear.bias, level])
    for a, e in zip(g_got, g_expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_factored_masks_equal_full_masks_sampled_and_resized():
    mask_embed, features, bias = torch.randn(2, 5, 8), torch.randn(2, 8, 32, 32), torch.randn(2, 5)
    factored = FactoredQueryPrediction(torch.randn(2, 5, 2), mask_embed, PixelFeatures(features), bias)
    full = torch.einsum("bnd,bdhw->bnhw", mask_embed, features) + bias[..., None, None]
    ready = QueryPrediction(factored.class_logits, full)
    assert not factored.formed
    for stride, offset in ((1, (0, 0)), (2, (1, 0)), (3, (2, 1))):
        a, b = predictions_on_grid([factored, ready], stride, offset)
        torch.testing.assert_close(a.mask_logits, full[..., offset[0]::stride, offset[1]::stride], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.mask_logits, a.mask_logits, rtol=1e-5, atol=1e-5)
    for size in ((16, 16), (8, 8), (4, 4)):  # bilinear resizing is linear, so it commutes with eq. 7
        expected = F.interpolate(full, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(factored.mask_logits_resized(size), expected, rtol=1e-5, atol=1e-5)
    assert not factored.formed  # neither the grid nor the resized masks needed the full map
    torch.testing.assert_close(factored.mask_logits, full)
    with pytest.raises(ValueError, match="does not fit"):
        FactoredQueryPrediction(factored.class_logits, mask_embed, PixelFeatures(features[:, :4]), bias)
    with pytest.raises(ValueError, match="mask_bias"):
        FactoredQueryPrediction(factored.class_logits, mask_embed, PixelFeatures(features), torch.zeros(2))
    with pytest.raises(ValueError, match="offset"):
        predictions_on_grid([factored], 2, (2, 0))
    with pytest.raises(ValueError, match="do not fit"):
        QueryPrediction(torch.randn(2, 4, 2), full)


def test_predictions_of_one_decoder_share_one_grid_slice():
    pixels = PixelFeatures(torch.randn(1, 4, 16, 16))
    preds = [FactoredQueryPrediction(torch.randn(1, 3, 2), torch.randn(1, 3, 4), pixels, torch.zeros(1, 3))
             for _ in range(3)]
    a, b, c = predictions_on_grid(preds, 2, (1, 1))
    assert a.pixels.features is b.pixels.features is c.pixels.features  # sliced once
    assert a.pixels.features.is_contiguous() and a.mask_size == (8, 8)


def test_training_step_forms_only_the_reported_full_resolution_masks():
    """With factored masks, intermediate predictions reach the loss on the pixel grid; only the last one
    (the reported map) is formed in full."""
    from ssmt_lib.losses import total_loss

    cfg = make_config("tiny", image_size=64, points=256)  # 64x64 -> stride 4 grid
    assert cfg.model.factored_masks
    model = build_model(config=cfg)
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(2, 1, 64, 64, generator=g) > 0.7).float()
    batch = {"image": torch.randn(2, 3, 64, 64, generator=g), "nodule_mask": masks, "gland_mask": masks,
             "has_nodule": torch.ones(2, dtype=torch.bool), "has_gland": torch.ones(2, dtype=torch.bool),
             "size": masks.flatten(1).mean(1)}
    out = model(batch["image"])
    loss, _ = total_loss(out, batch, cfg.loss)
    loss.backward()
    for task in ("nodule", "gland"):
        preds = out.queries(task)
        assert not any(p.formed for p in preds[:-1]) and preds[-1].formed
    assert all(p.grad is not None for n, p in model.named_parameters() if "query_decoders" in n and "class_head" not in n)


def test_eq6_mask_keeps_the_empty_mask_rule_and_shrinks_with_the_threshold():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 16, 16) * 3
    logits[0, 1] = -10  # an empty mask
    at_half = attention_mask_from_logits(logits, (4, 4), num_heads=2)  # (2, 2, 3, 16)
    assert at_half.shape == (2, 2, 3, 16) and torch.equal(at_half[:, 0], at_half[:, 1])
    assert at_half[0, 0, 1].all()  # empty-mask rule
    resized = F.interpolate(logits, size=(4, 4), mode="bilinear", align_corners=False).sigmoid() >= 0.5
    kept = resized.flatten(2).any(-1)  # (2, 3) rows the rule leaves alone
    assert torch.equal(at_half[:, 0][kept], resized.flatten(2)[kept])
    strict = attention_mask_from_logits(logits, (4, 4), threshold=0.9)[:, 0]
    rows = ~strict.all(-1)  # rows where the empty-mask rule did not fire at 0.9
    assert rows.any() and (strict[rows] <= at_half[:, 0][rows]).all()  # a higher threshold keeps a subset
    with pytest.raises(ValueError, match="threshold"):
        attention_mask_from_logits(logits, (4, 4), threshold=1.0)
