"""SAELens export/import: round trips per architecture, bad folders, and (when sae_lens is installed)
SAELens's own forward pass on our export and our import of SAELens's own saves."""

import json

import pytest
import torch

from sae.export import CONFIG_FILE, WEIGHTS_FILE, export_saelens, import_saelens
from sae.files import load_tensors
from sae.model import SAEConfig, SparseAutoencoder

D, N = 12, 40

CASES = {
    "relu": dict(arch="relu"),
    "relu-tied": dict(arch="relu", tied=True),
    "relu-weighted_l1": dict(arch="relu", decoder_norm="weighted_l1", l1=2.5),
    "topk": dict(arch="topk", k=4),
    "topk-tied": dict(arch="topk", k=4, tied=True),
    "topk-weighted_l1": dict(arch="topk", k=4, decoder_norm="weighted_l1"),
    "batchtopk": dict(arch="batchtopk", k=4),
    "batchtopk-tied": dict(arch="batchtopk", k=4, tied=True),
}


def make_sae(seed: int = 0, **kw) -> SparseAutoencoder:
    """A random SAE whose biases, decoder norms and BatchTopK threshold all matter."""
    g = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(d_in=D, dict_size=N, **kw), generator=g)
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(N, generator=g))
        sae.b_dec.copy_(torch.randn(D, generator=g))
        if sae.config.decoder_norm == "weighted_l1" and sae.W_dec is not None:
            sae.W_dec.mul_(torch.rand(N, 1, generator=g) * 3 + 0.05)
        if sae.config.arch == "batchtopk":
            sae.threshold.fill_(0.05)
    return sae.eval()


def inputs(seed: int = 1, n: int = 64) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_is_exact(tmp_path, name):
    sae = make_sae(**CASES[name])
    export_saelens(sae, tmp_path, hook_name="blocks.3.hook_resid_pre", model_name="gpt2")
    back = import_saelens(tmp_path)
    assert back.config == sae.config and not back.training
    x = inputs()
    with torch.no_grad():
        acts = sae.encode(x)
        assert (acts != 0).any()
        assert torch.equal(back.encode(x), acts)
        assert torch.equal(back.decode(acts), sae.decode(acts))
        assert torch.equal(back(x).recon, sae(x).recon)
    assert torch.equal(back.threshold, sae.threshold)


def test_files_follow_saelens_conventions(tmp_path):
    sae = make_sae(**CASES["batchtopk-tied"])
    export_saelens(sae, tmp_path / "b", hook_name="blocks.0.hook_resid_pre")
    cfg = json.loads((tmp_path / "b" / CONFIG_FILE).read_text())
    assert cfg["architecture"] == "jumprelu" and (cfg["d_in"], cfg["d_sae"]) == (D, N)
    assert cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_pre"
    assert int(cfg["metadata"]["sae_lens_version"].split(".")[0]) >= 6  # else read as a pre-6 config
    assert cfg["metadata"]["training_architecture_details"]["k"] == 4
    t, _ = load_tensors(tmp_path / "b" / WEIGHTS_FILE)
    assert set(t) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
    assert t["W_enc"].shape == (D, N) and t["W_dec"].shape == (N, D)
    assert torch.equal(t["W_dec"], t["W_enc"].T)  # tied: written out explicitly
    assert torch.equal(t["threshold"], torch.full((N,), 0.05))

    export_saelens(make_sae(**CASES["topk"]), tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / CONFIG_FILE).read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 4 and cfg["rescale_acts_by_decoder_norm"] is False
    export_saelens(make_sae(**CASES["relu"]), tmp_path / "r")
    assert json.loads((tmp_path / "r" / CONFIG_FILE).read_text())["architecture"] == "standard"


def test_refuses_to_overwrite(tmp_path):
    export_saelens(make_sae(), tmp_path)
    other = make_sae(seed=5)
    with pytest.raises(ValueError, match="overwrite=True"):
        export_saelens(other, tmp_path)
    assert not torch.equal(import_saelens(tmp_path).W_enc, other.W_enc)
    export_saelens(other, tmp_path, overwrite=True)
    assert torch.equal(import_saelens(tmp_path).W_enc, other.W_enc)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        export_saelens(make_sae(), tmp_path / "other")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        export_saelens(make_sae(), tmp_path / "file")


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError):
        import_saelens(tmp_path / "nope")
    export_saelens(make_sae(), tmp_path / "a")
    (tmp_path / "a" / CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="cfg.json") as err:
        import_saelens(tmp_path / "a")
    _one_line(err)

    export_saelens(make_sae(), tmp_path / "b")
    (tmp_path / "b" / WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="safetensors") as err:
        import_saelens(tmp_path / "b")
    _one_line(err)

    export_saelens(make_sae(), tmp_path / "c")
    (tmp_path / "c" / CONFIG_FILE).write_text("{broken")
    with pytest.raises(ValueError, match="JSON"):
        import_saelens(tmp_path / "c")


def _edit(folder, cfg_change=None, tensor_change=None):
    from safetensors.torch import save_file

    if cfg_change:
        cfg = json.loads((folder / CONFIG_FILE).read_text())
        cfg_change(cfg)
        (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    if tensor_change:
        t, _ = load_tensors(folder / WEIGHTS_FILE)
        tensor_change(t)
        save_file(t, str(folder / WEIGHTS_FILE))


@pytest.mark.parametrize(
    "cfg_change, tensor_change, match",
    [
        (lambda c: c.update(architecture="matching_pursuit"), None, "architecture='matching_pursuit' is not supported"),
        (lambda c: c.update(architecture="gated"), None, "lacks b_gate, b_mag, r_mag"),
        (lambda c: c.update(normalize_activations="layer_norm"), None, "normalize_activations"),
        (lambda c: c.update(d_sae=N + 1), None, "needs"),
        (None, lambda t: t.pop("b_enc"), "lacks b_enc"),
        (None, lambda t: t.update(b_mag=torch.zeros(N)), "b_mag"),
        (None, lambda t: t["W_dec"].__setitem__((0, 0), 9.0), "tied"),
    ],
)
def test_bad_contents(tmp_path, cfg_change, tensor_change, match):
    export_saelens(make_sae(**CASES["batchtopk-tied"]), tmp_path)
    _edit(tmp_path, cfg_change, tensor_change)
    with pytest.raises(ValueError, match=match) as err:
        import_saelens(tmp_path)
    _one_line(err)


def test_foreign_layouts_fold_exactly(tmp_path):
    """Without our metadata: TopK with decoder-norm rescaling and apply_b_dec_to_input=false are
    folded so our encode/decode equal SAELens's formulas (written out here)."""
    g = torch.Generator().manual_seed(3)
    W_enc, W_dec = torch.randn(D, N, generator=g), torch.randn(N, D, generator=g) * 0.3
    b_enc, b_dec = torch.randn(N, generator=g) * 0.1, torch.randn(D, generator=g)
    from safetensors.torch import save_file

    save_file({"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}, str(tmp_path / WEIGHTS_FILE))
    cfg = {
        "architecture": "topk",
        "d_in": D,
        "d_sae": N,
        "k": 5,
        "dtype": "float32",
        "apply_b_dec_to_input": False,
        "rescale_acts_by_decoder_norm": True,
        "normalize_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12"},
    }
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    sae = import_saelens(tmp_path)
    assert sae.config.arch == "topk" and sae.config.k == 5 and sae.config.decoder_norm == "unit"
    x = inputs()
    norms = W_dec.norm(dim=1)
    pre = (x @ W_enc + b_enc) * norms
    vals, idx = pre.topk(5, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    recon = (acts / norms) @ W_dec + b_dec
    with torch.no_grad():
        ours = sae.encode(x)
        torch.testing.assert_close(ours, acts, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.decode(ours), recon, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def sae_lens():
    return pytest.importorskip("sae_lens")  # ~8 s to import: one test below uses it


def test_saelens_reads_ours_and_we_read_theirs(sae_lens, tmp_path):
    from sae_lens import (
        SAE,
        GatedTrainingSAE,
        GatedTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    x = inputs(n=256)
    for name, kw in CASES.items():  # ours → SAELens
        sae = make_sae(**kw)
        folder = export_saelens(sae, tmp_path / name, hook_name="blocks.0.hook_resid_pre")
        theirs = SAE.load_from_disk(folder)
        with torch.no_grad():
            torch.testing.assert_close(theirs.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5, msg=name)
            torch.testing.assert_close(theirs(x), sae(x).recon, atol=1e-5, rtol=1e-5, msg=name)

    trained = {  # SAELens → ours (save_inference_model: BatchTopK becomes JumpReLU, TopK folds norms)
        "standard": StandardTrainingSAE(StandardTrainingSAEConfig(d_in=D, d_sae=N, l1_coefficient=3.0)),
        "topk": TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=N, k=4)),
        "batchtopk": BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D, d_sae=N, k=4)),
        "jumprelu": JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=D, d_sae=N)),
        "gated": GatedTrainingSAE(GatedTrainingSAEConfig(d_in=D, d_sae=N)),
        "matryoshka": MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=N, k=4, matryoshka_widths=[N // 4, N // 2, N])
        ),
    }
    g = torch.Generator().manual_seed(7)
    for name, tsae in trained.items():
        with torch.no_grad():
            for p in tsae.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            if name in ("batchtopk", "matryoshka"):
                tsae.topk_threshold = torch.tensor(0.2, dtype=torch.double)
        tsae.save_inference_model(tmp_path / f"sl-{name}")
        inference = SAE.load_from_disk(tmp_path / f"sl-{name}")
        ours = import_saelens(tmp_path / f"sl-{name}")
        # SAELens saves BatchTopK and Matryoshka for inference as JumpReLU with one shared threshold
        assert ours.config.arch == {"standard": "relu", "batchtopk": "batchtopk"}.get(name, name), (name, ours.config)
        assert ours.config.k == 4 or name in ("standard", "jumprelu", "gated")
        with torch.no_grad():
            torch.testing.assert_close(ours.encode(x), inference.encode(x), atol=1e-5, rtol=1e-5, msg=name)
            torch.testing.assert_close(ours(x).recon, inference(x), atol=1e-5, rtol=1e-5, msg=name)
    assert import_saelens(tmp_path / "sl-standard").config.l1 == 3.0


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "gated", "matryoshka"])
def test_synthsaebench_metrics_equal_saelens_on_the_same_sae_and_data(sae_lens, tmp_path, arch):
    """``sae.metrics.synth_bench`` against ``sae_lens.synthetic.eval_sae_on_synthetic_data``: our SAE
    (briefly trained, so that latents fire, die and share features) read by SAELens from our export,
    and the same samples handed to SAELens through its generator and feature-dictionary interface."""
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    from sae.metrics import synth_bench
    from sae.runs import eval_batch
    from sae.synthetic import SharkeyConfig, SharkeyData
    from sae.train import TrainConfig, train

    data = SharkeyData(SharkeyConfig(n_features=24, d=16, m=2.0, seed=5))
    cfg = SAEConfig(d_in=16, dict_size=32, arch=arch, k=3, l1=0.05, prefixes=(8,) if arch == "matryoshka" else ())
    sae = train(cfg, TrainConfig(n_samples=128 * 30, batch_size=128, warmup_steps=3, seed=2), data).sae_
    x, truth, codes = eval_batch(data, 3000, 11)
    assert torch.allclose(x, codes @ truth, atol=1e-5)

    class Features:  # SAELens's FeatureDictionary: the vectors, and codes -> activations
        feature_vectors = truth

        def __call__(self, acts):
            return acts @ truth

    class Codes:  # its ActivationGenerator: the same codes we evaluate on
        def sample(self, n):
            assert n == len(codes)
            return codes

    theirs_sae = sae_lens.SAE.load_from_disk(export_saelens(sae, tmp_path / "x", hook_name="synthetic"))
    theirs = eval_sae_on_synthetic_data(theirs_sae, Features(), Codes(), num_samples=len(codes))
    ours = synth_bench(sae, x, truth, codes)
    want = {
        **{k: v for k, v in theirs.to_dict().items() if k != "classification"},
        **theirs.to_dict()["classification"],
    }
    assert set(want) == set(ours._fields)
    for key, value in want.items():
        assert getattr(ours, key) == pytest.approx(value, rel=1e-4, abs=1e-5), (arch, key, getattr(ours, key), value)
    assert 0 < ours.mcc < 1 and 0 < ours.f1_score < 1 and 0 < ours.uniqueness < 1  # nothing degenerate compared
