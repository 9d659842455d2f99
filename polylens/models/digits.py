"""The embedded default model: a small ReLU CNN on scikit-learn's bundled handwritten digits.

Real data, fully offline: ``sklearn.datasets.load_digits`` (1797 8×8 images, 10 classes),
split 80/20 with a fixed seed. The CNN is trained on first use (a few seconds on a CPU,
seeded) and cached as safetensors in the user cache directory
(``$POLYLENS_CACHE`` or ``$XDG_CACHE_HOME/polylens`` or ``~/.cache/polylens``), written to a
temporary file and renamed, so a reader never sees half a file. Inputs are ``[n, 1, 8, 8]`` with pixel values in [0, 1].

Layers (module paths): conv1 → relu1 → conv2 (stride 2) → relu2 → flatten → fc1 → relu3 → fc2.
Pre-activations (activation layers): ``conv1``, ``conv2``, ``fc1``, all ReLU, so the whole
network is piecewise-linear and exact boundary counting applies.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from polylens.models.base import ModelAdapter, cache_dir, load_weights, read_npy
from polylens.validation import check_int

VERSION = 1
CLASSES = [str(i) for i in range(10)]


class DigitsCNN(nn.Module):
    """``[n, 1, 8, 8]`` → logits ``[n, 10]``."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)  # [n, w, 8, 8]
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)  # [n, 2w, 4, 4]
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(2 * width * 16, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


def digits_data(seed: int = 0) -> dict[str, np.ndarray]:
    """The sklearn digits split 80/20: ``x_*`` ``[n, 1, 8, 8]`` float32 in [0, 1], ``y_*`` ``[n]``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.2, random_state=seed, stratify=data.target)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


def train_digits_cnn(seed: int = 0, epochs: int = 40, width: int = 16) -> tuple[DigitsCNN, dict]:
    """Train the CNN (Adam, batch 64, seeded). Returns the model (eval mode) and facts about the run."""
    data = digits_data(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitsCNN(width)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]).long()
    threads = torch.get_num_threads()
    # One thread: batches this small gain nothing from more threads, and on a busy machine
    # extra threads spin against other processes.
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), 64):
                idx = order[i : i + 64]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(data["x_test"])).argmax(1).numpy()
    facts = {
        "seed": seed,
        "epochs": epochs,
        "width": width,
        "train_seconds": round(seconds, 2),
        "test_accuracy": float((pred == data["y_test"]).mean()),
    }
    return model, facts


def _check_writable(folder: Path) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        raise PermissionError(
            f"cache folder {folder} cannot be written (the trained digits CNN is cached there); "
            "set POLYLENS_CACHE to a writable folder"
        )


def cached_cnn(seed: int, epochs: int) -> tuple[DigitsCNN, dict]:
    """The trained CNN from the cache, trained and cached (temp file, then renamed) on first use."""
    from safetensors.torch import save

    path = cache_dir() / f"digits-cnn-v{VERSION}-seed{seed}-e{epochs}.safetensors"
    if path.is_file():
        model = DigitsCNN()
        return model, {"weights": str(path), "trained_now": False, **load_weights(model, path)}
    _check_writable(path.parent)  # before training, not after
    model, facts = train_digits_cnn(seed, epochs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        tmp.write_bytes(save(state, metadata={k: str(v) for k, v in facts.items()}))  # the mode open() gives
        os.replace(tmp, path)  # readers see the whole file or none
    finally:
        tmp.unlink(missing_ok=True)
    return model, {"weights": str(path), "trained_now": True, **facts}


class DigitsAdapter(ModelAdapter):
    """The digits CNN: inputs ``[n, 1, 8, 8]`` in [0, 1], the test split as default inputs."""

    spec_pattern = "digits"
    spec_help = "digits"
    LAYERS = ("conv1", "relu1", "conv2", "relu2", "flatten", "fc1", "relu3", "fc2")

    def __init__(self, model: DigitsCNN, name: str, facts: dict, *, seed: int = 0, device: str = "cpu"):
        acts = {"conv1": "relu", "conv2": "relu", "fc1": "relu"}
        super().__init__(name, model, acts, self.LAYERS, provenance={"model": name, **facts})
        self.seed, self.device = seed, device
        self._split: dict[str, np.ndarray] | None = None

    @classmethod
    def load(
        cls,
        spec: str = "digits",
        *,
        weights=None,
        random_weights: bool = False,
        device: str = "cpu",
        seed: int = 0,
        epochs: int = 40,
    ) -> DigitsAdapter:
        """Trained-and-cached (default), from a safetensors ``weights`` file, or random."""
        if spec not in ("digits", None):
            raise ValueError(f"unknown digits model {spec!r}; the spec is just 'digits'")
        name = "digits-cnn"
        if weights is not None:
            model = DigitsCNN()
            facts = {"weights": str(weights), **load_weights(model, weights)}
        elif random_weights:
            torch.manual_seed(seed)
            model, facts, name = DigitsCNN(), {"weights": "random", "seed": seed}, "digits-cnn (random weights)"
        else:
            model, facts = cached_cnn(seed, epochs)
        return cls(model.to(device).eval(), name, facts, seed=seed, device=device)

    def test_split(self) -> dict[str, np.ndarray]:
        """The held-out digits (read once)."""
        if self._split is None:
            self._split = digits_data(self.seed)
        return self._split

    def default_inputs(self, n: int) -> Tensor:
        x = self.test_split()["x_test"]
        check_int("n", n, low=1, high=len(x), high_name="n_test")
        return torch.from_numpy(x[:n]).to(self.device)

    def default_labels(self, n: int) -> Tensor:
        return torch.from_numpy(self.test_split()["y_test"][:n].astype(np.int64)).to(self.device)

    def describe_output(self, out: Tensor) -> list[str]:
        return [CLASSES[i] for i in out.reshape(out.shape[0], -1).argmax(1).tolist()]

    def prepare(self, raw) -> Tensor:
        """An index into the test split, an ``.npy`` array / image file, or an array → ``[1, 1, 8, 8]``."""
        if isinstance(raw, str) and raw.lstrip("-").isdigit():
            raw = int(raw)
        if isinstance(raw, (int, np.integer)):
            x = self.test_split()["x_test"]
            if not 0 <= raw < len(x):
                raise ValueError(f"input index {raw} must be between 0 and {len(x) - 1} (digits test split)")
            return torch.from_numpy(x[raw : raw + 1]).to(self.device)
        if isinstance(raw, (str, Path)):
            raw = _read_file(Path(raw))
        arr = np.asarray(raw, dtype=np.float32)
        if arr.size != 64:
            raise ValueError(f"a digits input must have 64 values (8×8), got shape {arr.shape}")
        return torch.from_numpy(arr.reshape(1, 1, 8, 8).copy()).to(self.device)


def _read_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    if path.suffix == ".npy":
        return read_npy(path)
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("L").resize((8, 8))
    except (OSError, ValueError, SyntaxError) as err:  # PIL: unidentified, truncated, broken files
        raise ValueError(
            f"input file {str(path)!r} is neither a .npy array nor an image PIL can read ({type(err).__name__})"
        ) from None
    return np.asarray(img, dtype=np.float32) / 255.0
