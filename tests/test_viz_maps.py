"""ssmt_lib.viz.maps: the recording, its small helpers, and every plotting function on tiny inputs."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from ssmt_lib import build_model
from ssmt_lib.query_decoder import attention_mask_from_logits
from ssmt_lib.viz.maps import (
    AttentionRecording,
    attention_mass,
    collect_attention,
    find_failure_cases,
    show_attention_explorer,
    show_cross_attention,
    show_failure_cases,
    show_vit_attention,
    upsample_map,
)


@pytest.fixture(scope="module")
def rec() -> AttentionRecording:
    """A tiny SSMT-Net at 32 px (2x2 tokens; levels 4x4, 8x8, 16x16), two images recorded."""
    torch.manual_seed(0)
    model = build_model("tiny", image_size=32, gland=False).eval()
    images = torch.randn(2, 3, 32, 32)
    truth = torch.zeros(2, 1, 32, 32)
    truth[:, :, 8:20, 10:22] = 1
    return collect_attention(model, images, truth=truth, ids=["a", "b"])


def _check(fig: Figure) -> None:
    assert isinstance(fig, Figure)
    assert fig.axes
    fig.canvas.draw()  # the whole figure renders
    plt.close(fig)


def test_collect_attention_shapes_and_eq6_masks(rec):
    B, H = 2, 32
    assert rec.images.shape == (B, H, H, 3) and rec.truth.shape == (B, H, H)
    assert float(rec.images.min()) >= 0 and float(rec.images.max()) <= 1
    assert rec.grid == (2, 2) and len(rec.vit) == 2
    assert all(v.shape == (B, 3, 5, 5) for v in rec.vit)
    assert rec.level_sizes == [(4, 4), (8, 8), (16, 16)]
    assert len(rec.mask_logits) == len(rec.class_logits) == len(rec.cross) + 1 == 4
    for t, (c, a) in enumerate(zip(rec.cross, rec.allowed)):
        assert c.shape == a.shape == (B, 2, 6, rec.level_sizes[t][0] * rec.level_sizes[t][1])
        torch.testing.assert_close(c.sum(-1), torch.ones(c.shape[:-1]))  # softmax rows
        assert torch.equal(a, attention_mask_from_logits(rec.mask_logits[t], rec.level_sizes[t], 2))
        assert (c[~a] == 0).all()  # blocked keys get no weight
    p = rec.p_object(0)
    assert p.shape == (6,) and bool(((p >= 0) & (p <= 1)).all())


def test_collect_attention_rejects_bad_input(rec):
    model = build_model("tiny", image_size=32, gland=False, use_query_decoder=False, output_mode="cnn").eval()
    with pytest.raises(ValueError, match="query decoder"):
        collect_attention(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        collect_attention(model, torch.randn(3, 32, 32))


def test_upsample_map_nearest_blocks_and_bilinear_constant():
    grid = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    np.testing.assert_array_equal(upsample_map(grid, (4, 4), mode="nearest"), np.kron(grid, np.ones((2, 2))))
    np.testing.assert_array_equal(upsample_map(grid.ravel(), (4, 4), grid=(2, 2), mode="nearest"),
                                  np.kron(grid, np.ones((2, 2))))
    np.testing.assert_allclose(upsample_map(np.full(16, 0.25), (32, 32)), 0.25, rtol=1e-6)
    with pytest.raises(ValueError, match="grid"):
        upsample_map(np.ones(6), (4, 4), grid=(2, 2))
    with pytest.raises(ValueError, match="mode"):
        upsample_map(grid, (4, 4), mode="cubic")


def test_attention_mass_counts_weight_inside_the_region():
    region = np.zeros((8, 8))
    region[:4, :4] = 1  # exactly the top-left cell of a 2x2 grid
    one_hot = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert float(attention_mass(one_hot, region)) == 1.0
    assert float(attention_mass(one_hot.flip(0), region)) == 0.0
    uniform = torch.full((3, 4), 0.25)  # several rows at once
    torch.testing.assert_close(attention_mass(uniform, region), torch.full((3,), 0.25))
    with pytest.raises(ValueError, match="keys"):
        attention_mass(torch.ones(5), region, grid=(2, 2))


def test_find_failure_cases_flags_vessel_hits_and_missed_small_nodules():
    S = 40  # 1 % of the image = 16 pixels
    truth, pred, vessels = (np.zeros((3, S, S), np.uint8) for _ in range(3))
    vessels[:, 30:36, 30:36] = 1
    pred[0, 30:33, 30:33] = 1  # 9 px on a vessel
    truth[1, 5:8, 5:8] = 1  # small nodule (9 px), missed
    truth[2, 5:8, 5:8] = 1  # small nodule, found
    pred[2, 5:8, 5:8] = 1
    truth[2, 20:30, 0:10] = 1  # large nodule, not small
    frame = find_failure_cases(pred, truth, vessels, ids=["fp", "miss", "ok"], small=0.01, min_fp_pixels=3)
    assert frame.loc["fp", "vessel_fp_pixels"] == 9 and frame.loc["fp", "vessel_fp"]
    assert not frame.loc["miss", "vessel_fp"] and not frame.loc["ok", "vessel_fp"]
    assert frame["small_nodules"].tolist() == [0, 1, 1]
    assert frame["missed_small"].tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="one shape"):
        find_failure_cases(pred[:2], truth, vessels)


def test_show_vit_attention(rec):
    _check(show_vit_attention(rec, index=1, layer=2, token=3))
    with pytest.raises(ValueError, match="token"):
        show_vit_attention(rec, token=4)
    with pytest.raises(ValueError, match="layer"):
        show_vit_attention(rec, layer=3)


def test_show_cross_attention(rec):
    _check(show_cross_attention(rec, index=0, queries=[0, 5], head=-1))
    _check(show_cross_attention(rec, index=1, queries=[2], head=1, smooth=False))
    with pytest.raises(ValueError, match="queries"):
        show_cross_attention(rec, queries=[6])
    with pytest.raises(ValueError, match="head"):
        show_cross_attention(rec, head=2)


def test_show_attention_explorer(rec):
    _check(show_attention_explorer(rec, index=1, layer=3, head=0, query=2, threshold=0.3))
    with pytest.raises(ValueError, match="index"):
        show_attention_explorer(rec, index=2)
    with pytest.raises(ValueError, match="threshold"):
        show_attention_explorer(rec, threshold=0.0)
    with pytest.raises(ValueError, match="layer"):
        show_attention_explorer(rec, layer=0)


def test_show_failure_cases(rec):
    truth = rec.truth.numpy()
    pred = truth[:, ::-1].copy()
    vessels = np.zeros_like(truth)
    vessels[:, 24:30, 2:8] = 1
    attention = [rec.cross[-1][i, :, 0].mean(0) for i in range(2)]  # flat (16*16,) maps
    _check(show_failure_cases(rec.images, truth, pred, vessels, attention, titles=["x", "y"]))
    _check(show_failure_cases(rec.images[:1], truth[:1], pred[:1]))
    with pytest.raises(ValueError, match="no cases"):
        show_failure_cases(rec.images[:0], truth[:0], pred[:0])
    with pytest.raises(ValueError, match="titles"):
        show_failure_cases(rec.images, truth, pred, titles=["x"])
