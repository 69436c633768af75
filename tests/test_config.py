"""Config dataclasses, presets and validation (DESIGN.md section 6: validated before any work)."""
import json

import pytest

from ssmt_lib.config import PRESETS, VARIANTS, from_dict, make_config, to_dict


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_are_valid_and_round_trip_through_json(preset):
    cfg = make_config(preset)
    assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_paper_preset_matches_the_paper():
    cfg = make_config("paper")
    m, loss, t = cfg.model, cfg.loss, cfg.train
    assert (m.image_size, m.resnet_layers, m.embed_dim, m.depth, m.num_heads) == (224, (3, 4, 9), 768, 12, 12)
    assert (m.num_queries, m.query_layers, m.query_dim, m.query_heads, m.query_ffn) == (20, 3, 256, 8, 2048)
    assert m.size_hidden == (256, 128, 64)
    assert (loss.alpha, loss.beta, loss.gamma, loss.eta, loss.charbonnier_eps) == (0.8, 0.1, 0.05, 0.05, 1e-6)
    assert (loss.cost_class, loss.cost_bce, loss.cost_dice) == (2.0, 5.0, 5.0)
    assert (t.batch_size, t.lr, t.weight_decay, t.min_lr, t.epochs, t.seed) == (32, 1e-3, 0.01, 1e-6, 300, 42)
    assert t.optimizer == "adam"  # L2 decay inside Adam, as published


def test_tiny_differs_only_in_values():
    tiny, paper = to_dict(make_config("tiny")), to_dict(make_config("paper"))
    assert tiny.keys() == paper.keys() and all(tiny[s].keys() == paper[s].keys() for s in tiny)
    assert make_config("tiny").model.image_size == 128


def test_variants_switch_tasks():
    expected = {"1_baseline": (False, False, False), "2_rec": (False, True, False), "3_rec_gland": (True, True, False),
                "4_rec_size": (False, True, True), "5_all": (True, True, True)}
    for name, (gland, rec, size) in expected.items():
        m = make_config("tiny", variant=name).model
        assert (m.gland, m.reconstruction, m.size) == (gland, rec, size), name
    assert set(VARIANTS) == set(expected)


@pytest.mark.parametrize("overrides,error,match", [
    ({"alpha": 0.5}, ValueError, "sum to 1"),
    ({"alpha": 0.4, "beta": 0.5}, ValueError, "alpha > beta"),
    ({"alpha": 0.45, "beta": 0.25, "gamma": 0.15, "eta": 0.15}, ValueError, "alpha > beta"),
    ({"alpha": 1.1, "beta": -0.1, "gamma": 0.0, "eta": 0.0}, ValueError, ">= 0"),
    ({"depht": 3}, KeyError, "depht"),
    ({"model__depth": "3"}, TypeError, "model.depth"),
    ({"lr": True}, TypeError, "train.lr"),
    ({"output_mode": "mean"}, ValueError, "output_mode"),
    ({"matching": "greedy"}, ValueError, "matching"),
    ({"image_size": 120}, ValueError, "multiple of 16"),
    ({"decoder_channels": [8, 8]}, ValueError, "4 widths"),
    ({"label_fraction": 0.0}, ValueError, "label_fraction"),
    ({"pretrained_file": 3}, TypeError, "pretrained_file"),
])
def test_bad_configs_fail_with_a_clear_message(overrides, error, match):
    with pytest.raises(error, match=match):
        make_config("tiny", **overrides)


def test_sum_constraint_accepts_other_valid_weights():
    cfg = make_config("tiny", alpha=0.7, beta=0.1, gamma=0.1, eta=0.1)
    assert cfg.loss.alpha == 0.7
    assert make_config("tiny", lr=1).train.lr == 1.0  # ints are fine for floats


def test_unknown_preset_and_variant():
    with pytest.raises(ValueError, match="preset"):
        make_config("huge")
    with pytest.raises(ValueError, match="variant"):
        make_config("tiny", variant="6_more")
