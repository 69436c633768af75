"""Reading dataset files: decode images and masks, list and pair files, report bad input.

Every file-backed set (TN3K, TG3K, DDTI, DDTI's XML release, image/mask folders, unlabeled
folders) reads its files through this module, so one rule serves them all:

- images are decoded to grey uint8 (:func:`read_image`); 16-bit and float images are scaled by
  their maximum;
- masks are binarised by a rule that fits the file (:func:`read_mask`, :func:`binarise_mask`):
  lossless masks are cut halfway between their two levels, JPEG masks (TN3K and TG3K ship JPEG
  masks) between the two clusters Otsu's method finds, so compression artefacts never become
  foreground;
- images and masks are paired by file stem (:func:`pair_records`); extensions match in any case;
  two files with one stem, a missing mask, or a mask without an image are reported;
- TN3K/TG3K split files index the image folder sorted by integer stem (:func:`int_sorted`);
  other listings sort naturally (``2.png`` before ``10.png``, :func:`natural_key`).

Bad input raises :class:`DatasetError` naming the file; a broken symbolic link is said to be one.
With ``skip_bad=True`` the per-file problems are collected instead (:class:`Skipper`).
"""
from __future__ import annotations

import dataclasses
import errno
import os
import re
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # matched case-insensitively


class MaskWarning(UserWarning):
    """Every checked mask of a dataset is empty (or full): the masks are probably misread or wrong."""


class DatasetError(ValueError):
    """A dataset file or folder is missing, unreadable or inconsistent; ``path`` names it."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


# ----------------------------------------------------------------------------- reading files

def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to grey uint8.

    Args:
        path: image file (any PIL format; colour is converted to luminance, 16-bit/float images
            are scaled by their maximum).

    Returns:
        (H, W) uint8 array.

    Raises:
        DatasetError: the file is missing, unreadable or truncated (message names ``path``).
    """
    try:
        with Image.open(path) as im:
            im.load()  # full decode: truncated files fail here
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                arr = np.asarray(im, dtype=np.float32)
                arr = arr * (255.0 / max(float(arr.max()), 1e-8))
                return np.clip(arr + 0.5, 0, 255).astype(np.uint8)
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read image {path}: {_os_reason(path, e)}", path) from e


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a mask file to {0, 1} uint8, by a rule that fits the file.

    Rule (:func:`binarise_mask`): a lossless mask (PNG, BMP, TIFF ...) holds exact label values,
    so it is cut halfway between its smallest and largest value: 0/1, 0/100 (16-bit), 0/255 and
    anti-aliased 0..255 masks all come out right. A JPEG mask (detected from the file content, not
    the extension) has compression artefacts around its two levels, so Otsu's method splits its
    values into a dark and a bright cluster and the cut lies halfway between the two cluster means:
    {0, 1} and 0/255 JPEG masks both work, and artefacts never become foreground. A uniform mask is
    empty when its value is 0 and full otherwise. Colour masks use the brightest channel, palette
    masks the palette index; a mask with an alpha channel whose colour is the same everywhere (drawn
    in alpha only) uses the alpha channel.

    Args:
        path: mask file.

    Returns:
        (H, W) uint8 array with values in {0, 1}.

    Raises:
        DatasetError: the file is missing, unreadable or truncated (message names ``path``).
    """
    try:
        with Image.open(path) as im:
            im.load()
            is_jpeg = im.format == "JPEG"
            alpha = np.asarray(im.getchannel("A")) if im.mode in ("RGBA", "LA", "PA") else None
            if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
                arr = np.asarray(im.convert("RGB")).max(axis=-1)  # (H, W): brightest channel
            elif im.mode in ("LA", "PA"):
                arr = np.asarray(im.getchannel(0))  # (H, W): grey value or palette index
            else:  # "1", "L", "P" (indices), "I;16", "I", "F"
                arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read mask {path}: {_os_reason(path, e)}", path) from e
    if alpha is not None and arr.size and arr.min() == arr.max() and alpha.min() != alpha.max():
        arr = alpha  # colour carries nothing: the mask is drawn in the alpha channel
    return binarise_mask(arr, jpeg=is_jpeg)


def binarise_mask(values: np.ndarray, jpeg: bool = False) -> np.ndarray:
    """{0, 1} uint8 from a mask's values: cut halfway between its two levels (see :func:`read_mask`).

    Args:
        values: (H, W) decoded mask values (any integer or float dtype; bool allowed).
        jpeg: the values come from a JPEG file (levels found with Otsu's method, robust to artefacts).

    Returns:
        (H, W) uint8 in {0, 1}.
    """
    v = np.asarray(values)
    if v.dtype == bool:
        return v.astype(np.uint8)
    if v.size == 0:
        return np.zeros(v.shape, np.uint8)
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:  # uniform: empty when 0, full otherwise
        return np.full(v.shape, 1 if hi > 0 else 0, np.uint8)
    cut = (lo + hi) / 2
    if jpeg and v.dtype == np.uint8:
        otsu, _ = cv2.threshold(v, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)  # dark/bright clusters
        dark, bright = v[v <= otsu], v[v > otsu]
        if dark.size and bright.size:
            cut = (float(dark.mean()) + float(bright.mean())) / 2
    return (v > cut).astype(np.uint8)


def _os_reason(path: str | Path, err: BaseException) -> str:
    """The error text, saying plainly when ``path`` is a symbolic link loop or a dangling link."""
    path = Path(path)
    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return "it is a symbolic link loop"
            return f"it is a dangling symbolic link to {os.readlink(path)} (the target does not exist)"
    return str(err)


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only; PIL's ``open`` does not decode pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read image header of {path}: {_os_reason(path, e)}", path) from e


def natural_key(name: str) -> tuple:
    """Sort key: integer names sort numerically (2 < 10), others alphabetically after them.

    Args:
        name: a file stem or a case id.
    """
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def sorted_files(folder: Path, suffixes: tuple[str, ...], recursive: bool = False,
                 broken_links: bool = False) -> list[Path]:
    """Files of ``folder`` whose extension (any case) is in ``suffixes``, hidden files left out,
    sorted by :func:`natural_key` of the stem; an empty list when there are none.

    Args:
        folder: an existing folder.
        suffixes: lower-case extensions with the dot, e.g. ``(".xml",)``.
        recursive: include sub-folders.
        broken_links: also list symbolic links whose target is missing (or a loop), so that
            reading them fails with a message naming them.
    """
    pattern = "**/*" if recursive else "*"
    files = [p for p in folder.glob(pattern)
             if (p.is_file() or broken_links and p.is_symlink() and not p.exists())
             and p.suffix.lower() in suffixes and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (natural_key(p.stem), str(p)))


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files (by extension, any case) in ``folder``, naturally sorted; files with other
    extensions (README.txt, Thumbs.db) are not images and are ignored. Broken symbolic links
    (loops, missing targets) with an image extension are listed, so that reading them fails with
    a message naming them (or ``skip_bad`` counts them) like any unreadable file.

    Raises:
        DatasetError: ``folder`` is missing, not a folder, or holds no image file.
    """
    if not folder.exists():
        raise DatasetError(f"folder not found: {folder}", folder)
    if not folder.is_dir():
        raise DatasetError(f"not a folder: {folder}", folder)
    files = sorted_files(folder, IMAGE_EXTENSIONS, recursive=recursive, broken_links=True)
    if not files:
        raise DatasetError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}", folder)
    return files


def index_by_stem(files: list[Path]) -> dict[str, Path]:
    """Map stem -> file; two files with one stem (1.png and 1.PNG) are ambiguous."""
    index: dict[str, Path] = {}
    for p in files:
        if p.stem in index:
            raise DatasetError(f"two files share the stem {p.stem!r}: {index[p.stem]} and {p}", p)
        index[p.stem] = p
    return index


def int_sorted(files: list[Path]) -> list[Path]:
    """Sort by integer stem, as the TN3K/TG3K split json files index them."""
    for p in files:
        if not p.stem.isdigit():
            raise DatasetError(f"expected an integer file stem (split json files index files sorted "
                               f"by integer stem): {p}", p)
    return sorted(files, key=lambda p: int(p.stem))


class Skipper:
    """What a dataset builder does with a bad file: raise, or (``skip_bad``) note it and go on.

    ``skip(message, path)`` raises :class:`DatasetError` unless ``skip_bad``; otherwise it appends
    ``(str(path), message)`` to ``items``, which the dataset then keeps in ``dataset.skipped``.

    Args:
        skip_bad: collect instead of raising.
    """

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.items: list[tuple[str, str]] = []  # (path, message) of every skipped file

    def __call__(self, message: str, path: str | Path) -> None:
        if not self.skip_bad:
            raise DatasetError(message, path)
        self.items.append((str(path), message))


def dataset_root(root: str | Path | None, name: str) -> Path:
    """``root`` as a ``Path``, checked to be an existing folder.

    Args:
        root: the dataset folder given to ``build_dataset``.
        name: the dataset name, for the messages.

    Raises:
        ValueError: ``root`` is None. DatasetError: it is not a folder.
    """
    if root is None:
        raise ValueError(f"root is required for {name!r}, e.g. build_dataset({name!r}, root='data/{name}') "
                         f"(see data/README.md)")
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"dataset root not found: {path}", path)
    return path


@dataclasses.dataclass
class Record:
    """One file-backed sample: what :func:`pair_records` returns and ``FileDataset`` reads."""

    image: Path  # image file
    mask: Path | None  # mask file, None for unlabeled images
    id: str  # unique sample id
    patient: str  # patient id (the sample id when unknown)


def pair_records(images: list[Path], mask_dir: Path | None, name: str, prefix: str,
                 skip: Callable[[str, Path], None], patient_regex: str | None = None,
                 folder_images: list[Path] | None = None) -> list[Record]:
    """Pair images with masks by stem; missing masks and masks without an image (among
    ``folder_images``, the whole image folder when ``images`` is a split of it) go through ``skip``.

    Args:
        images: the image files of the split.
        mask_dir: the mask folder; None for unlabeled images (``Record.mask`` is None).
        name: dataset name, the prefix of patient ids found by ``patient_regex``.
        prefix: sample ids are ``{prefix}/{stem}``.
        skip: a :class:`Skipper` (or any callable taking a message and a path).
        patient_regex: its first group (or whole match) in the stem is the patient id; without
            it every image is its own patient.
        folder_images: every image of the folder ``images`` was picked from.

    Returns:
        One :class:`Record` per image that has a mask (or per image when ``mask_dir`` is None).
    """
    masks = index_by_stem(list_images(mask_dir)) if mask_dir is not None else {}
    index_by_stem(images)  # duplicate image stems are an error too
    records = []
    for p in images:
        mask = masks.get(p.stem) if mask_dir is not None else None
        if mask_dir is not None and mask is None:
            skip(f"missing mask for image {p}: no file with stem {p.stem!r} in {mask_dir}", p)
            continue
        sid = f"{prefix}/{p.stem}"
        patient = sid
        if patient_regex is not None:
            m = re.search(patient_regex, p.stem)
            if m is None:
                raise DatasetError(f"patient_regex {patient_regex!r} does not match the stem of {p}", p)
            patient = f"{name}/{m.group(1) if m.groups() else m.group(0)}"
        records.append(Record(p, mask, sid, patient))
    image_stems = {p.stem for p in (images if folder_images is None else folder_images)}
    for stem, mask in sorted(masks.items()):
        if stem not in image_stems:  # an orphan mask means a missing or misnamed image: say so
            skip(f"mask {mask} has no image with stem {stem!r} among the images next to it", mask)
    return records
