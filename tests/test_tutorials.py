"""The tutorials' tables, reproduced with their settings (in-process runs)."""
import pytest

from launcher.driver import run_job
from launcher.spec import load_spec
from lr_core.data import data_home, verify_idx_dir


def test_binary_synthetic_reaches_tutorial_accuracy(tmp_path):
    res = run_job(load_spec("jobs/binary_synthetic.yaml", ["resources.workers=0"]), output=tmp_path / "r")
    assert res.history[-1]["val_accuracy"] >= 0.95  # tutorial: 0.98


def test_digits_softmax_learns(tmp_path):
    res = run_job(load_spec("jobs/digits_softmax.yaml", ["resources.workers=0"]), output=tmp_path / "r")
    assert res.history[-1]["val_accuracy"] >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("init,minimum", [("normal", 0.88), ("xavier", 0.915), ("zeros", 0.915)])
def test_mnist_softmax_tutorial_table(tmp_path, init, minimum):
    # The install step builds the cache: its absence is a failure, never a skip.
    assert not verify_idx_dir(data_home() / "mnist"), "no verified MNIST cache: run `make install`"
    # tutorial: Normal(sigma=1) init, 10 epochs, batch 64, SGD lr 0.1 -> test accuracy 0.8919
    res = run_job(load_spec("jobs/mnist_softmax.yaml",
                            ["resources.workers=0", f"train.init={init}", "train.init_sigma=1.0"]),
                  output=tmp_path / "r")
    acc = res.history[-1]["val_accuracy"]
    print(f"MNIST softmax, init {init}: test accuracy {acc:.4f}")
    assert acc >= minimum
