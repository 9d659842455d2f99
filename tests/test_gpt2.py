"""GPT-2 adapter: random / local-folder weights, hooks, codes, early stop, offline errors, tokenizer.

HF_HUB_OFFLINE=1 (conftest): nothing here touches the network.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polylens.capture import capture
from polylens.lens.codes import extract_codes
from polylens.models import gpt2 as gpt2_mod
from polylens.models import load_model

TINY = dict(n_layers=2, d_model=64, n_heads=2, n_ctx=64)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv("POLYLENS_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def tiny(cache):
    return load_model("gpt2", random_weights=True, config=TINY, seed=3)


def test_random_weights_are_named_as_such(tiny):
    assert tiny.name == "gpt2 (random weights)"
    assert tiny.provenance["weights"] == "random"
    assert list(tiny.activation_layers) == ["blocks.0.mlp.hook_pre", "blocks.1.mlp.hook_pre"]
    assert set(tiny.activation_layers.values()) == {"gelu_tanh"}
    assert not tiny.piecewise_linear
    assert "blocks.1.hook_resid_post" in tiny.space_layers and "blocks.0.mlp.hook_post" in tiny.space_layers


def test_same_seed_same_weights_other_seed_differs(tiny):
    again = load_model("gpt2", random_weights=True, config=TINY, seed=3)
    other = load_model("gpt2", random_weights=True, config=TINY, seed=4)
    w = tiny.module.blocks[0].mlp.W_in
    assert torch.equal(w, again.module.blocks[0].mlp.W_in)
    assert not torch.equal(w, other.module.blocks[0].mlp.W_in)


def test_capture_equals_run_with_cache_and_codes_equal_preacts_positive(tiny):
    tokens = tiny.default_inputs(3)  # [3, seq]
    names = list(tiny.activation_layers)
    _, cached = tiny.module.run_with_cache(tokens, names_filter=lambda n: n in names)
    got = capture(tiny.module, tokens, names)
    codes = extract_codes(tiny, tokens, per_position=True)
    bits = codes.unpack()  # [3·seq, 2·d_mlp]
    d_mlp = tiny.module.cfg.d_mlp
    for i, name in enumerate(names):
        ref = cached[name]  # [3, seq, d_mlp]
        assert torch.equal(got.activations[name], ref)
        want = (ref > 0).reshape(-1, d_mlp).numpy()
        assert np.array_equal(bits[:, i * d_mlp : (i + 1) * d_mlp].astype(bool), want)
    assert codes.provenance["model"] == "gpt2 (random weights)"


def test_gelu_new_is_the_tanh_form(tiny):
    tokens = tiny.prepare("A short sentence about polytopes.")
    got = capture(tiny.module, tokens, ["blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post"], stop_early=False)
    pre, post = got.activations["blocks.0.mlp.hook_pre"], got.activations["blocks.0.mlp.hook_post"]
    assert torch.allclose(post, F.gelu(pre, approximate="tanh"), atol=1e-6)
    assert torch.equal(post > 0, pre > 0)  # GELU keeps the sign: the hard code is the same at either site


def test_capture_stops_after_the_requested_layer(tiny):
    capture(tiny.module, tiny.default_inputs(1), ["blocks.0.mlp.hook_pre"])  # once: the check that the layer runs once
    fired = []
    handle = tiny.module.blocks[0].mlp.hook_post.register_forward_hook(lambda *a: fired.append("post0"))
    handle2 = tiny.module.blocks[1].hook_resid_pre.register_forward_hook(lambda *a: fired.append("block1"))
    try:
        got = capture(tiny.module, tiny.default_inputs(2), ["blocks.0.mlp.hook_pre"])
    finally:
        handle.remove()
        handle2.remove()
    assert got.output is None and fired == []  # neither the GELU of block 0 nor block 1 ran


def test_prepare_inputs_and_describe_output(tiny, tmp_path):
    ids = tiny.prepare("Hello world")
    assert ids.tolist() == [[50256, 15496, 995]]  # BOS, then GPT-2's ids for "Hello", " world"
    assert torch.equal(tiny.prepare(0), tiny.prepare(gpt2_mod.SENTENCES[0]))
    (tmp_path / "t.txt").write_text("Hello world")
    np.save(tmp_path / "ids.npy", np.array([50256, 15496, 995]))
    assert torch.equal(tiny.prepare(str(tmp_path / "t.txt")), ids)
    assert torch.equal(tiny.prepare(str(tmp_path / "ids.npy")), ids)
    assert torch.equal(tiny.prepare([50256, 15496, 995]), ids)
    labels = tiny.describe_output(tiny.module(tiny.default_inputs(2)))
    assert len(labels) == 2 and all(isinstance(s, str) for s in labels)
    with pytest.raises(ValueError, match="d_vocab"):
        tiny.prepare([50257])
    with pytest.raises(ValueError, match="n_ctx=64"):
        tiny.prepare("word " * 100)
    with pytest.raises(ValueError, match="between 1 and"):
        tiny.default_inputs(99)


def test_tokenizer_round_trip_offline(tmp_path):
    folder = gpt2_mod.build_tokenizer_dir(tmp_path / "tok")
    assert {p.name for p in folder.iterdir()} == {"vocab.json", "merges.txt", "tokenizer_config.json"}
    tok = gpt2_mod.resolve_tokenizer(folder)
    text = "The Polytope Lens: spline codes, 3072 units, and naïve café tokens!"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.encode(" world", add_special_tokens=False) == [995]
    assert gpt2_mod.build_tokenizer_dir(tmp_path / "tok") == folder  # cached: built once


def test_offline_without_weights_fails_fast_with_one_line(cache, monkeypatch):
    monkeypatch.setattr(gpt2_mod, "_hub_cached", lambda name: False)  # even where a hub cache exists
    with pytest.raises(ValueError) as err:
        load_model("gpt2-medium")
    msg = str(err.value)
    assert "random_weights=True" in msg and "weights=DIR" in msg and "HF_HUB_OFFLINE" in msg and "\n" not in msg
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # no hub: the 1 s probe must fail
    monkeypatch.setattr(gpt2_mod.socket, "create_connection", _refuse)
    with pytest.raises(ValueError, match="unreachable.*random_weights=True.*weights=DIR"):
        load_model("gpt2")


def _refuse(*args, **kwargs):
    raise ConnectionRefusedError("no network in tests")


def test_offline_cli_error_imports_no_torch(tmp_path):
    """The offline error must come fast (issue 4: within 2 s): no torch, scipy or model library on that path."""
    code = (
        "import sys; from cli.main import main;"
        "rc = main(['density', '--model', 'gpt2', '--layer', 'blocks.6.mlp.hook_pre']);"
        "heavy = ('torch', 'numpy', 'scipy', 'sklearn', 'matplotlib', 'transformer_lens', 'transformers');"
        "print(rc, sorted(m for m in heavy if m in sys.modules))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}  # an empty hub cache
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.strip() == "2 []", out.stderr
    assert out.stderr.count("\n") == 1 and "--random-weights" in out.stderr and "weights=DIR" in out.stderr


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown GPT-2 model"):
        load_model("gpt2-huge", random_weights=True)
    with pytest.raises(ValueError, match="not both"):
        load_model("gpt2", random_weights=True, weights="x")
    with pytest.raises(FileNotFoundError, match="weights="):
        load_model("gpt2", weights="/nonexistent/gpt2")


def test_local_hf_folder_matches_transformers(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=32, vocab_size=50257)
    hf = GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "gpt2-tiny")
    adapter = load_model("gpt2", weights=str(tmp_path / "gpt2-tiny"))
    assert adapter.name == "gpt2 (gpt2-tiny)" and adapter.module.cfg.n_layers == 2
    tokens = torch.tensor([[50256, 15496, 995, 11, 428, 318]])
    pre_hf = []
    handle = hf.transformer.h[1].mlp.c_fc.register_forward_hook(lambda m, a, out: pre_hf.append(out))
    with torch.no_grad():
        logits_hf = hf(tokens).logits
    handle.remove()
    got = capture(adapter.module, tokens, ["blocks.1.mlp.hook_pre"], keep_output=True)
    assert torch.allclose(got.output, logits_hf, atol=1e-4)
    assert torch.allclose(got.activations["blocks.1.mlp.hook_pre"], pre_hf[0], atol=1e-5)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model("gpt2", weights=str(tmp_path))


def test_full_gpt2_small_random_architecture():
    adapter = load_model("gpt2", random_weights=True)
    cfg = adapter.module.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.d_vocab, cfg.n_ctx) == (
        12,
        768,
        3072,
        12,
        50257,
        1024,
    )
    assert len(adapter.activation_layers) == 12
    got = capture(adapter.module, torch.tensor([[50256, 15496, 995]]), ["blocks.5.mlp.hook_pre"])
    assert got.activations["blocks.5.mlp.hook_pre"].shape == (1, 3, 3072)
