"""Dataset loaders, bad-input handling, augmentation and the combined training sets."""
from __future__ import annotations

import io
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ssmt_lib.data import (
    ITEM_KEYS,
    DatasetError,
    build_dataset,
    build_training_set,
    denormalize,
    eval_transform,
    patient_split,
    read_mask,
    stitch,
    task_balanced_sampler,
    train_transform,
    unlabeled_pool,
)

S = 32  # model input side used in these tests (small: fast)


# ----------------------------------------------------------------------------- fixture writers

def _scan(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey 'scan' with a bright rectangle and its 0/255 mask."""
    rng = np.random.default_rng(seed)
    img = rng.integers(20, 90, (h, w), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: h // 2 + 2, w // 3: w // 3 + w // 4] = 255
    img[mask > 0] = 220
    return img, mask


def _save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _write_pairs(img_dir: Path, mask_dir: Path, stems, ext=".png", mask_ext=None, sizes=None) -> None:
    for k, stem in enumerate(stems):
        h, w = sizes[k] if sizes else (40, 48)
        img, mask = _scan(h, w, k)
        _save(img_dir / f"{stem}{ext}", img)
        _save(mask_dir / f"{stem}{mask_ext or ext}", mask)


def make_tn3k(root: Path, n_trainval: int = 8, n_test: int = 3) -> Path:
    stems = [f"{k:04d}" for k in range(n_trainval)]
    _write_pairs(root / "trainval-image", root / "trainval-mask", stems, ext=".jpg")
    _write_pairs(root / "test-image", root / "test-mask", [f"{k:04d}" for k in range(n_test)], ext=".jpg")
    for fold in range(5):
        val = [(fold + 2 * j) % n_trainval for j in range(2)]
        train = [k for k in range(n_trainval) if k not in val]
        (root / f"tn3k-trainval-fold{fold}.json").write_text(json.dumps({"train": train, "val": val}))
    return root


def make_tg3k(root: Path, n: int = 6) -> Path:
    _write_pairs(root / "thyroid-image", root / "thyroid-mask", [str(k) for k in range(n)], ext=".jpg")
    (root / "tg3k-trainval.json").write_text(json.dumps({"train": list(range(n - 2)), "val": [n - 2, n - 1]}))
    return root


def make_ddti(root: Path) -> Path:
    # DDTI as redistributed: integer stems, mixed case extensions, varying sizes
    sizes = [(36, 24), (36, 56), (30, 40), (36, 50), (40, 40), (36, 30), (36, 45), (32, 33), (36, 36), (36, 28)]
    for k, (h, w) in enumerate(sizes, start=1):
        img, mask = _scan(h, w, k)
        ext = [".PNG", ".png", ".jpg"][k % 3]
        _save(root / "image" / f"{k}{ext}", img)
        _save(root / "mask" / f"{k}{'.PNG' if ext == '.jpg' else ext}", mask)
    return root


def _check_item(item: dict, channels: int = 3, size: int = S) -> None:
    assert set(ITEM_KEYS) <= set(item)
    assert item["image"].dtype == torch.float32 and item["image"].shape == (channels, size, size)
    for key in ("nodule_mask", "gland_mask"):
        m = item[key]
        assert m.dtype == torch.float32 and m.shape == (1, size, size)
        assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert isinstance(item["has_nodule"], bool) and isinstance(item["has_gland"], bool)
    assert isinstance(item["size"], float) and isinstance(item["id"], str) and isinstance(item["patient"], str)
    assert item["size"] == pytest.approx(float(item["nodule_mask"].mean()) if item["has_nodule"] else 0.0)
    if not item["has_nodule"]:
        assert item["nodule_mask"].sum() == 0
    if not item["has_gland"]:
        assert item["gland_mask"].sum() == 0


# ----------------------------------------------------------------------------- layouts

def test_tn3k_layout_and_folds(tmp_path):
    root = make_tn3k(tmp_path / "tn3k")
    train = build_dataset("tn3k", root=root, split="train", fold=1, image_size=S)
    val = build_dataset("tn3k", root=root, split="val", fold=1, image_size=S)
    test = build_dataset("tn3k", root=root, split="test", image_size=S)
    trainval = build_dataset("tn3k", root=root, split="trainval", image_size=S)
    assert (len(train), len(val), len(test), len(trainval)) == (6, 2, 3, 8)
    # fold 1 val = indices 1 and 3 of the trainval files sorted by integer stem
    assert [val[k]["id"] for k in range(2)] == ["tn3k/trainval/0001", "tn3k/trainval/0003"]
    assert not {train[k]["id"] for k in range(6)} & {val[k]["id"] for k in range(2)}
    item = test[0]
    _check_item(item)
    assert item["has_nodule"] and not item["has_gland"]
    assert item["id"] == "tn3k/test/0000" and item["patient"] == item["id"]
    # rectangle covers (10x12 + 2 rows) of 40x48 -> about 0.0729 of the image
    assert 0.04 < item["size"] < 0.11


def test_tg3k_layout_indices_and_stems(tmp_path):
    root = make_tg3k(tmp_path / "tg3k")
    train = build_dataset("tg3k", root=root, split="train", image_size=S)
    assert len(train) == 4 and len(build_dataset("tg3k", root=root, split="val", image_size=S)) == 2
    item = train[0]
    _check_item(item)
    assert item["has_gland"] and not item["has_nodule"] and item["size"] == 0.0
    assert item["gland_mask"].sum() > 0
    # stems as strings are accepted too (documented)
    (root / "tg3k-trainval.json").write_text(json.dumps({"train": ["5", "2"], "val": [0]}))
    ids = [d["id"] for d in build_dataset("tg3k", root=root, split="train", image_size=S)]
    assert ids == ["tg3k/5", "tg3k/2"]
    with pytest.raises(ValueError, match="test"):
        build_dataset("tg3k", root=root, split="test")


def test_ddti_uppercase_extensions_mixed_sizes_and_splits(tmp_path):
    root = make_ddti(tmp_path / "ddti")
    full = build_dataset("ddti", root=root, split="all", image_size=S)
    assert len(full) == 10
    assert [full[k]["id"] for k in (0, 1, 9)] == ["ddti/1", "ddti/2", "ddti/10"]  # numeric order
    for k in range(len(full)):
        _check_item(full[k])
        assert full[k]["nodule_mask"].sum() > 0
    parts = {s: [d["id"] for d in build_dataset("ddti", root=root, split=s, image_size=S, test_fraction=0.3)]
             for s in ("train", "val", "test")}
    assert sorted(sum(parts.values(), [])) == sorted(full[k]["id"] for k in range(10))
    assert len(parts["test"]) == 3 and len(parts["val"]) == 1
    again = [d["id"] for d in build_dataset("ddti", root=root, split="test", image_size=S, test_fraction=0.3)]
    assert again == parts["test"]  # deterministic


def test_folder_and_unlabeled(tmp_path):
    _write_pairs(tmp_path / "f" / "images", tmp_path / "f" / "masks", ["a", "b", "c"])
    ds = build_dataset("folder", root=tmp_path / "f", split="all", image_size=S, mask_kind="gland")
    assert len(ds) == 3 and ds[0]["has_gland"] and not ds[0]["has_nodule"]
    ds2 = build_dataset("folder", split="all", image_size=S, image_dir=tmp_path / "f" / "images",
                        mask_dir=tmp_path / "f" / "masks", channels=1)
    _check_item(ds2[1], channels=1)
    _save(tmp_path / "u" / "sub" / "x.JPG", _scan(30, 30, 0)[0])
    _save(tmp_path / "u" / "y.bmp", _scan(30, 20, 1)[0])
    (tmp_path / "u" / "notes.txt").write_text("not an image")
    assert len(build_dataset("unlabeled", root=tmp_path / "u", image_size=S)) == 1
    unl = build_dataset("unlabeled", root=tmp_path / "u", image_size=S, recursive=True)
    assert len(unl) == 2
    item = unl[0]
    _check_item(item)
    assert not item["has_nodule"] and not item["has_gland"] and item["size"] == 0.0


# ----------------------------------------------------------------------------- masks

def test_jpeg_mask_binarized_at_127_not_by_max(tmp_path):
    mask = np.full((40, 40), 3, np.uint8)
    mask[10:30, 12:28] = 250
    path = _save(tmp_path / "m.jpg", mask, quality=70)
    raw = np.asarray(Image.open(path).convert("L"))
    assert len(np.unique(raw)) > 2  # genuine JPEG artefacts
    got = read_mask(path)
    np.testing.assert_array_equal(got, (raw > 127).astype(np.uint8))
    truth = mask > 127
    assert (got.astype(bool) == truth).mean() > 0.98
    assert (raw == raw.max()).sum() < 0.9 * truth.sum()  # what max()-normalisation would have kept
    # a {0, 1} JPEG mask: its two levels (blurred by compression) are found, not cut at 127
    faint = np.zeros((40, 40), np.uint8)
    faint[5:20, 5:20] = 1
    assert (read_mask(_save(tmp_path / "faint.jpg", faint)) == faint).mean() > 0.95


def test_png_mask_rules(tmp_path):
    m01 = np.zeros((20, 20), np.uint8)
    m01[5:10, 5:10] = 1
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "a.png", m01)), m01)
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "b.png", m01 * 255)), m01)
    grey = m01 * 100  # lossless 0/100: cut halfway between its levels, not at 127
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "c.png", grey)), m01)
    rgb = np.stack([m01 * 255, m01 * 0, m01 * 0], -1)  # red mask: brightest channel
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "d.png", rgb)), m01)


def test_empty_mask_is_a_valid_sample(tmp_path):
    root = make_tn3k(tmp_path / "tn3k", n_trainval=4, n_test=2)
    _save(root / "test-mask" / "0001.jpg", np.zeros((40, 48), np.uint8))
    item = build_dataset("tn3k", root=root, split="test", image_size=S)[1]
    assert item["has_nodule"] is True and item["size"] == 0.0 and item["nodule_mask"].sum() == 0


# ----------------------------------------------------------------------------- bad input

def _raises_with_path(path: Path, fn, **kw):
    with pytest.raises(DatasetError) as e:
        fn(**kw)
    assert str(path) in str(e.value), str(e.value)
    return e.value


def test_bad_inputs_name_the_path(tmp_path):
    root = make_tn3k(tmp_path / "tn3k")
    build = lambda **kw: build_dataset("tn3k", root=root, image_size=S, **kw)  # noqa: E731
    # missing mask
    mask = root / "trainval-mask" / "0002.jpg"
    mask.rename(mask.with_suffix(".bak"))
    _raises_with_path(root / "trainval-image" / "0002.jpg", build, split="trainval")
    mask.with_suffix(".bak").rename(mask)
    # a mask without its image (e.g. a deleted or misnamed image) is reported, not dropped
    orphan = root / "trainval-mask" / "0099.jpg"
    orphan.write_bytes(mask.read_bytes())
    _raises_with_path(orphan, build, split="trainval")
    with pytest.warns(UserWarning, match="skipped 1"):
        assert build(split="trainval", skip_bad=True).num_skipped == 1
    orphan.unlink()
    # unreadable image (not an image at all)
    bad = root / "trainval-image" / "0003.jpg"
    good_bytes = bad.read_bytes()
    bad.write_bytes(b"this is not a jpeg")
    _raises_with_path(bad, build, split="trainval")
    bad.write_bytes(good_bytes)
    # image/mask size mismatch: both paths in the message
    _save(root / "trainval-mask" / "0004.jpg", np.zeros((41, 48), np.uint8))
    err = _raises_with_path(root / "trainval-image" / "0004.jpg", build, split="trainval")
    assert str(root / "trainval-mask" / "0004.jpg") in str(err)
    _save(root / "trainval-mask" / "0004.jpg", _scan(40, 48, 4)[1])
    # split index out of range
    fold_json = root / "tn3k-trainval-fold2.json"
    fold_json.write_text(json.dumps({"train": [0, 1, 99], "val": [2]}))
    err = _raises_with_path(fold_json, build, split="train", fold=2)
    assert "99" in str(err)
    # missing fold json
    (root / "tn3k-trainval-fold3.json").unlink()
    _raises_with_path(root / "tn3k-trainval-fold3.json", build, split="val", fold=3)
    # empty folder
    for p in (root / "test-image").iterdir():
        p.unlink()
    _raises_with_path(root / "test-image", build, split="test")
    # missing root
    _raises_with_path(tmp_path / "nope", build_dataset, name="ddti", root=tmp_path / "nope")
    assert issubclass(DatasetError, ValueError)


def test_truncated_file_fails_at_load_or_with_full_verify(tmp_path):
    root = make_ddti(tmp_path / "ddti")
    path = root / "image" / "4.png"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (36, 50), dtype=np.uint8)).save(buf, "PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # header intact, pixels cut
    ds = build_dataset("ddti", root=root, split="all", image_size=S)  # cheap header check passes
    idx = [r.image for r in ds.records].index(path)
    _raises_with_path(path, lambda: ds[idx])
    _raises_with_path(path, build_dataset, name="ddti", root=root, split="all", verify="full")
    # skip_bad at load time: recorded and replaced by the next readable item
    lazy = build_dataset("ddti", root=root, split="all", image_size=S, skip_bad=True)
    with pytest.warns(UserWarning, match="skipped"):
        item = lazy[idx]
    assert item["id"] == "ddti/5" and lazy.num_skipped == 1 and lazy.skipped[0][0] == str(path)


def test_skip_bad_skips_counts_and_warns_once(tmp_path):
    root = make_tn3k(tmp_path / "tn3k")
    (root / "trainval-mask" / "0001.jpg").unlink()  # missing mask
    (root / "trainval-image" / "0005.jpg").write_bytes(b"garbage")  # unreadable
    (root / "tn3k-trainval-fold0.json").write_text(json.dumps({"train": [0, 1, 5, 6, 42], "val": [2]}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_dataset("tn3k", root=root, split="train", image_size=S, skip_bad=True)
    msgs = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(msgs) == 1 and "3" in msgs[0]
    assert len(ds) == 2 and ds.num_skipped == 3
    skipped_paths = [p for p, _ in ds.skipped]
    assert str(root / "trainval-image" / "0001.jpg") in skipped_paths
    assert str(root / "trainval-image" / "0005.jpg") in skipped_paths
    assert str(root / "tn3k-trainval-fold0.json") in skipped_paths
    assert [d["id"] for d in ds] == ["tn3k/trainval/0000", "tn3k/trainval/0006"]


def test_unknown_name_and_options(tmp_path):
    with pytest.raises(ValueError, match="tn5k"):
        build_dataset("tn5k")
    with pytest.raises(TypeError, match="colour"):
        build_dataset("phantom", n=4, colour=True)
    with pytest.raises(TypeError, match="mask_kind"):
        build_dataset("tn3k", root=tmp_path, mask_kind="gland")
    with pytest.raises(ValueError, match="fold"):
        build_dataset("ddti", root=tmp_path, fold=2)
    with pytest.raises(ValueError, match="split"):
        build_dataset("phantom", split="holdout")
    with pytest.raises(ValueError, match="root"):
        build_dataset("tn3k")


# ----------------------------------------------------------------------------- phantom

def test_phantom_items_and_patientwise_splits():
    parts = {s: build_dataset("phantom", split=s, n=40, seed=3, image_size=S) for s in ("train", "val", "test")}
    patients = {}
    for s, ds in parts.items():
        assert len(ds) == 40
        patients[s] = {ds.load_raw(k)["patient"] for k in range(len(ds))}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    item = parts["train"][0]
    _check_item(item)
    assert item["has_nodule"] and item["has_gland"] and item["gland_mask"].sum() > 0
    assert isinstance(item["tirads_level"], int) and isinstance(item["malignant"], bool)
    assert pickle.loads(pickle.dumps(parts["val"]))[1]["id"] == parts["val"][1]["id"]  # spawn workers
    other = build_dataset("phantom", n=2, profile="scanner_b", image_size=128)  # overlays need >= ~100 px
    _check_item(other[1], size=128)
    with pytest.raises(ValueError, match="scanner_z"):
        build_dataset("phantom", n=2, profile="scanner_z")
    # deterministic from seed
    again = build_dataset("phantom", split="train", n=40, seed=3, image_size=S)[0]
    assert torch.equal(again["image"], item["image"]) and again["id"] == item["id"]


def test_phantom_export_round_trip(tmp_path):
    from ssmt_lib.data import phantom

    root = phantom.export(tmp_path / "tn3k", "tn3k", n=20, seed=1, config=phantom.PhantomConfig(image_size=48))
    train = build_dataset("tn3k", root=root, split="train", image_size=S)
    test = build_dataset("tn3k", root=root, split="test", image_size=S)
    assert len(train) > 0 and len(test) > 0
    _check_item(train[0])
    gl = phantom.export(tmp_path / "tg3k", "tg3k", n=8, seed=1, config=phantom.PhantomConfig(image_size=48))
    item = build_dataset("tg3k", root=gl, split="trainval", image_size=S)[0]
    assert item["has_gland"] and item["gland_mask"].sum() > 0
    # DDTI layout at the export size: the loader's size target equals the generator's
    dd = phantom.export(tmp_path / "ddti", "ddti", n=6, seed=1, config=phantom.PhantomConfig(image_size=48))
    ds = build_dataset("ddti", root=dd, split="all", image_size=48)
    for k in range(len(ds)):
        truth = phantom.sample(k, seed=1, config=phantom.PhantomConfig(image_size=48))
        assert ds[k]["id"] == f"ddti/{k + 1}"
        assert ds[k]["size"] == pytest.approx(truth["size"], abs=1e-6)


# ----------------------------------------------------------------------------- augmentation

def _square_sample(h=64, w=64):
    img = np.full((h, w), 40, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[16:40, 20:52] = 1
    img[mask > 0] = 230
    return img, mask


def test_train_transform_keeps_masks_binary_and_aligned():
    img, mask = _square_sample()
    t = train_transform(48)
    from ssmt_lib.data.transforms import seed_transform

    moved = 0
    for seed in range(12):
        seed_transform(t, seed)
        out = t(image=np.repeat(img[..., None], 3, -1), mask=np.stack([mask, mask], -1))
        m = out["mask"][..., 0]
        assert out["image"].shape == (48, 48, 3) and out["image"].dtype == np.float32
        assert set(np.unique(out["mask"])) <= {0, 1}
        grey = denormalize(torch.from_numpy(out["image"].transpose(2, 0, 1)))[..., 0]
        inside, outside = grey[m > 0].mean(), grey[m == 0].mean()
        bright = grey > (inside + outside) / 2
        iou = (bright & (m > 0)).sum() / max((bright | (m > 0)).sum(), 1)
        assert iou > 0.85, (seed, iou)
        ref = np.asarray(Image.fromarray(mask * 255).resize((48, 48), Image.NEAREST)) > 0
        moved += int((ref != (m > 0)).mean() > 0.02)
    assert moved >= 4  # the pipeline really moves things


def test_eval_transform_and_denormalize_round_trip():
    img, _ = _square_sample(32, 32)
    out = eval_transform(32)(image=np.repeat(img[..., None], 3, -1), mask=np.zeros((32, 32, 2), np.uint8))
    back = denormalize(torch.from_numpy(out["image"].transpose(2, 0, 1)))
    assert back.shape == (32, 32, 3)
    np.testing.assert_allclose(back[..., 1], img / 255.0, atol=1e-5)
    one = eval_transform(32, channels=1)(image=img[..., None], mask=np.zeros((32, 32, 2), np.uint8))
    np.testing.assert_allclose(denormalize(one["image"].transpose(2, 0, 1)), img / 255.0, atol=1e-5)


def test_stitch_shapes_and_masks():
    ia, ma = _square_sample(40, 30)
    ib, mb = _square_sample(20, 50)
    a = {"image": ia, "nodule_mask": ma, "gland_mask": None, "id": "a", "patient": "p"}
    b = {"image": ib, "nodule_mask": mb, "gland_mask": None, "id": "b", "patient": "p"}
    side = stitch(a, b)  # a square of a's longer side, each scan in its half, aspect kept (A.Mosaic)
    assert side["image"].shape == (40, 40) and side["nodule_mask"].shape == (40, 40)
    assert side["gland_mask"] is None and side["id"] == "a+b" and side["patient"] == "p"
    big_a, big_b = _square_sample(160, 120), _square_sample(80, 200)  # large enough for nearest rounding
    wide = stitch(dict(a, image=big_a[0], nodule_mask=big_a[1]), dict(b, image=big_b[0], nodule_mask=big_b[1]))
    assert wide["image"].shape == (160, 160)
    for half, mask in zip((wide["nodule_mask"][:, :80], wide["nodule_mask"][:, 80:]), (big_a[1], big_b[1])):
        (ys, xs), (ys0, xs0) = np.nonzero(half), np.nonzero(mask)
        ratio, ratio0 = (np.ptp(ys) + 1) / (np.ptp(xs) + 1), (np.ptp(ys0) + 1) / (np.ptp(xs0) + 1)
        assert abs(ratio / ratio0 - 1) < 0.1, (ratio, ratio0)  # height/width kept: no aspect squash
    top = stitch(a, b, vertical=True, size=24)
    assert top["image"].shape == (24, 24) and set(np.unique(top["nodule_mask"])) <= {0, 1}
    assert top["nodule_mask"][:12].sum() > 0 and top["nodule_mask"][12:].sum() > 0  # both nodules kept
    with pytest.raises(ValueError, match="present in one sample"):
        stitch(a, dict(b, gland_mask=mb))


def test_augmented_dataset_with_stitching(tmp_path):
    root = make_ddti(tmp_path / "ddti")
    ds = build_dataset("ddti", root=root, split="all", image_size=S, augment=True, stitch_prob=1.0)
    torch.manual_seed(0)
    items = [ds[k] for k in range(4)]
    for item in items:
        _check_item(item)
        assert "+" in item["id"]
    assert pickle.loads(pickle.dumps(ds))[2]["image"].shape == (3, S, S)
    torch.manual_seed(0)
    assert torch.equal(ds[0]["image"], items[0]["image"])  # augmentation follows torch's seed


# ----------------------------------------------------------------------------- combining

def test_training_set_collate_and_sampler(tmp_path):
    tn = build_dataset("tn3k", root=make_tn3k(tmp_path / "tn3k"), split="train", image_size=S, augment=True)
    tg = build_dataset("tg3k", root=make_tg3k(tmp_path / "tg3k"), split="train", image_size=S)
    ph = build_dataset("phantom", split="train", n=4, image_size=S)
    mixed = build_training_set([tn, tg, ph])
    assert len(mixed) == 6 + 4 + 4 and mixed.task_counts == {"nodule": 10, "gland": 8}
    sampler = task_balanced_sampler(mixed, num_samples=400, generator=torch.Generator().manual_seed(0))
    kinds = mixed.sample_tasks()[list(sampler)]
    share_tn3k = (kinds[:, 0] & ~kinds[:, 1]).mean()
    assert 0.25 < share_tn3k < 0.42  # three label kinds drawn about equally
    batch = next(iter(DataLoader(mixed, batch_size=4, sampler=sampler)))
    assert set(batch) == set(ITEM_KEYS)
    assert batch["image"].shape == (4, 3, S, S) and batch["nodule_mask"].shape == (4, 1, S, S)
    assert batch["has_nodule"].dtype == torch.bool and batch["size"].shape == (4,)
    assert len(batch["id"]) == 4
    # the phantom alone collates with its extras
    pb = next(iter(DataLoader(ph, batch_size=4)))
    assert pb["tirads_level"].shape == (4,) and pb["malignant"].dtype == torch.bool
    with pytest.raises(ValueError, match="test"):
        build_training_set([build_dataset("tn3k", root=tmp_path / "tn3k", split="test", image_size=S)])


def test_unlabeled_pool(tmp_path):
    root = make_tn3k(tmp_path / "tn3k")
    tn = build_dataset("tn3k", root=root, split="train", image_size=S)
    tg = build_dataset("tg3k", root=make_tg3k(tmp_path / "tg3k"), split="train", image_size=S)
    (root / "trainval-mask" / "0000.jpg").write_bytes(b"broken")  # masks are never read in the pool
    pool = unlabeled_pool([build_training_set([tn, tg])])
    assert len(pool) == 10
    batch = next(iter(DataLoader(pool, batch_size=4)))
    assert not batch["has_nodule"].any() and not batch["has_gland"].any()
    assert batch["nodule_mask"].sum() == 0 and batch["gland_mask"].sum() == 0 and batch["size"].sum() == 0
    assert tn[1]["has_nodule"]  # the original dataset is unchanged
    with pytest.raises(ValueError, match="test"):
        unlabeled_pool([build_dataset("tn3k", root=root, split="test", image_size=S)])


def test_patient_split_is_patientwise_and_deterministic():
    ids = [f"s{k}" for k in range(100)]
    patients = [f"p{k // 4}" for k in range(100)]
    groups = patient_split(ids, patients, (0.7, 0.1, 0.2), seed=5)
    assert sorted(sum(groups, [])) == list(range(100))
    sets = [{patients[k] for k in g} for g in groups]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    for g, target in zip(groups, (70, 10, 20)):
        assert abs(len(g) - target) <= 4  # whole patients of 4 samples each
    assert groups == patient_split(ids, patients, (0.7, 0.1, 0.2), seed=5)
    assert groups != patient_split(ids, patients, (0.7, 0.1, 0.2), seed=6)
    with pytest.raises(ValueError, match="fractions"):
        patient_split(ids, patients, (0.7, 0.7))


def test_ddti_split_without_patient_ids_warns_image_wise(tmp_path):
    root = make_ddti(tmp_path / "ddti")
    with pytest.warns(UserWarning, match="no patient ids.*image-wise"):
        build_dataset("ddti", root=root, split="train", image_size=S)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with patient ids (or no split) nothing to warn about
        build_dataset("ddti", root=root, split="test", image_size=S, patient_regex=r"^(\d)")
        build_dataset("ddti", root=root, split="all", image_size=S)
