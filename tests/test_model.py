"""SSMT-Net model: shapes, switches, attention rules, parity with timm, the single ResNet pass."""
import itertools

import pytest
import timm
import torch
import torch.nn.functional as F

from ssmt_lib import build_model
from ssmt_lib.attention import Attention, attention_mask_from_logits
from ssmt_lib.config import VARIANTS, make_config
from ssmt_lib.model import SSMTNet, count_parameters
from ssmt_lib.recording import record_attention


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # (one thread per test comes from conftest.py)


def _check_output(out, b, size, tasks):
    for task in ("nodule", "gland"):
        logits = out.logits(task)
        if task in tasks:
            assert logits.shape == (b, 1, size, size)
            assert torch.isfinite(logits).all()
        else:
            assert logits is None


def test_tiny_forward_backward():
    model = build_model("tiny", image_size=64)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    _check_output(out, 2, 64, ("nodule", "gland"))
    assert out.recon.shape == x.shape and out.size.shape == (2,)
    assert ((out.size >= 0) & (out.size <= 1)).all()
    assert len(out.nodule_queries) == model.cfg.query_layers + 1
    q = out.nodule_queries[-1]
    assert q.class_logits.shape == (2, model.cfg.num_queries, 2)
    assert q.mask_logits.shape == (2, model.cfg.num_queries, 64, 64)
    loss = sum(t.float().mean() for t in (out.nodule_logits, out.gland_logits, out.recon, out.size,
                                         out.nodule_aux_logits, out.gland_aux_logits))
    loss = loss + sum(p.mask_logits.mean() + p.class_logits.mean() for p in out.nodule_queries + out.gland_queries)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_paper_preset_forward_backward_small_input():
    model = build_model("paper", image_size=64)
    assert model.cfg.embed_dim == 768 and model.cfg.depth == 12 and model.cfg.num_queries == 20
    out = model(torch.randn(1, 3, 64, 64))
    _check_output(out, 1, 64, ("nodule", "gland"))
    (out.nodule_logits.mean() + out.recon.mean() + out.size.sum()).backward()
    counts = count_parameters(model)
    print("paper parameters:", counts)
    assert counts["total"] > counts["encoder"] > 90e6


def test_encoder_is_timm_vit_base_r50_s16():
    """The paper encoder has exactly the parameters of timm's model and the same tokens."""
    cfg = make_config("paper", image_size=64).model
    ours = SSMTNet(cfg).encoder.vit
    ref = timm.create_model("vit_base_r50_s16_224", pretrained=False, num_classes=0, img_size=64)
    assert [k for k in ours.state_dict()] == [k for k in ref.state_dict()]
    assert [v.shape for v in ours.state_dict().values()] == [v.shape for v in ref.state_dict().values()]


def test_tokens_match_timm_forward_features():
    model = build_model("tiny", image_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.encoder(x).tokens
        ref = model.encoder.vit.forward_features(x)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_position_embedding_resized_for_other_input_size():
    model = build_model("tiny").eval()  # built for 128 px
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 96))
    assert out.nodule_logits.shape == (1, 1, 96, 96)


def test_hand_patch_embedding_equals_library():
    """Eq. 1 with patch size 1: a per-position linear map of the ResNet features, plus E_pos."""
    model = build_model("tiny", image_size=64).eval()
    enc = model.encoder
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = enc(x)
        w = enc.vit.patch_embed.proj.weight[:, :, 0, 0]  # (D, C16)
        b = enc.vit.patch_embed.proj.bias
        patches = feats.f_c.flatten(2).transpose(1, 2)  # (1, h*w, C16)
        tokens = patches @ w.T + b  # (1, h*w, D)
        tokens = torch.cat([enc.vit.cls_token, tokens], 1) + enc.vit.pos_embed
        by_hand = enc.vit.norm(enc.vit.blocks(tokens))
    torch.testing.assert_close(by_hand, feats.tokens, rtol=1e-5, atol=1e-5)


def test_resnet_runs_once_per_forward():
    model = build_model("tiny", image_size=64)
    calls = []
    model.encoder.backbone.stem.register_forward_hook(lambda *a: calls.append("stem"))
    for stage in model.encoder.backbone.stages:
        stage.register_forward_hook(lambda *a: calls.append("stage"))
    model(torch.randn(1, 3, 64, 64))
    assert calls.count("stage") == 3  # each of the three stages exactly once
    model.encoder.backbone(torch.randn(1, 3, 64, 64))  # the full backbone call hits the stem module
    assert calls.count("stem") == 1  # ... and only then: forward walks the stem's parts directly


def _naive_attention(q, k, v, allowed):
    """Loop reference: per batch, head and query, softmax over the allowed keys only."""
    b, h, n, d = q.shape
    out = torch.zeros_like(q)
    for bi, hi, qi in itertools.product(range(b), range(h), range(n)):
        keep = allowed[bi, hi, qi]
        scores = (k[bi, hi, keep] @ q[bi, hi, qi]) / d**0.5
        out[bi, hi, qi] = scores.softmax(0) @ v[bi, hi, keep]
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_masked_attention_equals_naive_reference(fused):
    attn = Attention(16, 4, fused=fused)
    q_in, kv = torch.randn(2, 5, 16), torch.randn(2, 12, 16)
    mask_logits = torch.randn(2, 5, 3, 4) * 3
    allowed = attention_mask_from_logits(mask_logits, (3, 4), num_heads=4)
    with torch.no_grad():
        got = attn(q_in, kv, kv, allowed)
        q = attn.split_heads(attn.q(q_in))
        k, v = attn.split_heads(attn.k(kv)), attn.split_heads(attn.v(kv))
        ref = _naive_attention(q, k, v, allowed)
        ref = attn.proj(ref.transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_empty_mask_query_attends_everywhere():
    mask_logits = torch.randn(1, 3, 4, 4)
    mask_logits[0, 1] = -10.0  # query 1 predicts nothing: its eq. 6 mask is empty
    allowed = attention_mask_from_logits(mask_logits, (4, 4), num_heads=2)
    assert allowed[0, :, 1].all()
    attn = Attention(8, 2, fused=False)
    q, kv = torch.randn(1, 3, 8), torch.randn(1, 16, 8)
    with torch.no_grad():
        masked = attn(q, kv, kv, allowed)
        plain = attn(q, kv, kv, None)
        raw = attn(q, kv, kv, mask_logits.flatten(2).sigmoid().ge(0.5)[:, None].expand(-1, 2, -1, -1))
    assert torch.isfinite(masked).all()
    torch.testing.assert_close(masked[0, 1], plain[0, 1])
    assert torch.isnan(raw[0, 1]).all()  # what the rule prevents


def test_attention_mask_is_detached_and_thresholded():
    logits = torch.tensor([[[[2.0, -2.0], [0.1, -0.1]]]], requires_grad=True)
    allowed = attention_mask_from_logits(logits, (2, 2), num_heads=1)
    assert not allowed.requires_grad
    assert allowed.flatten().tolist() == [True, False, True, False]


def test_record_attention_restores_fused_and_rows_sum_to_one():
    model = build_model("tiny", image_size=64)
    with record_attention(model) as maps:
        model(torch.randn(1, 3, 64, 64))
    assert any(".cross_attn" in k for k in maps) and any("vit.blocks" in k for k in maps)
    for name, w in maps.items():
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), msg=name)
    assert all(m.fused for m in model.modules() if isinstance(m, Attention))
    out = model(torch.randn(1, 3, 64, 64), return_attention=True)
    assert "encoder.vit.blocks.0.attn" in out.attentions


def test_fused_and_explicit_paths_agree():
    model = build_model("tiny", image_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused = model(x).nodule_logits
        explicit = model(x, return_attention=True).nodule_logits
    torch.testing.assert_close(fused, explicit, rtol=1e-4, atol=1e-4)


SWITCHES = list(itertools.product(VARIANTS, [True, False], [True, False], ["transformer", "cnn", "sum"]))


@pytest.mark.parametrize("variant,query,masked,mode", SWITCHES)
def test_every_switch_combination_runs(variant, query, masked, mode):
    if not query and mode != "cnn":
        with pytest.raises(ValueError, match="output_mode"):
            make_config("tiny", variant=variant, use_query_decoder=query, output_mode=mode)
        return
    model = build_model("tiny", variant=variant, image_size=32, use_query_decoder=query, masked_attention=masked,
                        output_mode=mode, query_layers=2)
    out = model(torch.randn(1, 3, 32, 32))
    cfg = model.cfg
    _check_output(out, 1, 32, ("nodule", "gland") if cfg.gland else ("nodule",))
    assert (out.recon is not None) == cfg.reconstruction and (out.size is not None) == cfg.size
    assert (out.nodule_queries is not None) == query
    out.nodule_logits.mean().backward()


def test_output_modes_differ_as_documented():
    torch.manual_seed(0)
    base = build_model("tiny", image_size=32, output_mode="transformer").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = base(x)
        base.cfg.output_mode = "cnn"
        cnn = base(x).nodule_logits
        base.cfg.output_mode = "sum"
        summed = base(x).nodule_logits
    torch.testing.assert_close(cnn, out.nodule_aux_logits)
    torch.testing.assert_close(summed, out.nodule_logits + out.nodule_aux_logits)


def test_phase1_heads_subset_and_errors():
    model = build_model("tiny", image_size=32)
    out = model(torch.randn(1, 3, 32, 32), heads=("recon",))
    assert out.recon is not None and out.nodule_logits is None and out.size is None
    no_rec = build_model("tiny", variant="1_baseline", image_size=32)
    with pytest.raises(ValueError, match="recon"):
        no_rec(torch.randn(1, 3, 32, 32), heads=("recon",))


def test_bad_overrides_fail_loudly():
    with pytest.raises(KeyError, match="num_querys"):
        build_model("tiny", num_querys=4)
    with pytest.raises(TypeError, match="num_queries"):
        build_model("tiny", num_queries="4")
    with pytest.raises(ValueError, match="preset"):
        build_model("huge")
    with pytest.raises(ValueError, match="multiple of 16"):
        build_model("tiny", image_size=100)


def test_baselines_from_the_same_entry_point():
    for name in ("unet", "trfe"):
        model = build_model(name)
        out = model(torch.randn(1, 3, 64, 64))
        assert out.nodule_logits.shape == (1, 1, 64, 64)


def test_pretrained_weights_from_local_file(tmp_path):
    ref = timm.create_model("vit_base_r50_s16_224", pretrained=False, num_classes=0, img_size=32)
    file = tmp_path / "r50_vit.pth"
    torch.save(ref.state_dict(), file)
    model = build_model("paper", image_size=32, pretrained_file=str(file), gland=False, use_query_decoder=False,
                        output_mode="cnn")
    torch.testing.assert_close(model.encoder.vit.blocks[3].mlp.fc1.weight, ref.blocks[3].mlp.fc1.weight)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model("paper", image_size=32, pretrained_file=str(tmp_path / "missing.pth"))


# ----------------------------------------------------------------------------- cheaper, identical computations


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("masked", [True, False])
def test_cross_attention_on_tokens_equals_eq4_as_written(fused, masked):
    """QueryLayer with key_proj never forms keys/values (queries moved into token space, separable sine
    positions); the plain path projects the level and adds positions: same values, same grads."""
    from ssmt_lib.decoders import KeyPositions, QueryLayer

    layer, proj = QueryLayer(32, 4, 64, fused), torch.nn.Conv2d(8, 32, 1)
    level = torch.randn(2, 8, 6, 5)
    tokens = level.flatten(2).transpose(1, 2)  # (B, h*w, C_l)
    p, p_pos = torch.randn(2, 7, 32), torch.randn(1, 7, 32)
    pos = KeyPositions(6, 5, torch.randn(32, requires_grad=True))
    allowed = None
    if masked:
        allowed = torch.rand(2, 4, 7, 30) > 0.3
        allowed[..., 0] = True  # no empty row
    params = [proj.weight, proj.bias, layer.cross_attn.q.weight, layer.cross_attn.k.weight, layer.cross_attn.k.bias,
              layer.cross_attn.v.weight, layer.cross_attn.v.bias, pos.level]
    plain = layer(p, p_pos, proj(level).flatten(2).transpose(1, 2), pos.dense(), allowed)
    grads_plain = torch.autograd.grad(plain.square().sum(), params)
    on_tokens = layer(p, p_pos, tokens, pos, allowed, key_proj=proj)
    grads_tokens = torch.autograd.grad(on_tokens.square().sum(), params)
    torch.testing.assert_close(on_tokens, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_tokens, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # the level embedding and the key bias shift every score of a query alike: softmax ignores them
    assert grads_plain[-1].abs().max() < 1e-5 and grads_plain[4].abs().max() < 1e-5
    with pytest.raises(TypeError, match="KeyPositions"):
        layer(p, p_pos, tokens, pos.dense(), allowed, key_proj=proj)
    with pytest.raises(TypeError, match="key is value"):
        layer.cross_attn(p, tokens, tokens.clone(), allowed, key_proj=proj, key_pos=pos)


def test_cross_attention_on_tokens_is_recorded():
    from ssmt_lib.decoders import KeyPositions, QueryLayer

    layer, proj = QueryLayer(16, 2, 32, True), torch.nn.Conv2d(8, 16, 1)
    tokens, pos = torch.randn(1, 12, 8), KeyPositions(3, 4, torch.randn(16))
    with record_attention(layer) as maps:
        layer(torch.randn(1, 5, 16), torch.randn(1, 5, 16), tokens, pos, None, key_proj=proj)
    weights = maps["cross_attn"]
    assert weights.shape == (1, 2, 5, 12)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 5))


@pytest.mark.parametrize("shift", [None, "random"])
def test_separable_key_positions_equal_the_dense_projection(shift):
    """rows[i] + cols[j] + const from KeyPositions.projected_parts equals linear(sine grid + level + shift), grads too."""
    from ssmt_lib.decoders import KeyPositions, sine_position_embedding

    level = torch.randn(16, requires_grad=True)
    linear = torch.nn.Linear(16, 24)
    b = torch.randn(16) if shift else None
    pos = KeyPositions(5, 7, level)
    dense = pos.dense()
    torch.testing.assert_close(dense, (sine_position_embedding(5, 7, 16) + level)[None])
    expected = linear(dense + (0 if b is None else b))  # (1, 35, 24)
    rows, cols, const = pos.projected_parts(linear, shift=b)
    got = (rows[:, None] + cols[None] + const).reshape(1, 35, 24)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(expected)
    g_expected = torch.autograd.grad((expected * weights).sum(), [linear.weight, linear.bias, level])
    g_got = torch.autograd.grad((got * weights).sum(), [linear.weight, linear.bias, level])
    for a, e in zip(g_got, g_expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_query_masks_equal_eq7_with_the_pixel_embedding_formed():
    """predict() moves the 1x1 pixel projection onto the queries; Z must equal MLP(LN(P)) . (W_p F + b_p)."""
    model = build_model("tiny", image_size=32, mask_dim=12)  # mask_dim != pixel channels
    qd = model.query_decoders["nodule"]
    torch.nn.init.normal_(qd.pixel_proj.bias)
    p, pixel = torch.randn(2, qd.query_feat.num_embeddings, qd.norm.normalized_shape[0]), torch.randn(2, 8, 32, 32)
    pred = qd.predict(p, pixel)
    expected = torch.einsum("bnc,bchw->bnhw", qd.mask_mlp(qd.norm(p)), qd.pixel_proj(pixel))
    torch.testing.assert_close(pred.mask_logits, expected, rtol=1e-5, atol=1e-5)
    size = (8, 8)
    torch.testing.assert_close(pred.mask_logits_resized(size), F.interpolate(expected, size=size, mode="bilinear"),
                               rtol=1e-5, atol=1e-5)
    from ssmt_lib.outputs import QueryPrediction, predictions_on_grid

    (on_grid,) = predictions_on_grid([pred], 2, (1, 0))
    torch.testing.assert_close(on_grid.mask_logits, expected[..., 1::2, 0::2], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mask_bias"):
        QueryPrediction(pred.class_logits, mask_embed=pred.mask_embed, pixel_embed=pixel, mask_bias=torch.zeros(2))


def test_batch_norm_in_nchw_on_cpu_matches_torch():
    """decoders.BatchNorm2d runs channels_last input in NCHW: same output, stats, grads; output stays channels_last."""
    from ssmt_lib.decoders import BatchNorm2d

    ours, ref = BatchNorm2d(6), torch.nn.BatchNorm2d(6)
    x = torch.randn(4, 6, 9, 7).contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    assert ya.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ya, yb)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    w = torch.randn_like(ya)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    assert ours.state_dict().keys() == ref.state_dict().keys()


def test_factored_masks_equal_full_masks_sampled_and_resized():
    from ssmt_lib.outputs import QueryPrediction, predictions_on_grid

    mask_embed, pixel_embed = torch.randn(2, 5, 8), torch.randn(2, 8, 32, 32)
    factored = QueryPrediction(torch.randn(2, 5, 2), mask_embed=mask_embed, pixel_embed=pixel_embed)
    full = torch.einsum("bnd,bdhw->bnhw", mask_embed, pixel_embed)
    ready = QueryPrediction(factored.class_logits, full)
    for stride, offset in ((1, (0, 0)), (2, (1, 0)), (3, (2, 1))):
        a, b = predictions_on_grid([factored, ready], stride, offset)
        torch.testing.assert_close(a.mask_logits, full[..., offset[0]::stride, offset[1]::stride], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.mask_logits, a.mask_logits, rtol=1e-5, atol=1e-5)
    for size in ((16, 16), (8, 8), (4, 4)):  # bilinear resizing is linear, so it commutes with eq. 7
        expected = F.interpolate(full, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(factored.mask_logits_resized(size), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(factored.mask_logits, full)
    with pytest.raises(ValueError, match="either mask_logits or both"):
        QueryPrediction(factored.class_logits, full, mask_embed=mask_embed, pixel_embed=pixel_embed)
    with pytest.raises(ValueError, match="either mask_logits or both"):
        QueryPrediction(factored.class_logits, mask_embed=mask_embed)
    with pytest.raises(ValueError, match="does not fit"):
        QueryPrediction(factored.class_logits, mask_embed=mask_embed, pixel_embed=pixel_embed[:, :4])
    with pytest.raises(ValueError, match="offset"):
        predictions_on_grid([factored], 2, (2, 0))


def test_training_step_forms_only_the_reported_full_resolution_masks():
    """Intermediate predictions reach the loss on the pixel grid; only the last one is formed in full (reported map)."""
    from ssmt_lib.data import build_dataset
    from ssmt_lib.losses import total_loss

    cfg = make_config("tiny", image_size=64, points=256)  # 64x64 -> stride 4 grid
    model = build_model(config=cfg)
    ds = build_dataset("phantom", split="train", n=2, image_size=64)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    out = model(batch["image"])
    loss, _ = total_loss(out, batch, cfg.loss)
    loss.backward()
    for task in ("nodule", "gland"):
        preds = out.queries(task)
        assert all(p._mask_logits is None for p in preds[:-1])
        assert preds[-1]._mask_logits is not None
    assert all(p.grad is not None for n, p in model.named_parameters() if "query_decoders" in n and "class_head" not in n)


def test_paper_switches_class_token_and_decoder_input():
    """README "Deviations from the paper": the switches that restore the paper's choices run."""
    x = torch.randn(2, 3, 32, 32)
    plain = build_model("tiny", image_size=32, class_token=False)  # eq. 1: patch tokens only
    assert plain.encoder.vit.cls_token is None and plain.encoder.vit.pos_embed.shape[1] == 4  # 2x2 grid
    feats = plain.encoder(x)
    assert feats.prefix == 0 and feats.tokens.shape == (2, 4, 96) and feats.f_t.shape == (2, 96, 2, 2)
    assert plain(x).size.shape == (2,)
    for mode, reaches in (("fused", True), ("tokens", False)):  # does F_C reach the nodule map?
        model = build_model("tiny", image_size=32, decoder_input=mode, reconstruction=False).eval()
        model(x).nodule_aux_logits.square().mean().backward()  # the CNN decoder; eval: BN is affine
        grad = model.proj_c[0].weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == reaches, mode
