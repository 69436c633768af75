"""Attention viewing: recorders, rollout, and every plotting function on tiny inputs."""
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from ssmt_lib import build_model
from ssmt_lib.query_decoder import attention_mask_from_logits
from ssmt_lib.viz import (
    attention_rollout,
    level_grid,
    pos_embed_similarity,
    query_attention,
    record_attention,
    record_attention_masks,
    show_attention_heads,
    show_attention_map,
    show_coarse_to_fine,
    show_feature_maps,
    show_overlays,
    show_patch_grid,
    show_pos_embed_similarity,
    show_query_masks,
    show_token_grid,
    vit_attention,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def recorded():
    """A tiny SSMT-Net at 32 px, one forward with weights and masks recorded."""
    torch.manual_seed(0)
    model = build_model("tiny", image_size=32, gland=False).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), record_attention(model) as maps, record_attention_masks(model) as masks:
        out = model(x)
    return model, out, maps, masks


def _random_attention(*shape: int) -> torch.Tensor:
    return torch.rand(*shape).softmax(-1)


def _check(fig: Figure) -> None:
    assert isinstance(fig, Figure)
    assert fig.axes
    fig.canvas.draw()  # the whole figure renders
    plt.close(fig)


def test_rollout_rows_sum_to_one_and_equal_hand_loop():
    maps = [_random_attention(2, 3, 5, 5), _random_attention(2, 3, 5, 5)]
    got = attention_rollout(maps)
    assert got.shape == (2, 5, 5)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 5))
    for b in range(2):  # hand loop: mean over heads, + I, row-normalize, A2 @ A1
        steps = []
        for a in maps:
            m = torch.zeros(5, 5)
            for h in range(3):
                m += a[b, h] / 3
            m = m + torch.eye(5)
            steps.append(torch.stack([row / row.sum() for row in m]))
        torch.testing.assert_close(got[b], steps[1] @ steps[0])
    raw = attention_rollout([m[0] for m in maps], add_residual=False)  # (heads, N, N) inputs work too
    torch.testing.assert_close(raw, maps[1][0].mean(0) @ maps[0][0].mean(0))
    with pytest.raises(ValueError, match="at least one"):
        attention_rollout([])
    with pytest.raises(ValueError, match="attention map 0"):
        attention_rollout([torch.rand(3, 4, 5)])


def test_recorders_find_layers_in_order(recorded):
    model, out, maps, masks = recorded
    vit = vit_attention(maps)
    assert len(vit) == model.cfg.depth and vit[0].shape == (1, model.cfg.num_heads, 5, 5)  # 2x2 tokens + cls
    cross = query_attention(maps, "nodule")
    assert len(cross) == model.cfg.query_layers
    assert [c.shape[-1] for c in cross] == [4 * 4, 8 * 8, 16 * 16]  # 1/8, 1/4, 1/2 of 32 px
    allowed = query_attention(masks, "nodule")
    assert all(a.dtype == torch.bool and a.shape == c.shape for a, c in zip(allowed, cross))
    assert all(m is None for m in query_attention(masks, "nodule", kind="self_attn"))
    # the recorded mask is eq. 6 of the previous prediction: masked-out keys get zero weight
    for t, (a, c) in enumerate(zip(allowed, cross)):
        side = int(c.shape[-1] ** 0.5)
        expected = attention_mask_from_logits(out.nodule_queries[t].mask_logits, (side, side), model.cfg.query_heads)
        assert torch.equal(a, expected)  # eq. 6 of the previous prediction, as the layer received it
        assert (c.masked_select(~a) == 0).all()  # blocked keys get no weight
    with pytest.raises(KeyError, match="gland"):
        query_attention(maps, "gland")
    with pytest.raises(ValueError, match="kind"):
        query_attention(maps, "nodule", kind="ffn")


def test_masks_recorded_none_when_unmasked():
    model = build_model("tiny", image_size=32, gland=False, masked_attention=False)
    with torch.no_grad(), record_attention_masks(model) as masks:
        model(torch.randn(1, 3, 32, 32))
    assert all(m is None for m in query_attention(masks, "nodule"))
    with pytest.raises(ValueError, match="no ssmt_lib Attention"):
        with record_attention_masks(torch.nn.Linear(2, 2)):
            pass


def test_level_grid_and_pos_similarity():
    assert level_grid(12 * 12, (96, 96)) == (12, 12)
    assert level_grid(4 * 8, (32, 64)) == (4, 8)
    with pytest.raises(ValueError, match="grid"):
        level_grid(10, (32, 32))
    pos = torch.randn(12, 8)
    sim = pos_embed_similarity(pos, (3, 4))
    assert sim.shape == (3, 4, 3, 4)
    torch.testing.assert_close(torch.stack([sim[i, j, i, j] for i in range(3) for j in range(4)]), torch.ones(12))
    torch.testing.assert_close(sim, sim.permute(2, 3, 0, 1))  # symmetric
    with pytest.raises(ValueError, match="class token"):
        pos_embed_similarity(torch.randn(13, 8), (3, 4))


def test_token_and_patch_figures():
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    for p in (4, 6, 8):  # 6 does not divide 32: the dropped margin is shaded
        _check(show_patch_grid(image, p))
    _check(show_patch_grid(torch.rand(3, 32, 32), 8))
    with pytest.raises(ValueError, match="patch_size"):
        show_patch_grid(image, 0)
    with pytest.raises(ValueError, match="image"):
        show_patch_grid(np.zeros((2, 32, 32)), 4)
    _check(show_token_grid(image, (2, 2), token=(1, 0), saliency=np.random.rand(32, 32)))
    _check(show_token_grid(image, (4, 4)))
    fig = show_token_grid(image, (4, 4), token=(0, 3), saliency={"a": np.ones((32, 32)), "b": torch.rand(32, 32)})
    assert len(fig.axes) == 3
    _check(fig)
    with pytest.raises(ValueError, match="saliency 'a'"):
        show_token_grid(image, (4, 4), saliency={"a": np.ones((16, 16))})
    with pytest.raises(ValueError, match="outside"):
        show_token_grid(image, (2, 2), token=(2, 0))
    _check(show_feature_maps({"1/2": torch.randn(1, 6, 16, 16), "1/4": torch.randn(5, 8, 8)}, image, channels=3))
    _check(show_pos_embed_similarity(torch.randn(16, 8)))
    _check(show_pos_embed_similarity({"a": torch.randn(16, 8), "b": torch.randn(9, 8)}))


def test_attention_figures(recorded):
    model, out, maps, masks = recorded
    image = torch.rand(32, 32)
    vit = vit_attention(maps)
    _check(show_attention_heads(image, vit[-1][0], query=0, grid=(2, 2), prefix_tokens=1))
    roll = attention_rollout(vit)[0, 0, 1:]  # class token's rollout over the patches
    _check(show_attention_map(image, roll, grid=(2, 2), title="rollout", contour=image > 0.5))
    cross = query_attention(maps, "nodule")
    _check(show_overlays(image, {"masked": cross[0][0].mean(0)[1], "unmasked": cross[0][0].mean(0)[2]},
                         shared_scale=True))
    preds = out.nodule_queries
    _check(show_query_masks(image, preds[-1].mask_logits[0], preds[-1].class_logits[0], ncols=3))
    allowed = query_attention(masks, "nodule")
    _check(show_coarse_to_fine(image, [p.mask_logits[0] for p in preds], [a[0] for a in allowed],
                               [c[0] for c in cross], query=1, contour=image > 0.5))
    _check(show_coarse_to_fine(image, [p.mask_logits[0] for p in preds], [None] * len(cross),
                               [c[0] for c in cross], query=0))
    with pytest.raises(ValueError, match="T\\+1"):
        show_coarse_to_fine(image, [p.mask_logits[0] for p in preds[:2]], [None] * 3, [c[0] for c in cross], 0)
    with pytest.raises(ValueError, match="query 9"):
        show_attention_heads(image, cross[0][0], query=9)
    with pytest.raises(ValueError, match="query 6"):
        show_coarse_to_fine(image, [p.mask_logits[0] for p in preds], [None] * 3, [c[0] for c in cross], 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty ground truth draws no outline and no warning
        _check(show_attention_map(image, cross[0][0].mean(0)[0], contour=torch.zeros(32, 32)))


def test_architecture_map_labels_every_block_with_its_equation_and_an_importable_module():
    import importlib
    import re

    from ssmt_lib.viz import architecture_map
    from ssmt_lib.viz.architecture import BLOCKS, GROUPS

    fig = architecture_map()
    ax = fig.axes[0]
    boxes = {p.get_gid() for p in ax.patches}
    texts: dict[str, str] = {}
    for t in ax.texts:
        texts[t.get_gid()] = texts.get(t.get_gid(), "") + " " + t.get_text()
    paper_blocks = {"resnet", "vit", "fusion", "nodule_cnn", "nodule_query", "gland_cnn",
                    "gland_query", "reconstructor", "size", "losses"}
    assert paper_blocks <= {b.key for b in BLOCKS}
    for b in BLOCKS + GROUPS:
        assert b.key in boxes, b.key  # a drawn box ...
        label = texts[b.key] + texts.get(f"{b.key}:title", "")
        assert b.module in label, (b.key, label)  # ... labelled with its module
        assert re.search(r"(eq\.|Sec\.) \d", label), (b.key, label)  # ... and its equation
    covered = set()  # every numbered equation of the SSMT-Net paper (1-13) is on the map
    for first, last in re.findall(r"eq\. (\d+)(?:-(\d+))?", " ".join(texts.values())):
        covered |= set(range(int(first), int(last or first) + 1))
    assert covered == set(range(1, 14)), sorted(covered)
    modules = set(re.findall(r"ssmt_lib(?:\.\w+)+", " ".join(texts.values())))
    assert {"ssmt_lib.embed", "ssmt_lib.query_decoder", "ssmt_lib.losses"} <= modules
    for name in sorted(modules):  # the map names only modules that exist
        importlib.import_module(name)
    _check(fig)
