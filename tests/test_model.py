"""SSMT-Net model: shapes, switches, attention rules, parity with timm, the single ResNet pass."""
import itertools

import pytest
import timm
import torch

from ssmt_lib import build_model
from ssmt_lib.attention import Attention
from ssmt_lib.config import VARIANTS, make_config
from ssmt_lib.model import SSMTNet, count_parameters
from ssmt_lib.query_decoder import attention_mask_from_logits
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
