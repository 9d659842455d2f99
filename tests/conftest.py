import os

# Tests never touch the network: no hub downloads, no wandb.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread per xdist worker: two workers with two threads each on two cores spin-wait on each
# other (a training test measured 2.6 s alone, 55 s that way).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def polylens_cache(tmp_path_factory):
    """``$POLYLENS_CACHE`` for the whole run: one folder shared by all xdist workers, never the user's."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # parent: this run's, shared by workers
    path = root / "polylens-cache"
    path.mkdir(exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("POLYLENS_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def digits(polylens_cache):
    """The embedded digits CNN, trained once per run (about 4 s) into the shared cache.

    The lock makes other xdist workers wait for that training and then load the cached file.
    Tests that load the default model by name (e.g. through the CLI) should request this
    fixture first, so that they never train a copy of their own.
    """
    from filelock import FileLock  # a dependency of torch

    from polylens.models import load_model

    with FileLock(str(polylens_cache / "digits.lock")):
        return load_model("digits")
