"""Transcoders: an SAE that reads one site and reconstructs another (``SAEConfig.d_out``, ``skip``),
the store's paired rows (``polylens cache --pair-layer``), training, export to SAELens, and the
transcoder spliced into the model in place of the site it writes."""

import json

import pytest
import torch

from polylens.models import load_model
from sae.activation_store import ActivationStore
from sae.config import SAEConfig, TrainConfig
from sae.metrics import evaluate, hungarian
from sae.model import SparseAutoencoder
from sae.train import Trainer
from tests.cli_run import run


def _planted(n: int = 40_000, seed: int = 0):
    """Sparse features read in one space (x = c D_in) and written in another (y = c D_out)."""
    g = torch.Generator().manual_seed(seed)
    G, d_in, d_out = 48, 24, 16
    D_in = torch.nn.functional.normalize(torch.randn(G, d_in, generator=g), dim=1)
    D_out = torch.nn.functional.normalize(torch.randn(G, d_out, generator=g), dim=1)
    codes = (torch.rand(n, G, generator=g) < 0.06).float() * torch.rand(n, G, generator=g)
    return codes @ D_in, codes @ D_out, D_in, D_out


def test_the_loss_is_the_error_of_the_prediction_of_y_from_x_without_centring_x():
    g = torch.Generator().manual_seed(1)
    sae = SparseAutoencoder(SAEConfig(d_in=6, d_out=4, dict_size=10, arch="relu", skip=True, l1=0.0), generator=g)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x, y = torch.randn(32, 6, generator=g), torch.randn(32, 4, generator=g)
    out = sae(torch.cat([x, y], 1))
    by_hand = torch.relu(x @ sae.W_enc + sae.b_enc) @ sae.W_dec + sae.b_dec + x @ sae.W_skip.T
    assert torch.allclose(out.recon, by_hand, atol=1e-5)
    assert torch.allclose(out.mse, (by_hand - y).pow(2).sum(-1).mean(), atol=1e-4)
    assert torch.allclose(sae.reconstruct(x), by_hand, atol=1e-5)
    with pytest.raises(ValueError, match="decode"):
        sae.decode(out.acts)  # a skip transcoder's output needs its input


def test_a_topk_transcoder_recovers_the_planted_output_directions():
    x, y, D_in, D_out = _planted()
    rows = torch.cat([x, y], 1)
    cfg = SAEConfig(d_in=24, d_out=16, dict_size=96, arch="topk", k=4)
    sae = Trainer(cfg, TrainConfig(n_samples=300_000, batch_size=256, seed=0)).fit(rows).sae_
    assert sae.W_dec.shape == (96, 16) and sae.b_dec.shape == (16,)
    ev = evaluate(sae, rows[:5000])
    assert ev.explained_variance > 0.7  # of y (a random transcoder: about 0)
    assert hungarian(D_out, sae.decoder)[2] > 0.85  # its decoder writes the planted output directions
    assert hungarian(D_out, sae.decoder)[2] > hungarian(D_out, torch.randn(96, 16))[2] + 0.3


def test_the_skip_learns_a_linear_map():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20_000, 12, generator=g)
    M = torch.randn(8, 12, generator=g) / 4
    rows = torch.cat([x, x @ M.T], 1)
    cfg = SAEConfig(d_in=12, d_out=8, dict_size=16, arch="topk", k=1, skip=True)
    sae = Trainer(cfg, TrainConfig(n_samples=400_000, batch_size=256, seed=0, lr=3e-3)).fit(rows).sae_
    assert evaluate(sae, rows[:4000]).explained_variance > 0.99
    assert torch.nn.functional.cosine_similarity(sae.W_skip.flatten(), M.flatten(), dim=0) > 0.9  # the skip holds it
    plain = SAEConfig(d_in=12, d_out=8, dict_size=16, arch="topk", k=1)  # one latent cannot carry a rank-8 map
    worse = Trainer(plain, TrainConfig(n_samples=400_000, batch_size=256, seed=0, lr=3e-3)).fit(rows).sae_
    assert evaluate(worse, rows[:4000]).explained_variance < 0.8


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"tied": True}, "cannot be tied"),
        ({"arch": "gsae"}, "g-SAE"),
        ({"init": "enc_dec_transpose"}, "encoder from the decoder"),
        ({"d_out": 0, "skip": True}, "needs d_out > 0"),
        ({"d_out": -1}, "d_out=-1"),
    ],
)
def test_settings_a_transcoder_cannot_have_are_refused(fields, says):
    with pytest.raises(ValueError, match=says):
        SAEConfig(**{"d_in": 4, "dict_size": 8, "d_out": 3, **fields})


@pytest.fixture(scope="module")
def paired_store(tmp_path_factory):
    """The digits CNN's fc1 rows paired with fc2's (the logits): fc2 = relu(fc1) W2ᵀ + b2."""
    out = tmp_path_factory.mktemp("tc") / "fc"
    from cli.experiments.cache import cache_activations

    adapter = load_model("digits")
    inputs = adapter.default_inputs(300)
    cache_activations(adapter, "fc1", out, inputs, pair_layer="fc2", shard_rows=128)
    return out, adapter, inputs


def _fc1_and_logits(m, x):
    """The digits CNN's fc1 rows and logits, computed layer by layer (no hooks)."""
    with torch.no_grad():
        fc1 = m.fc1(m.flatten(m.relu2(m.conv2(m.relu1(m.conv1(x))))))
        return fc1, m.fc2(m.relu3(fc1))


def test_cache_pairs_each_row_with_the_other_sites_row_of_the_same_input(paired_store):
    out, adapter, inputs = paired_store
    store = ActivationStore(out)
    assert store.manifest["pairs"] == {"layer": "fc2", "width": 10} and len(store.manifest["shards"]) == 3
    fc1, logits = _fc1_and_logits(adapter.module, inputs)
    assert torch.allclose(store.read(0, 300), fc1, atol=1e-5)
    rows = store.with_pairs().read(100, 300)  # across shards
    assert rows.shape == (200, 74)
    assert torch.allclose(rows[:, :64], fc1[100:], atol=1e-5) and torch.allclose(rows[:, 64:], logits[100:], atol=1e-5)


def test_a_planted_exact_transcoder_splices_in_without_changing_the_output(paired_store, tmp_path, capsys):
    """relu(fc1) W2ᵀ + b2 is fc2: a ReLU transcoder with W_enc = I, W_dec = W2ᵀ, b_dec = b2 is exact; its
    SAELens export, evaluated by the CLI, keeps every logit; a random one is checked against the logits
    computed by hand (fc2 is the output, so the spliced output is the transcoder's prediction)."""
    from sae.export import export_saelens

    _, adapter, inputs = paired_store
    m = adapter.module
    exact = SparseAutoencoder(SAEConfig(d_in=64, d_out=10, dict_size=64, arch="relu"))
    with torch.no_grad():
        exact.W_enc.copy_(torch.eye(64))
        exact.b_enc.zero_()
        exact.W_dec.copy_(m.fc2.weight.T)
        exact.b_dec.copy_(m.fc2.bias)
    export_saelens(exact, tmp_path / "exact")
    layers = ["--model", "digits", "--layer", "fc1", "--pair-layer", "fc2", "--n", "80", "--no-progress"]
    code, stdout, err = run(capsys, "sae", "eval", tmp_path / "exact", *layers, "--json", tmp_path / "e.json")
    assert code == 0, err
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["kl_div"] < 1e-9 and r["top1_kept"] == 1.0 and r["explained_variance"] > 1 - 1e-6
    assert r["kl_div_score"] > 1 - 1e-6 and r["pair_layer"] == "fc2" and "fc1 -> fc2" in stdout

    from cli.experiments.spliced_eval import _kl, spliced_evaluation

    g = torch.Generator().manual_seed(3)
    rand = SparseAutoencoder(SAEConfig(d_in=64, d_out=10, dict_size=32, arch="relu", skip=True), generator=g)
    with torch.no_grad():
        rand.W_skip.copy_(torch.randn(10, 64, generator=g) / 8)
    x = inputs[:80]
    fc1, clean = _fc1_and_logits(m, x)
    with torch.no_grad():
        spliced = torch.relu(fc1 @ rand.W_enc + rand.b_enc) @ rand.W_dec + rand.b_dec + fc1 @ rand.W_skip.T
    got = spliced_evaluation(adapter, "fc1", x, rand, is_text=False, pair_layer="fc2")
    assert got.kl_div == pytest.approx(_kl(clean, spliced), rel=1e-6)
    assert got.top1_kept == pytest.approx(float((clean.argmax(1) == spliced.argmax(1)).double().mean()))
    with pytest.raises(ValueError, match="--pair-layer"):
        spliced_evaluation(adapter, "fc1", x, rand, is_text=False)


def test_cli_trains_exports_resumes_and_sweeps_transcoders(paired_store, tmp_path, capsys):
    from sae_lens import SAE

    from sae.train import load_sae

    store = paired_store[0]
    base = ["sae", "train", "--data", store, "--transcoder", "--dict-size", "32", "--batch-size", "64"]
    quiet = ["--eval-samples", "200", "--no-progress"]
    code, _, err = run(
        capsys, *base, "--arch", "jumprelu", "--skip", "--samples", "6400", *quiet, "--out", tmp_path / "j"
    )
    assert code == 0, err
    rec = json.loads((tmp_path / "j" / "run.json").read_text())
    assert rec["sae"]["d_in"] == 64 and rec["sae"]["d_out"] == 10 and rec["sae"]["skip"]
    assert rec["data"]["identity"]["pairs"] == {"layer": "fc2", "width": 10}
    ours, theirs = load_sae(tmp_path / "j"), SAE.load_from_disk(str(tmp_path / "j" / "saelens"))
    assert type(theirs).__name__ == "JumpReLUSkipTranscoder"
    x = ActivationStore(store).read(0, 50)
    assert torch.allclose(theirs(x), ours.reconstruct(x), atol=1e-5)

    # resumed from half way: the same weights as one run (bitwise on CPU)
    code, _, err = run(
        capsys, *base, "--arch", "topk", "--k", "4", "--samples", "3200", *quiet, "--out", tmp_path / "h"
    )
    assert code == 0, err
    assert "no topk transcoder" in json.loads((tmp_path / "h" / "run.json").read_text())["export"]
    code, _, err = run(
        capsys, "sae", "train", "--data", store, "--samples", "6400", "--resume", "--out", tmp_path / "h"
    )
    assert code == 0, err
    code, _, err = run(
        capsys, *base, "--arch", "topk", "--k", "4", "--samples", "6400", *quiet, "--out", tmp_path / "w"
    )
    assert code == 0, err
    a, b = load_sae(tmp_path / "h").state_dict(), load_sae(tmp_path / "w").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    grid = ["--l1s", "0.01,0.1", "--ratios", "0.5,1", "--samples", "3200", "--batch-size", "64"]
    code, _, err = run(capsys, "sae", "sweep", "--data", store, "--transcoder", *grid, *quiet, "--out", tmp_path / "s")
    assert code == 0, err
    cells = json.loads((tmp_path / "s" / "sweep.json").read_text())["cells"]
    assert [c["dict_size"] for c in cells] == [32, 64, 32, 64] and all(c["explained_variance"] > 0 for c in cells)


def test_transcoder_bad_input_is_one_line_and_writes_nothing(paired_store, tmp_path, capsys):
    unpaired = tmp_path / "plain"
    code, _, err = run(capsys, "cache", "--layer", "fc1", "--n", "50", "--out", unpaired, "--no-progress")
    assert code == 0, err
    for argv, says in (
        (["--data", unpaired, "--transcoder"], "no paired rows"),
        (["--data", "sharkey", "--transcoder"], "not a store"),
        (["--data", paired_store[0], "--skip"], "give --transcoder too"),
    ):
        out = tmp_path / "never"
        code, _, err = run(capsys, "sae", "train", *argv, "--samples", "640", "--out", out, "--no-progress")
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    for pair, says in (("conv2", "16 rows an input"), ("fc1", "is --layer itself")):
        out = tmp_path / "never-store"
        code, _, err = run(capsys, "cache", "--layer", "fc1", "--pair-layer", pair, "--n", "20", "--out", out)
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_a_saelens_transcoder_folder_we_cannot_represent_is_refused_in_one_line(tmp_path):
    from sae.export import export_saelens, import_saelens

    sae = SparseAutoencoder(SAEConfig(d_in=6, d_out=4, dict_size=8, arch="relu", skip=True))
    export_saelens(sae, tmp_path / "ok")
    back = import_saelens(tmp_path / "ok")
    assert back.config.d_out == 4 and back.config.skip and torch.equal(back.W_skip, sae.W_skip)
    cfg = json.loads((tmp_path / "ok" / "cfg.json").read_text())
    for change, says in (
        ({"d_out": 0}, "d_out=0"),
        ({"d_out": 5}, r"needs \(8, 5\)"),
        ({"apply_b_dec_to_input": True}, "apply_b_dec"),
    ):
        bad = tmp_path / f"bad{len(says)}"
        bad.mkdir()
        (bad / "sae_weights.safetensors").write_bytes((tmp_path / "ok" / "sae_weights.safetensors").read_bytes())
        (bad / "cfg.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ValueError, match=says):
            import_saelens(bad)
    with pytest.raises(ValueError, match="no topk transcoder"):
        export_saelens(SparseAutoencoder(SAEConfig(d_in=6, d_out=4, dict_size=8, arch="topk", k=2)), tmp_path / "t")
    assert not (tmp_path / "t").exists()
