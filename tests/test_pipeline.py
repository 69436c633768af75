"""The two-stage pipeline (classify, then segment) and the train/evaluate/predict command line for it."""
from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssmt_lib.__main__ import main
from ssmt_lib.config import make_config
from ssmt_lib.data import DatasetError, phantom, read_image, read_mask
from ssmt_lib.pipeline import CSV_FIELDS, TwoStagePipeline
from ssmt_lib.train import fit

S = 64
KEYS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "auc")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A DDTI-TI-RADS export, a classifier trained on it and a U-Net trained on the phantom (tiny, 64 px)."""
    root = tmp_path_factory.mktemp("pipeline")
    data = phantom.export_ddti_tirads(root / "ddti_tirads", 40, seed=1,
                                      config=dataclasses.replace(phantom.PhantomConfig(), image_size=96))
    cfg = make_config("tiny", model__image_size=S, train__epochs=1, train__batch_size=8)
    fit(cfg, task="classify", model_name="resnet18", data="ddti_tirads", data_root=data, out_dir=root / "cls",
        progress=False)
    seg = make_config("tiny", baseline="unet", model__image_size=S, train__epochs=1, train__batch_size=8)
    fit(seg, model_name="unet", out_dir=root / "seg", progress=False, phantom_n=16)
    return {"data": data, "cls": root / "cls" / "best.pt", "seg": root / "seg" / "best.pt"}


def test_pipeline_on_an_exported_folder(runs, tmp_path):
    pipe = TwoStagePipeline.from_checkpoints(runs["cls"], runs["seg"])
    summary = pipe.predict_folder(runs["data"] / "images", tmp_path / "out")
    files = sorted((runs["data"] / "images").iterdir())
    assert summary["images"] == summary["predictions"] == len(files) == 40 and not summary["skipped"]
    with open(tmp_path / "out" / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(CSV_FIELDS) and len(rows) == 40
    for row in rows:
        image = read_image(runs["data"] / "images" / row["file"])
        mask = read_mask(tmp_path / "out" / row["mask"])
        assert mask.shape == image.shape == (int(row["height"]), int(row["width"]))
        assert int(row["area_px"]) == mask.sum() and 0.0 <= float(row["prob_malignant"]) <= 1.0
        if mask.any():
            ys, xs = np.nonzero(mask)
            assert [int(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")] == \
                   [xs.min(), ys.min(), xs.max(), ys.max()]
        else:
            assert row["bbox_x0"] == "" and row["nodules"] == "0"
        assert row["predicted"] == ("malignant" if float(row["prob_malignant"]) >= 0.5 else "benign")


def test_predict_one_image_matches_the_folder_run(runs, tmp_path):
    pipe = TwoStagePipeline.from_checkpoints(runs["cls"], runs["seg"])
    path = sorted((runs["data"] / "images").iterdir())[3]
    pred = pipe.predict(read_image(path))
    row = next(r for r in pipe.predict_folder(runs["data"] / "images", tmp_path / "o")["rows"] if r["file"] == path.name)
    assert row["area_px"] == pred.area_px and row["prob_malignant"] == pytest.approx(pred.prob_malignant, abs=1e-6)
    with pytest.raises(ValueError, match=r"\(H, W\) uint8 grey image"):
        pipe.predict(np.zeros((4, 4, 3), np.uint8))


def test_checkpoints_of_the_wrong_kind_are_refused(runs):
    with pytest.raises(ValueError, match=r"classifier checkpoint .* is a segmentation checkpoint \(model unet\)"):
        TwoStagePipeline.from_checkpoints(runs["seg"], runs["seg"])
    with pytest.raises(ValueError, match=r"segmenter checkpoint .* is a classifier checkpoint \(model resnet18\)"):
        TwoStagePipeline.from_checkpoints(runs["cls"], runs["cls"])


def test_bad_files_in_the_image_folder(runs, tmp_path):
    folder = Path(shutil.copytree(runs["data"] / "images", tmp_path / "imgs"))
    (folder / "notes.txt").write_text("scan list")
    pipe = TwoStagePipeline.from_checkpoints(runs["cls"], runs["seg"])
    with pytest.raises(DatasetError, match=r"not an image file: .*notes\.txt"):
        pipe.predict_folder(folder, tmp_path / "out")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut off")
    summary = pipe.predict_folder(folder, tmp_path / "out", skip_bad=True)
    assert summary["predictions"] == 40 and sorted(Path(p).name for p, _ in summary["skipped"]) == ["broken.jpg", "notes.txt"]
    (folder / "notes.txt").unlink()
    with pytest.raises(DatasetError, match=r"cannot read image .*broken\.jpg"):
        pipe.predict_folder(folder, tmp_path / "out")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "1_1.png")
    (folder / "broken.jpg").unlink()
    with pytest.raises(DatasetError, match="two images share the stem '1_1'"):
        pipe.predict_folder(folder, tmp_path / "out")
    with pytest.raises(DatasetError, match="image folder not found"):
        pipe.predict_folder(tmp_path / "missing", tmp_path / "out")


def test_cli_evaluate_and_predict(runs, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(runs["cls"]), "--split", "test", "--out", str(tmp_path / "e.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert all(k in printed and k in printed["majority"] for k in KEYS) and printed["task"] == "classify"
    assert printed["data_settings"]["data"] == "ddti_tirads"  # the data stored in the checkpoint
    assert main(["predict", "--classifier", str(runs["cls"]), "--segmenter", str(runs["seg"]),
                 "--images", str(runs["data"] / "images"), "--out", str(tmp_path / "pred")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["predictions"] == 40 and (tmp_path / "pred" / "predictions.csv").is_file()
    assert len(list((tmp_path / "pred" / "masks").glob("*.png"))) == 40


def test_cli_train_classify(tmp_path, capsys):
    assert main(["train", "--task", "classify", "--model", "alexnet", "--data", "phantom", "--phantom-n", "16",
                 "--epochs", "1", "--batch-size", "8", "--set", f"model.image_size={S}", "--model-option",
                 "class_weight=none", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert all(k in printed["test"] and k in printed["test"]["majority"] for k in KEYS)
    ckpt_cfg = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert ckpt_cfg["model_name"] == "alexnet"
    with pytest.raises(SystemExit, match="--fold"):
        main(["train", "--task", "classify", "--model", "alexnet", "--fold", "2", "--out", str(tmp_path / "x")])
