import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from polylens.lens.codes import extract_codes
from polylens.lens.density import boundary_density
from polylens.lens.paths import interpolation_path
from polylens.models import load_model
from polylens.models.digits import digits_data


def test_trains_on_first_use_caches_and_reloads_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYLENS_CACHE", str(tmp_path))  # an empty cache; 2 epochs keep it fast
    adapter = load_model(None, epochs=2)
    assert adapter.name == "digits-cnn" and adapter.provenance["trained_now"] is True
    files = list(tmp_path.glob("*.safetensors"))
    assert [f.name for f in files] == ["digits-cnn-v1-seed0-e2.safetensors"] and not list(
        tmp_path.glob(".*")
    )  # atomic write
    again = load_model("digits", epochs=2)
    assert again.provenance["trained_now"] is False and again.provenance["epochs"] == "2"
    for (k, v), (k2, v2) in zip(adapter.module.state_dict().items(), again.module.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_default_model_is_accurate_on_held_out_digits(digits):
    data = digits_data(seed=0)
    with torch.no_grad():
        pred = digits.module(torch.from_numpy(data["x_test"])).argmax(1).numpy()
    assert (pred == data["y_test"]).mean() >= 0.9


def test_layers_inputs_and_outputs(digits):
    adapter = digits
    assert adapter.piecewise_linear and list(adapter.activation_layers) == ["conv1", "conv2", "fc1"]
    x = adapter.default_inputs(5)
    assert x.shape == (5, 1, 8, 8) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(adapter.prepare(3), x[3:4]) and torch.equal(adapter.prepare("3"), x[3:4])
    labels = adapter.describe_output(adapter.module(x))
    assert len(labels) == 5 and all(lab in "0123456789" for lab in labels)
    codes = extract_codes(adapter, x)
    assert [s.size for s in codes.layers] == [16 * 64, 32 * 16, 64]
    with pytest.raises(ValueError, match="between 0 and 359"):
        adapter.prepare(1000)
    with pytest.raises(ValueError, match="64 values"):
        adapter.prepare(np.zeros(10))


def test_input_files(digits, tmp_path):
    adapter = digits
    arr = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    assert torch.allclose(adapter.prepare(str(tmp_path / "x.npy")).flatten(), torch.from_numpy(arr).flatten())
    from PIL import Image

    Image.fromarray((arr * 255).astype(np.uint8)).save(tmp_path / "x.png")
    assert torch.allclose(
        adapter.prepare(str(tmp_path / "x.png")).flatten(), torch.from_numpy(arr).flatten(), atol=1 / 255
    )
    with pytest.raises(FileNotFoundError):
        adapter.prepare(str(tmp_path / "missing.npy"))


def test_weights_file_round_trip_and_bad_keys(digits, tmp_path):
    adapter = digits
    good = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in adapter.module.state_dict().items()}, str(good))
    loaded = load_model("digits", weights=str(good))
    x = adapter.default_inputs(4)
    assert torch.equal(loaded.module(x), adapter.module(x))
    state = dict(adapter.module.state_dict())
    state.pop("fc2.bias")
    state["extra.weight"] = torch.zeros(1)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(
        ValueError, match=r"does not fit DigitsCNN: 1 missing keys \['fc2.bias'\], 1 extra keys \['extra.weight'\]"
    ):
        load_model("digits", weights=str(tmp_path / "bad.safetensors"))
    rnd = load_model("digits", random_weights=True)
    assert "random" in rnd.name


def test_interpolation_between_classes_changes_the_output(digits):
    adapter = digits
    x = adapter.default_inputs(40)
    labels = adapter.describe_output(adapter.module(x))
    i = 0
    j = next(k for k in range(40) if labels[k] != labels[i])
    res = boundary_density(adapter, interpolation_path(adapter, x[i : i + 1], x[j : j + 1], "relu2"), n_profile=50)
    assert res.exact and res.layers == ["fc1"] and res.n_crossings > 0
    assert res.profile["labels"][0] == labels[i] and res.profile["labels"][-1] == labels[j]
    assert len(res.output_changes) >= 1


def test_a_typo_in_a_loader_option_is_an_error_not_ignored(digits):
    from polylens.models import load_model

    with pytest.raises(ValueError, match="takes no option 'random_weight'; its options: weights, random_weights"):
        load_model("digits", random_weight=True)
    with pytest.raises(ValueError, match="takes no option 'wieghts'"):
        load_model("inceptionv1", wieghts="x")


def test_the_cache_is_checked_before_training(tmp_path, monkeypatch):
    from polylens.models import digits as digits_module

    trained = []
    monkeypatch.setattr(
        digits_module,
        "train_digits_cnn",
        lambda seed, epochs: trained.append(1) or (digits_module.DigitsCNN().eval(), {"seed": seed}),
    )
    monkeypatch.setenv("POLYLENS_CACHE", str(tmp_path / "ro" / "cache"))
    (tmp_path / "ro").mkdir()
    real = digits_module.os.access  # root may write anywhere: stand in for a read-only folder
    monkeypatch.setattr(
        digits_module.os, "access", lambda p, mode: False if str(p) == str(tmp_path / "ro") else real(p, mode)
    )
    with pytest.raises(PermissionError, match="POLYLENS_CACHE"):
        digits_module.DigitsAdapter.load("digits", seed=6)
    assert not trained


def test_the_cache_file_gets_the_umask_mode(tmp_path, monkeypatch):
    import os
    import stat

    from polylens.models import digits as digits_module

    monkeypatch.setattr(
        digits_module, "train_digits_cnn", lambda seed, epochs: (digits_module.DigitsCNN().eval(), {"seed": seed})
    )
    monkeypatch.setenv("POLYLENS_CACHE", str(tmp_path / "cache"))
    digits_module.DigitsAdapter.load("digits", seed=5)
    (path,) = (tmp_path / "cache").glob("*.safetensors")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
