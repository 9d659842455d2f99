from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from polylens.capture import capture
from polylens.clustering import points as protocols
from polylens.clustering.analysis import cluster_layer, purity
from polylens.models import load_model

TINY = dict(n_layers=2, d_model=64, n_heads=2, n_ctx=64)


def test_gpt2_positions_are_evenly_spaced_after_the_skip():
    assert protocols.text_positions(1024).tolist() == [100, 285, 469, 654, 838, 1023]
    assert protocols.text_positions(101).tolist() == [100]
    assert protocols.text_positions(100).tolist() == []
    assert protocols.text_positions(300, 3, 50).tolist() == [50, 174, 299]


def test_gpt2_protocol_takes_exactly_the_documented_tokens(tmp_path):
    from polylens.models.gpt2 import EOT, resolve_tokenizer

    adapter = load_model("gpt2", random_weights=True, config=TINY, seed=1)
    text = " ".join(f"word{i % 37} and the number {i}." for i in range(60))
    (tmp_path / "a.txt").write_text(text)
    pts = protocols.gpt2_points(adapter, "blocks.1.mlp.hook_pre", tmp_path / "a.txt", skip=10, per_seq=6)
    # independently: tokenize, cut into BOS + 63 tokens, take round(linspace(10, L-1, 6))
    ids = resolve_tokenizer().encode(text, add_special_tokens=False)
    seqs = [[EOT] + ids[s : s + 63] for s in range(0, len(ids), 63)]
    want_pos, want_tok, rows = [], [], []
    for seq in seqs:
        if len(seq) <= 10:
            continue
        pos = sorted(set(np.round(np.linspace(10, len(seq) - 1, 6)).astype(int).tolist()))
        want_pos += pos
        want_tok += [seq[p] for p in pos]
        z = capture(adapter.module, torch.tensor([seq]), ["blocks.1.mlp.hook_pre"]).activations[
            "blocks.1.mlp.hook_pre"
        ][0]
        rows.append(z[pos])
    assert pts.labels["position"].tolist() == want_pos
    assert pts.labels["token"].tolist() == want_tok
    assert np.array_equal(pts.codes.unpack(), torch.cat(rows).numpy() > 0)
    assert np.allclose(pts.activations, torch.cat(rows).numpy(), atol=1e-5)
    ex = pts.examples[0]
    assert ex["text"][ex["focus"]] == resolve_tokenizer().decode([want_tok[0]])
    if len(seqs[-1]) < 64:
        assert any("shorter than 64" in n for n in pts.notes)


def test_gpt2_protocol_refuses_empty_text(tmp_path):
    adapter = load_model("gpt2", random_weights=True, config=TINY, seed=1)
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(ValueError, match="holds no text"):
        protocols.gpt2_points(adapter, None, tmp_path / "empty.txt", skip=10)
    (tmp_path / "nothing_here").mkdir()
    with pytest.raises(ValueError, match="no .txt files"):
        protocols.gpt2_points(adapter, None, tmp_path / "nothing_here", skip=10)


def test_inception_channels_at_one_position(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (240, 260, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    adapter = load_model("inceptionv1", random_weights=True, seed=0)
    pts = protocols.image_points(adapter, "mixed3a", tmp_path)
    x = torch.cat([adapter.prepare(str(tmp_path / f"im{i}.png")) for i in range(3)])
    out = capture(adapter.module, x, ["mixed3a"]).activations["mixed3a"]  # [3, 256, 28, 28], post-ReLU
    centre = out[:, :, out.shape[2] // 2, out.shape[3] // 2]
    assert pts.codes.n_units == 256
    assert np.array_equal(pts.codes.unpack(), centre.numpy() > 0)
    assert len(pts.examples) == 3 and pts.examples[0]["image"].ndim == 3
    with torch.no_grad():  # the labels come from the same pass as the codes: the class a full forward predicts
        assert np.array_equal(pts.labels["class"], adapter.module(x).argmax(1).numpy())


def test_digits_codes_and_activations_are_both_scored(digits):
    pts = protocols.digits_points(digits, "fc1")
    assert len(pts.codes) == 1797 and pts.activations.shape == (1797, 64)
    assert np.array_equal(pts.codes.unpack(), pts.activations > 0)
    result, labelings = cluster_layer(pts, params={"min_cluster_size": 15})
    truth = pts.labels["class"]
    for space in ("codes", "activations"):
        res, pred = result.on[space], labelings[space]
        kept = pred >= 0
        # purity by counting: each cluster's most common class, over the points not called noise
        majority = sum(Counter(truth[pred == c].tolist()).most_common(1)[0][1] for c in set(pred[kept].tolist()))
        assert res["purity"] == pytest.approx(majority / kept.sum())
        assert res["nmi"] == pytest.approx(normalized_mutual_info_score(truth, pred))
        assert res["ari"] == pytest.approx(adjusted_rand_score(truth, pred))
        assert res["n_clusters"] == len(set(pred[kept].tolist())) and res["noise_frac"] == pytest.approx(
            1 - kept.mean()
        )
    assert result.agreement_ari == pytest.approx(adjusted_rand_score(labelings["codes"], labelings["activations"]))
    c = result.clusters[0]
    members = np.flatnonzero(labelings["codes"] == 0)
    assert c["size"] == len(members) and c["medoid"] in members and set(c["top_examples"]) <= set(members)


def test_purity_by_hand():
    pred = np.array([0, 0, 0, 1, 1, -1])
    truth = np.array([1, 1, 2, 3, 3, 3])
    assert purity(pred, truth) == pytest.approx(4 / 5)
    assert purity(np.full(4, -1), truth[:4]) is None


def test_cluster_layer_scores_a_tiny_labelled_example_by_hand():
    from polylens.clustering.points import LayerPoints
    from polylens.lens.codes import LayerSlot, SplineCodes, pack_bits

    # three codes 20 bits apart, twelve copies each; classes: 10 + 2, 12, 6 + 6
    protos = np.zeros((3, 60), dtype=bool)
    protos[1, :20], protos[2, 20:40] = True, True
    group = np.repeat(np.arange(3), 12)
    classes = np.array([0] * 10 + [1] * 2 + [1] * 12 + [2] * 6 + [0] * 6)
    codes = SplineCodes(pack_bits(protos[group]), 60, (LayerSlot("l", "relu", 0, 60, (60,)),))
    points = LayerPoints("toy", "l", codes, None, labels={"class": classes})
    result, labelings = cluster_layer(points, method="kmedoids", on="codes", params={"n_clusters": 3})
    assert adjusted_rand_score(group, labelings["codes"]) == 1.0
    assert result.on["codes"]["purity"] == pytest.approx((10 + 12 + 6) / 36)
    assert result.n_unique_codes == 3 and sorted(result.on["codes"]["sizes"]) == [12, 12, 12]
