"""The controls a reviewer asks for beside an SAE result: a frozen random decoder (Korznikov et al.
2026: only the encoder trains). Its decoder must end exactly where it started, its encoder must
move, and it must recover less of planted features than the same SAE trained whole."""

import pytest
import torch
from cli_run import run

from sae.metrics import evaluate
from sae.model import SAEConfig
from sae.synthetic import SharkeyConfig, SharkeyData
from sae.train import TrainConfig, train


def _data():
    return SharkeyData(SharkeyConfig(n_features=32, d=32, m=2.0, seed=4))


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "gated", "matryoshka"])
def test_a_frozen_decoder_stays_as_initialised_while_the_encoder_trains(arch):
    data = _data()
    sc = SAEConfig(d_in=32, dict_size=48, arch=arch, k=3, freeze_decoder=True)
    tc = dict(batch_size=64, warmup_steps=2, seed=4)
    one = train(sc, TrainConfig(n_samples=64, **tc), data).sae_  # one step: the decoder as initialised
    many = train(sc, TrainConfig(n_samples=64 * 40, **tc), data).sae_
    assert torch.equal(one.W_dec, many.W_dec) and torch.equal(one.b_dec, many.b_dec)
    assert not torch.equal(one.W_enc, many.W_enc)
    whole = train(SAEConfig(d_in=32, dict_size=48, arch=arch, k=3), TrainConfig(n_samples=64 * 40, **tc), data).sae_
    assert not torch.equal(whole.W_dec, many.W_dec)  # the same run unfrozen moves its decoder


def test_a_frozen_random_decoder_recovers_less_than_the_sae_trained_whole():
    data = _data()
    tc = TrainConfig(n_samples=256 * 250, batch_size=256, lr=3e-3, warmup_steps=20, seed=1)
    x = data.sample(4000, torch.Generator().manual_seed(99))
    scores = {}
    for frozen in (False, True):
        sae = train(SAEConfig(d_in=32, dict_size=48, arch="topk", k=3, freeze_decoder=frozen), tc, data).sae_
        scores[frozen] = evaluate(sae, x, data.features)
    assert scores[False].mmcs_signed > scores[True].mmcs_signed + 0.2, scores
    assert scores[False].explained_variance > scores[True].explained_variance, scores


def test_the_frozen_decoder_refuses_a_tied_sae_and_resampling(tmp_path, capsys):
    with pytest.raises(ValueError, match="tied"):
        SAEConfig(d_in=4, dict_size=8, tied=True, freeze_decoder=True)
    for extra, says in ((["--tied"], "tied"), (["--resample-every", "5"], "resample_every")):
        code, _, err = run(
            capsys, "sae", "train", "--freeze-decoder", *extra, "--samples", "2048", "--out", tmp_path / "r"
        )
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "r").exists()
