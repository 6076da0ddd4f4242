"""common.py and data.py: the shapes data, the loaders' errors, the run folder, checkpoints and resume.

Shapes determinism and labels, grayscale intensity, both domains, sizes and channels, pixels to
[-1, 1], batch labels matching their images, the last incomplete batch dropped while every image
takes part, loader errors, seeding of python, numpy and torch, run folders, checkpoint atomicity
and `weights_only` loading, the data position, every RNG and the method state restored, exact
resume, a grid and a checkpoint at each epoch end, Ctrl-C (the handler restored, a second one
aborting), samples drawn in eval mode without gradients, a NaN or Inf loss stopping the run,
metrics averaged over the values as logged even when a logged tensor changes in place afterwards;
Run.prepare's channels-last and bf16 networks (float32 outputs), a loop with its own schedule
(until, after_step, counted epochs, Ctrl-C); data.py and scale.py importing nothing of the collection.
"""
import argparse
import ast
import contextlib
import math
import os
import random
import signal
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, fake_mnist, read_metrics, tree_digest

import common
import data
import dcgan

# ------------------------------------------------------------------------------------------------
# shapes: determinism, labels, sizes, channels, classes
# ------------------------------------------------------------------------------------------------


def test_factors_of_image_i_do_not_depend_on_how_many_images_are_drawn():
    few, many = data.shape_factors(50), data.shape_factors(500)
    for key in few:
        assert torch.equal(few[key], many[key][:50]), key
    other_stream = data.shape_factors(50, stream=1)
    assert not torch.equal(few["x"], other_stream["x"])
    assert not torch.equal(few["x"], data.shape_factors(50, seed=1)["x"])


def test_rendering_is_deterministic_and_only_depends_on_the_image_index():
    a = common.load_dataset("shapes", image_size=32, size=300).images
    b = common.load_dataset("shapes", image_size=32, size=100).images
    assert a.dtype == torch.uint8 and a.shape == (300, 3, 32, 32)
    assert torch.equal(a[:100], b)


def test_factor_labels_are_in_range_and_classes_balanced():
    f = data.shape_factors(5000)
    assert f["class"].min() == 0 and f["class"].max() == 9
    counts = torch.bincount(f["class"], minlength=10).float()
    assert counts.min() > 0.8 * counts.mean()
    lo, hi = data.SIZE_RANGE
    assert ((f["size"] >= lo) & (f["size"] <= hi)).all()
    assert (f["x"].abs() <= 1 - f["size"] + 1e-6).all() and (f["y"].abs() <= 1 - f["size"] + 1e-6).all()
    order = torch.tensor(data.SYMMETRY, dtype=torch.float32)[f["class"]]
    limit = torch.where(order > 0, 2 * math.pi / order.clamp(min=1), 1e-9)
    assert ((f["rotation"] >= 0) & (f["rotation"] < limit)).all()
    assert f["color"].shape == (5000, 3) and 0 <= f["color"].min() and f["color"].max() <= 1
    assert (f["color"].max(1).values >= 0.75 - 1e-6).all()  # never too dark to see on black
    assert ((f["intensity"] >= 0.4) & (f["intensity"] <= 1)).all()


def test_images_agree_with_their_labels():
    data = common.load_dataset("shapes", image_size=64, size=200)
    f = data.factors
    x = data.images.float() / 255
    mask = x.amax(1) > 0.5                                    # (N, H, W) foreground
    H = x.shape[-1]
    coords = (torch.arange(H) + 0.5) / H * 2 - 1
    area = mask.sum((1, 2)).float()
    cx = (mask.sum(1).float() * coords).sum(1) / area          # column centroid -> x
    cy = -(mask.sum(2).float() * coords).sum(1) / area         # row centroid -> y (y points up)
    # (x, y) is the centre of the shape's bounding disk: the centroid of the drawn pixels for
    # the point-symmetric classes, near it for the lopsided ones (triangle, crescent, ...)
    err = torch.hypot(cx - f["x"], cy - f["y"])
    symmetric = torch.isin(f["class"], torch.tensor([0, 1, 3, 4, 5, 7]))
    assert (err[symmetric] < 0.03).all()
    assert (err < 0.5 * f["size"]).all()
    # area grows with size within a class, and the drawn colour is the labelled colour
    for c in range(10):
        sel = f["class"] == c
        if sel.sum() > 5:
            assert torch.corrcoef(torch.stack([area[sel], f["size"][sel]]))[0, 1] > 0.8
    brightest = x.flatten(2).max(2).values                      # (N, 3) = colour at full coverage
    assert (brightest - f["color"]).abs().max() < 2 / 255


def test_the_ten_classes_are_distinct_at_28_pixels():
    n = 10
    f = {"class": torch.arange(n), "size": torch.full((n,), 0.85), "rotation": torch.zeros(n),
         "x": torch.zeros(n), "y": torch.zeros(n), "color": torch.ones(n, 3),
         "intensity": torch.ones(n)}
    masks = (data.render_shapes(f, 28, channels=1)[:, 0] > 127).float().flatten(1)
    inter = masks @ masks.T
    union = masks.sum(1)[:, None] + masks.sum(1)[None] - inter
    iou = inter / union
    off_diagonal = iou[~torch.eye(n, dtype=torch.bool)]
    assert off_diagonal.max() < 0.8, iou  # no two silhouettes nearly the same


@pytest.mark.parametrize("size", [16, 28, 32, 64, 256])
@pytest.mark.parametrize("channels", [1, 3])
def test_any_size_and_channel_count(size, channels):
    data = common.load_dataset("shapes", image_size=size, channels=channels, size=20)
    assert data.images.shape == (20, channels, size, size)
    assert data.images.float().amax((1, 2, 3)).min() > 100   # every image shows a shape
    x, y = next(data.batches(8, epoch=0, seed=0))
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert y.shape == (8,) and y.dtype == torch.long


@pytest.mark.parametrize("size", [8, 15, 257, 512])
def test_sizes_out_of_range_raise_a_clear_error(size):
    with pytest.raises(common.UserError, match="16 to 256"):
        common.load_dataset("shapes", image_size=size, size=4)


def test_large_datasets_are_rendered_per_batch_with_the_same_pixels(monkeypatch):
    held = common.load_dataset("shapes", image_size=32, size=64)
    monkeypatch.setattr(data, "_CACHE_BYTES", 0)
    streamed = common.load_dataset("shapes", image_size=32, size=64)
    assert streamed.images is None
    for (a, ya), (b, yb) in zip(held.batches(16, 3, seed=1), streamed.batches(16, 3, seed=1)):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_two_domains_unpaired_for_training_and_paired_for_evaluation():
    a, b = common.load_unpaired("shapes", image_size=64, size=200)
    assert not torch.equal(a.factors["class"], b.factors["class"])  # independent draws
    ta, tb = common.load_unpaired("shapes", image_size=64, size=200, split="test")
    for key in ta.factors:
        assert torch.equal(ta.factors[key], tb.factors[key])      # b[i] is a[i]'s counterpart
    fa, fb = ta.images.amax(1) > 64, tb.images.amax(1) > 64        # (N, H, W) masks
    assert not torch.equal(fa, fb)                                 # two styles
    # the outline traces the filled shape: almost all outline pixels lie within 4 px of it
    near = torch.nn.functional.max_pool2d(fa[:, None].float(), 9, 1, 4)[:, 0] > 0
    assert (fb & near).sum() / fb.sum() > 0.97
    # and it is hollow: pixels deep inside the filled shape (4+ px from its edge) are off
    deep = -torch.nn.functional.max_pool2d(-fa[:, None].float(), 9, 1, 4)[:, 0] > 0
    assert deep.sum() > 1000 and (fb & deep).sum() / deep.sum() < 0.01
    # the training domains come from other draws than the test split
    assert not torch.equal(a.factors["x"][:50], ta.factors["x"][:50])


# ------------------------------------------------------------------------------------------------
# batches
# ------------------------------------------------------------------------------------------------


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    data = common.load_dataset("shapes", image_size=16, size=100)
    data.images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 16, 16)

    def order(epoch, seed, start=0):
        return [int((x[i, 0, 0, 0] + 1) * 127.5 + 0.5) for x, _ in data.batches(10, epoch, seed, start)
                for i in range(len(x))]

    e0 = order(0, seed=1)
    assert sorted(e0) == list(range(100))
    assert e0 == order(0, seed=1)
    assert e0 != order(1, seed=1) and e0 != order(0, seed=2)
    assert order(0, seed=1, start=4) == e0[40:]


def test_batch_larger_than_the_dataset_is_a_clear_error():
    data = common.load_dataset("shapes", image_size=16, size=10)
    with pytest.raises(common.UserError, match="larger than the dataset"):
        next(data.batches(11, 0, 0))


def test_batch_labels_belong_to_the_images_of_the_batch():
    # images and labels both hold their own index, so a label gathered for another image shows
    data = common.load_dataset("shapes", image_size=16, size=100)
    data.images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 16, 16)
    data.labels = torch.arange(100)

    def index(x):
        return ((x[:, 0, 0, 0] + 1) * 127.5).round().long()

    for x, y in data.batches(10, epoch=2, seed=3, start=1):
        assert torch.equal(index(x), y)
    x, y = data.sample(10)
    assert torch.equal(index(x), y)


def test_pixels_map_from_0_255_to_minus_one_one():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.equal(common.ImageData.to_float(x), torch.tensor([-1.0, 51 / 127.5 - 1, 1.0]))


def test_the_last_incomplete_batch_is_dropped_but_every_image_takes_part():
    data = common.load_dataset("shapes", image_size=16, size=25)
    data.images = torch.arange(25, dtype=torch.uint8).view(25, 1, 1, 1).expand(25, 3, 16, 16)
    assert data.steps_per_epoch(10) == 2
    seen = set()
    for epoch in range(10):
        batches = list(data.batches(10, epoch, seed=0))
        assert [len(x) for x, _ in batches] == [10, 10]
        seen |= {int((v + 1) * 127.5 + 0.5) for x, _ in batches for v in x[:, 0, 0, 0]}
    assert seen == set(range(25))  # the dropped 5 are other images in each epoch


def test_grayscale_shapes_are_drawn_at_their_labelled_intensity():
    data = common.load_dataset("shapes", image_size=64, channels=1, size=200)
    brightest = data.images.float().flatten(1).max(1).values / 255  # full coverage
    assert (brightest - data.factors["intensity"]).abs().max() < 2 / 255


def test_seeding_covers_python_numpy_and_torch():
    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    common.seed_everything(3)
    first = draws()
    common.seed_everything(3)
    assert draws() == first
    common.seed_everything(4)
    assert all(a != b for a, b in zip(draws(), first))


# ------------------------------------------------------------------------------------------------
# real datasets: clear errors
# ------------------------------------------------------------------------------------------------


def test_unknown_dataset():
    with pytest.raises(common.UserError, match="unknown dataset"):
        common.load_dataset("imagenet-42")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_dataset_without_download_names_the_folder_and_the_flag(name, tmp_path):
    with pytest.raises(common.UserError, match="--download") as e:
        common.load_dataset(name, root=str(tmp_path / "nothing"))
    assert str(tmp_path / "nothing") in str(e.value)


def test_download_without_network_is_a_clear_error(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(common.UserError, match="could not download mnist"):
        common.load_dataset("mnist", root=str(tmp_path), download=True)


def _write_png(path, size=(40, 30), color=(200, 30, 30)):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_image_folder_flat_and_with_class_subfolders(tmp_path):
    for i in range(3):
        _write_png(tmp_path / "flat" / f"{i}.png")
        _write_png(tmp_path / "classes" / "cat" / f"{i}.jpg")
        _write_png(tmp_path / "classes" / "dog" / f"{i}.png", color=(0, 0, 255))
    flat = common.load_dataset("folder", str(tmp_path / "flat"), image_size=16)
    assert len(flat) == 3 and flat.num_classes is None
    x, y = next(flat.batches(3, 0, 0))
    assert x.shape == (3, 3, 16, 16) and y is None
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([200, 30, 30]) / 127.5 - 1, atol=0.02)
    labelled = common.load_dataset("folder", str(tmp_path / "classes"), image_size=16, channels=1)
    assert labelled.num_classes == 2
    x, y = next(labelled.batches(6, 0, 0))
    assert x.shape == (6, 1, 16, 16) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]


def test_reading_a_folder_leaves_the_global_rng_alone(tmp_path):
    # A DataLoader draws its workers' base seed from torch's global RNG unless given a
    # generator; a resumed run creates its loader at another moment, so the RNG streams of the
    # two runs (latents, dropout) would part: resume on folder data would not be exact.
    for i in range(4):
        _write_png(tmp_path / "flat" / f"{i}.png")
    data = common.load_dataset("folder", str(tmp_path / "flat"), image_size=16)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert len(list(data.batches(2, 0, 0))) == 2
    assert torch.equal(torch.rand(3), expected)


def test_empty_folder_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(common.UserError, match="no images found"):
        common.load_dataset("folder", str(tmp_path / "empty"))
    with pytest.raises(common.UserError, match="does not exist"):
        common.load_dataset("folder", str(tmp_path / "nowhere"))


def test_folder_skips_non_image_files_with_a_warning(tmp_path):
    _write_png(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="skipping 1 file"):
        data = common.load_dataset("folder", str(tmp_path), image_size=16)
    assert len(data) == 1


def test_damaged_image_stops_with_its_name(tmp_path):
    _write_png(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG this is not really a png")
    data = common.load_dataset("folder", str(tmp_path), image_size=16)
    with pytest.raises(common.UserError, match="cannot read image .*broken.png"):
        next(data.batches(2, 0, 0))


def _cli(monkeypatch, capsys, argv):
    """`python dcgan.py argv` through common.cli, in-process, for input it must refuse: (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["dcgan.py", *argv])
    with pytest.raises(SystemExit) as e:
        common.cli(dcgan.main)
    return e.value.code, capsys.readouterr().err


def _blank_png(path, side):
    """A valid black 1-bit PNG of side x side pixels, compressed row by row (20000 px: 49 KB)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    z, row = zlib.compressobj(9), bytes(1 + (side + 7) // 8)  # a row: filter type 0, then the bits
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_an_image_too_large_to_load_stops_the_run_with_its_name(tmp_path, monkeypatch, capsys):
    _write_png(tmp_path / "images" / "good.png")
    _blank_png(tmp_path / "images" / "huge.png", 20000)  # 4e8 pixels: past PIL's guard, which stays on
    code, err = _cli(monkeypatch, capsys, TINY + ["--dataset", "folder", "--data-root", "images",
                                                  "--batch-size", "2", "--workers", "1", "--max-steps", "1"])
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("dcgan.py: error: image images/huge.png is too large to load (PIL opens at most ")
    assert err.rstrip().endswith(" pixels); shrink it or remove it and run again.")


def test_a_dataset_size_beyond_the_memory_is_refused_before_anything_is_allocated(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "_physical_memory", lambda: 16 * 2**30)
    monkeypatch.setattr(data, "shape_factors", None)  # (not reached)
    code, err = _cli(monkeypatch, capsys, TINY + ["--dataset-size", "1000000000"])
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err == ("dcgan.py: error: 1,000,000,000 shapes images need about 102.4 GiB of memory, more than "
                   "this machine has (16.0 GiB); pass a smaller --dataset-size.\n")
    # memory running out anyway (or where the system does not tell its size) says the same
    monkeypatch.setattr(data, "_physical_memory", lambda: None)
    for fail in (lambda *a, **k: np.empty(2**62, np.uint8), lambda *a, **k: torch.empty(2**62, dtype=torch.uint8)):
        monkeypatch.setattr(data, "shape_factors", fail)
        code, err = _cli(monkeypatch, capsys, TINY + ["--dataset-size", "1000000000"])
        assert code == 2 and err.endswith("of memory, more than is free here; pass a smaller --dataset-size.\n"), err
    # the other datasets take the first N images: a large N is all of them
    fake_mnist(tmp_path)
    assert len(common.load_dataset("mnist", str(tmp_path), image_size=16, size=10**9)) == 40


def test_unpaired_folder_layout(tmp_path):
    for d in "AB":
        for i in range(2):
            _write_png(tmp_path / f"train{d}" / f"{i}.png")
    a, b = common.load_unpaired("folder", str(tmp_path), image_size=16)
    assert len(a) == len(b) == 2


# ------------------------------------------------------------------------------------------------
# run folder, checkpoints, resume
# ------------------------------------------------------------------------------------------------


def _args(**kw):
    p = argparse.ArgumentParser()
    common.add_run_args(p)
    args = p.parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_run_folders_are_never_reused(tmp_path):
    first = common.Run("dcgan", _args(), {}).dir
    second = common.Run("dcgan", _args(), {}).dir
    assert first != second and first.exists() and second.exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(common.UserError, match="already holds files"):
        common.Run("dcgan", _args(out=str(tmp_path / "taken")), {})
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def _tiny_run(tmp_path, name="r"):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    run = common.Run("dcgan", _args(out=str(tmp_path / name)), {"net": net, "opt": opt},
                     {"k_t": 0.25, "fixed": torch.arange(3.0)})
    return run, net


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path):
    run, net = _tiny_run(tmp_path)
    run.step = 7
    path = run.save_checkpoint()
    ckpt = torch.load(path, weights_only=True)  # no pickled code inside
    assert ckpt["script"] == "dcgan" and ckpt["step"] == 7 and ckpt["state"]["k_t"] == 0.25
    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(net2.parameters())
    fresh = {"k_t": 0.0, "fixed": torch.zeros(3)}  # what a script builds before it resumes
    resumed = common.Run("dcgan", _args(resume=str(run.dir)), {"net": net2, "opt": opt2}, fresh)
    assert resumed.step == 7 and resumed.state["k_t"] == 0.25
    assert torch.equal(net2.weight, net.weight)
    saved, loaded = run.modules["opt"].state_dict()["state"], opt2.state_dict()["state"]
    assert saved.keys() == loaded.keys() and saved                # Adam's moments and step count
    for i in saved:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(saved[i][key], loaded[i][key]), (i, key)
    assert torch.equal(resumed.state["fixed"], torch.arange(3.0))


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run, _ = _tiny_run(tmp_path)
    run.step = 1
    path = run.save_checkpoint()
    before = path.read_bytes()

    def crash(obj, f, *a, **k):  # (f: a path or a file object)
        with contextlib.nullcontext(f) if hasattr(f, "write") else open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    run.step = 2
    with pytest.raises(OSError):
        run.save_checkpoint()
    assert path.read_bytes() == before
    assert common.read_checkpoint(path, "dcgan")["step"] == 1


def test_damaged_foreign_and_unsafe_checkpoints_are_refused(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(common.UserError, match="damaged"):
        common.read_checkpoint(tmp_path / "junk.pt", "dcgan")
    torch.save({"script": "wgan", "args": {}}, tmp_path / "wgan.pt")
    with pytest.raises(common.UserError, match="written by wgan.py"):
        common.read_checkpoint(tmp_path / "wgan.pt", "dcgan")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(common.UserError, match="not a checkpoint written by these scripts"):
        common.read_checkpoint(tmp_path / "other.pt", "dcgan")
    # a pickle that would run code is refused by weights_only loading
    torch.save({"script": "dcgan", "args": argparse.Namespace(x=1)}, tmp_path / "unsafe.pt")
    with pytest.raises(common.UserError, match="damaged or is not a checkpoint"):
        common.read_checkpoint(tmp_path / "unsafe.pt", "dcgan")
    with pytest.raises(common.UserError, match="no checkpoint at"):
        common.read_checkpoint(tmp_path / "missing", "dcgan")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run, _ = _tiny_run(tmp_path)
    run.log(loss=torch.tensor(1.0))
    path = run.save_checkpoint()
    before = path.read_bytes()
    run.log(loss=torch.tensor(float("nan")))
    with pytest.raises(common.TrainingError, match="loss became nan"):
        run.save_checkpoint()
    assert path.read_bytes() == before


def test_resume_takes_saved_flags_unless_given_again(tmp_path):
    dcgan.main(TINY + ["--max-steps", "2", "--ngf", "4", "--out", str(tmp_path / "r")])
    args = dcgan.parse_args(["--resume", str(tmp_path / "r"), "--max-steps", "5", "--ngf", "4"])
    assert args.ngf == 4 and args.image_size == 16 and args.max_steps == 5 and args.device == "cpu"
    assert dcgan.parse_args(["--resume", str(tmp_path / "r"), "--epochs", "9"]).epochs == 9  # train longer
    with pytest.raises(common.UserError, match="--image-size was 16 for this run"):
        dcgan.parse_args(["--resume", str(tmp_path / "r"), "--image-size", "32"])


def test_a_checkpoint_that_does_not_fit_the_model_is_a_clear_error(tmp_path):
    dcgan.main(TINY + ["--max-steps", "1", "--out", str(tmp_path / "r")])
    args = dcgan.parse_args(["--resume", str(tmp_path / "r")])
    args.ngf = 16  # as if the saved flags and the saved weights disagreed
    with pytest.raises(common.UserError, match="does not fit this model"):
        dcgan.train(args)


def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path):
    # 12 steps straight vs 5 steps, stop, resume to 12: the same losses at every step and the
    # same weights at the end (CPU, same seed). 8 steps per epoch, so the stop is mid-epoch
    # and the resumed run crosses an epoch boundary.
    straight = tmp_path / "straight"
    dcgan.main(TINY + ["--max-steps", "12", "--out", str(straight)])
    split = tmp_path / "split"
    dcgan.main(TINY + ["--max-steps", "5", "--out", str(split)])
    dcgan.main(["--resume", str(split), "--max-steps", "12"])
    a, b = read_metrics(straight), read_metrics(split)
    assert [r["step"] for r in b] == [str(s) for s in range(1, 13)]
    for ra, rb in zip(a, b):
        for key in ("loss_D", "loss_G", "D_x", "D_G_z"):
            assert float(ra[key]) == float(rb[key]), (ra["step"], key)
    wa = torch.load(straight / "checkpoint.pt", weights_only=True)["modules"]
    wb = torch.load(split / "checkpoint.pt", weights_only=True)["modules"]
    for net in ("G", "D"):
        for key in wa[net]:
            assert torch.equal(wa[net][key], wb[net][key]), (net, key)


def test_channels_last_is_the_cpu_default_and_trains_the_same_networks(tmp_path):
    # The default on a CPU is channels-last weights; --no-channels-last the default format. The
    # two compute the same steps (float rounding apart), and a run resumed in the other format
    # goes on: the format belongs to the invocation, not to the run.
    last, plain = tmp_path / "last", tmp_path / "plain"
    dcgan.main(TINY + ["--max-steps", "6", "--out", str(last)])
    dcgan.main(TINY + ["--max-steps", "6", "--no-channels-last", "--out", str(plain)])
    assert common.read_checkpoint(last, "dcgan")["args"]["channels_last"] is True
    assert common.read_checkpoint(plain, "dcgan")["args"]["channels_last"] is False
    for ra, rb in zip(read_metrics(last), read_metrics(plain), strict=True):
        for key in ("loss_D", "loss_G"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-4, abs=1e-5), (ra["step"], key)
    wa = torch.load(last / "checkpoint.pt", weights_only=True)["modules"]
    wb = torch.load(plain / "checkpoint.pt", weights_only=True)["modules"]
    for net in ("G", "D"):
        for key in wa[net]:
            torch.testing.assert_close(wa[net][key], wb[net][key], rtol=1e-4, atol=1e-5)
    dcgan.main(["--resume", str(plain), "--max-steps", "8"])
    resumed = common.read_checkpoint(plain, "dcgan")
    assert resumed["args"]["channels_last"] is True and resumed["step"] == 8


def test_metrics_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    run_dir = tmp_path / "r"
    dcgan.main(TINY + ["--max-steps", "8", "--out", str(run_dir)])  # checkpoint at step 8
    with open(run_dir / "metrics.csv", "a") as f:
        f.write("9,1.1,0,1,1,1,1\n")                       # a row from a run that then crashed
    dcgan.main(["--resume", str(run_dir), "--max-steps", "10"])
    assert [r["step"] for r in read_metrics(run_dir)] == [str(s) for s in range(1, 11)]


def test_loss_plot_when_matplotlib_is_installed(tmp_path):
    pytest.importorskip("matplotlib")
    dcgan.main(TINY + ["--max-steps", "3", "--out", str(tmp_path / "r")])
    assert (tmp_path / "r" / "losses.png").stat().st_size > 1000


def test_bad_input_leaves_earlier_runs_untouched(tmp_path):
    dcgan.main(TINY + ["--max-steps", "2", "--out", str(tmp_path / "r")])
    before = tree_digest(tmp_path / "r")
    for argv in (TINY + ["--out", str(tmp_path / "r")],
                 ["--resume", str(tmp_path / "r"), "--image-size", "32"]):
        with pytest.raises(common.UserError):
            dcgan.main(argv)
    assert tree_digest(tmp_path / "r") == before


def test_lsun_cannot_be_downloaded_and_says_so(tmp_path):
    with pytest.raises(common.UserError, match="cannot download LSUN"):
        common.load_dataset("lsun", root=str(tmp_path), download=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_a_gpu_that_is_not_there():
    with pytest.raises(common.UserError, match="sees no CUDA GPU"):
        common.select_device("cuda")
    assert common.select_device("auto").type in ("cpu", "mps")


def test_mnist_files_are_held_on_the_device_resized_with_labels(tmp_path):
    images, labels = fake_mnist(tmp_path)
    same = common.load_dataset("mnist", str(tmp_path), image_size=28)
    assert same.channels == 1 and same.num_classes == 10 and len(same) == 40
    assert torch.equal(same.images[:, 0], images) and torch.equal(same.labels, labels.long())
    big = common.load_dataset("mnist", str(tmp_path), image_size=64, channels=3, size=10)
    assert big.images.shape == (10, 3, 64, 64) and big.images.dtype == torch.uint8
    assert torch.equal(big.images[:, 0], big.images[:, 2])  # gray copied to RGB
    x, y = next(big.batches(5, 0, 0))
    assert x.shape == (5, 3, 64, 64) and -1 <= x.min() and x.max() <= 1 and y.shape == (5,)


def test_each_metric_is_averaged_over_its_own_count_and_new_columns_extend_the_csv(tmp_path):
    run, _ = _tiny_run(tmp_path)
    for v in (1.0, 2.0, 3.0):                 # three inner iterations of one step
        run.log(W=torch.tensor(v))
    run.log(loss=torch.tensor(10.0))           # once per step
    run.step = 1
    row = run.flush()
    assert row["W"] == 2.0 and row["loss"] == 10.0
    run.log(W=torch.tensor(4.0), extra=torch.tensor(5.0))
    run.step = 2
    run.flush()
    rows = read_metrics(run.dir)
    assert [r["step"] for r in rows] == ["1", "2"]
    assert rows[0]["extra"] == "" and rows[1]["extra"] == "5.0" and rows[1]["loss"] == ""


def test_a_logged_tensor_changed_in_place_afterwards_keeps_the_value_it_had(tmp_path):
    # A parameter such as SAGAN's γ is logged as param.detach(), which shares its memory; the
    # optimiser then changes it in place. The average must be over the values as logged.
    run, _ = _tiny_run(tmp_path)
    gamma = torch.tensor(-0.1)
    for v in (-0.1, -0.2, -0.3):
        gamma.fill_(v)
        run.log(gamma=gamma.detach())
    gamma.fill_(-0.4)
    run.step = 1
    assert run.flush()["gamma"] == pytest.approx(-0.2)


def test_an_inf_loss_stops_the_run_too(tmp_path):
    run, _ = _tiny_run(tmp_path)
    run.log(loss=torch.tensor(float("inf")))
    with pytest.raises(common.TrainingError, match="loss became inf"):
        run.flush()


def test_a_checkpoint_restores_the_data_position_and_every_rng(tmp_path):
    data = common.load_dataset("shapes", image_size=16, size=20)
    run, _ = _tiny_run(tmp_path)
    run.step, run.batches_drawn = 4, 11  # more batches than steps (WGAN's critic draws several)
    common.seed_everything(5)
    run.save_checkpoint()
    expected = random.random(), float(np.random.rand()), float(torch.rand(()))
    common.seed_everything(6)
    net = torch.nn.Linear(3, 2)
    resumed = common.Run("dcgan", _args(resume=str(run.dir)), {"net": net, "opt": torch.optim.Adam(net.parameters())})
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    assert (resumed.step, resumed.batches_drawn) == (4, 11)
    x, y = next(resumed.stream(data, 5))                    # 4 batches per epoch: batch 3 of epoch 2
    x_expected, y_expected = list(data.batches(5, epoch=2, seed=0))[3]
    assert torch.equal(x, x_expected) and torch.equal(y, y_expected)


def _loop_run(tmp_path, **kw):
    net = torch.nn.BatchNorm1d(3)
    run = common.Run("dcgan", _args(out=str(tmp_path / "loop"), log_every=1, **kw), {"net": net},
                     sample_fn=lambda: torch.zeros(4, 3, 16, 16))
    return run, net


def test_each_epoch_ends_with_a_grid_and_a_checkpoint_and_the_last_epoch_ends_the_loop(tmp_path):
    data = common.load_dataset("shapes", image_size=16, size=20)
    run, _ = _loop_run(tmp_path, epochs=2)
    on_disk = []
    for x, _ in run.batches(data, 5):  # 4 steps per epoch
        run.log(loss=x.mean())
        path = run.dir / "checkpoint.pt"
        on_disk.append(torch.load(path, weights_only=True)["step"] if path.exists() else None)
    assert run.step == run.batches_drawn == 8
    assert on_disk == [None] * 4 + [4] * 4  # the step 4 checkpoint is there while epoch 2 trains
    assert torch.load(run.dir / "checkpoint.pt", weights_only=True)["step"] == 8
    assert (run.dir / "samples" / "epoch-001.png").is_file() and (run.dir / "samples" / "epoch-002.png").is_file()
    assert [float(r["epoch"]) for r in read_metrics(run.dir)] == [s / 4 for s in range(1, 9)]


def test_ctrl_c_ends_the_step_then_saves_and_restores_the_signal_handler(tmp_path, capsys):
    data = common.load_dataset("shapes", image_size=16, size=20)
    run, _ = _loop_run(tmp_path, epochs=5)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(common.Interrupted) as e:
        for x, _ in run.batches(data, 5):
            run.log(loss=x.mean())
            if run.step == 2:
                os.kill(os.getpid(), signal.SIGINT)  # a first Ctrl-C: this step still ends
    assert f"--resume {run.dir}" in str(e.value)
    assert torch.load(run.dir / "checkpoint.pt", weights_only=True)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is handler
    assert "Ctrl-C again to abort" in capsys.readouterr().err


def test_a_second_ctrl_c_aborts_at_once_without_a_checkpoint(tmp_path):
    data = common.load_dataset("shapes", image_size=16, size=20)
    run, _ = _loop_run(tmp_path, epochs=5)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        for _ in run.batches(data, 5):
            if run.step == 1:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
    assert run.step == 1 and not (run.dir / "checkpoint.pt").exists()
    assert signal.getsignal(signal.SIGINT) is handler


def test_a_second_sigterm_still_saves(tmp_path):
    # a stop asked for twice (a scheduler, a dying parent) is one stop: the step ends, a checkpoint
    data = common.load_dataset("shapes", image_size=16, size=20)
    run, _ = _loop_run(tmp_path, epochs=5)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(common.Interrupted):
        for _ in run.batches(data, 5):
            if run.step == 1:
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
    assert torch.load(run.dir / "checkpoint.pt", weights_only=True)["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is handler


def test_a_sampler_counts_images_and_an_epoch_is_len_data_images(tmp_path):
    data = common.load_dataset("shapes", image_size=16, size=20)
    run, _ = _tiny_run(tmp_path)
    draw = run.sampler(data)
    for _ in range(4):
        x, y = draw(6)
    assert x.shape == (6, 3, 16, 16) and y.shape == (6,)
    assert run.batches_drawn == 24 and run.epochs_done == 1


def test_samples_are_drawn_in_eval_mode_without_gradients_and_training_mode_returns(tmp_path):
    seen = []

    def sample(n=4):
        seen.append((net.training, torch.is_grad_enabled()))
        return net(torch.randn(n, 3)).view(n, 3, 1, 1).tanh()

    run, net = _loop_run(tmp_path)
    run.sample_fn = sample
    assert run.save_samples("grid").is_file()
    run.generate(sample, 3)
    assert seen == [(False, False)] * 2 and net.training
    assert torch.equal(net.running_mean, torch.zeros(3))  # BatchNorm's statistics untouched


# ------------------------------------------------------------------------------------------------
# what the scripts take from common.py
# ------------------------------------------------------------------------------------------------
SCRIPTS = ("dcgan", "wgan", "relativistic_gan", "infogan", "began", "vaegan", "sagan", "progan",
           "cyclegan", "seqgan")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", SCRIPTS)
def test_networks_losses_and_steps_need_nothing_but_torch(script):
    # Everything a script defines above build() / train() (its networks, losses and step
    # functions; its flags aside) can be copied into another project without common.py.
    body = ast.parse((ROOT / f"{script}.py").read_text(encoding="utf-8")).body
    defs = [node for node in body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    end = next(i for i, node in enumerate(defs) if node.name in ("build", "train"))
    method = [node for node in defs[:end] if node.name != "parse_args"]
    assert len(method) >= 3, [node.name for node in defs]
    for node in method:
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        assert "common" not in names, f"{script}.{node.name} uses common"


@pytest.mark.parametrize("module", ["data", "scale"])
def test_data_and_scale_import_nothing_of_the_collection(module):
    # common -> data and common -> scale are the only arrows: either module can be copied alone
    tree = ast.parse((ROOT / f"{module}.py").read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module}
    ours = {p.stem for p in ROOT.glob("*.py")}
    assert imported & ours == set(), imported & ours
    assert imported - set(sys.stdlib_module_names) <= {"numpy", "torch", "torchvision", "PIL"}, imported


def test_a_plain_run_never_imports_scale(tmp_path):
    # scale.py (torchrun, CUDA graphs) is loaded only when a run asks for it: --fast, or torchrun
    def modules_after(*flags):
        code = ("import sys, dcgan; dcgan.main(sys.argv[1:]); "
                "print(' '.join(sorted(m for m in sys.modules if m in ('scale', 'common', 'dcgan'))))")
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        done = subprocess.run([sys.executable, "-c", code, *TINY, "--max-steps", "3", *flags],
                              cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip().splitlines()[-1].split()

    assert modules_after("--out", "plain") == ["common", "dcgan"]
    assert modules_after("--out", "fast", "--fast") == ["common", "dcgan", "scale"]  # (the check can fail)


def test_prepare_sets_the_networks_up_in_place_for_channels_last_and_amp(tmp_path):
    # --channels-last reaches every network of the run; --amp the networks given: their forward
    # computes under bf16 autocast and hands back float32 (losses and backward() outside autocast)
    seen = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            seen.append(y.dtype)
            return y, {"mean": y.mean(), "index": torch.arange(2)}

    G, G_ema = Net(), Net()
    keys = list(G.state_dict())
    run = common.Run("dcgan", _args(out=str(tmp_path / "run"), amp=True, channels_last=True), {"G": G, "G_ema": G_ema})
    assert run.prepare(G) is G and list(G.state_dict()) == keys      # one process: the network itself
    assert all(m.conv.weight.is_contiguous(memory_format=torch.channels_last) for m in (G, G_ema))
    y, extra = G(torch.randn(2, 3, 8, 8))
    assert seen == [torch.bfloat16] and y.dtype == extra["mean"].dtype == torch.float32
    assert extra["index"].dtype == torch.long                        # (only floating outputs are cast)
    y.sum().backward()
    assert G.conv.weight.grad.dtype == torch.float32
    G_ema(torch.randn(2, 3, 8, 8))
    assert seen[-1] == torch.float32                                 # not given to prepare: float32


def test_a_loop_with_its_own_schedule_counts_steps_and_epochs_and_stops_on_ctrl_c(tmp_path):
    # seqgan.py's loop: `until` steps, no epoch ends of the loop's own (no grid, no checkpoint),
    # after_step() once each step is counted and before its row; a Ctrl-C still saves and stops
    run = common.Run("seqgan", _args(out=str(tmp_path / "run"), log_every=1), {"net": torch.nn.Linear(2, 2)})
    seen = []

    def after_step():
        seen.append((run.step, run.epochs_done))
        run.log(nll=run.step * 10)  # (seqgan.py's evaluation: in the row of the step it follows)

    for u in run.loop(until=3, after_step=after_step):
        run.log(loss=torch.tensor(float(u)))
        run.count(10, epochs=u % 2)
    assert seen == [(1, 0), (2, 1), (3, 1)] and run.step == 3
    rows = read_metrics(run.dir)
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and [float(r["epoch"]) for r in rows] == [0, 1, 1]
    assert [float(r["nll"]) for r in rows] == [10, 20, 30] and [float(r["loss"]) for r in rows] == [0, 1, 2]
    assert not (run.dir / "checkpoint.pt").exists()
    run = common.Run("seqgan", _args(out=str(tmp_path / "stopped"), log_every=5), {"net": torch.nn.Linear(2, 2)})
    seen.clear()
    with pytest.raises(common.Interrupted, match="interrupted at step 2"):
        for u in run.loop(until=10, after_step=lambda: seen.append(run.step)):
            if u == 1:
                os.kill(os.getpid(), signal.SIGINT)
    assert seen == [1, 2] and torch.load(run.dir / "checkpoint.pt", weights_only=True)["step"] == 2
