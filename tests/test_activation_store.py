"""The activation store: shards + manifest written atomically, resumed without loss or duplicates,
read back checked, streamed as seeded shuffled batches with bounded memory; ``polylens cache``."""

import json

import pytest
import torch

from sae.activation_store import MANIFEST, ActivationStore, StoreBatches, StoreWriter, sha256


def _write(out, rows, shard_rows=100, **kw):
    w = StoreWriter(out, width=rows.shape[1], shard_rows=shard_rows, meta={"model": "m", "layer": "l"}, **kw)
    for lo in range(0, rows.shape[0], 37):  # batches that do not line up with the shards
        w.add(rows[lo : lo + 37])
    return w.close()


def test_rows_round_trip_in_fixed_size_shards_with_checksums(tmp_path):
    rows = torch.randn(350, 6)
    m = _write(tmp_path / "s", rows, weight=torch.randn(6, 4))
    assert [s["rows"] for s in m["shards"]] == [100, 100, 100, 50] and m["rows"] == 350 and m["complete"]
    assert all(s["sha256"] == sha256(tmp_path / "s" / s["file"]) for s in m["shards"])
    store = ActivationStore(tmp_path / "s")
    assert torch.equal(store.read(0, 350), rows) and torch.equal(store.read(95, 205), rows[95:205])
    assert store.weight().shape == (6, 4)
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.startswith(".")]  # no temp files left


def test_an_interrupted_store_resumes_after_its_last_complete_shard_without_duplicates(tmp_path):
    rows = torch.randn(430, 5)
    whole = _write(tmp_path / "whole", rows)
    w = StoreWriter(tmp_path / "cut", width=5, shard_rows=100, meta={"model": "m", "layer": "l"})
    w.add(rows[:260])  # two shards written, 60 rows buffered: then the process dies
    del w
    again = StoreWriter(tmp_path / "cut", width=5, shard_rows=100, meta={"model": "m", "layer": "l"})
    assert again.rows_done == 200 and not again.complete
    again.begin(150)  # the caller restarts from the input holding row 200: rows 150..199 are dropped
    for lo in range(150, 430, 37):
        again.add(rows[lo : lo + 37])
    cut = again.close()
    assert [s["sha256"] for s in cut["shards"]] == [s["sha256"] for s in whole["shards"]]
    assert torch.equal(ActivationStore(tmp_path / "cut").read(0, 430), rows)
    with pytest.raises(ValueError, match="holds another store \\(layer 'l', not 'other'\\)"):
        StoreWriter(tmp_path / "cut", width=5, shard_rows=100, meta={"model": "m", "layer": "other"})


def test_a_store_that_disagrees_with_its_manifest_is_refused_naming_the_shard(tmp_path):
    rows = torch.randn(300, 4)
    _write(tmp_path / "s", rows)
    shard = tmp_path / "s" / "shard_000001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the tensor bytes: the header still reads
    shard.write_bytes(bytes(data))
    store = ActivationStore(tmp_path / "s")
    store.read(0, 100)
    with pytest.raises(ValueError, match="shard .*shard_000001.safetensors: its sha256 does not match"):
        store.read(100, 200)
    shard.unlink()
    with pytest.raises(ValueError, match="shard .*shard_000001.safetensors named in the manifest is missing"):
        ActivationStore(tmp_path / "s")
    _write(tmp_path / "t", rows)
    m = json.loads((tmp_path / "t" / MANIFEST).read_text())
    m["dtype"] = "float16"
    (tmp_path / "t" / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(
        ValueError, match="shard .*shard_000000.safetensors: activations is F32 \\[100, 4\\], the manifest says F16"
    ):
        ActivationStore(tmp_path / "t")
    m["dtype"], m["width"] = "float32", 5
    (tmp_path / "t" / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ValueError, match="the manifest says F32 \\[100, 5\\]"):
        ActivationStore(tmp_path / "t")
    w = StoreWriter(tmp_path / "u", width=4, shard_rows=100, meta={"model": "m", "layer": "l"})
    w.add(rows[:150])
    with pytest.raises(ValueError, match="is incomplete"):
        ActivationStore(tmp_path / "u")


def test_batches_are_a_seeded_shuffle_of_every_row_with_one_window_in_memory(tmp_path):
    rows = torch.arange(1000, dtype=torch.float32)[:, None].repeat(1, 3)  # row i holds i
    _write(tmp_path / "s", rows, shard_rows=128)
    store = ActivationStore(tmp_path / "s")
    # chunks of 50 rows, a window of 4 chunks (200 rows x 3 floats x 4 bytes = 2400 bytes)
    b = StoreBatches(store, 40, seed=3, chunk_rows=50, buffer_bytes=2400)
    assert b.window_chunks == 4 and b.per_epoch == 25
    epoch = torch.cat([b.batch(t) for t in range(25)])[:, 0]
    assert sorted(epoch.long().tolist()) == list(range(1000))  # every row once an epoch
    assert not torch.equal(epoch, torch.arange(1000.0))  # shuffled
    nxt = torch.cat([b.batch(t) for t in range(25, 50)])[:, 0]
    assert sorted(nxt.long().tolist()) == list(range(1000)) and not torch.equal(nxt, epoch)  # a new order each epoch
    fresh = StoreBatches(store, 40, seed=3, chunk_rows=50, buffer_bytes=2400)
    assert torch.equal(fresh.batch(37), b.batch(37)) and torch.equal(
        fresh.batch(3), b.batch(3)
    )  # a pure function of (seed, t)
    assert not torch.equal(StoreBatches(store, 40, seed=4, chunk_rows=50, buffer_bytes=2400).batch(3), b.batch(3))
    ranks = [
        StoreBatches(store, 40, seed=3, chunk_rows=50, buffer_bytes=2400, rank=r, world=2).batch(11) for r in (0, 1)
    ]
    assert torch.equal(torch.cat(ranks), b.global_batch(11))  # each rank reads its own slice of the global batch


def test_training_from_a_store_resumes_bitwise(tmp_path):
    from sae.config import SAEConfig, TrainConfig
    from sae.train import Trainer

    _write(tmp_path / "s", torch.randn(2000, 8), shard_rows=300)
    sc = SAEConfig(d_in=8, dict_size=16, l1=0.1)
    full = (
        Trainer(sc, TrainConfig(n_samples=64 * 40, batch_size=64, resample_every=10, dead_window=640))
        .fit(tmp_path / "s")
        .sae_
    )
    Trainer(
        sc, TrainConfig(n_samples=64 * 15, batch_size=64, resample_every=10, dead_window=640), tmp_path / "run"
    ).fit(tmp_path / "s")
    resumed = Trainer.resume(tmp_path / "run", n_samples=64 * 40).fit(tmp_path / "s").sae_
    for k, v in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k


def test_cache_command_stores_conv_channel_vectors_and_gradients_an_sae_trains_on(tmp_path, capsys, digits):
    from cli.experiments.cache import cache_activations
    from cli.main import main
    from polylens.capture import capture

    code = main(
        [
            "cache",
            "--layer",
            "conv2",
            "--n",
            "40",
            "--gradients",
            "logit",
            "--out",
            str(tmp_path / "s"),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    store = ActivationStore(tmp_path / "s")
    x = digits.default_inputs(40)
    target = lambda out: out.gather(1, out.argmax(1, keepdim=True)).squeeze(1)  # noqa: E731
    got = capture(digits.module, x, ["conv2"], target=target)
    acts, grads = got.activations["conv2"], got.gradients["conv2"][:, 0]  # [40, C, H, W]
    c = acts.shape[1]
    assert store.rows == 40 * acts.shape[2] * acts.shape[3] and store.width == c
    assert torch.allclose(store.read(0, store.rows), acts.permute(0, 2, 3, 1).reshape(-1, c))
    assert torch.allclose(store.read(0, store.rows, "gradients"), grads.permute(0, 2, 3, 1).reshape(-1, c))
    assert torch.equal(store.weight(), dict(digits.module.named_modules())["conv2"].weight.detach().reshape(c, -1))
    again = ["cache", "--layer", "conv2", "--n", "40", "--out", str(tmp_path / "s")]
    assert main([*again, "--gradients", "logit"]) == 2  # complete: refused without --force
    assert "is complete; pass --force" in capsys.readouterr().err
    assert main(again) == 2  # another store (no gradients) into the same folder
    assert "holds another store (--gradients: " in capsys.readouterr().err
    code = main(
        [
            "sae",
            "train",
            "--data",
            str(tmp_path / "s"),
            "--dict-size",
            "64",
            "--samples",
            "4096",
            "--batch-size",
            "64",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    # interrupted mid-way (a Ctrl-C after the second shard), then run again: the same store
    cache_activations(digits, "conv2", tmp_path / "whole", x, shard_rows=200)
    calls = []

    def stop_after_two(self, n, _orig=StoreWriter._flush):
        calls.append(n)
        if len(calls) == 3:
            raise KeyboardInterrupt
        _orig(self, n)

    mp = pytest.MonkeyPatch()
    mp.setattr(StoreWriter, "_flush", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(digits, "conv2", tmp_path / "cut", x, shard_rows=200, batch_size=3)
    mp.undo()
    assert json.loads((tmp_path / "cut" / MANIFEST).read_text())["rows"] == 400  # two shards of 200 made it
    cache_activations(digits, "conv2", tmp_path / "cut", x, shard_rows=200, batch_size=3)
    a, b = (json.loads((tmp_path / n / MANIFEST).read_text())["shards"] for n in ("whole", "cut"))
    assert [s["sha256"] for s in a] == [s["sha256"] for s in b]


def test_cache_gpt2_text_contexts_with_the_next_token_loss_gradient(tmp_path, capsys):
    from cli.experiments.cache import cache_activations, text_contexts
    from polylens.models import load_model

    gpt = load_model("gpt2", random_weights=True, config=dict(n_layers=2, d_model=64, n_heads=2, n_ctx=64), seed=3)
    text = tmp_path / "t.txt"
    text.write_text("The cat sat on the mat. " * 40)
    ctx = text_contexts(gpt, str(text), 16, None)
    assert ctx.shape[1] == 16 and (ctx[:, 0] == 50256).all()
    m = cache_activations(gpt, "blocks.1.mlp.hook_pre", tmp_path / "s", ctx, is_text=True, gradients="loss")
    assert m["rows"] == ctx.shape[0] * 15 and m["width"] == gpt.module.cfg.d_mlp  # every position but the BOS
    store = ActivationStore(tmp_path / "s")
    assert store.weight().shape == (gpt.module.cfg.d_mlp, 64)
    # the gradient of context 0's summed next-token loss, by autograd on the layer's output
    acts = {}
    h = gpt.module.blocks[1].mlp.hook_pre.register_forward_hook(
        lambda mod, i, o: acts.setdefault("z", o.retain_grad() or o)
    )
    logits = gpt.module(ctx[:1])
    torch.nn.functional.cross_entropy(logits[0, :-1], ctx[0, 1:], reduction="sum").backward()
    h.remove()
    assert torch.allclose(store.read(0, 15, "gradients"), acts["z"].grad[0, 1:], atol=1e-6)
    empty = tmp_path / "e.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="e.txt' is empty"):
        text_contexts(gpt, str(empty), 16, None)
    short = tmp_path / "s.txt"
    short.write_text("two words")
    with pytest.raises(ValueError, match="holds 2 tokens"):
        text_contexts(gpt, str(short), 16, None)


def test_svd_init_copies_the_left_singular_vectors_of_the_stored_weight_matrix(tmp_path, capsys):
    from safetensors.torch import save_file

    from cli.main import main
    from sae.config import SAEConfig, TrainConfig
    from sae.train import Trainer

    W = torch.randn(6, 10)  # a layer with 6 outputs (the SAE's d_in) and fan-in 10: rank 6
    _write(tmp_path / "s", torch.randn(600, 6), weight=W)
    sc = SAEConfig(d_in=6, dict_size=9, init="svd", init_noise=0.0)
    dec = Trainer(sc, TrainConfig(n_samples=64, batch_size=64)).build(tmp_path / "s").groups[0].decoders()[0]
    U = torch.linalg.svd(W, full_matrices=False).U.T  # [6, 6] rows by decreasing singular value
    cycled = U[torch.arange(9) % 6]
    assert torch.allclose((dec * cycled).sum(-1).abs(), torch.ones(9), atol=1e-5)  # row i = ±u_(i mod 6)
    save_file(
        {"w_t": W.T.contiguous()}, str(tmp_path / "w.safetensors")
    )  # the transpose, from a file, is read the same way
    sc2 = SAEConfig(d_in=6, dict_size=9, init="svd", init_noise=0.0, init_matrix=f"{tmp_path / 'w.safetensors'}:w_t")
    dec2 = Trainer(sc2, TrainConfig(n_samples=64, batch_size=64)).build(torch.randn(600, 6)).groups[0].decoders()[0]
    assert torch.allclose((dec2 * cycled).sum(-1).abs(), torch.ones(9), atol=1e-5)
    code = main(
        [
            "sae",
            "train",
            "--data",
            str(tmp_path / "s"),
            "--init",
            "svd",
            "--samples",
            "640",
            "--batch-size",
            "64",
            "--dict-size",
            "12",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    import numpy as np

    np.save(tmp_path / "a.npy", np.random.randn(300, 6).astype(np.float32))
    code = main(["sae", "train", "--data", str(tmp_path / "a.npy"), "--init", "svd", "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err
    assert code == 2 and "--init-matrix FILE.safetensors:KEY" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r2").exists()


def test_resuming_on_another_store_is_refused(tmp_path):
    from sae.config import SAEConfig, TrainConfig
    from sae.train import Trainer

    _write(tmp_path / "a", torch.randn(600, 6))
    w = StoreWriter(
        tmp_path / "b", width=6, shard_rows=100, meta={"model": "m", "layer": "other"}
    )  # same width, another layer
    w.add(torch.randn(600, 6))
    w.close()
    sc = SAEConfig(d_in=6, dict_size=8)
    Trainer(sc, TrainConfig(n_samples=64 * 3, batch_size=64), tmp_path / "run").fit(tmp_path / "a")
    with pytest.raises(
        ValueError, match="trained on the activation store of model m layer l width 6.*this data is model m layer other"
    ):
        Trainer.resume(tmp_path / "run", n_samples=64 * 6).fit(tmp_path / "b")
    with pytest.raises(ValueError, match="this data is not an activation store"):
        Trainer.resume(tmp_path / "run", n_samples=64 * 6).fit(torch.randn(600, 6))
    Trainer.resume(tmp_path / "run", n_samples=64 * 6).fit(tmp_path / "a")  # its own store: fine
