"""Shared test helpers: tiny settings that keep a whole training run to a second on a CPU."""
import csv
import hashlib
import struct
from pathlib import Path

import pytest
import torch

# 16 px images, 256 images, batches of 32 (8 batches per epoch), a metrics row every step;
# TINY adds 8-channel networks for the scripts with DCGAN's --ngf/--ndf.
TINY_RUN = ["--image-size", "16", "--dataset-size", "256", "--batch-size", "32", "--device", "cpu",
            "--log-every", "1"]
TINY = TINY_RUN + ["--ngf", "8", "--ndf", "8"]


@pytest.fixture(autouse=True)
def _small_cpu(monkeypatch, tmp_path):
    torch.set_num_threads(2)
    monkeypatch.chdir(tmp_path)  # default run folders (runs/...) land in the test's own folder


@pytest.fixture
def one_thread():
    """For test files of tiny networks: they run many times faster on one thread than on two
    when the CPU is shared (use: pytestmark = pytest.mark.usefixtures("one_thread"))."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_metrics(run_dir) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def tree_digest(folder) -> dict:
    """{relative path: sha256} of every file under folder, to show a run was left untouched."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_mnist(root, n=40):
    """The four raw MNIST files (idx format) with n random digits, as torchvision expects them."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.arange(n, dtype=torch.uint8) % 10
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28)
                                                         + images.numpy().tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.numpy().tobytes())
    return images, labels
