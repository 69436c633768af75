"""Per-task gradient norms on the shared encoder and the phantom's vessel false-positive probe."""
import math

import pytest
import torch

from ssmt_lib.config import make_config
from ssmt_lib.data import build_dataset
from ssmt_lib.diagnostics import task_gradient_norms, vessel_false_positives
from ssmt_lib.losses import LOSS_WEIGHTS, loss_terms
from ssmt_lib.model import build_model
from ssmt_lib.outputs import ModelOutput


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = make_config("tiny", model__image_size=32)
    model = build_model(config=cfg)
    ds = build_dataset("phantom", split="train", n=4, image_size=32)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    return cfg, model, batch


def test_gradient_norms_match_one_backward_per_term(setup):
    cfg, model, batch = setup
    torch.manual_seed(1)  # the query loss draws its grid offset
    norms = task_gradient_norms(model, batch, cfg.loss)
    assert set(norms) == {"nodule", "gland", "size", "rec"} and all(v > 0 for v in norms.values())
    # the same number by hand: backward of the weighted size term alone
    model.zero_grad()
    torch.manual_seed(1)
    terms = loss_terms(model(batch["image"]), batch, cfg.loss)
    (LOSS_WEIGHTS["size"](cfg.loss) * terms["size"]).backward()
    by_hand = math.sqrt(sum(float((p.grad ** 2).sum()) for p in model.encoder.parameters() if p.grad is not None))
    assert norms["size"] == pytest.approx(by_hand, rel=1e-4)
    # a batch without nodule labels gives the nodule and size terms no gradient
    unlabeled = dict(batch, has_nodule=torch.zeros(4, dtype=torch.bool))
    zero = task_gradient_norms(model, unlabeled, cfg.loss)
    assert zero["nodule"] == 0.0 and zero["size"] == 0.0 and zero["gland"] > 0


def test_gradient_norms_need_a_shared_encoder():
    class NoEncoder(torch.nn.Module):
        def forward(self, x):
            return ModelOutput(nodule_logits=x[:, :1])

    with pytest.raises(ValueError, match="encoder"):
        task_gradient_norms(NoEncoder(), {"image": torch.zeros(1, 3, 8, 8)}, make_config("tiny").loss)


def test_vessel_false_positives_counts_predictions_on_vessels():
    ds = build_dataset("phantom", split="test", n=6, image_size=64)

    class Everything(torch.nn.Module):  # predicts nodule everywhere: every vessel pixel is hit
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = torch.nn.Parameter(torch.tensor(value))

        def forward(self, x):
            return ModelOutput(nodule_logits=self.value.expand(x.shape[0], 1, *x.shape[-2:]))

    everywhere = vessel_false_positives(Everything(10.0), ds)
    assert everywhere["n"] > 0 and everywhere["vessel_fp_rate"] == 1.0 and everywhere["images_with_vessel_fp"] == 1.0
    assert vessel_false_positives(Everything(-10.0), ds)["vessel_fp_rate"] == 0.0
    with pytest.raises(ValueError, match="un-augmented"):
        vessel_false_positives(Everything(0.0), build_dataset("phantom", split="train", n=4, image_size=64, augment=True))
