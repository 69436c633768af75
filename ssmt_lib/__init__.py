"""SSMT-Net workbook library: model, data, losses, training, visualisation, experiments."""
from ssmt_lib.config import Config, LossConfig, ModelConfig, TrainConfig, make_config, PRESETS, VARIANTS
from ssmt_lib.outputs import ModelOutput, QueryPrediction

__version__ = "0.1.0"


def build_model(name: str | None = None, **kwargs):
    """Build SSMT-Net (``name`` = "paper" / "tiny") or a baseline ("unet", "mtnet", "trfe",
    "resnet50_unet"; ``preset="paper"`` for its paper width). See :func:`ssmt_lib.model.build_model`."""
    from ssmt_lib.model import build_model as _build

    return _build(name, **kwargs)


def build_dataset(name: str, root=None, split: str = "train", fold: int = 0, image_size: int = 224,
                  augment: bool = False, skip_bad: bool = False, **options):
    """See :func:`ssmt_lib.data.build_dataset`."""
    from ssmt_lib.data import build_dataset as _build

    return _build(name, root=root, split=split, fold=fold, image_size=image_size, augment=augment,
                  skip_bad=skip_bad, **options)
