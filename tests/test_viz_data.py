"""Data views (ssmt_lib.viz.data): every plotting function returns a Figure on tiny inputs."""
import io

import albumentations as A
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from ssmt_lib.data import build_dataset, phantom
from ssmt_lib.viz.data import (
    phantom_frame,
    plot_dataset_stats,
    show_anatomy,
    show_augmentations,
    show_gallery,
    show_samples,
    speckle_view,
)

S = 64  # small side keeps every test fast
CFG = phantom.PhantomConfig(image_size=S)


@pytest.fixture(scope="module")
def samples():
    return [phantom.sample(i, config=CFG, return_aux=True) for i in (8, 11, 21, 0)]


@pytest.fixture(scope="module")
def dataset():
    return build_dataset("phantom", split="train", n=8, image_size=S, augment=True, stitch_prob=0.5)


def _check(fig, n_axes_min=1):
    assert isinstance(fig, Figure)
    fig.savefig(io.BytesIO(), format="png", dpi=20)  # layout and drawing run without error
    drawn = [ax for ax in fig.axes if ax.images or ax.patches or ax.collections or ax.lines]
    assert len(drawn) >= n_axes_min, len(drawn)


def test_show_samples_titles_and_contours(samples):
    fig = show_samples(samples, ncols=2)
    _check(fig, len(samples))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == f"size {samples[0]['size']:.3f} · TR{samples[0]['tirads_level']} · " + (
        "malignant" if samples[0]["malignant"] else "benign")
    assert titles[-1] == "size 0.000 · no nodule"  # sample 0 has no nodule
    assert fig.axes[0].collections, "nodule/gland contours missing"  # sample 8 has a nodule
    with pytest.raises(ValueError, match="titles"):
        show_samples(samples, titles=["one"])
    headed = show_samples(samples[:1], headers=["lobe view"])
    assert headed.axes[0].get_title() == "lobe view\n" + titles[0]


def test_show_samples_dataset_items_skip_unlabelled_masks(dataset):
    item = dict(dataset[0], has_gland=False)
    fig = show_samples([item], titles=["x"])
    levels = [c.levels for c in fig.axes[0].collections]
    assert len(levels) <= 1  # at most the nodule contour: the gland is not a label here
    assert fig.axes[0].images[0].get_array().max() <= 1.0  # denormalised for display


def test_show_anatomy_labels_structures(samples):
    s = phantom.sample(21, return_aux=True)  # a bilateral view at full size
    fig = show_anatomy(s)
    _check(fig)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"skin", "isthmus", "trachea (air arc)", "carotid / jugular"} <= texts, texts
    assert sum(t.startswith("nodule") for t in texts) >= 1
    with pytest.raises(ValueError, match="return_aux"):
        show_anatomy(phantom.sample(21, config=CFG))


def test_show_gallery_one_column_per_category():
    rows = {f: phantom.gallery(config=CFG, feature=f, index=2) for f in ("shape", "foci")}
    fig = show_gallery(rows)
    _check(fig, 7)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titled) == len(phantom.SHAPE_POINTS) + len(phantom.FOCI_POINTS)
    assert titled[1].startswith("taller_than_wide (3 pt)")
    assert len(fig.axes) == 2 * max(len(phantom.SHAPE_POINTS), len(phantom.FOCI_POINTS))
    one_row = show_gallery(rows["shape"], crop=None)
    assert one_row.axes[0].images[0].get_array().shape == (S, S)  # no crop: whole image


def test_show_augmentations_random_and_named(dataset):
    state = torch.get_rng_state()
    fig = show_augmentations(dataset, 1, n=3, stitch_with=2)
    assert torch.equal(state, torch.get_rng_state())  # draws are forked: caller's RNG untouched
    _check(fig, 5)
    titles = [ax.get_title().split("\n")[0] for ax in fig.axes if ax.get_title()]
    assert titles == ["original", "draw 1", "draw 2", "draw 3", "stitched"]
    flip = show_augmentations(dataset, 1, transforms={"flip": A.HorizontalFlip(p=1.0)})
    orig, flipped = (ax.images[0].get_array() for ax in flip.axes[:2])
    np.testing.assert_allclose(np.asarray(flipped), np.asarray(orig)[:, ::-1], atol=1e-6)
    ops = {"rotate": A.Affine(rotate=(-15, 15), p=1.0)}

    def shown(seed):
        return np.asarray(show_augmentations(dataset, 1, transforms=ops, seed=seed).axes[1].images[0].get_array())

    np.testing.assert_array_equal(shown(1), shown(1))  # seeded: the same figure twice
    assert not np.array_equal(shown(1), shown(2))
    with pytest.raises(IndexError):
        show_augmentations(dataset, len(dataset))


def test_dataset_stats_frame_and_plot():
    b = phantom.batch(24, config=CFG)
    frame = phantom_frame(b)
    assert len(frame) == 24 and list(frame["tirads_level"]) == b["tirads_level"].tolist()
    assert (frame["n_nodules"] == 0).sum() == (b["tirads_level"] == 0).sum()
    fig = plot_dataset_stats(frame)
    _check(fig, 3)
    assert len(fig.axes) == 3
    assert f"{len(frame)} images" in fig.axes[1].get_title()
    with pytest.raises(ValueError, match="malignant"):
        plot_dataset_stats(frame.drop(columns="malignant"))


def test_speckle_view_changes_with_speckle():
    on = speckle_view(21, speckle=True, image_size=S)
    off = speckle_view(21, speckle=False, image_size=S)
    _check(on, 2)
    img_on, img_off = (np.asarray(f.axes[0].images[0].get_array()) for f in (on, off))
    assert img_on.shape == (S, S) and not np.array_equal(img_on, img_off)
    ratio = [float(f.axes[1].get_title().split("=")[-1]) for f in (on, off)]
    assert ratio[0] > ratio[1]  # speckle widens the parenchyma's grey-level spread
    with pytest.raises(ValueError, match="profile"):
        speckle_view(0, profile="nope")
