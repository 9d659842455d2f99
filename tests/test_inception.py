"""InceptionV1 (Lucid layout): key names, layer shapes, weights files, pre-activation capture, images."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from polylens.capture import capture
from polylens.lens.codes import extract_codes
from polylens.models import images, load_model
from polylens.models.inception import InceptionV1, conv_layers, load_weights

# (in, out, kernel) of every convolution in torch-lucent's InceptionV1 (lucent 0.1.8,
# lucent/modelzoo/inceptionv1/InceptionV1.py), transcribed: our parameter names must equal these.
LUCENT_CONVS = {
    "conv2d0": (3, 64, 7),
    "conv2d1": (64, 64, 1),
    "conv2d2": (64, 192, 3),
    "mixed3a_1x1": (192, 64, 1),
    "mixed3a_3x3_bottleneck": (192, 96, 1),
    "mixed3a_5x5_bottleneck": (192, 16, 1),
    "mixed3a_pool_reduce": (192, 32, 1),
    "mixed3a_3x3": (96, 128, 3),
    "mixed3a_5x5": (16, 32, 5),
    "mixed3b_1x1": (256, 128, 1),
    "mixed3b_3x3_bottleneck": (256, 128, 1),
    "mixed3b_5x5_bottleneck": (256, 32, 1),
    "mixed3b_pool_reduce": (256, 64, 1),
    "mixed3b_3x3": (128, 192, 3),
    "mixed3b_5x5": (32, 96, 5),
    "mixed4a_1x1": (480, 192, 1),
    "mixed4a_3x3_bottleneck": (480, 96, 1),
    "mixed4a_5x5_bottleneck": (480, 16, 1),
    "mixed4a_pool_reduce": (480, 64, 1),
    "mixed4a_3x3": (96, 204, 3),
    "mixed4a_5x5": (16, 48, 5),
    "mixed4b_1x1": (508, 160, 1),
    "mixed4b_3x3_bottleneck": (508, 112, 1),
    "mixed4b_5x5_bottleneck": (508, 24, 1),
    "mixed4b_pool_reduce": (508, 64, 1),
    "mixed4b_3x3": (112, 224, 3),
    "mixed4b_5x5": (24, 64, 5),
    "mixed4c_1x1": (512, 128, 1),
    "mixed4c_3x3_bottleneck": (512, 128, 1),
    "mixed4c_5x5_bottleneck": (512, 24, 1),
    "mixed4c_pool_reduce": (512, 64, 1),
    "mixed4c_3x3": (128, 256, 3),
    "mixed4c_5x5": (24, 64, 5),
    "mixed4d_1x1": (512, 112, 1),
    "mixed4d_3x3_bottleneck": (512, 144, 1),
    "mixed4d_5x5_bottleneck": (512, 32, 1),
    "mixed4d_pool_reduce": (512, 64, 1),
    "mixed4d_3x3": (144, 288, 3),
    "mixed4d_5x5": (32, 64, 5),
    "mixed4e_1x1": (528, 256, 1),
    "mixed4e_3x3_bottleneck": (528, 160, 1),
    "mixed4e_5x5_bottleneck": (528, 32, 1),
    "mixed4e_pool_reduce": (528, 128, 1),
    "mixed4e_3x3": (160, 320, 3),
    "mixed4e_5x5": (32, 128, 5),
    "mixed5a_1x1": (832, 256, 1),
    "mixed5a_3x3_bottleneck": (832, 160, 1),
    "mixed5a_5x5_bottleneck": (832, 48, 1),
    "mixed5a_pool_reduce": (832, 128, 1),
    "mixed5a_3x3": (160, 320, 3),
    "mixed5a_5x5": (48, 128, 5),
    "mixed5b_1x1": (832, 384, 1),
    "mixed5b_3x3_bottleneck": (832, 192, 1),
    "mixed5b_5x5_bottleneck": (832, 48, 1),
    "mixed5b_pool_reduce": (832, 128, 1),
    "mixed5b_3x3": (192, 384, 3),
    "mixed5b_5x5": (48, 128, 5),
}
# Lucid layer shapes at 224×224 input: (channels, height = width).
LUCID_SHAPES = {
    "conv2d0": (64, 112),
    "maxpool0": (64, 56),
    "conv2d1": (64, 56),
    "conv2d2": (192, 56),
    "maxpool1": (192, 28),
    "mixed3a": (256, 28),
    "mixed3b": (480, 28),
    "maxpool4": (480, 14),
    "mixed4a": (508, 14),
    "mixed4b": (512, 14),
    "mixed4c": (512, 14),
    "mixed4d": (528, 14),
    "mixed4e": (832, 14),
    "maxpool10": (832, 7),
    "mixed5a": (832, 7),
    "mixed5b": (1024, 7),
}


@pytest.fixture(scope="module")
def adapter():
    return load_model("inceptionv1", random_weights=True, seed=0)


def test_state_dict_keys_and_shapes_match_lucent():
    want = {"softmax2_pre_activation_matmul.weight": (1008, 1024), "softmax2_pre_activation_matmul.bias": (1008,)}
    for name, (c_in, c_out, k) in LUCENT_CONVS.items():
        want[f"{name}_pre_relu_conv.weight"] = (c_out, c_in, k, k)
        want[f"{name}_pre_relu_conv.bias"] = (c_out,)
    got = {k: tuple(v.shape) for k, v in InceptionV1().state_dict().items()}
    assert got == want
    assert len(conv_layers()) == 57 and set(conv_layers()) == {f"{n}_pre_relu_conv" for n in LUCENT_CONVS}


def test_layer_shapes_match_the_lucid_layout(adapter):
    x = adapter.default_inputs(1)  # [1, 3, 224, 224]
    got = capture(adapter.module, x, list(LUCID_SHAPES), keep_output=True)
    for name, (c, hw) in LUCID_SHAPES.items():
        assert tuple(got.activations[name].shape) == (1, c, hw, hw), name
    assert got.output.shape == (1, 1008)


def test_preactivations_are_captured_before_each_relu(adapter):
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    names = ["conv2d0_pre_relu_conv", "conv2d0", "mixed3b_5x5_pre_relu_conv", "mixed3b_5x5"]
    got = capture(adapter.module, x, names)
    for conv in names[::2]:
        pre, post = got.activations[conv], got.activations[conv.removesuffix("_pre_relu_conv")]
        assert (pre < 0).any() and torch.equal(post, pre.clamp(min=0))
    codes = extract_codes(adapter, x, ["mixed3b_5x5_pre_relu_conv"])
    assert np.array_equal(
        codes.unpack().astype(bool), (got.activations["mixed3b_5x5_pre_relu_conv"] > 0).reshape(2, -1).numpy()
    )
    assert adapter.piecewise_linear and len(adapter.activation_layers) == 57


def test_input_is_scaled_inside_and_not_mutated():
    torch.manual_seed(0)
    model = InceptionV1().eval()
    raw = InceptionV1(scale_inputs=False).eval()
    raw.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    before = x.clone()
    with torch.no_grad():
        assert torch.allclose(model(x), raw(x * 255 - 117), atol=1e-4)
    assert torch.equal(x, before)


def test_weights_round_trip_safetensors_and_torch(tmp_path):
    torch.manual_seed(5)
    model = InceptionV1().eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.pth")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
    for file in ("w.safetensors", "w.pth"):
        loaded = load_model("inceptionv1", weights=str(tmp_path / file))
        assert loaded.name == "inceptionv1" and loaded.provenance["weights"].endswith(file)
        with torch.no_grad():
            assert torch.equal(loaded.module(x), ref)


def test_bad_weights_files(tmp_path):
    state = InceptionV1().state_dict()
    state.pop("mixed4a_3x3_pre_relu_conv.bias")
    state["extra.weight"] = torch.zeros(1)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "bad.safetensors")
    with pytest.raises(
        ValueError, match="missing keys.*mixed4a_3x3_pre_relu_conv.bias.*extra keys.*extra.weight"
    ) as err:
        load_weights(InceptionV1(), tmp_path / "bad.safetensors")
    assert "\n" not in str(err.value)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable"):
        load_weights(InceptionV1(), tmp_path / "junk.pth")
    state = {k: v.contiguous() for k, v in InceptionV1().state_dict().items()}
    state["conv2d1_pre_relu_conv.bias"] = torch.zeros(65)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(
        ValueError,
        match=r"1 tensors of another shape, e.g. conv2d1_pre_relu_conv.bias is \(65,\) in the file but \(64,\)",
    ) as err:
        load_weights(InceptionV1(), tmp_path / "shape.pth")
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError):
        load_model("inceptionv1", weights=str(tmp_path / "none.pth"))
    with pytest.raises(ValueError, match="random_weights=True"):
        load_model("inceptionv1")


def test_url_download_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYLENS_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="download failed.*weights=FILE") as err:
        load_model("inceptionv1", weights="http://127.0.0.1:9/inception5h.pth")
    assert "\n" not in str(err.value)


def test_codes_of_the_channel_vector_at_one_position(adapter):
    """The paper's InceptionV1 protocol: all channels at one fixed spatial position per image."""
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))  # mixed3a/3b maps: 12x12
    layers = ["mixed3a_1x1_pre_relu_conv", "mixed3b_5x5_pre_relu_conv"]
    got = capture(adapter.module, x, layers)
    codes = extract_codes(adapter, x, layers, position=(3, 5))
    want = np.concatenate([(got.activations[n][:, :, 3, 5] > 0).numpy() for n in layers], axis=1)
    assert [s.size for s in codes.layers] == [64, 96] and np.array_equal(codes.unpack(), want)
    with pytest.raises(ValueError, match="outside layer 'mixed3a_1x1_pre_relu_conv' of spatial size 12x12"):
        extract_codes(adapter, x, layers, position=(12, 0))


def test_images_from_folder_and_samples(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.full((240, 240, 3), 255, dtype=np.uint8)).save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    x, names = images.load_folder(tmp_path)
    assert names == ["a.jpg", "b.png"] and x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and torch.allclose(x[0], torch.ones(3, 224, 224))
    normed = images.load_image(tmp_path / "a.jpg", normalize=True)
    assert torch.allclose(normed[0], torch.full((224, 224), (1 - 0.485) / 0.229), atol=1e-5)
    samples = images.sample_images(6)
    assert samples.shape == (6, 3, 224, 224) and not torch.equal(samples[0], samples[1])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        images.load_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        images.load_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="not an image"):
        images.load_image(tmp_path / "notes.txt")
    bad = {
        "grey.png": (np.full((240, 240), 9, dtype=np.uint8), "grayscale"),
        "alpha.png": (np.full((240, 240, 4), 9, dtype=np.uint8), "alpha channel"),
        "deep.png": (np.full((240, 240), 900, dtype=np.uint16), "not an 8-bit colour image"),
        "small.png": (np.full((100, 300, 3), 9, dtype=np.uint8), "300x100 pixels, smaller than the 224-pixel crop"),
    }
    for name, (pixels, why) in bad.items():
        Image.fromarray(pixels).save(tmp_path / name)
        with pytest.raises(ValueError, match=why):
            images.load_image(tmp_path / name)


def test_prepare_file_and_index(adapter, tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((230, 260, 3), dtype=np.uint8)).save(tmp_path / "black.png")
    assert torch.equal(adapter.prepare(str(tmp_path / "black.png")), torch.zeros(1, 3, 224, 224))
    assert torch.equal(adapter.prepare(1), images.sample_images(2)[1:2])
    with pytest.raises(ValueError, match=r"\[3, 224, 224\]"):
        adapter.prepare(np.zeros((3, 8, 8)))
