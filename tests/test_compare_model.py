"""``polylens compare --model``: each method's directions measured in a real layer (digits CNN,
random-weights GPT-2), against independent computations: the PCAs' optimal shares (closed form
from the eigenvalues), a full-rank projection ablation against zeroing the layer by hand, and the
bad inputs the issue lists."""

import json

import numpy as np
import pytest
import torch
from cli_run import run

from cli.experiments.compare_layer import capture_rows, compare_layer
from cli.experiments.sae_methods import LayerSAEOptions
from polylens.targets import parse_target

FAST = LayerSAEOptions(steps=150)


@pytest.fixture(scope="module")
def digits_result(digits):
    from polylens.models import load_model

    adapter = load_model("digits")
    inputs = adapter.default_inputs(120)
    labels = adapter.default_labels(120)
    comparison = compare_layer(adapter, "relu1", inputs, target="logits", k=6, labels=labels, sae=FAST)
    return adapter, inputs, labels, comparison.to_json(), comparison.directions


def test_result_has_the_documented_shape(digits_result):
    import json

    _, _, _, res, _ = digits_result
    assert list(res) == [
        "model",
        "layer",
        "target",
        "gradient_rows",
        "n_inputs",
        "n_rows",
        "width",
        "k",
        "ablation",
        "seed",
        "methods",
        "agreement",
    ]  # the command's JSON keys, in their order
    assert json.loads(json.dumps(res)) == res
    assert res["model"] == "digits-cnn" and res["layer"] == "relu1" and res["n_inputs"] == 120
    assert set(res["methods"]) == {"activation_pca", "gradient_pca", "lib", "sae", "gradient_sae", "gsae", "random"}
    for m in res["methods"].values():
        assert m["n_directions"] == 6
        assert 0 <= m["activation_variance"] <= 1 + 1e-9 and 0 <= m["gradient_energy"] <= 1 + 1e-9
        ab = m["ablation"]
        assert ab["k"] == [1, 2, 4, 6] and len(ab["kl"]) == 4 and len(ab["accuracy_drop"]) == 4
        assert all(v >= -1e-9 for v in ab["kl"])
    names, M = res["agreement"]["methods"], np.array(res["agreement"]["mmcs"])
    assert "random" in names and M.shape == (7, 7)
    assert np.allclose(np.diag(M), 1.0)
    json.dumps(res)  # JSON-ready


def test_pca_shares_are_the_closed_form_optimum(digits_result):
    """Ky Fan: no k directions hold more variance than the top-k PCs (and for gradient energy, the
    top-k eigenvectors of E[JᵀJ]); the share equals the top-k eigenvalues over the trace."""
    adapter, inputs, labels, res, _ = digits_result
    tgt = parse_target("logits", (1, 10), is_text=False, has_labels=True)
    A, J, out = capture_rows(adapter, "relu1", inputs, tgt, is_text=False)
    with torch.no_grad():
        torch.testing.assert_close(out, adapter.module(inputs))  # the reference output of the ablations
    A = A.double().numpy()
    J = J.double().numpy().reshape(-1, A.shape[1])
    cov = np.cov(A.T, bias=True)
    ev = np.sort(np.linalg.eigvalsh(cov))[::-1]
    eg = np.sort(np.linalg.eigvalsh(J.T @ J))[::-1]
    methods = res["methods"]
    assert methods["activation_pca"]["activation_variance"] == pytest.approx(ev[:6].sum() / ev.sum(), rel=1e-6)
    assert methods["gradient_pca"]["gradient_energy"] == pytest.approx(eg[:6].sum() / eg.sum(), rel=1e-6)
    for m in methods.values():
        assert m["activation_variance"] <= methods["activation_pca"]["activation_variance"] + 1e-9
        assert m["gradient_energy"] <= methods["gradient_pca"]["gradient_energy"] + 1e-9
    # random directions are far from the optimum on a trained model's layer
    assert methods["random"]["activation_variance"] < methods["activation_pca"]["activation_variance"] - 0.1


def test_full_rank_projection_ablation_equals_zeroing_the_layer(digits_result):
    adapter, inputs, labels, _, _ = digits_result
    from polylens.directions.ablation import ablation_curve, output_change

    full = np.eye(16)
    curve = ablation_curve(adapter.module, inputs, "relu1", full, [16], is_text=False, mode="project", labels=labels)
    model = adapter.module
    with torch.no_grad():
        reference = model(inputs)
        handle = model.relu1.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
        try:
            zeroed = model(inputs)
        finally:
            handle.remove()
    kl, acc = output_change(reference, zeroed, is_text=False, labels=labels)
    p = torch.softmax(reference.double(), -1)
    kl_by_hand = float(
        (p * (torch.log_softmax(reference.double(), -1) - torch.log_softmax(zeroed.double(), -1))).sum(-1).mean()
    )
    assert curve["kl"][0] == pytest.approx(kl_by_hand, rel=1e-5) and kl == pytest.approx(kl_by_hand, rel=1e-9)
    base = float((reference.argmax(1) == labels).double().mean())
    assert curve["accuracy_drop"][0] == pytest.approx(base - acc)
    # the mean-ablation of every direction replaces each row by the mean row
    rows, _, _ = capture_rows(
        adapter, "relu1", inputs, parse_target("0", (1, 10), is_text=False, has_labels=False), is_text=False
    )
    mean = rows.double().mean(0)
    m = ablation_curve(adapter.module, inputs, "relu1", full, [16], is_text=False, mode="mean", mean=mean.numpy())
    with torch.no_grad():
        const = mean.float()[None, :, None, None].expand(inputs.shape[0], 16, 8, 8)
        handle = model.relu1.register_forward_hook(lambda mod, a, out: const)
        try:
            by_hand = model(inputs)
        finally:
            handle.remove()
    assert m["kl"][0] == pytest.approx(output_change(reference, by_hand, is_text=False)[0], rel=1e-4)


def test_the_output_reads_the_pca_directions_more_than_random_ones(digits_result):
    methods = digits_result[3]["methods"]
    for name in ("activation_pca", "gradient_pca", "lib"):
        assert methods[name]["ablation"]["kl"][-1] > 3 * methods["random"]["ablation"]["kl"][-1]


def test_cli_digits_writes_json_and_png(capsys, tmp_path, digits):
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    code, stdout, _ = run(
        capsys,
        "compare",
        "--model",
        "digits",
        "--layer",
        "fc1",
        "--n",
        "60",
        "--k",
        "4",
        "--target",
        "loss",
        "--sae-steps",
        "100",
        "--json",
        out,
        "--plot",
        png,
    )
    assert code == 0, stdout
    res = json.loads(out.read_text())
    assert res["target"] == "loss" and res["n_inputs"] == 60 and res["methods"]["random"]["ablation"]["k"] == [1, 2, 4]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "gradient_pca" in stdout


def test_gpt2_random_weights_sketched_logits():
    from polylens.models import load_model

    tiny = {"n_layers": 1, "d_model": 32, "d_mlp": 64, "n_heads": 2, "d_head": 16, "n_ctx": 32}
    adapter = load_model("gpt2", random_weights=True, config=tiny, seed=1)
    inputs = adapter.default_inputs(4)
    res = compare_layer(
        adapter, "blocks.0.mlp.hook_post", inputs, target="logits", k=3, is_text=True, sae=LayerSAEOptions(steps=20)
    ).to_json()
    assert "sketch" in res["gradient_rows"] and "estimate" in res["gradient_rows"]
    assert res["n_rows"] == 4 * (inputs.shape[1] - 1)  # the BOS position is left out
    assert res["methods"]["gradient_pca"]["ablation"]["accuracy_drop"] is not None  # next-token accuracy
    loss = compare_layer(
        adapter, "blocks.0.mlp.hook_post", inputs, target="loss", k=2, is_text=True, sae=None
    ).to_json()
    assert "next-token" in loss["gradient_rows"] and set(loss["methods"]) == {
        "activation_pca",
        "gradient_pca",
        "lib",
        "random",
    }
    top = parse_target("predicted", (1, 5, 7), is_text=True, has_labels=False).fn()
    out = torch.randn(2, 5, 7)
    assert torch.equal(top(out), out.max(-1).values.sum(1))  # each position's top logit, summed


BAD_MODEL = """
import torch
from torch import nn

class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.cut = nn.Identity()
        self.ids = nn.Identity()
        self.fc2 = nn.Linear(8, 3)
    def forward(self, x):
        h = self.cut(self.fc1(x))
        self.ids((h > 0).long())
        return self.fc2(h.detach() + 0 * x.sum(1, keepdim=True))

def make():
    return M()

def example_inputs(n):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
"""


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layer", "relu1", "--target", "12"], "between 0 and 9"),
        (["--layer", "relu1", "--target", "probs"], "is not a target of this model"),
        (["--layer", "relu1", "--k", "17"], "the layer's width 16"),
        (["--layer", "relu1", "--ablation", "shuffle"], "choose mean or project"),
        (["--layer", "nope"], "unknown layer"),
        (["--layer", "relu1", "--hidden", "4"], "toy option"),
        (["--setup", "x2", "--layer", "relu1"], "not both"),
    ],
)
def test_bad_input_digits(capsys, tmp_path, digits, extra, message):
    out = tmp_path / "r.json"
    code, _, err = run(capsys, "compare", "--model", "digits", "--n", "20", *extra, "--json", out)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("layer, message", [("cut", "no gradient path"), ("ids", "no gradient reaches it")])
def test_layer_without_gradient_path_is_refused(capsys, tmp_path, layer, message):
    model = tmp_path / "bad.py"
    model.write_text(BAD_MODEL)
    out = tmp_path / "r.json"
    code, _, err = run(
        capsys, "compare", "--model", f"{model}:make", "--layer", layer, "--n", "8", "--k", "2", "--json", out
    )
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_training_mode_batch_norm_is_refused_in_python(digits):
    from polylens.models import load_model

    adapter = load_model("digits")
    adapter.module.add_module("bn", torch.nn.BatchNorm1d(3))
    adapter.module.train()
    try:
        with pytest.raises(ValueError, match="training mode and has batch-norm"):
            compare_layer(adapter, "relu1", adapter.default_inputs(8), k=2, sae=None)
        adapter.module.eval()
        with pytest.raises(ValueError, match=r"k=0 must be between 1 and the layer's width"):
            compare_layer(adapter, "relu1", adapter.default_inputs(8), k=0, sae=None)
    finally:
        del adapter.module.bn
        adapter.module.eval()


def test_cli_switches_a_training_mode_model_to_eval_and_says_so(capsys, tmp_path):
    model = tmp_path / "bn.py"
    model.write_text(
        "import torch\nfrom torch import nn\n"
        "def make():\n"
        "    m = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))\n"
        "    return m.train()\n"
        "def example_inputs(n):\n    return torch.randn(n, 4, generator=torch.Generator().manual_seed(0))\n"
    )
    code, out, err = run(
        capsys, "compare", "--model", f"{model}:make", "--layer", "2", "--n", "16", "--k", "2", "--no-sae"
    )
    assert code == 0 and "eval mode" in err and "random" in out


def test_the_logit_sketch_estimates_the_jacobian_second_moment_without_bias():
    """A linear read-out with 40 > 32 outputs: every input's Jacobian is W, so E[JᵀJ] = WᵀW; the
    sketch's 8 columns per input, drawn afresh for each input, average to it."""
    from polylens.capture import capture

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Linear(6, 40)).eval()
    W = model[1].weight.detach().double()
    tgt = parse_target("logits", (1, 40), is_text=False, has_labels=False)
    assert tgt.sketched and tgt.columns == 8 and "estimate" in tgt.describe()
    x = torch.randn(3000, 5)
    rows = []
    for lo in range(0, 3000, 500):  # batches see their own inputs' projections (offset)
        rows.append(capture(model, x[lo : lo + 500], ["0"], target=tgt.fn(offset=lo)).gradients["0"])
    J = torch.cat(rows).double().reshape(-1, 6)
    est = J.T @ J / 3000
    assert float((est - W.T @ W).norm() / (W.T @ W).norm()) < 0.05
    one = capture(model, x[:500], ["0"], target=tgt.fn(offset=0)).gradients["0"]
    assert torch.equal(
        one[:250], capture(model, x[:250], ["0"], target=tgt.fn(offset=0)).gradients["0"]
    )  # batch-size free
    exact = parse_target("logits", (1, 10), is_text=False, has_labels=False)
    assert not exact.sketched and exact.columns == 10 and "all 10 logits" in exact.describe()


def test_the_frozen_decoder_control_reports_directions_of_its_random_start(digits):
    """``--controls``: the activations' SAE with its decoder frozen at its random start, measured like a
    method under ``controls`` (after the other keys; absent unless asked for): its directions are rows
    of that start, which the seed alone sets."""
    from polylens.models import load_model
    from sae.config import SAEConfig, TrainConfig
    from sae.engine import initial_sae

    adapter = load_model("digits")
    inputs = adapter.default_inputs(60)
    opts = LayerSAEOptions(steps=60, controls=True)
    res = compare_layer(adapter, "relu1", inputs, target="logits", k=4, sae=opts, seed=3)
    out = res.to_json()
    assert list(out)[-3:] == ["methods", "agreement", "controls"] and list(out["controls"]) == ["sae_frozen_decoder"]
    assert "sae_frozen_decoder" not in out["agreement"]["methods"]
    c = out["controls"]["sae_frozen_decoder"]
    assert c["n_directions"] == 4 and 0 <= c["activation_variance"] <= 1 + 1e-9
    width = res.width
    n, k = 4 * width, max(2, min(32, width // 8))
    start = initial_sae(
        SAEConfig(d_in=width, dict_size=n, arch="topk", k=k), TrainConfig(seed=3), torch.zeros(2, width)
    )
    cos = np.abs(res.directions["sae_frozen_decoder"] @ start.decoder.detach().double().numpy().T)
    assert np.allclose(cos.max(1), 1.0, atol=1e-6)  # each is one of the frozen random rows
    trained = np.abs(res.directions["sae"] @ start.decoder.detach().double().numpy().T)
    assert trained.max(1).min() < 0.99  # the trained SAE's rows moved away from the start
