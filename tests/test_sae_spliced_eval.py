"""``polylens sae eval RUN --model M --layer L``: an SAE spliced into the layer, judged at the output.

Planted cases pin each measure's ends: an SAE that reconstructs its rows exactly (ReLU latents ±x
through ±I) changes nothing (KL 0, CE loss recovered 1, cosine 1), one that reconstructs zero is
the zero ablation (CE loss recovered 0, KL score 0). A random SAE's numbers are recomputed by hand
with a forward hook of our own on the layer, outside polylens's capture and row mapping.
"""

import json

import numpy as np
import pytest
import torch

from cli.experiments.spliced_eval import spliced_evaluation
from polylens.models import load_model
from sae.config import SAEConfig
from sae.model import SparseAutoencoder
from tests.cli_run import run


def _sae(d: int, kind: str, seed: int = 0) -> SparseAutoencoder:
    """``identity``: latents relu(±x) decoded by ±I (x̂ = x); ``zero``: x̂ = 0; ``random``: Gaussian weights."""
    sae = SparseAutoencoder(SAEConfig(d_in=d, dict_size=2 * d, arch="relu"))
    eye = torch.eye(d)
    with torch.no_grad():
        if kind == "random":
            g = torch.Generator().manual_seed(seed)
            sae.W_enc.copy_(torch.randn(d, 2 * d, generator=g) / d**0.5)
            sae.W_dec.copy_(torch.randn(2 * d, d, generator=g) / d**0.5)
            sae.b_enc.copy_(torch.randn(2 * d, generator=g) * 0.1)
            sae.b_dec.copy_(torch.randn(d, generator=g) * 0.1)
        else:
            sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
            sae.W_dec.copy_(torch.cat([eye, -eye], dim=0) if kind == "identity" else torch.zeros(2 * d, d))
            sae.b_enc.zero_()
            sae.b_dec.zero_()
    return sae.eval()


def _recon(sae, x):
    with torch.no_grad():
        return torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc) @ sae.W_dec + sae.b_dec


@pytest.fixture(scope="module")
def digits():
    adapter = load_model("digits")
    inputs = adapter.default_inputs(120)
    return adapter, inputs, adapter.default_labels(120)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=50257)
    ).eval().save_pretrained(d)
    adapter = load_model("gpt2", weights=str(d))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50257, (6, 12), generator=g)
    tokens[:, 0] = 50256  # BOS
    return adapter, tokens


def test_an_exact_reconstruction_changes_nothing_and_zero_is_the_zero_ablation(digits):
    adapter, inputs, labels = digits
    exact = spliced_evaluation(adapter, "conv2", inputs, _sae(32, "identity"), is_text=False, labels=labels)
    assert exact.kl_div == pytest.approx(0, abs=1e-9) and exact.kl_div_score == pytest.approx(1, abs=1e-9)
    assert exact.top1_kept == 1 and exact.accuracy_change == 0
    assert exact.explained_variance == pytest.approx(1, abs=1e-6) and exact.shrinkage == pytest.approx(1, abs=1e-6)
    assert exact.n_rows == 120 * 16 and exact.ce_loss_recovered is None and exact.cosine_kept is None
    zero = spliced_evaluation(adapter, "conv2", inputs, _sae(32, "zero"), is_text=False, labels=labels)
    assert zero.kl_div == pytest.approx(zero.kl_div_zero_ablation, rel=1e-12) and zero.kl_div > 0.01
    assert zero.kl_div_score == pytest.approx(0, abs=1e-12)
    seen = []
    handle = adapter.module.conv2.register_forward_hook(lambda _m, _a, out: seen.append(out.permute(0, 2, 3, 1)))
    with torch.no_grad():
        adapter.module(inputs)
    handle.remove()
    rows = seen[0].reshape(-1, 32)
    never = torch.cat([(rows > 0).sum(0) == 0, (rows < 0).sum(0) == 0])  # latent relu(x_i), then relu(-x_i)
    assert exact.dead_fraction == zero.dead_fraction == pytest.approx(float(never.double().mean()))
    share = torch.cat([(rows > 0).double().mean(0), (rows < 0).double().mean(0)])
    assert exact.dense_fraction == pytest.approx(float((share > 0.1).double().mean()))


def test_a_random_sae_matches_a_hand_splice_on_a_conv_layer(digits):
    adapter, inputs, labels = digits
    sae = _sae(32, "random")
    got = spliced_evaluation(adapter, "conv2", inputs, sae, is_text=False, labels=labels)
    net = adapter.module

    def hook(_module, _args, out):  # [n, C, H, W]: each spatial position's channel vector through the SAE
        return _recon(sae, out.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    with torch.no_grad():
        clean = net(inputs)
        handle = net.conv2.register_forward_hook(hook)
        try:
            spliced = net(inputs)
        finally:
            handle.remove()
        logq, logp = torch.log_softmax(spliced.double(), -1), torch.log_softmax(clean.double(), -1)
        kl = torch.nn.functional.kl_div(logq, logp, log_target=True, reduction="batchmean")  # KL(p ‖ q) a row
    assert got.kl_div == pytest.approx(float(kl), rel=1e-5)
    assert got.accuracy_spliced == pytest.approx(float((spliced.argmax(-1) == labels).double().mean()))
    assert got.accuracy_clean == pytest.approx(float((clean.argmax(-1) == labels).double().mean()))
    assert got.top1_kept == pytest.approx(float((spliced.argmax(-1) == clean.argmax(-1)).double().mean()))


def test_next_token_ce_recovered_on_a_language_model(tiny_gpt2):
    adapter, tokens = tiny_gpt2
    layer = "blocks.0.hook_resid_post"
    exact = spliced_evaluation(adapter, layer, tokens, _sae(32, "identity"), is_text=True)
    assert exact.ce_loss_recovered == pytest.approx(1, abs=1e-6) and exact.kl_div == pytest.approx(0, abs=1e-9)
    assert exact.ce_loss_spliced == pytest.approx(exact.ce_loss_clean, rel=1e-6)
    assert exact.n_rows == 6 * 11  # the BOS position is no row
    zero = spliced_evaluation(adapter, layer, tokens, _sae(32, "zero"), is_text=True)
    assert zero.ce_loss_recovered == pytest.approx(0, abs=1e-9)
    sae = _sae(32, "random", seed=3)
    got = spliced_evaluation(adapter, layer, tokens, sae, is_text=True)
    module = adapter.module
    hook_point = dict(module.named_modules())[layer]

    def splice(_module, _args, out):  # every position but the BOS
        return torch.cat([out[:, :1], _recon(sae, out[:, 1:])], dim=1)

    def ce(logits):  # positions 1..T-2 predict tokens 2..T-1
        return float(
            torch.nn.functional.cross_entropy(logits[:, 1:-1].reshape(-1, logits.shape[-1]), tokens[:, 2:].reshape(-1))
        )

    with torch.no_grad():
        clean = module(tokens)
        handle = hook_point.register_forward_hook(splice)
        try:
            spliced = module(tokens)
        finally:
            handle.remove()
        zeroed_handle = hook_point.register_forward_hook(
            lambda _m, _a, out: torch.cat([out[:, :1], torch.zeros_like(out[:, 1:])], dim=1)
        )
        try:
            zeroed = module(tokens)
        finally:
            zeroed_handle.remove()
    assert got.ce_loss_clean == pytest.approx(ce(clean), rel=1e-5)
    assert got.ce_loss_spliced == pytest.approx(ce(spliced), rel=1e-5)
    expected = (ce(zeroed) - ce(spliced)) / (ce(zeroed) - ce(clean))
    assert got.ce_loss_recovered == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_a_sentence_encoder_reports_the_embedding_cosine_kept():
    adapter = load_model("minilm-l6", random_weights=True)
    ids = torch.tensor([adapter.wrap(adapter.tokenize("a short sentence about cats and dogs"))] * 3)
    layer = "blocks.2.hook_resid_post"
    exact = spliced_evaluation(adapter, layer, ids, _sae(384, "identity"), is_text=True)
    assert exact.cosine_kept == pytest.approx(1, abs=1e-6) and exact.kl_div is None
    zero = spliced_evaluation(adapter, layer, ids, _sae(384, "zero"), is_text=True)
    assert zero.cosine_kept == pytest.approx(zero.cosine_kept_zero_ablation, abs=1e-12) and zero.cosine_kept < 0.999


def test_sae_eval_cli_spliced_and_its_refusals(tmp_path, capsys):
    store, run_dir = tmp_path / "store", tmp_path / "sae"
    code, _, err = run(capsys, "cache", "--layer", "conv2", "--n", "100", "--out", store, "--no-progress")
    assert code == 0, err
    sizes = ["--dict-size", "64", "--arch", "topk", "--k", "4", "--samples", "4000", "--batch-size", "256"]
    code, _, err = run(
        capsys, "sae", "train", "--data", store, *sizes, "--eval-samples", "256", "--out", run_dir, "--no-progress"
    )
    assert code == 0, err
    out = tmp_path / "e.json"
    code, stdout, err = run(
        capsys,
        "sae",
        "eval",
        run_dir,
        "--model",
        "digits",
        "--layer",
        "conv2",
        "--n",
        "50",
        "--json",
        out,
        "--no-progress",
    )
    assert code == 0, err
    r = json.loads(out.read_text())
    assert (r["n_inputs"], r["n_rows"], r["d_in"], r["dict_size"], r["l0"]) == (50, 800, 32, 64, 4.0)
    assert r["kl_div"] >= 0 and r["accuracy_clean"] is not None and "spliced into digits-cnn conv2" in stdout
    for argv, says in (
        (["--model", "digits", "--layer", "fc1"], "d_in=32"),  # fc1 is 64 wide
        (["--model", "digits"], "--layer"),
        (["--layer", "conv2"], "--model"),
        (["--model", "digits", "--layer", "conv2", "--data", "sharkey"], "drop the data options"),
    ):
        code, _, err = run(capsys, "sae", "eval", run_dir, *argv, "--json", tmp_path / "bad.json", "--no-progress")
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad.json").exists()
    assert np.isfinite(r["explained_variance"])
