"""``--data tms``: the SAE trainer's Toy-Models-of-Superposition stream, built in cli from polylens's
one TMS feature generator, opened for sae.runs by name, recorded, resumed and evaluated."""

import json
import math

import pytest
import torch

from cli.experiments.tms import TMSData, TMSDataConfig, open_data
from sae.config import TrainConfig
from sae.runs import eval_run, resume_run, train_run


def test_the_stream_has_the_planted_rate_features_and_activations():
    data = TMSData(TMSDataConfig(n_features=40, d=10, sparsity=0.9, seed=3))
    codes = data.sample_codes(20_000, torch.Generator().manual_seed(0))
    sd = math.sqrt(0.1 * 0.9 / codes.numel())
    assert abs(float((codes != 0).float().mean()) - 0.1) < 5 * sd
    assert data.expected_active() == pytest.approx(4.0)
    F = torch.randn(40, 10, generator=torch.Generator().manual_seed(3))  # the seed's Gaussian directions
    assert torch.allclose(data.features, F / F.norm(dim=1, keepdim=True))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.allclose(data.sample(50, g1), data.sample_codes(50, g2) @ data.features)


def test_bad_options_name_the_parameter():
    with pytest.raises(ValueError, match=r"sparsity=1.0 must be in \[0, 1\)"):
        TMSDataConfig(sparsity=1.0)
    with pytest.raises(ValueError, match="n_features=0"):
        open_data("tms", n_features=0)
    with pytest.raises(ValueError, match="has no option"):
        open_data("tms", m=3)
    assert open_data("sharkey", n_features=12, d=6, m=2.0).features.shape == (12, 6)  # other specs: sae's


def test_a_tms_run_resumes_to_the_weights_of_one_run_and_evaluates_the_same(tmp_path):
    options = {"n_features": 12, "d": 6}
    full = train_run(
        tmp_path / "full",
        "tms",
        {"l1": 0.1},
        TrainConfig(n_samples=64 * 20, batch_size=64),
        options,
        eval_samples=500,
        open_data=open_data,
    )
    train_run(
        tmp_path / "part",
        "tms",
        {"l1": 0.1},
        TrainConfig(n_samples=64 * 8, batch_size=64),
        options,
        eval_samples=500,
        open_data=open_data,
    )
    resumed = resume_run(tmp_path / "part", n_samples=64 * 20, eval_samples=500, open_data=open_data)
    assert json.loads((tmp_path / "part" / "run.json").read_text())["data"] == {
        "spec": "tms",
        "options": options,
        "identity": None,
    }
    assert resumed["evaluation"] == full["evaluation"]  # the same weights, the same held-out samples
    again = eval_run(tmp_path / "part", open_data=open_data)
    assert again["evaluation"] == resumed["evaluation"]
    assert 0 < again["evaluation"]["mmcs_signed"] <= 1 and len(again["best_signed_cos"]) == 12
