"""Reliability (issue 14): one run per folder, evaluate on the trained data, checked resumes, a NaN guard
on the weights, masks that never come out silently wrong, CLI number spellings, skip_bad counting,
broken symbolic links, sweep validation/naming/summaries, clear messages, workbook timeouts.

Training runs use the tiny preset at 32 px on 16 phantom images (1 pretrain + 2 supervised epochs);
notebooks are tiny dummies without torch.
"""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook
from PIL import Image

import ssmt_lib.train as train_module
from ssmt_lib import notebook_runner
from ssmt_lib.__main__ import _parse_sets, main
from ssmt_lib.checkpoints import load_checkpoint, model_from_checkpoint
from ssmt_lib.config import make_config
from ssmt_lib.data import DatasetError, build_dataset, read_mask
from ssmt_lib.data.reading import MaskWarning
from ssmt_lib.experiments import load_sweep, run_sweep
from ssmt_lib.notebook_runner import SweepError, run_workbook
from ssmt_lib.resume import ResumeError
from ssmt_lib.runlock import LOCK_NAME, RunLock, RunLockedError
from ssmt_lib.train import NonFiniteLossError, fit

SIZE, N = 32, 16


def _cfg(**overrides):
    base = {"model__image_size": SIZE, "train__epochs_pretrain": 1, "train__epochs": 2, "train__batch_size": 8}
    return make_config("tiny", **{**base, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished run (never modified by the tests: copy it before resuming)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    return fit(_cfg(), out_dir=out, progress=False, phantom_n=N), out


def _save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _scan(k: int, h: int = 40, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    img = np.random.default_rng(k).integers(20, 90, (h, w), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[10:22, 12:26] = 255
    img[mask > 0] = 220
    return img, mask


def _folder(root: Path, n: int = 4, ext: str = ".png") -> Path:
    for k in range(n):
        img, mask = _scan(k)
        _save(root / "images" / f"{k}{ext}", img)
        _save(root / "masks" / f"{k}.png", mask)
    return root


def _tn3k(root: Path, n: int = 8, folds: dict[int, list[int]] | None = None) -> Path:
    """A TN3K layout; ``folds`` maps fold -> validation indices (the rest train)."""
    for part, count in (("trainval", n), ("test", 3)):
        for k in range(count):
            img, mask = _scan(k)
            _save(root / f"{part}-image" / f"{k:04d}.jpg", img)
            _save(root / f"{part}-mask" / f"{k:04d}.jpg", mask)
    folds = folds or {}
    for fold in range(5):
        val = folds.get(fold, [fold, (fold + 4) % n])
        (root / f"tn3k-trainval-fold{fold}.json").write_text(
            json.dumps({"train": [k for k in range(n) if k not in val], "val": val}))
    return root


# ----------------------------------------------------------------------------- 1. one run per folder

def test_a_busy_run_folder_is_refused_and_a_stale_lock_taken_over(tmp_path):
    folder = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ssmt_lib.runlock import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)", str(folder)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError) as err:
            fit(_cfg(), out_dir=folder, progress=False, phantom_n=N)
        assert str(folder) in str(err.value) and f"pid {holder.pid}" in str(err.value)
        assert not (folder / "last.pt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: its lock file stays behind, stale
        holder.wait()
    assert (folder / LOCK_NAME).is_file()
    with pytest.warns(UserWarning, match=f"stale lock of pid {holder.pid}"):
        with RunLock(folder):
            with pytest.raises(RunLockedError, match="this process"):
                RunLock(folder).acquire()  # a second run in the same process is refused too
    assert not (folder / LOCK_NAME).exists()  # released and removed


def test_a_finished_run_leaves_no_lock(run):
    _, out = run
    assert not (out / LOCK_NAME).exists()


# ----------------------------------------------------------------------------- 2. evaluate on the trained data

def test_evaluate_uses_the_checkpoints_data_settings(run, tmp_path):
    _, out = run
    stored = load_checkpoint(out / "best.pt")["data"]
    assert stored["data"] == "phantom" and stored["phantom_n"] == N and stored["fold"] == 0
    dest = tmp_path / "new" / "folder" / "eval.json"  # a missing folder is made (case 10)
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--out", str(dest)]) == 0
    written = json.loads(dest.read_text())
    assert written["nodule"]["n"] == 8  # phantom_n 16 -> 8 test images (the default 256 would give 64)
    with pytest.warns(UserWarning, match=r"phantom_n=40 differs from the checkpoint's phantom_n=16"):
        main(["evaluate", "--checkpoint", str(out / "best.pt"), "--phantom-n", "40", "--out", str(dest)])
    assert json.loads(dest.read_text())["nodule"]["n"] == 10  # as asked: 40 // 4


def test_evaluate_scores_the_fold_the_model_was_trained_on(tmp_path):
    root = _tn3k(tmp_path / "tn3k", folds={0: [0, 1], 3: [4, 5, 6]})
    out = tmp_path / "fold3"
    fit(_cfg(train__epochs_pretrain=0, train__epochs=1, model__gland=False), data="tn3k", data_root=root,
        out_dir=out, progress=False, fold=3)
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--split", "val"]) == 0
    written = json.loads((out / "eval_tn3k_val.json").read_text())
    assert written["data_settings"]["fold"] == 3 and written["nodule"]["n"] == 3  # fold 0's val has 2


# ----------------------------------------------------------------------------- 3. resume checks its config

def test_resume_refuses_changed_settings_listing_the_keys(run):
    _, out = run
    before = (out / "last.pt").read_bytes()
    with pytest.raises(ResumeError, match=r"train\.lr: 0\.001 -> 0\.0001"):
        fit(_cfg(train__lr=1e-4), out_dir=out, progress=False, phantom_n=N)
    with pytest.raises(ResumeError, match=r"last\.pt.*model\.num_queries: 6 -> 4"):  # architecture: names last.pt
        fit(_cfg(model__num_queries=4), out_dir=out, progress=False, phantom_n=N)
    with pytest.raises(ResumeError, match=r"train\.epochs: 2 -> 1 \(a resumed run may be extended, not shortened"):
        fit(_cfg(train__epochs=1), out_dir=out, progress=False, phantom_n=N)
    with pytest.raises(ResumeError, match=r"data\.phantom_n: 16 -> 24"):
        fit(_cfg(), out_dir=out, progress=False, phantom_n=24)
    assert (out / "last.pt").read_bytes() == before


def test_extending_epochs_continues_phase_two(run, tmp_path):
    result, out = run
    ext = tmp_path / "extended"
    shutil.copytree(out, ext)
    calls = []
    again = fit(_cfg(train__epochs=3), out_dir=ext, progress=False, phantom_n=N, callbacks=(calls.append,))
    assert [(r["phase"], r["epoch"]) for r in calls] == [(2, 3)]  # one new epoch, the old ones kept
    assert again.history[:3] == result.history
    metrics = json.loads((ext / "metrics.json").read_text())
    assert metrics["config"]["train"]["epochs"] == 3 and len(metrics["history"]) == 4
    last = load_checkpoint(ext / "last.pt")
    steps_per_epoch = last["scheduler"]["total_steps"] // 3  # the plan is the new length's
    assert last["scheduler"]["steps"] == last["scheduler"]["total_steps"] == 3 * steps_per_epoch


# ----------------------------------------------------------------------------- 4. NaN guard on the weights

@pytest.mark.parametrize("poison", ["parameter", "optimizer state"])
def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch, poison):
    real = train_module._train_epoch

    def blow_up_in_the_last_step(model, raw_model, loader, opt, sched, cfg, phase, *rest):
        record = real(model, raw_model, loader, opt, sched, cfg, phase, *rest)  # the loss stayed finite
        if phase == 2:
            p = next(raw_model.parameters())
            with torch.no_grad():
                if poison == "parameter":
                    p.mul_(float("inf"))
                else:
                    opt.state[p]["exp_avg_sq"].fill_(float("nan"))
        return record

    monkeypatch.setattr(train_module, "_train_epoch", blow_up_in_the_last_step)
    saved = {}
    with pytest.raises(NonFiniteLossError, match="non-finite weights or optimizer state after phase 2, epoch 1"):
        fit(_cfg(train__epochs=1), out_dir=tmp_path, progress=False, phantom_n=N,
            callbacks=(lambda r: saved.setdefault("bytes", (tmp_path / "last.pt").read_bytes()),))
    assert (tmp_path / "last.pt").read_bytes() == saved["bytes"]  # the phase-1 checkpoint, untouched
    assert load_checkpoint(tmp_path / "last.pt")["next_phase"] == 2 and not (tmp_path / "best.pt").exists()


# ----------------------------------------------------------------------------- 5. mask binarisation

def test_masks_are_binarised_by_a_rule_that_fits_the_file(tmp_path):
    square = np.zeros((40, 40), np.uint8)
    square[8:24, 10:30] = 1
    jpeg01 = read_mask(_save(tmp_path / "m01.jpg", square, quality=90))
    assert (jpeg01 == square).mean() > 0.95 and jpeg01.sum() > 0.8 * square.sum()  # was all empty
    m16 = _save(tmp_path / "m16.png", (square * 100).astype(np.uint16))
    assert Image.open(m16).mode.startswith("I") and (read_mask(m16) == square).all()  # 16-bit 0/100
    rgba = np.full((40, 40, 4), 255, np.uint8)
    rgba[..., 3] = square * 255  # drawn in alpha only, white everywhere
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "alpha.png", rgba)), square)  # was all foreground
    rgba[..., :3] = 0
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "alpha_black.png", rgba)), square)


@pytest.mark.parametrize("value, kind", [(0, "empty"), (255, "full")])
def test_a_dataset_whose_masks_are_all_empty_or_full_warns(tmp_path, value, kind):
    root = _folder(tmp_path / "set")
    for p in (root / "masks").iterdir():
        _save(p, np.full((40, 48), value, np.uint8))
    with pytest.warns(MaskWarning, match=f"all 4 checked masks are {kind}"):
        build_dataset("folder", root=root, split="all", image_size=SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaskWarning)
        build_dataset("folder", root=_folder(tmp_path / "fine"), split="all", image_size=SIZE)  # no warning


# ----------------------------------------------------------------------------- 6. number spellings

def test_set_accepts_ordinary_number_spellings():
    sets = _parse_sets(["train.lr=1e-4", "train.min_lr=2.5E-7", "train.weight_decay=0.01", "loss.alpha=.8",
                        "train.epochs=3", 'model.pretrained_file="1e5"'])
    assert sets == {"train.lr": 1e-4, "train.min_lr": 2.5e-7, "train.weight_decay": 0.01, "loss.alpha": 0.8,
                    "train.epochs": 3, "model.pretrained_file": "1e5"}
    cfg = make_config("tiny", **{k.replace(".", "__"): v for k, v in sets.items() if k != "model.pretrained_file"})
    assert cfg.train.lr == 1e-4


# ----------------------------------------------------------------------------- 7. skip_bad counts files

def test_skip_bad_counts_distinct_files_and_names_the_stand_in(tmp_path):
    root = _folder(tmp_path / "set")
    bad = root / "images" / "1.png"
    buf = io.BytesIO()
    Image.fromarray(_scan(1)[0]).save(buf, "PNG")
    bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # header intact, pixels cut
    ds = build_dataset("folder", root=root, split="all", image_size=SIZE, skip_bad=True)
    assert len(ds) == 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = [[ds[i]["id"] for i in range(len(ds))] for _ in range(3)]  # three epochs
    stand_in = [str(w.message) for w in caught if "stands in" in str(w.message)]
    assert len(stand_in) == 1 and str(bad) in stand_in[0] and "folder/images/2" in stand_in[0]
    assert ds.num_skipped == 1 and ds.skipped[0][0] == str(bad)  # was 1, 2, 3
    assert ds.replaced == {1: 2} and ids[0].count("folder/images/2") == 2


# ----------------------------------------------------------------------------- 8. broken symbolic links

def test_symlink_loops_and_dangling_links_are_reported(tmp_path):
    root = _folder(tmp_path / "set")
    for sub in ("images", "masks"):
        (root / sub / "1.png").unlink()
        os.symlink("1.png", root / sub / "1.png")  # a link to itself: a loop
    with pytest.raises(DatasetError, match=r"1\.png.*symbolic link loop") as err:
        build_dataset("folder", root=root, split="all", image_size=SIZE)
    assert str(root / "images" / "1.png") in str(err.value)  # the image, not "a mask without image"
    with pytest.warns(UserWarning, match="skipped 1"):
        assert build_dataset("folder", root=root, split="all", image_size=SIZE, skip_bad=True).num_skipped == 1
    (root / "masks" / "1.png").unlink()
    _save(root / "masks" / "1.png", _scan(1)[1])  # only the image is a loop now: still the image is named
    with pytest.raises(DatasetError, match=r"images/1\.png.*symbolic link loop"):
        build_dataset("folder", root=root, split="all", image_size=SIZE)
    (root / "images" / "1.png").unlink()
    os.symlink(tmp_path / "gone.png", root / "images" / "1.png")
    with pytest.raises(DatasetError, match=r"images/1\.png.*dangling symbolic link"):
        build_dataset("folder", root=root, split="all", image_size=SIZE)


# ----------------------------------------------------------------------------- 9. sweeps

PARAMS = """tag: str = "a"  # a label
other: str = "b"  # another label
x: int = 1  # the number a point reports
fail_above: int = 99  # raise when x is larger
run_dir: str = ""  # output folder, set by the runner"""

BODY = """import json
from pathlib import Path

if x > fail_above:
    raise RuntimeError(f"failing on purpose at x={x}")
(Path(run_dir) / "metrics.json").write_text(json.dumps({"test": {"score": 10 * x}}))"""

CONFIG_PARAMS = """preset: str = "tiny"  # config preset
variant: str = "5_all"  # Table 2 variant
alpha: float = 0.8  # eq. 12 nodule weight
beta: float = 0.1  # eq. 12 gland weight
gamma: float = 0.05  # eq. 12 size weight
eta: float = 0.05  # eq. 12 rec weight
run_dir: str = ""  # output folder"""


def _notebook(path: Path, params: str, body: str = "pass") -> Path:
    nb = new_notebook(cells=[new_code_cell(params, metadata={"tags": ["parameters"]}), new_code_cell(body)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)
    return path


def test_sweep_point_names_are_unique(tmp_path):
    nb = _notebook(tmp_path / "dummy.ipynb", PARAMS, BODY)
    sweep = load_sweep({"name": "s", "notebook": str(nb), "grid": {"tag": ["a/b", "a b", "a_b"]}}, root=tmp_path)
    names = [sweep.point_name(p) for p in sweep.points()]
    assert len(set(names)) == 3 and names[2] == "tag-a_b"  # safe names stay as they were
    assert all(n.startswith("tag-a_b-") for n in names[:2])
    clash = {"name": "s", "notebook": str(nb), "grid": {"tag": ["1__other-2", "1"], "other": ["3", "2__other-3"]}}
    with pytest.raises(ValueError, match="share the folder name 'tag-1__other-2__other-3'"):
        load_sweep(clash, root=tmp_path)


def test_sweep_validates_every_points_config_before_the_first_runs(tmp_path):
    nb = _notebook(tmp_path / "point.ipynb", CONFIG_PARAMS, "raise SystemExit('must not run')")
    grid = {"weights": [{"alpha": 0.8, "beta": 0.1}, {"alpha": 0.5, "beta": 0.4}]}  # 2nd breaks eq. 12
    with pytest.raises(ValueError, match=r"point weights-alpha=0\.5_beta=0\.4 is not a valid configuration.*alpha"):
        run_sweep({"name": "s", "notebook": str(nb), "grid": grid}, root=tmp_path, progress=False)
    assert not (tmp_path / "s").exists()  # nothing ran


@pytest.mark.parametrize("keep_going", [True, False])
def test_sweep_writes_the_summary_of_what_finished(tmp_path, keep_going):
    nb = _notebook(tmp_path / "dummy.ipynb", PARAMS, BODY)
    spec = {"name": "s", "notebook": str(nb), "parameters": {"fail_above": 1}, "grid": {"x": [1, 2]}}
    with pytest.raises(SweepError, match="summary of the 1 finished point"):
        run_sweep(spec, root=tmp_path, keep_going=keep_going, progress=False)
    summary = (tmp_path / "s" / "summary.md").read_text()
    assert "10.0000" in summary  # x=1's score; x=2 failed


# ----------------------------------------------------------------------------- 10. messages

@pytest.mark.parametrize("args, message", [
    (["--model", "nope"], "unknown model 'nope'.*unet"),  # was "unknown preset"
    (["--data", "bogus"], "unknown dataset 'bogus'.*tn3k"),  # was "needs data_root"
    (["--epochs", "0", "--epochs-pretrain", "0"], "nothing to train"),  # was a missing metrics.json.tmp
])
def test_train_messages(tmp_path, args, message):
    with pytest.raises(ValueError, match=message):
        main(["train", *args, "--set", f"model.image_size={SIZE}", "--out", str(tmp_path / "o"), "--no-progress"])
    assert not (tmp_path / "o").exists()  # refused before writing anything


def test_a_checkpoint_without_config_is_named(tmp_path):
    torch.save({"model": {}}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"bare\.pt has no 'config'"):
        model_from_checkpoint(tmp_path / "bare.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_an_unsafe_checkpoint_is_refused_plainly(tmp_path):
    torch.save({"model": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError) as err:
        load_checkpoint(tmp_path / "evil.pt")
    assert "refused as unsafe" in str(err.value) and "system" in str(err.value)
    assert "weights_only` set to `False`" not in str(err.value) and "will likely succeed" not in str(err.value)


def test_split_files_with_duplicates_or_train_val_overlap(tmp_path):
    root = _tn3k(tmp_path / "tn3k")
    fold = root / "tn3k-trainval-fold1.json"
    fold.write_text(json.dumps({"train": [0, 2, 2, 3], "val": [1]}))
    with pytest.raises(DatasetError, match=r"lists 0002\.jpg twice"):
        build_dataset("tn3k", root=root, split="train", fold=1, image_size=SIZE)
    fold.write_text(json.dumps({"train": [0, 1, 2, 3], "val": [3, 4]}))
    for split in ("train", "val"):
        with pytest.raises(DatasetError, match=r"1 image\(s\) are in both 'train' and 'val' \(e\.g\. \['0003\.jpg'\]"):
            build_dataset("tn3k", root=root, split=split, fold=1, image_size=SIZE)


# ----------------------------------------------------------------------------- 11. workbook timeouts

HANG = """import time
from pathlib import Path

attempts = Path({marker!r})
n = int(attempts.read_text()) + 1 if attempts.exists() else 1
attempts.write_text(str(n))
if n <= {hangs}:
    time.sleep(60)  # a cell that never answers in time"""


def test_workbook_cells_time_out_restart_once_then_fail(tmp_path, monkeypatch):
    monkeypatch.setattr(notebook_runner, "NOTEBOOKS", tmp_path / "nbs")
    (tmp_path / "nbs").mkdir()
    for name, hangs in (("10_flaky", 1), ("11_stuck", 99)):
        _notebook(tmp_path / "nbs" / f"{name}.ipynb", 'run_dir: str = ""  # output folder',
                  HANG.format(marker=str(tmp_path / f"{name}.attempts"), hangs=hangs))
    done = run_workbook(["10_flaky"], runs=tmp_path / "runs", cell_timeout=2)
    assert done == [tmp_path / "runs" / "10_flaky" / "10_flaky.ipynb"]
    assert (tmp_path / "10_flaky.attempts").read_text() == "2"  # timed out once, restarted, passed
    with pytest.raises(SweepError) as err:
        run_workbook(["11_stuck"], runs=tmp_path / "runs", cell_timeout=2)
    message = str(err.value)
    assert "11_stuck.ipynb" in message and "failed again after a kernel restart" in message
    assert "timed out after 2 s in cell 2 of 3 (`import time`)" in message  # injected parameters are cell 1
    assert (tmp_path / "11_stuck.attempts").read_text() == "2"
