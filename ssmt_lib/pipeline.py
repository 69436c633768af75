"""The dual-stage paper's two-stage pipeline (Sec. 3.1, Fig. 1): classify the image, then segment the nodule.

Both stages receive the same preprocessed image (Sec. 3.3: resize, intensity normalisation; the
classifier z-scores it again, eq. 1). Stage 1 gives P(malignant) (eq. 3, the softmax of eq. 8);
stage 2 the nodule probability map (eq. 19), thresholded at 0.5 (eq. 20) after resizing it back to
the image's own size. Per image the pipeline reports the probability, the mask, the nodule area
(pixels and fraction of the image), its bounding box and the number of connected nodule regions.

    pipe = TwoStagePipeline.from_checkpoints("runs/cls/best.pt", "runs/seg/best.pt")
    result = pipe.predict(image)                      # (H, W) uint8 grey image
    summary = pipe.predict_folder("scans/", "out/")   # out/masks/*.png and out/predictions.csv

The classifier checkpoint comes from ``train --task classify``, the segmenter from any segmentation
run (SSMT-Net, a baseline, a Table 2 segmenter); a checkpoint of the other kind is refused.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torch import nn

from ssmt_lib.data import IMAGE_EXTENSIONS, DatasetError, eval_transform, read_image

CSV_FIELDS = ("file", "prob_malignant", "predicted", "area_px", "area_fraction", "bbox_x0", "bbox_y0", "bbox_x1",
              "bbox_y1", "nodules", "width", "height", "mask")


@dataclass
class Prediction:
    """What the pipeline says about one image."""

    prob_malignant: float  # stage 1: P(malignant)
    predicted: str  # "malignant" if prob_malignant >= 0.5 (eq. 4) else "benign"
    mask: np.ndarray  # stage 2: (H, W) uint8 {0, 1} at the image's own size
    area_px: int  # nodule pixels
    area_fraction: float  # nodule pixels / image pixels
    bbox: tuple[int, int, int, int] | None  # (x0, y0, x1, y1) inclusive, None without a nodule
    nodules: int  # connected nodule regions


class TwoStagePipeline:
    """A trained classifier and a trained segmenter applied one after the other.

    Args:
        classifier: a classifier (``forward`` -> logits (B, 2)), eval mode.
        segmenter: a segmentation model (``forward`` -> ``ModelOutput`` with nodule logits).
        classifier_size, segmenter_size: input sides the two were trained at.
        device: where they run.
        threshold: eq. 20's threshold on the nodule probability.
    """

    def __init__(self, classifier: nn.Module, segmenter: nn.Module, classifier_size: int, segmenter_size: int,
                 device: torch.device | str = "cpu", threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.device = torch.device(device)
        self.classifier = classifier.to(self.device).eval()
        self.segmenter = segmenter.to(self.device).eval()
        self.transforms = {"cls": eval_transform(classifier_size), "seg": eval_transform(segmenter_size)}
        self.threshold = threshold

    @classmethod
    def from_checkpoints(cls, classifier: str | Path, segmenter: str | Path, device: torch.device | str = "cpu",
                         threshold: float = 0.5) -> "TwoStagePipeline":
        """Load both stages from ``best.pt`` files, refusing a checkpoint of the wrong kind."""
        from ssmt_lib.checkpoints import model_from_checkpoint

        cls_model, cls_cfg, cls_ckpt = model_from_checkpoint(classifier, device)
        if cls_ckpt.get("task") != "classify":
            raise ValueError(f"classifier checkpoint {classifier} is a segmentation checkpoint (model "
                             f"{cls_ckpt.get('model_name') or 'SSMT-Net'}); the first stage needs one written by "
                             f"train --task classify")
        seg_model, seg_cfg, seg_ckpt = model_from_checkpoint(segmenter, device)
        if seg_ckpt.get("task") == "classify":
            raise ValueError(f"segmenter checkpoint {segmenter} is a classifier checkpoint (model "
                             f"{seg_ckpt.get('model_name')}); the second stage needs a segmentation run's checkpoint")
        if "nodule" not in getattr(seg_model, "tasks", ("nodule",)):
            raise ValueError(f"segmenter checkpoint {segmenter} has no nodule output")
        return cls(cls_model, seg_model, cls_cfg.model.image_size, seg_cfg.model.image_size, device, threshold)

    def _tensor(self, image: np.ndarray, stage: str) -> torch.Tensor:
        out = self.transforms[stage](image=np.repeat(image[..., None], 3, axis=-1))["image"]  # (s, s, 3)
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))[None].to(self.device)  # (1, 3, s, s)

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> Prediction:
        """Both stages on one grey image.

        Args:
            image: (H, W) uint8 (what :func:`~ssmt_lib.data.read_image` returns).

        Returns:
            :class:`Prediction`.
        """
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(f"predict expects a (H, W) uint8 grey image, got {image.shape} {image.dtype}")
        h, w = image.shape
        prob = float(self.classifier(self._tensor(image, "cls")).float().softmax(-1)[0, 1])
        logits = self.segmenter(self._tensor(image, "seg")).logits("nodule").float()  # (1, 1, s, s)
        full = F.interpolate(logits.sigmoid(), size=(h, w), mode="bilinear", align_corners=False)  # (1, 1, H, W)
        mask = (full[0, 0] >= self.threshold).cpu().numpy().astype(np.uint8)  # (H, W)
        ys, xs = np.nonzero(mask)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())) if len(xs) else None
        return Prediction(prob_malignant=prob, predicted="malignant" if prob >= 0.5 else "benign", mask=mask,
                          area_px=int(mask.sum()), area_fraction=float(mask.mean()), bbox=bbox,
                          nodules=int(ndimage.label(mask)[1]))

    def predict_folder(self, images: str | Path, out: str | Path, skip_bad: bool = False) -> dict[str, Any]:
        """Run on every image of a folder; write ``out/masks/{stem}.png`` (0/255) and ``out/predictions.csv``.

        Args:
            images: folder of images (not recursive; hidden files ignored).
            out: output folder (created).
            skip_bad: skip files that are not images or cannot be decoded (listed in the summary)
                instead of raising.

        Returns:
            ``{"images", "predictions", "csv", "masks", "skipped": [(path, reason)], "rows"}``.

        Raises:
            DatasetError: a missing/empty folder, a non-image or unreadable file (naming it), two
                images with one stem (their masks would collide).
        """
        folder, out = Path(images), Path(out)
        if not folder.is_dir():
            raise DatasetError(f"image folder not found: {folder}", folder)
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        skipped: list[tuple[str, str]] = []

        def bad(path: Path, reason: str) -> None:
            if not skip_bad:
                raise DatasetError(reason, path)
            skipped.append((str(path), reason))

        stems: dict[str, Path] = {}
        todo = []
        for p in files:
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                bad(p, f"not an image file: {p} (images end in {', '.join(IMAGE_EXTENSIONS)})")
                continue
            if p.stem in stems:
                raise DatasetError(f"two images share the stem {p.stem!r} ({stems[p.stem]} and {p}): their masks "
                                   f"would overwrite each other", p)
            stems[p.stem] = p
            todo.append(p)
        if not todo:
            raise DatasetError(f"no image files in {folder}" + (f" ({len(skipped)} skipped)" if skipped else ""), folder)
        (out / "masks").mkdir(parents=True, exist_ok=True)
        rows = []
        for p in todo:
            try:
                image = read_image(p)
            except DatasetError as e:
                bad(p, str(e))
                continue
            pred = self.predict(image)
            mask_path = out / "masks" / f"{p.stem}.png"
            Image.fromarray(pred.mask * 255).save(mask_path)
            x0, y0, x1, y1 = pred.bbox if pred.bbox else ("", "", "", "")
            rows.append({"file": p.name, "prob_malignant": round(pred.prob_malignant, 6), "predicted": pred.predicted,
                         "area_px": pred.area_px, "area_fraction": round(pred.area_fraction, 6), "bbox_x0": x0,
                         "bbox_y0": y0, "bbox_x1": x1, "bbox_y1": y1, "nodules": pred.nodules,
                         "width": image.shape[1], "height": image.shape[0], "mask": f"masks/{mask_path.name}"})
        with open(out / "predictions.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        return {"images": len(todo), "predictions": len(rows), "csv": str(out / "predictions.csv"),
                "masks": str(out / "masks"), "skipped": skipped, "rows": rows}


def prediction_dict(pred: Prediction) -> dict[str, Any]:
    """A :class:`Prediction` without its mask (for tables and JSON)."""
    d = asdict(pred)
    d.pop("mask")
    return d
