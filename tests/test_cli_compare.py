import json

import pytest
from cli_run import run


def test_compare_x2_meets_the_published_contrast(capsys, tmp_path):
    plot = tmp_path / "x2.png"
    code, out, err = run(capsys, "compare", "--setup", "x2", "--json", "-", "--plot", str(plot), "--sae-steps", "300")
    assert code == 0
    res = json.loads(out)
    assert res["setup"] == "x2" and res["seed"] == 0
    assert res["ground_truth"] == {"n_directions": 1, "dim": 64}
    grad, act = res["methods"]["gradient_pca"], res["methods"]["activation_pca"]
    for m in (grad, act):
        assert set(m) >= {"mmcs", "hungarian_mean_cos", "frac_recovered_0.9", "subspace_overlap", "n_directions"}
    assert grad["mmcs"] >= 0.99 and grad["frac_recovered_0.9"] == 1.0
    assert act["mmcs"] < 0.2
    assert res["methods"]["sae"]["n_directions"] == 128  # the whole dictionary: 2 x max(1, 64)
    # on the gradients (b_dec fixed at 0) the SAE finds w_out; on the activations it cannot
    assert res["methods"]["gradient_sae"]["mmcs"] >= 0.99 > res["methods"]["sae"]["mmcs"]
    assert res["methods"]["lib"]["n_directions"] == 1
    assert res["methods"]["gsae"]["n_directions"] == 128  # the g-SAE proposes its whole dictionary too
    assert res["methods"]["gradient_pca"]["best_abs_cos"] == [
        pytest.approx(grad["mmcs"])
    ]  # one truth direction: its best |cos|
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "gradient_pca" in err  # the table goes to stderr when JSON goes to stdout


def test_compare_superposition_pca_is_capped_by_width(capsys, tmp_path):
    out_json = tmp_path / "s.json"
    code, out, _ = run(capsys, "compare", "--setup", "superposition", "--json", str(out_json), "--steps", "1500")
    assert code == 0 and "activation_pca" in out
    res = json.loads(out_json.read_text())
    n, d = res["ground_truth"]["n_directions"], res["ground_truth"]["dim"]
    assert d == 10 and n > d
    methods = res["methods"]
    for name in ("activation_pca", "gradient_pca"):
        m = methods[name]
        assert m["n_directions"] == d
        # At most d of the n directions can be matched one-to-one.
        assert m["frac_recovered_0.9"] <= d / n + 1e-9
        assert m["hungarian_mean_cos"] <= d / n + 1e-9
    # The SAE's dictionary is not capped by the width: it recovers (nearly) every direction.
    sae = methods["sae"]
    assert sae["n_directions"] == 2 * n
    assert sae["frac_recovered_0.9"] >= 0.9
    assert sae["frac_recovered_0.9"] > max(methods[k]["frac_recovered_0.9"] for k in ("activation_pca", "gradient_pca"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "--setup", "cube"], "unknown setup"),
        (["compare", "--setup", "x2", "--hidden", "0"], "must be a positive integer"),
        (["compare", "--setup", "x2", "--features", "5"], "applies to --setup superposition"),
        (["compare"], "required"),
        (["compare", "--setup", "x2", "--sae-l1", "-1"], "--sae-l1=-1.0 must be a number >= 0"),
        (["compare", "--setup", "x2", "--sae-steps", "0"], "--sae-steps=0 must be a positive integer"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_existing_output_needs_force_and_is_untouched(capsys, tmp_path):
    target = tmp_path / "r.json"
    target.write_text("keep me")
    code, _, err = run(capsys, "compare", "--setup", "x2", "--json", str(target))
    assert code == 2 and "--force" in err
    assert target.read_text() == "keep me"
    code, _, err = run(capsys, "compare", "--setup", "x2", "--json", str(tmp_path / "missing" / "r.json"))
    assert code == 2 and "does not exist" in err
