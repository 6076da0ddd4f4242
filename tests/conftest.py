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


def amp_and_fp32_runs(main, flags) -> dict:
    """Train the same tiny run twice from the same seed, in fp32 and under --amp (bf16 autocast
    on the CPU). For each: its metrics rows, and {layer class name: {dtype, ...}} of the outputs
    every layer gave inside the training steps (a layer in training mode, or autograd recording;
    sample grids, drawn in eval mode without gradients, are left out)."""
    runs = {}
    for amp in (False, True):
        seen = {}

        def record(module, inputs, output, seen=seen):
            if torch.is_tensor(output) and (module.training or torch.is_grad_enabled()):
                seen.setdefault(type(module).__name__, set()).add(output.dtype)

        hook = torch.nn.modules.module.register_module_forward_hook(record)
        try:
            main(flags + ["--out", f"amp-{amp}"] + (["--amp"] if amp else []))
        finally:
            hook.remove()
        runs[amp] = {"rows": read_metrics(f"amp-{amp}"), "dtypes": seen}
    return runs


def assert_layers_ran_in_bf16_only_under_amp(runs, layers):
    """Every output of these layers in the --amp run's steps is bf16; none is in the fp32 run."""
    assert not [name for name, dtypes in runs[False]["dtypes"].items() if torch.bfloat16 in dtypes]
    for name in layers:
        assert runs[True]["dtypes"].get(name) == {torch.bfloat16}, (name, runs[True]["dtypes"].get(name))


def assert_close_to_fp32_but_not_equal(runs, columns, rel=0.02, floor=1.0):
    """The --amp run's logged values are within rel * max(floor, |fp32 value|) of the fp32 run's,
    and at least one of them differs (autocast changed the arithmetic)."""
    fp32, amp = runs[False]["rows"], runs[True]["rows"]
    assert len(fp32) == len(amp) > 0
    pairs = [(float(a[k]), float(b[k]), a["step"], k) for a, b in zip(fp32, amp) for k in columns]
    for a, b, step, k in pairs:
        assert abs(a - b) <= rel * max(floor, abs(a)), f"step {step}: {k} {b} under --amp, {a} in fp32"
    assert any(a != b for a, b, *_ in pairs), "--amp gave exactly the fp32 values: autocast did not apply"
