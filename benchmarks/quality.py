"""Quality benchmark: does each script do what its paper says, on the built-in shapes data?

    python benchmarks/quality.py --tier laptop [--oracle target_params_py3.pkl]   (all ten, a 2-core CPU)
    python benchmarks/quality.py --script dcgan [wgan ...] [--budget IMAGES] [--seeds K] [--jobs J]
                                 [--n-eval N] [--results-dir benchmarks/results] [--overwrite] [--tiny]
    python benchmarks/quality.py --tier laptop --table          (the README's tables from the JSONs)
    python benchmarks/quality.py --tier mnist [--data-root DIR]        (eight scripts on MNIST, a 2-core CPU)
    python benchmarks/quality.py --tier mnist --table

Two tiers. The paper tier (the default) trains the scripts' own networks at their own sizes (64
px; a GPU) for a budget in images shown to D (`--epochs E` over `--dataset-size N` gives E x N;
default the README's quick run, `--epochs 5` on the 60,000 shapes). The laptop tier (`--tier
laptop`) trains every script with its own laptop configuration, `--preset laptop` (the script's
PRESETS: only its own flags, 32 px or InfoGAN's 28 px, grayscale, reduced widths, a batch size
and a number of epochs), its losses, optimiser settings and update schedule unchanged; each run
fits an hour on one thread of a 2-core CPU, two runs at a time; seeds 0-2 for every run that a
paper comparison or curve claim rests on (each claim judged by its spread: verdict()), seed 0
for the others. Its run folders stay in --work (default
benchmarks/.work/laptop): a command stopped part way is run again as it was and every run goes
on from its last checkpoint; scripts already scored are skipped. So the whole tier is one
command, which may be spread over several sittings.

The MNIST tier (`--tier mnist`) is the laptop tier on real digits: the eight image scripts but
cyclegan.py (MNIST has no two domains) and seqgan.py (no images), each run built from the
script's `--preset laptop` with `--dataset mnist --data-root DIR` (quality.py's --data-root:
the folder holding MNIST/raw/ as torchvision lays it out; default: shared/data in the folder
that holds the repository) and the tier's own overrides (MNIST_OVERRIDES: epochs and dataset
size, so that each run takes at most 30 minutes of one core by the laptop tier's measured
speeds, MNIST_RATES; infogan.py the paper's 28 px networks). The comparisons that make sense on
digits (VAE-GAN against a VAE, attention on and off with the digit label as sagan.py's class,
RaSGAN against SGAN on 2,000 digits, grown against fixed size), BEGAN's M_global curve and
WGAN's critic curve, seeds as in the laptop tier; run folders in benchmarks/.work/mnist; results
`quality-NAME-mnist.json` and `.png`. Its measure is a digit classifier (DigitNet) trained by
this file on MNIST's 60,000 training digits (cached like ShapesNet): FD-MNIST and KID-MNIST in
its penultimate features against the first half of the 10,000 test digits (the floor: that half
against the other half), classes covered and the confident rate; InfoGAN's categorical code
matched to the digit on all 10,000 test digits (the paper's 5% error), its continuous codes'
correlation with the digits' slant and stroke width, and the traversal grids of Fig. 2 c, d
(`quality-infogan-mnist-traversal-c2.png`, `-c3.png`).

For each script: once per seed, its main run plus the runs of the paper's own comparison
(RaSGAN vs SGAN vs RaLSGAN on 2,000 images, attention on/off, grown vs fixed size, VAE-GAN vs a
plain VAE, with and without the cycle loss, SeqGAN vs MLE); then score the samples and write
`quality-NAME[-laptop].json` and a sample grid `quality-NAME[-laptop].png` to --results-dir
(an existing one is replaced only with --overwrite; checked before anything trains).

No Inception weights can be downloaded here, so the feature space is a small CNN trained by
this file on the shapes factors (class, size, rotation, brightness), deterministically, and
cached under benchmarks/.cache/ keyed by its configuration (`ShapesNet`, `classifier`):
  FD-shapes   Fréchet distance between real and generated features (its penultimate layer);
              an exact matrix square root (eigh), float64. Not FID: another network.
  KID-shapes  unbiased MMD² with the cubic polynomial kernel, mean and std over 10 random
              subsets of min(1000, n // 2) images (at most half of each set, so the subsets
              differ and the std is a spread, not 0).
  coverage    classes present among the confident samples (max p > 0.9), of 10;
  confident   the share of samples the classifier assigns to a class with p > 0.9.
  anchors     the floor: real vs real (two disjoint real sets, streams 1 and 0, as many as
              the generated set); the ceiling: the script's generator at initialisation
              (the same seed and build() as the script). fd_position = (FD - floor) /
              (ceiling - floor): 0 at the floor, 1 at the ceiling.
              cyclegan.py: the FD/KID/coverage of G_AB(a) (a: the paired test split, stream
              1) are against outlines of an independent stream (3), never against a's own
              paired targets (a perfect translator would then score 0, below the floor);
              the floor is the paired targets against that set: what a perfect translator
              scores. The paired error stays on the paired targets.
plus each paper's own measure: InfoGAN's code accuracy, CycleGAN's class preservation and paired
error, the rank correlation of WGAN's critic estimate and BEGAN's M_global with FD-shapes over
checkpoints, and each comparison above with its sign ("comparisons" in the JSON). seqgan.py has
no images: its measure is NLL_oracle of SeqGAN and of the MLE baseline on the same oracle
(`--oracle FILE`, as seqgan.py takes it; without it, a fresh oracle from the seed).

Runs can share one GPU: `--jobs J` trains J runs at a time, each in a worker process of its
own (spawned), writing its log next to its run folder; the JSON of a script is written as soon
as its runs are scored. Ctrl-C or SIGTERM stops the command as it stops a script: each worker
finishes its step, saves a checkpoint and exits (one still running after STOP_GRACE_S is
killed), then exit status 130 or 143; a worker whose command died without stopping it (SIGKILL)
stops the same way. One process writes to a run folder (its lock), and one command uses a
--work folder: a second command on the same --work is refused at its start.
A run that fails is reported with its script, run, seed and error sentence.
If only comparison runs of a script failed (RGAN's SGAN on 2,000 images, say), the script is
scored from the runs that finished and its JSON names the failed ones ("failed_runs"); if a
main run (or one of seqgan's paired runs) failed, it is not scored (no JSON: a line says so).
The other scripts are scored either way, and the command ends with exit status 1 (the run
folders are then kept, for their logs).
`--tiny` (CPU-sized networks, 16 px, a few hundred images) runs a script's whole path on a
CPU in seconds; its numbers mean nothing. What the tests run of it (tests/test_quality.py):
dcgan end to end (train, score, JSON and grid), progan trained and scored on 16 images (the
failure test), and wgan's curve (trained in segments, then score_curve); the other scripts'
tiny flags, sampling and own measures are checked only when someone runs them
(`--script NAME --tiny --device cpu`). `--tier mnist --tiny` runs the same tiny networks on
the first 256 MNIST training digits (`--budget` images, in epochs of them); its tests
(tests/test_quality_mnist.py) run infogan, began and sagan that way, with a tiny digit
classifier, when MNIST is in shared/data beside the repository.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import hashlib
import importlib
import io
import json
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import common  # noqa: E402
import data  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"
IMAGE_SCRIPTS = ("dcgan", "wgan", "relativistic_gan", "infogan", "began", "vaegan", "sagan", "progan",
                 "cyclegan")
SCRIPTS = IMAGE_SCRIPTS + ("seqgan",)
NUM_CLASSES = len(data.SHAPE_NAMES)
CONFIDENT = 0.9      # a confident sample: the classifier's top class has p > 0.9
WIDE_MARGIN = 0.2    # "closer to the floor than to the ceiling by a wide margin": fd_position <= 0.2
PROTOCOL = ("Each run trains through the script's own main() on the built-in shapes for the budget in its "
            "flags; samples are drawn from its checkpoint as --generate draws them (eval mode), quantised to "
            "uint8 like a PNG, resized to 32 px and embedded by ShapesNet (penultimate layer, 128-d). Real "
            "reference: n_eval images of the shapes test stream (1); floor: that set against n_eval images of "
            "the training stream (0); ceiling: the script's generator at initialisation (same seed, build()). "
            "fd_position = (FD - floor) / (ceiling - floor). KID: 10 subsets of min(1000, n_eval // 2). "
            "cyclegan: reference = outlines of an independent stream (3); floor = the paired targets "
            "(outlines of G_AB's inputs, stream 1) against it; paired error on the paired targets.")

PROTOCOL_MNIST = ("Each run trains through the script's own main() on MNIST's training digits (--dataset mnist, "
                  "resized to the run's size) for the budget in its flags; samples are drawn from its checkpoint "
                  "as --generate draws them (eval mode), quantised to uint8 like a PNG, resized to 32 px and "
                  "embedded by DigitNet (trained on MNIST's training digits; penultimate layer). Real reference: "
                  "the first n_eval of the 10,000 test digits; floor: that set against the next n_eval test "
                  "digits; ceiling: the script's generator at initialisation (same seed, build()). fd_position = "
                  "(FD - floor) / (ceiling - floor). KID: 10 subsets of min(1000, n_eval // 2). infogan: Q's "
                  "categorical code on all 10,000 test digits against the digit, after the best one-to-one "
                  "matching of code values to digits. The runs' flags record --data-root as DIR.")


# ----------------------------------------------------------------------------------------------
# The feature network: a small CNN trained on the shapes factors
# ----------------------------------------------------------------------------------------------
CLASSIFIER = {"version": 1, "input_size": 32, "width": 32, "features": 128, "n_train": 24000,
              "n_test": 2000, "render_sizes": [28, 32, 64], "styles": ["filled", "outline"],
              "epochs": 8, "batch_size": 128, "lr": 2e-3, "seed": 0, "noise_fraction": 0.125}


class ShapesNet(nn.Module):
    """image (B, C, 32, 32) in [-1, 1] -> (features (B, F), class logits (B, 10), factors (B, 4)).

    Four 3x3/4x4 convs with ReLU down to 4x4, one FC layer to F features (the FD/KID space),
    then a class head and a regression head for (size, cos kθ, sin kθ, brightness), kθ the
    rotation times the class's symmetry order (a rotation the image can show)."""

    def __init__(self, channels=3, width=32, features=128):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.ReLU(),          # (B, 2w, 16, 16)
            nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.ReLU(),      # (B, 4w, 8, 8)
            nn.Conv2d(4 * w, 4 * w, 4, 2, 1), nn.ReLU(),      # (B, 4w, 4, 4)
            nn.Flatten(), nn.Linear(4 * w * 16, features), nn.ReLU())
        self.cls = nn.Linear(features, NUM_CLASSES)
        self.reg = nn.Linear(features, 4)

    def forward(self, x):
        h = self.body(x)
        return h, self.cls(h), self.reg(h)


def to_input(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """uint8 (N, c, s, s) -> float (N, channels, size, size) in [-1, 1]: grey <-> RGB by
    mean / repeat, bilinear resize (antialiased when shrinking)."""
    x = images.float().div(127.5).sub(1)
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, 3, -1, -1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=x.shape[-1] > size,
                          align_corners=False)
    return x


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8, as a PNG of them would hold (what --generate writes)."""
    return x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


def factor_targets(factors: dict, channels: int) -> torch.Tensor:
    """(N, 4): size (normalised), cos kθ, sin kθ (0, 0 for fully symmetric classes), brightness."""
    order = torch.tensor(data.SYMMETRY, dtype=torch.float32)[factors["class"]]
    angle = factors["rotation"] * order
    symmetric = order == 0
    lo, hi = data.SIZE_RANGE
    bright = factors["intensity"] if channels == 1 else factors["color"].amax(1)
    return torch.stack([(factors["size"] - (lo + hi) / 2) / ((hi - lo) / 2),
                        torch.where(symmetric, 0.0, torch.cos(angle)),
                        torch.where(symmetric, 0.0, torch.sin(angle)),
                        (bright - 0.7) / 0.3], 1)


def classifier_set(n: int, stream: int, channels: int, cfg: dict, device) -> tuple:
    """n shapes of `stream`, image i rendered at render_sizes[i % k] in styles[(i // k) % 2],
    resized to the input size: (images uint8, class, factor targets, order)."""
    f = data.shape_factors(n, seed=0, stream=stream)
    k, styles = len(cfg["render_sizes"]), cfg["styles"]
    images = torch.empty(n, channels, cfg["input_size"], cfg["input_size"], dtype=torch.uint8, device=device)
    i = torch.arange(n)
    for a, size in enumerate(cfg["render_sizes"]):
        for b, style in enumerate(styles):
            idx = i[(i % k == a) & ((i // k) % len(styles) == b)]
            sub = {key: v[idx] for key, v in f.items()}
            x = data.render_shapes(sub, size, channels, style, device)
            images[idx.to(device)] = to_uint8(to_input(x, channels, cfg["input_size"]))
    return images, f["class"].to(device), factor_targets(f, channels).to(device), f


def _noise_batch(n: int, channels: int, size: int, g: torch.Generator, device) -> torch.Tensor:
    """Images that are no shape (uniform noise, blurred noise, flat colour): trained towards
    the uniform class distribution, so that confidence means 'a shape' (outlier exposure)."""
    x = torch.rand(n, channels, size, size, generator=g) * 2 - 1
    kind = torch.randint(3, (n,), generator=g)
    blurred = F.avg_pool2d(x, 5, 1, 2) * 2.5
    flat = torch.rand(n, channels, 1, 1, generator=g).mul(2).sub(1).expand_as(x)
    x = torch.where((kind == 1)[:, None, None, None], blurred.clamp(-1, 1), x)
    x = torch.where((kind == 2)[:, None, None, None], flat, x)
    return x.to(device)


def fit(net, x, y, cfg: dict, channels: int, device, log=print, what: str = "classifier", targets=None):
    """Train a feature network deterministically (cfg's seed): Adam with a one-cycle schedule,
    cross-entropy on the labels y of the uint8 images x, a share of noise images (cfg's
    noise_fraction) trained towards the uniform class distribution (outlier exposure: confident
    means 'one of the classes'), and, with `targets` (shapes), the factor regression. Returns
    its wall and CPU time (all threads) in seconds."""
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    g = torch.Generator().manual_seed(cfg["seed"])
    bs, n = cfg["batch_size"], len(x)
    steps = cfg["epochs"] * (n // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg["lr"], total_steps=steps)
    n_noise = max(1, round(bs * cfg["noise_fraction"]))
    t0, cpu0 = time.perf_counter(), time.process_time()
    for epoch in range(cfg["epochs"]):
        order = torch.randperm(n, generator=g).to(device)
        for k in range(n // bs):
            idx = order[k * bs:(k + 1) * bs]
            noise = _noise_batch(n_noise, channels, cfg["input_size"], g, device)
            _, logits, reg = net(torch.cat([to_input(x[idx], channels, cfg["input_size"]), noise]))
            loss = (F.cross_entropy(logits[:bs], y[idx])
                    - logits[bs:].log_softmax(1).mean())           # the noise: towards uniform
            if targets is not None:
                target = targets[idx]
                mask = torch.ones_like(target)
                mask[:, 1:3] = (target[:, 1:3] != 0).float()  # no rotation target for symmetric classes
                loss = loss + ((reg[:bs] - target) ** 2 * mask).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log(f"{what} epoch {epoch + 1}/{cfg['epochs']}: loss {loss.item():.4f} "
            f"({time.perf_counter() - t0:.0f} s)")
    net.eval()
    return {"train_seconds": round(time.perf_counter() - t0, 1),
            "train_cpu_seconds": round(time.process_time() - cpu0, 1)}


def train_classifier(channels: int, cfg: dict, device, log=print) -> tuple:
    """Train ShapesNet deterministically (fixed seed, stream 0 data); test on stream 1."""
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(cfg["seed"])
        net = ShapesNet(channels, cfg["width"], cfg["features"]).to(device)
        x, y, t, _ = classifier_set(cfg["n_train"], 0, channels, cfg, device)
        times = fit(net, x, y, cfg, channels, device, log, f"classifier ({channels} ch)", targets=t)
        report = {**evaluate_classifier(net, channels, cfg, device), "trained_on": str(device), **times}
    return net, report


@torch.no_grad()
def evaluate_classifier(net, channels, cfg, device) -> dict:
    """Held-out (stream 1) class accuracy, per style, and how well the factor heads track."""
    x, y, t, f = classifier_set(cfg["n_test"], 1, channels, cfg, device)
    _, logits, reg = net(to_input(x, channels, cfg["input_size"]))
    correct = (logits.argmax(1) == y).float().cpu()
    style = (torch.arange(len(y)) // len(cfg["render_sizes"])) % len(cfg["styles"])
    noise = _noise_batch(500, channels, cfg["input_size"], torch.Generator().manual_seed(1), device)
    noise_conf = (net(noise)[1].softmax(1).amax(1) > CONFIDENT).float().mean()
    ordered = t[:, 1:3].abs().sum(1) > 0
    return {"heldout_accuracy": round(correct.mean().item(), 4),
            **{f"heldout_accuracy_{s}": round(correct[style == i].mean().item(), 4)
               for i, s in enumerate(cfg["styles"])},
            "heldout_confident_rate": round((logits.softmax(1).amax(1) > CONFIDENT).float().mean().item(), 4),
            "noise_confident_rate": round(noise_conf.item(), 4),
            "size_correlation": round(_pearson(reg[:, 0], t[:, 0]), 4),
            "brightness_correlation": round(_pearson(reg[:, 3], t[:, 3]), 4),
            "rotation_mean_cos_error": round(torch.cos(torch.atan2(reg[ordered, 2], reg[ordered, 1])
                                                       - torch.atan2(t[ordered, 2], t[ordered, 1])).mean().item(), 4),
            "n_test": cfg["n_test"]}


def classifier_problem(cfg: dict) -> str | None:
    """Why a (merged) classifier configuration cannot train, in words, or None."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v):
        return (is_int(v) or isinstance(v, float)) and math.isfinite(v)

    for key in ("width", "features", "n_train", "n_test", "epochs", "batch_size"):
        if not (is_int(cfg[key]) and cfg[key] > 0):
            return f"{key} must be a positive integer, not {json.dumps(cfg[key])}"
    for key in ("version", "seed"):
        if not (is_int(cfg[key]) and cfg[key] >= 0):
            return f"{key} must be an integer 0 or more, not {json.dumps(cfg[key])}"
    if cfg["input_size"] != 32:
        return f"input_size must be 32 (ShapesNet's convs reach 4x4 from 32 px), not {json.dumps(cfg['input_size'])}"
    if not (is_number(cfg["lr"]) and cfg["lr"] > 0):
        return f"lr must be a positive number, not {json.dumps(cfg['lr'])}"
    if not (is_number(cfg["noise_fraction"]) and 0 <= cfg["noise_fraction"] < 1):
        return f"noise_fraction must be a number in [0, 1), not {json.dumps(cfg['noise_fraction'])}"
    if "render_sizes" not in cfg:  # (the digit classifier: MNIST's own sets)
        if cfg["n_train"] > MNIST_TRAIN or cfg["n_test"] > MNIST_TEST:
            return f"n_train and n_test must be at most MNIST's {MNIST_TRAIN:,} and {MNIST_TEST:,} digits"
        return None if cfg["batch_size"] <= cfg["n_train"] else \
            f"batch_size ({cfg['batch_size']}) must not exceed n_train ({cfg['n_train']}): no step would train"
    sizes, styles = cfg["render_sizes"], cfg["styles"]
    if not (isinstance(sizes, list) and sizes and all(is_int(v) and 16 <= v <= 256 for v in sizes)):
        return f'render_sizes must be a JSON list of sizes from 16 to 256 (e.g. [32,64]), not {json.dumps(sizes)}'
    if not (isinstance(styles, list) and styles and len(set(map(str, styles))) == len(styles)
            and set(map(str, styles)) <= {"filled", "outline"}):
        return f'styles must be a JSON list of "filled" and/or "outline" (e.g. ["filled"]), not {json.dumps(styles)}'
    if cfg["batch_size"] > cfg["n_train"]:
        return f"batch_size ({cfg['batch_size']}) must not exceed n_train ({cfg['n_train']}): no step would train"
    return None


def _cached(name: str, cfg: dict, make, train, cache: Path | None, device) -> tuple:
    """(network, report) from cache/NAME-KEY.pt (KEY: a hash of cfg) when it holds one, else
    trained by train() and saved there."""
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    path = None if cache is None else Path(cache) / f"{name}-{key}.pt"
    if path is not None and path.exists():
        saved = torch.load(path, map_location=device, weights_only=True)
        net = make().to(device)
        net.load_state_dict(saved["state_dict"])
        net.eval()
        return net, {**json.loads(saved["report"]), "cache": path.name}
    net, report = train()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = {"state_dict": net.state_dict(), "report": json.dumps(report), "config": json.dumps(cfg)}
        common.replace_atomically(path, partial(torch.save, saved))
        report = {**report, "cache": path.name}
    return net, report


def classifier(channels: int, device, cfg: dict | None = None, cache: Path | None = CACHE, log=print):
    """The feature network for `channels`, from the cache if it holds one of this config."""
    cfg = {**CLASSIFIER, **(cfg or {}), "channels": channels}
    net, report = _cached(f"classifier-{channels}ch", cfg, lambda: ShapesNet(channels, cfg["width"], cfg["features"]),
                          lambda: train_classifier(channels, cfg, device, log), cache, device)
    return net, report, cfg


# ----------------------------------------------------------------------------------------------
# The MNIST tier's feature network: a digit classifier trained on MNIST's training digits
# ----------------------------------------------------------------------------------------------
MNIST_TRAIN, MNIST_TEST = 60000, 10000
DIGIT_CLASSIFIER = {"version": 1, "input_size": 32, "width": 16, "features": 128, "n_train": MNIST_TRAIN,
                    "n_test": MNIST_TEST, "epochs": 5, "batch_size": 128, "lr": 2e-3, "seed": 0,
                    "noise_fraction": 0.125}


class DigitNet(ShapesNet):
    """ShapesNet's body and class head, no factor head (the digits' factors are not labelled):
    image (B, 1, 32, 32) in [-1, 1] -> (features (B, F), digit logits (B, 10), (B, 0))."""

    def __init__(self, width=16, features=128):
        super().__init__(1, width, features)
        del self.reg

    def forward(self, x):
        h = self.body(x)
        return h, self.cls(h), h.new_zeros(len(h), 0)


_DIGITS: dict = {}  # (root, split[, size]) -> (images, labels): each split read and resized once per process


def mnist_digits(root, split: str, image_size: int = 28, n: int | None = None) -> tuple:
    """MNIST's "train" (60,000) or "test" (10,000) digits from root/MNIST/raw/ (torchvision's
    layout), the first n of them (default all): uint8 (n, 1, S, S), resized as the scripts resize
    their training digits (data.load_dataset: antialiased bilinear), and the labels (n,)."""
    raw = (str(Path(root).resolve()), split)
    if raw not in _DIGITS:
        import torchvision.datasets as tvd
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                base = tvd.MNIST(str(root), train=split == "train", download=False)
        except Exception:  # (torchvision: "Dataset not found")
            raise common.UserError(
                f"MNIST was not found in {root} (it looks for MNIST/raw/ there); pass --data-root with the folder "
                f"that holds it, or fetch it with any script: --dataset mnist --data-root {root} --download.") from None
        _DIGITS[raw] = (torch.as_tensor(base.data)[:, None], torch.as_tensor(base.targets).long())
    images, labels = _DIGITS[raw]
    if n is not None and n < len(images):  # (a few: resized now, not kept)
        return data._resize_uint8(images[:n], image_size, 1), labels[:n]
    if (*raw, image_size) not in _DIGITS:
        _DIGITS[(*raw, image_size)] = (data._resize_uint8(images, image_size, 1), labels)
    return _DIGITS[(*raw, image_size)]


def train_digit_classifier(cfg: dict, root, device, log=print) -> tuple:
    """Train DigitNet deterministically on the first n_train training digits (32 px, as the
    scripts train on them); test it on the first n_test test digits."""
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(cfg["seed"])
        net = DigitNet(cfg["width"], cfg["features"]).to(device)
        x, y = mnist_digits(root, "train", cfg["input_size"], cfg["n_train"])
        times = fit(net, x.to(device), y.to(device), cfg, 1, device, log, "digit classifier")
        report = {**evaluate_digit_classifier(net, cfg, root, device), "trained_on": str(device), **times}
    return net, report


@torch.no_grad()
def evaluate_digit_classifier(net, cfg: dict, root, device) -> dict:
    """Accuracy on the first n_test test digits, their confident rate, and noise's."""
    x, y = mnist_digits(root, "test", cfg["input_size"], cfg["n_test"])
    logits = torch.cat([net(to_input(c.to(device), 1, cfg["input_size"]))[1].float().cpu() for c in x.split(500)])
    noise = _noise_batch(500, 1, cfg["input_size"], torch.Generator().manual_seed(1), device)
    return {"test_accuracy": round((logits.argmax(1) == y).float().mean().item(), 4),
            "test_confident_rate": round((logits.softmax(1).amax(1) > CONFIDENT).float().mean().item(), 4),
            "noise_confident_rate": round((net(noise)[1].softmax(1).amax(1) > CONFIDENT).float().mean().item(), 4),
            "n_test": len(y)}


def digit_classifier(device, root, cfg: dict | None = None, cache: Path | None = CACHE, log=print):
    """The MNIST tier's feature network (DIGIT_CLASSIFIER, overridden by cfg), from the cache if
    it holds one of this config (the key does not depend on where MNIST lies)."""
    cfg = {**DIGIT_CLASSIFIER, **(cfg or {}), "channels": 1}
    net, report = _cached("digits", cfg, lambda: DigitNet(cfg["width"], cfg["features"]),
                          lambda: train_digit_classifier(cfg, root, device, log), cache, device)
    return net, report, cfg


@torch.no_grad()
def embed(net, images: torch.Tensor, cfg: dict, device, batch: int = 500) -> dict:
    """uint8 images (any size, 1 or 3 channels) -> features (N, F) float64, probs, factors."""
    out = {"features": [], "probs": [], "factors": []}
    for chunk in images.split(batch):
        h, logits, reg = net(to_input(chunk.to(device), cfg["channels"], cfg["input_size"]))
        out["features"].append(h.double().cpu())
        out["probs"].append(logits.float().softmax(1).cpu())
        out["factors"].append(reg.float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# Measures
# ----------------------------------------------------------------------------------------------
def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½), float64; Tr (Σ1Σ2)^½ exactly by eigh."""
    f1, f2 = f1.double(), f2.double()
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = torch.cov(f1.T), torch.cov(f2.T)
    s1 = _sqrtm_psd(c1)
    m = s1 @ c2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + c1.trace() + c2.trace() - 2 * tr_sqrt)


def kernel_inception_distance(f1: torch.Tensor, f2: torch.Tensor, subsets: int = 10, subset_size: int = 1000,
                              seed: int = 0) -> tuple:
    """Unbiased MMD² with k(x, y) = (xᵀy / d + 1)³, over `subsets` random subsets: (mean, std).

    A subset holds min(subset_size, half of the smaller set) images: subsets of the whole set
    would all be the same set, and the std over them 0 whatever the estimator's spread."""
    f1, f2 = f1.double(), f2.double()
    m = max(2, min(subset_size, len(f1) // 2, len(f2) // 2))  # (2: the unbiased form's least)
    d = f1.shape[1]
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = f1[torch.randperm(len(f1), generator=g)[:m]]
        y = f2[torch.randperm(len(f2), generator=g)[:m]]
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        mmd = ((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
               - 2 * kxy.mean())
        values.append(float(mmd))
    return float(np.mean(values)), float(np.std(values))


def coverage(probs: torch.Tensor, threshold: float = CONFIDENT) -> dict:
    """Classes present among the confident samples, and the share of confident samples."""
    conf, cls = probs.max(1)
    sure = conf > threshold
    hist = torch.bincount(cls[sure], minlength=probs.shape[1])
    return {"classes_covered": int((hist > 0).sum()), "confident_rate": float(sure.float().mean()),
            "class_histogram": hist.tolist()}


def confusion_matrix(codes: torch.Tensor, labels: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """(k, max(k, labels)) counts: row = code value, column = label."""
    codes, labels = torch.as_tensor(codes).long().flatten().cpu(), torch.as_tensor(labels).long().flatten().cpu()
    k = k or int(max(codes.max(), labels.max())) + 1
    confusion = torch.zeros(k, max(k, int(labels.max()) + 1), dtype=torch.long)
    confusion.view(-1).index_add_(0, codes * confusion.shape[1] + labels, torch.ones_like(codes))
    return confusion


def best_matching(confusion) -> tuple:
    """The one-to-one matching of codes (rows) to labels (columns) with the most counts on it, exactly
    (what the Hungarian algorithm finds): dynamic programming over the sets of the smaller side's
    partners used so far, 2^10 sets for 10 x 10. Returns (mapping, matched count): mapping[code] is
    its label, or -1 for a code left over when there are more codes than labels. Of tied best
    matchings, always the same one for the same matrix."""
    m = [list(map(int, row)) for row in torch.as_tensor(confusion).tolist()]
    rows, cols = len(m), len(m[0]) if m else 0
    flip = rows > cols                                      # match the smaller side into the larger one
    a = [list(col) for col in zip(*m)] if flip else m
    best = {0: (0, ())}                                     # {set of used partners: (count, partners in order)}
    for row in a:
        new = {}
        for used, (total, chosen) in best.items():
            for j, count in enumerate(row):
                key = used | 1 << j
                if not used >> j & 1 and (key not in new or total + count > new[key][0]):
                    new[key] = (total + count, chosen + (j,))
        best = new
    total, chosen = max(best.values(), key=lambda v: v[0]) if best else (0, ())
    if not flip:
        return list(chosen), total
    mapping = [-1] * rows                                   # chosen[label] is that label's code
    for label, code in enumerate(chosen):
        mapping[code] = label
    return mapping, total


def code_accuracy(codes: torch.Tensor, labels: torch.Tensor, k: int | None = None) -> float:
    """Accuracy of the best one-to-one matching of codes to labels (best_matching: exact)."""
    _, matched = best_matching(confusion_matrix(codes, labels, k))
    return matched / max(1, len(torch.as_tensor(codes).flatten()))


# Handwriting measures on uint8 images (N, 1, H, W), ink bright on a dark ground (MNIST's and the
# generators' digits): x to the right, y down, in pixels.
def _plane(images) -> torch.Tensor:
    """(N, 1, H, W) or (N, H, W) -> (N, H, W)."""
    x = torch.as_tensor(images)
    return x[:, 0] if x.dim() == 4 else x


def _ink(images) -> torch.Tensor:
    return _plane(images).double() / 255


def slant(images: torch.Tensor) -> torch.Tensor:
    """The shear of each image's ink from its second moments, -μ11 / μ02: how far the ink moves to
    the right per pixel upwards (0 upright, > 0 leaning right: the slant deskewing removes). An
    image without ink: 0."""
    w = _ink(images)                                         # (N, H, W)
    h, wd = w.shape[-2:]
    y = torch.arange(h, dtype=torch.float64).view(1, h, 1)
    x = torch.arange(wd, dtype=torch.float64).view(1, 1, wd)
    mass = w.sum((1, 2))
    safe = mass.clamp(min=1e-12)
    cx, cy = (w * x).sum((1, 2)) / safe, (w * y).sum((1, 2)) / safe
    dx, dy = x - cx.view(-1, 1, 1), y - cy.view(-1, 1, 1)
    mu11, mu02 = (w * dx * dy).sum((1, 2)) / safe, (w * dy * dy).sum((1, 2)) / safe
    return torch.where((mass > 0) & (mu02 > 1e-12), -mu11 / mu02.clamp(min=1e-12), 0.0)


def ink_area(images: torch.Tensor) -> torch.Tensor:
    """The ink of each image, in pixels (the sum of intensities in [0, 1])."""
    return _ink(images).sum((1, 2))


def stroke_width(images: torch.Tensor, threshold: int = 128) -> torch.Tensor:
    """Mean stroke width in pixels without a skeleton: 2 A / P, A the area of the inked pixels
    (>= threshold) and P their boundary length. A straight stroke of length L and width w has
    A = L w and P = 2 (L + w), so this is w L / (L + w): about w for a stroke much longer than
    wide, whatever its length (a digit's strokes: a few percent less), where the ink A alone
    grows with the length. P by Crofton's formula over four directions, (π/8) (C_0 + C_90 +
    (C_45 + C_135) / √2) with C the ink/ground changes along rows, columns and both diagonals,
    so that a slanted stroke's staircase edge is not counted longer than a straight edge.
    No ink: 0."""
    b = F.pad((_plane(images) >= threshold).double(), (1, 1, 1, 1))  # (N, H + 2, W + 2)

    def changes(a, c):
        return (a - c).abs().sum((1, 2))
    length = math.pi / 8 * (changes(b[:, :, 1:], b[:, :, :-1]) + changes(b[:, 1:], b[:, :-1])
                            + (changes(b[:, 1:, 1:], b[:, :-1, :-1]) + changes(b[:, 1:, :-1], b[:, :-1, 1:]))
                            / math.sqrt(2))
    return torch.where(length > 0, 2 * b.sum((1, 2)) / length.clamp(min=1e-12), 0.0)


def within_group_correlation(c, v, group_size: int) -> float:
    """Pearson correlation of c and v after removing each group's mean from both (consecutive groups
    of group_size): how v follows c where only c changes within a group. NaN values drop their group."""
    c = torch.as_tensor(c).double().view(-1, group_size)
    v = torch.as_tensor(v).double().view(-1, group_size)
    keep = ~(c.isnan().any(1) | v.isnan().any(1))
    c, v = c[keep], v[keep]
    if len(c) == 0:
        return float("nan")
    return _pearson(c - c.mean(1, keepdim=True), v - v.mean(1, keepdim=True))


def _pearson(a, b) -> float:
    a, b = torch.as_tensor(a).double().flatten(), torch.as_tensor(b).double().flatten()
    a, b = a - a.mean(), b - b.mean()
    denom = (a.norm() * b.norm()).item()
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def spearman(a, b) -> float:
    """Rank correlation (average ranks for ties) over the pairs where both values are known:
    a pair with a NaN is dropped (argsort would rank NaN as the largest value); NaN when fewer
    than 3 pairs are left (two points always correlate ±1)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    known = ~(np.isnan(a) | np.isnan(b))
    a, b = a[known], b[known]
    if len(a) < 3:
        return float("nan")

    def ranks(x):
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):  # average the ranks of ties
            r[x == v] = r[x == v].mean()
        return r
    return _pearson(torch.from_numpy(ranks(a)), torch.from_numpy(ranks(b)))


def circular_linear(c: torch.Tensor, angle: torch.Tensor) -> float:
    """Circular-linear correlation of a linear variable c with an angle (Mardia): in [0, 1]."""
    if len(c) < 3:
        return float("nan")
    rcs, rcc, rsc = _pearson(c, torch.sin(angle)), _pearson(c, torch.cos(angle)), _pearson(torch.sin(angle),
                                                                                          torch.cos(angle))
    denom = 1 - rsc ** 2
    return math.sqrt(max(0.0, (rcc ** 2 + rcs ** 2 - 2 * rcc * rcs * rsc) / denom)) if denom > 1e-9 else float("nan")


def image_scores(gen: dict, real: dict, tag: str = "", space: str = "shapes") -> dict:
    """FD, KID and coverage of the generated features against the real ones; space names the
    feature network in the keys (fd_shapes, fd_mnist)."""
    kid, kid_std = kernel_inception_distance(gen["features"], real["features"])
    cov = coverage(gen["probs"])
    return {f"fd_{space}{tag}": frechet_distance(gen["features"], real["features"]), f"kid_{space}{tag}": kid,
            f"kid_{space}_std{tag}": kid_std, f"classes_covered{tag}": cov["classes_covered"],
            f"confident_rate{tag}": cov["confident_rate"], f"class_histogram{tag}": cov["class_histogram"]}


FEATURE_NAMES = {"shapes": "shapes", "mnist": "MNIST"}  # FD-shapes, FD-MNIST


def space_of(tier: str) -> str:
    """The feature space of a tier's FD and KID: the digit classifier's on MNIST, else ShapesNet's."""
    return "mnist" if tier == "mnist" else "shapes"


def measure_name(key: str, tier: str) -> str:
    """A measure's key in a tier's JSONs (fd_shapes... is fd_mnist... on MNIST)."""
    return key.replace("_shapes", f"_{space_of(tier)}")


# ----------------------------------------------------------------------------------------------
# The scripts: how a budget becomes flags, which runs, how to sample from a checkpoint
# ----------------------------------------------------------------------------------------------
@dataclass
class Spec:
    dataset_size: int = 60000          # the built-in data the README's quick run trains on
    quick_epochs: int = 5              # the README's quick run: --epochs 5
    tiny: tuple = ()                   # CPU smoke-path flags (networks and images of the tests)
    flags: tuple = ()                  # always given
    variants: dict = field(default_factory=dict)   # the paper's comparison: name -> (flags, dataset size)
    curve: str | None = None           # a logged quantity to correlate with FD-shapes over checkpoints
    nets: tuple = ("G",)               # checkpoint modules to load (the first is the sampler)


_T = ("--image-size", "16", "--batch-size", "32", "--log-every", "1")
SPECS = {
    "dcgan": Spec(tiny=_T + ("--ngf", "8", "--ndf", "8")),
    "wgan": Spec(tiny=_T + ("--ngf", "8", "--ndf", "8"), curve="W_estimate"),
    "relativistic_gan": Spec(tiny=_T + ("--width", "8"),
                             variants={f"small-{loss}": (("--loss", loss), 2000)
                                       for loss in ("sgan", "rasgan", "ralsgan")}),
    "infogan": Spec(tiny=_T + ("--ngf", "8", "--ndf", "8", "--fc-units", "32", "--q-units", "16"),
                    nets=("G", "D")),
    "began": Spec(tiny=_T + ("--n-filters", "8", "--nz", "8", "--nh", "8"), curve="M_global"),
    "vaegan": Spec(tiny=_T + ("--width", "4"), variants={"plain-vae": (("--recon", "pixel"), None)},
                   nets=("Dec", "E")),
    "sagan": Spec(tiny=_T + ("--ch", "8", "--nz", "16"), variants={"no-attention": (("--no-attention",), None)}),
    # fixed size: one phase per batch of 16, so the growth is over after 8 steps (128 images)
    "progan": Spec(tiny=("--final-size", "16", "--batch-size", "8", "--log-every", "1", "--nz", "8",
                         "--fmap-base", "64", "--fmap-max", "8", "--images-per-phase", "64"),
                   variants={"fixed-size": (("--images-per-phase", "16"), None)}, nets=("G_ema",)),
    "cyclegan": Spec(dataset_size=1000, tiny=("--image-size", "32", "--ngf", "8", "--ndf", "8", "--n-blocks", "1",
                                              "--log-every", "1"),
                     variants={"no-cycle": (("--no-cycle",), None)}, nets=("G_AB", "G_BA")),
}
TINY_SIZE = {"cyclegan": 32}  # the others: 16 px (progan: --final-size 16)


# The laptop tier: each script's own laptop configuration, `--preset laptop` (PRESETS next to its
# parser; the runs are given its flags, so that each JSON records them; seqgan.py's takes
# --oracle FILE besides): only the script's own flags (image size,
# channels, widths, batch size, epochs, dataset size); the losses, optimiser settings and update
# schedule are the script's defaults. Each run fits an hour on one thread of a 2-core CPU (two
# runs at a time). The paper's comparison runs use the same configuration plus their own flag
# (variants above); relativistic_gan's run on 2,000 images for LAPTOP_VARIANT_IMAGES images.
LAPTOP_VARIANT_IMAGES = {"relativistic_gan": 300_000}
LAPTOP_TARGETS = {"classes": NUM_CLASSES, "confident": 0.65, "fd_position": 0.05, "code_accuracy": 0.7}
PAPER_TARGETS = {"classes": NUM_CLASSES, "confident": 0.7, "fd_position": WIDE_MARGIN, "code_accuracy": 0.9}
LAPTOP_SEEDS = 3  # for every run that a comparison or a curve claim rests on; the others: seed 0
CPU_TIERS = ("laptop", "mnist")  # the scripts' laptop sizes: one thread a run, two at a time, resumable


def laptop_preset(script: str) -> list:
    """The script's laptop configuration as flags (its PRESETS["laptop"])."""
    return shlex.split(importlib.import_module(script).PRESETS["laptop"])


def _flag(flags: list, name: str, default=None):
    return flags[flags.index(name) + 1] if name in flags else default


def with_flags(flags: list, values: dict) -> tuple:
    """flags with each --flag of `values` set to its value (replaced where given, else added)."""
    flags = list(flags)
    for name, value in values.items():
        if name in flags:
            flags[flags.index(name) + 1] = str(value)
        else:
            flags += [name, str(value)]
    return tuple(flags)


def laptop_images(script: str) -> int:
    """Real images shown to D by the laptop configuration: epochs x dataset size."""
    flags = laptop_preset(script)
    n = int(_flag(flags, "--dataset-size", SPECS[script].dataset_size))
    if script == "cyclegan":
        return n * (int(_flag(flags, "--n-epochs")) + int(_flag(flags, "--n-epochs-decay")))
    return n * int(_flag(flags, "--epochs"))


def laptop_seeds(script: str, run: str) -> range:
    """Seeds 0-2 for a run that a paper comparison or a curve claim rests on, else seed 0 alone."""
    compared = {r for claim in COMPARISONS.get(script, []) for r in claim[1:3]}
    if script in CURVE_CLAIMS:
        compared.add("main")
    return range(LAPTOP_SEEDS if run in compared else 1)


def laptop_table() -> str:
    """The laptop tier's configurations as a Markdown table (the README's)."""
    rows = ["| script | `--preset laptop` | comparison runs (seeds 0-2) |", "|---|---|---|"]
    for s in SCRIPTS:
        flags = " ".join(laptop_preset(s)) + (" --oracle FILE" if s == "seqgan" else "")
        if s == "seqgan":
            comp = "MLE only (`--mle-only`)"
        else:
            n = LAPTOP_VARIANT_IMAGES.get(s)
            comp = "; ".join(f"{name}: `{' '.join(f)}`" + (f" on {size:,} images ({n:,} shown to D)" if size else "")
                             for name, (f, size) in SPECS[s].variants.items()) or "-"
        rows.append(f"| {s}.py | `{flags}` | {comp} |")
    return "\n".join(rows)


# The MNIST tier: the eight image scripts but cyclegan.py (MNIST has no two domains) on MNIST's
# digits. A run's flags: the script's `--preset laptop`, then the overrides below (epochs and
# dataset size alone, so that a run takes at most MNIST_MINUTES of one core by MNIST_RATES; and
# infogan.py's networks, the paper's), then `--dataset mnist --data-root DIR`. The losses,
# optimiser settings and update schedules stay the scripts' defaults, as in the laptop tier.
MNIST_SCRIPTS = ("dcgan", "wgan", "relativistic_gan", "infogan", "began", "vaegan", "sagan", "progan")
MNIST_OVERRIDES = {
    "dcgan": {"--epochs": 8},                              # --preset laptop: 12 epochs
    "wgan": {"--epochs": 15},                              # 20
    "relativistic_gan": {"--epochs": 10},                  # 25
    "infogan": {"--ngf": 64, "--ndf": 64, "--fc-units": 1024,  # the paper's MNIST networks (Table 1),
                "--epochs": 5},                            # not the preset's half width; 30 epochs
    "began": {},                                           # 10 epochs of 12,000
    "vaegan": {},                                          # 2 epochs of 40,000
    "sagan": {"--dataset-size": 50000, "--epochs": 3},     # 6 epochs of 60,000
    "progan": {"--epochs": 4},                             # 9 epochs of 30,000
}
# The tier's comparison runs (of SPECS' variants): RaSGAN against SGAN on 2,000 digits, each shown
# MNIST_VARIANT_IMAGES digits; the VAE; attention off; fixed size.
MNIST_VARIANTS = {"relativistic_gan": ("small-sgan", "small-rasgan"), "vaegan": ("plain-vae",),
                  "sagan": ("no-attention",), "progan": ("fixed-size",)}
MNIST_VARIANT_IMAGES = {"relativistic_gan": 400_000}
# Images shown to D per second of one core at these sizes: the laptop tier's runs on the shapes
# (images_shown_to_D / train_cpu_s in quality-NAME-laptop.json: the same networks at the same image
# size, two runs at a time), where they recorded CPU time; dcgan and wgan, which recorded wall time
# alone: speed.py's one-thread rate at the laptop configuration (682 and 1,030) less a fifth, about
# what the per-epoch grids and checkpoints cost the others; infogan at the paper's width: its
# laptop rate (670) times the paper networks' cost relative to the preset's (0.33, measured as CPU
# time of the training step on one thread).
MNIST_RATES = {("dcgan", "main"): 545, ("wgan", "main"): 825, ("relativistic_gan", "main"): 497,
               ("relativistic_gan", "small-sgan"): 272, ("relativistic_gan", "small-rasgan"): 515,
               ("infogan", "main"): 220, ("began", "main"): 92, ("vaegan", "main"): 61,
               ("vaegan", "plain-vae"): 264, ("sagan", "main"): 117, ("sagan", "no-attention"): 151,
               ("progan", "main"): 100, ("progan", "fixed-size"): 84}
MNIST_MINUTES = 30   # the most one run of the tier may take on one core
MNIST_TARGETS = {"classes": 10, "confident": 0.7, "fd_position": 0.05, "code_accuracy": 0.95}
MNIST_TINY_DIGITS = 256  # --tier mnist --tiny: runs on the first 256 training digits
DATA_ROOT = ROOT.parent / "shared" / "data"  # --data-root's default: the folder holding MNIST/raw/


def mnist_config(script: str) -> list:
    """A script's MNIST configuration as flags (its main run, without --data-root)."""
    return list(with_flags(laptop_preset(script), {**MNIST_OVERRIDES[script], "--dataset": "mnist"}))


def mnist_images(script: str, run: str = "main") -> int:
    """Real images shown to D by a run of the MNIST tier."""
    if run != "main" and script in MNIST_VARIANT_IMAGES:
        return MNIST_VARIANT_IMAGES[script]
    flags = mnist_config(script)
    return int(_flag(flags, "--dataset-size", MNIST_TRAIN)) * int(_flag(flags, "--epochs"))


def mnist_minutes(script: str, run: str = "main") -> float:
    """A run's estimated minutes on one core (MNIST_RATES)."""
    return mnist_images(script, run) / MNIST_RATES[(script, run)] / 60


def tier_variants(script: str, tier: str) -> dict:
    """The comparison runs of a script in a tier: name -> (flags, dataset size)."""
    variants = SPECS[script].variants
    return {k: v for k, v in variants.items() if k in MNIST_VARIANTS.get(script, ())} if tier == "mnist" else variants


def mnist_flags(script: str, run: str = "main", size: int | None = None, budget: int | None = None,
                tiny: bool = False) -> tuple:
    """(flags without --data-root, images shown to D) of a run of the MNIST tier: its
    configuration, or with `budget` that many images (epochs of its dataset size); a comparison
    run on `size` digits. tiny: the tiny networks of the CPU smoke path on MNIST_TINY_DIGITS
    digits (one epoch, or `budget` images)."""
    base = [*SPECS[script].tiny, "--channels", "1", "--dataset", "mnist"] if tiny else mnist_config(script)
    n = size or (MNIST_TINY_DIGITS if tiny else int(_flag(base, "--dataset-size", MNIST_TRAIN)))
    images = budget or (n if tiny else mnist_images(script, run))
    n = min(n, images)
    epochs = max(1, round(images / n))
    return with_flags(base, {"--dataset-size": n, "--epochs": epochs}), n * epochs


def mnist_table() -> str:
    """The MNIST tier's configurations as a Markdown table (benchmarks/README.md's)."""
    rows = ["| script | `--preset laptop` overridden by | images shown to D | one core (estimated) | "
            "runs over seeds 0-2 |", "|---|---|---|---|---|"]
    for s in MNIST_SCRIPTS:
        over = " ".join(f"{k} {v}" for k, v in MNIST_OVERRIDES[s].items())
        comp = []
        for name, (f, size) in tier_variants(s, "mnist").items():
            where = f" on {size:,} digits" if size else ""
            comp.append(f"{name}: `{' '.join(f)}`{where} ({mnist_images(s, name):,} shown to D, "
                        f"{mnist_minutes(s, name):.0f} min)")
        if s in CURVE_CLAIMS:
            comp.insert(0, "main (the curve of `" + SPECS[s].curve + "`)")
        rows.append(f"| {s}.py | {f'`{over}`' if over else '-'} | {mnist_images(s):,} | "
                    f"{mnist_minutes(s):.0f} min | {'; '.join(comp) or '-'} |")
    return "\n".join(rows)


def script_channels(script: str, tier: str) -> int:
    """The channels a script's runs train on (infogan.py's default is 1, the others' 3)."""
    flags = laptop_preset(script) if tier in CPU_TIERS else SPECS[script].flags
    if "--channels" in flags:
        return int(flags[flags.index("--channels") + 1])
    return 1 if script == "infogan" else 3


def budget_flags(script: str, budget: int | None, dataset_size: int | None, tiny: bool,
                 extra: tuple = ()) -> tuple:
    """(flags, images shown to D) for a budget in images: --dataset-size N --epochs E, E x N."""
    spec = SPECS[script]
    n = dataset_size or spec.dataset_size
    if budget is None:
        budget = spec.quick_epochs * spec.dataset_size
    n = min(n, budget)
    epochs = max(1, round(budget / n))
    if script == "cyclegan":  # the whole lr schedule within the budget: 3 + 2 of 5 epochs (README)
        decay = epochs * 2 // 5
        flags = ("--dataset-size", str(n), "--n-epochs", str(epochs - decay), "--n-epochs-decay", str(decay))
    else:
        flags = ("--dataset-size", str(n), "--epochs", str(epochs))
    return flags + spec.flags + tuple(extra) + (spec.tiny if tiny else ()), epochs * n


@torch.no_grad()
def load_models(script: str, run_dir, device, untrained: bool = False) -> tuple:
    """(module, args, {name: network in eval mode}, checkpoint state) from a run's checkpoint;
    untrained: the same networks at initialisation (the script's seed and build(), no weights)."""
    module = importlib.import_module(script)
    ckpt = common.read_checkpoint(run_dir, script, map_location=device)
    args = argparse.Namespace(**ckpt["args"])
    common.seed_everything(args.seed)  # what the script's setup() does before build()
    built = module.build(args, args.channels, device)
    names = {"vaegan": ("E", "Dec"), "cyclegan": ("G_AB", "G_BA", "D_A", "D_B")}.get(script, ("G", "D"))
    nets = dict(zip(names, built))
    if script == "progan":
        nets["G_ema"] = copy.deepcopy(nets["G"])
    for name in SPECS[script].nets:
        if not untrained:
            nets[name].load_state_dict(ckpt["modules"][name])
        nets[name].eval()
    return module, args, nets, ckpt["state"]


def sampler(script: str, run_dir, device, untrained: bool = False):
    """n -> n samples in [-1, 1] at the script's image size, as --generate draws them."""
    module, args, nets, state = load_models(script, run_dir, device, untrained)
    nz = args.nz if hasattr(args, "nz") else None
    if script == "dcgan":
        return lambda n: nets["G"](module.sample_z(n, nz, device, args.z_dist))
    if script in ("wgan", "relativistic_gan"):
        return lambda n: nets["G"](torch.randn(n, nz, device=device))
    if script == "infogan":
        return lambda n: nets["G"](module.sample_latent(n, nz, args.n_cat, args.cat_dim, args.n_cont, device)[0])
    if script == "began":
        return lambda n: nets["G"](module.sample_z(n, nz, device))
    if script == "vaegan":
        return lambda n: nets["Dec"](torch.randn(n, nz, device=device))
    if script == "sagan":
        K = args.num_classes or 0
        return lambda n: nets["G"](torch.randn(n, nz, device=device),
                                   torch.randint(K, (n,), device=device) if K else None)
    if script == "progan":  # the averaged G at the resolution reached (untrained: the final one)
        depth, alpha = (module.depth_of(args.image_size), 1.0) if untrained else (state["depth"], state["alpha"])
        return lambda n: F.interpolate(nets["G_ema"](torch.randn(n, nz, device=device), depth, alpha),
                                       size=args.image_size, mode="nearest").clamp(-1, 1)
    raise ValueError(f"{script} has no sampler")


@torch.no_grad()
def draw(fn, n: int, batch: int = 500) -> torch.Tensor:
    return torch.cat([to_uint8(fn(min(batch, n - i))).cpu() for i in range(0, n, batch)])


# cyclegan's reference outlines: a stream used by no training set and no test split, so that
# G_AB(a) is never compared with its own paired targets (streams 0 and 2 train, 1 is the test)
CYCLEGAN_REFERENCE_STREAM = 3


def real_sets(script: str, args, n: int, device, digits=None) -> tuple:
    """(reference, other), at the run's size and channels: the floor is FD(reference, other).
    Image scripts: n real images of the test stream (1) and n of the training stream (0).
    CycleGAN (domain B, outlines): n outlines of an independent stream (3), the reference for
    G_AB(a), and the n paired targets of the test split (stream 1, what G_AB(a) should be), so
    the floor is what a perfect translator scores. digits (the MNIST tier: the folder holding
    MNIST): the first n test digits and the next n (n at most half the test set)."""
    if digits is not None:
        x, _ = mnist_digits(digits, "test", args.image_size)
        return x[:n], x[n:2 * n]
    if script == "cyclegan":
        f1 = data.shape_factors(n, stream=CYCLEGAN_REFERENCE_STREAM)
        f2 = data.shape_factors(n, stream=1)
        style = "outline"
    else:
        f1, f2 = data.shape_factors(n, stream=1), data.shape_factors(n, stream=0)
        style = "filled"
    return tuple(data.render_shapes(f, args.image_size, args.channels, style, device).cpu() for f in (f1, f2))


# ----------------------------------------------------------------------------------------------
# Training (in this process, or in spawned workers that share the GPU)
# ----------------------------------------------------------------------------------------------
def log_path(job: dict) -> Path:
    run_dir = Path(job["dir"])
    return run_dir.parent / f"{run_dir.name}.log"


def error_sentence(e: BaseException) -> str:
    """One line for a failed run: the sentence of a UserError / TrainingError, else the
    exception's type and message (the traceback is in the run's log)."""
    lines = str(e).strip().splitlines()
    last = lines[-1] if lines else ""
    if last and isinstance(e, (common.UserError, common.TrainingError)):
        return last
    return f"{type(e).__name__}: {last}" if last else type(e).__name__


def train_job(job: dict) -> dict:
    """Train one run through the script's own main(); with job['segments'], in segments of
    epochs (resumed exactly), saving n samples after each: the checkpoints of a curve, and
    the step each ended at (job['segment_steps']). A failure (other than Ctrl-C or SIGTERM) is
    returned as job['error'], its traceback written to the run's log.

    One process trains a run: this one takes the run folder's lock (common.lock_folder) before
    it looks into the folder, and holds it until the run is trained and sampled. A folder that
    another process holds (a worker of an earlier command, still stopping) is left as it is: the
    run is returned with that error.

    With job['resume'] (a persistent --work folder) a run is never trained twice: a finished
    run (its progress.json says done) is returned as it was, a stopped one resumes from its
    last checkpoint (the script's --resume; the segments already sampled are kept), and a run
    stopped before its first checkpoint starts again. wall_s then adds up the pieces: each
    stopped piece counts until its last checkpoint (what came after it is trained again).

    cpu_s is the CPU time of the training process (time.process_time, all its threads): with one
    thread per run it is about what the run takes alone on one core, whatever else the machine
    was doing, where wall_s grows with the load. A stopped piece's CPU time is its wall time
    until the checkpoint times the CPU share last seen by a heartbeat (every BEAT_S)."""
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    run_dir = Path(job["dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        common.lock_folder(run_dir)
    except common.UserError as e:
        return {**job, "error": error_sentence(e), "wall_s": None, "log": str(log_path(job))}
    try:
        return _train_locked(job, run_dir)
    finally:
        common.unlock_folder(run_dir)


BEAT_S = 15         # how often a run in training records its progress (wall and CPU time)
PARENT_CHECK_S = 2  # how often a worker checks that the command that started it still runs


def _train_locked(job: dict, run_dir: Path) -> dict:
    """train_job(), once the run folder's lock is held."""
    module = importlib.import_module(job["script"])
    log = log_path(job)
    progress_file = run_dir.parent / f"{run_dir.name}.progress.json"
    progress = {"wall_s": 0.0, "cpu_s": 0.0, "segment_steps": [], "done": False, "piece_started": None,
                "argv": job["argv"]}
    if job.get("resume") and progress_file.exists():
        progress = {**progress, **json.loads(progress_file.read_text())}
        if progress.get("argv", job["argv"]) != job["argv"]:  # (a configuration changed since: never mixed)
            return {**job, "error": f"{run_dir} was trained with other flags ({' '.join(progress['argv'])}); "
                                    f"move it and its .progress.json away to train this run again",
                    "wall_s": None, "log": str(log)}
        ckpt = run_dir / "checkpoint.pt"
        if progress["done"]:
            out = {**job, "wall_s": round(progress["wall_s"], 1), "cpu_s": round(progress["cpu_s"], 1),
                   "log": str(log), "reused": True}
            return {**out, "segment_steps": progress["segment_steps"]} if job.get("segments") else out
        if progress["piece_started"] and ckpt.exists():  # a stopped piece: counted until its checkpoint
            wall = max(0.0, ckpt.stat().st_mtime - progress["piece_started"])
            beat_t, beat_cpu = progress.get("beat") or (None, None)
            share = beat_cpu / (beat_t - progress["piece_started"]) if beat_t and beat_t > progress["piece_started"] \
                else 1.0
            progress["wall_s"] += wall
            progress["cpu_s"] += wall * min(share, job.get("threads") or os.cpu_count() or 1)
    if not (job.get("resume") and (run_dir / "checkpoint.pt").exists()):
        # (a run stopped before its first checkpoint, or not resumed: it starts again in an empty
        # folder; the lock file stays: the lock held is on it)
        for p in run_dir.iterdir():
            if p.name != common.LOCK_NAME:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    lock = threading.Lock()

    def save_progress():
        if job.get("resume"):
            with lock:
                text = json.dumps(progress)
                common.replace_atomically(progress_file, lambda tmp: Path(tmp).write_text(text))

    stop_beat = threading.Event()

    def heartbeat():
        last_beat = time.monotonic()
        while not stop_beat.wait(PARENT_CHECK_S):
            if _orphaned() and not _kernel_stops_orphans:
                # the command died without stopping this worker: stop the run as SIGTERM does (the
                # step, a checkpoint, Interrupted). Where the kernel sent SIGTERM already, a second
                # one would abort the run before its checkpoint.
                os.kill(os.getpid(), signal.SIGTERM)
                return
            if progress["piece_started"] is not None and time.monotonic() - last_beat >= BEAT_S:
                last_beat = time.monotonic()
                progress["beat"] = (time.time(), time.process_time() - progress["piece_cpu0"])
                save_progress()

    steps, error = progress["segment_steps"], None
    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            segments = job.get("segments") or [None]
            for k, epochs in enumerate(segments):
                if k < len(steps):
                    continue  # sampled before the run was stopped
                progress["piece_cpu0"], progress["beat"] = time.process_time(), None
                progress["piece_started"] = time.time()
                save_progress()
                t0 = time.perf_counter()
                if not (run_dir / "checkpoint.pt").exists():
                    argv = [*job["argv"], "--out", str(run_dir)] + ([] if epochs is None else ["--epochs", str(epochs)])
                else:
                    argv = ["--resume", str(run_dir), "--device", job["device"]] + (
                        [] if epochs is None else ["--epochs", str(epochs)])
                module.main(argv)
                if epochs is not None:
                    device = common.select_device(job["device"])
                    step = int(common.read_checkpoint(run_dir, job["script"])["step"])
                    images = draw(sampler(job["script"], run_dir, device), job["curve_n"])
                    common.replace_atomically(run_dir / f"curve-{k:02d}.pt", partial(torch.save, images))
                    steps.append(step)  # (after its samples: a segment in steps has them)
                progress["wall_s"] += time.perf_counter() - t0
                progress["cpu_s"] += time.process_time() - progress["piece_cpu0"]
                progress["piece_started"] = None
                save_progress()
            progress["done"] = True
            save_progress()
        except common.Interrupted:
            raise
        except SystemExit as e:  # the script's argparse refused a flag: its message is the log's last line
            f.flush()
            said = [line for line in log.read_text().splitlines() if line.strip()]
            error = f"exit status {e.code}: {said[-1] if said else 'no message'}"
        except Exception as e:
            traceback.print_exc()
            error = error_sentence(e)
        finally:
            stop_beat.set()
    out = {**job, "wall_s": round(progress["wall_s"], 1), "cpu_s": round(progress["cpu_s"], 1), "log": str(log)}
    if job.get("segments"):
        out["segment_steps"] = steps
    return {**out, "error": error} if error else out


# Worker processes: each trains one run and dies with the command that started it.
STOP_GRACE_S = 120  # how long a stopped worker may take to finish its step and save a checkpoint
_parent = None      # in a worker: the PID of the command that started it
_kernel_stops_orphans = False  # in a worker: the kernel sends it SIGTERM when that command dies


def _orphaned() -> bool:
    """In a worker: whether the command that started it has died (its parent is another process)."""
    return _parent is not None and os.getppid() != _parent


def _die_with_parent() -> bool:
    """Linux: ask the kernel to send this process SIGTERM when its parent dies (PR_SET_PDEATHSIG).
    Whether it was set."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    PR_SET_PDEATHSIG = 1
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # (a C library without prctl)
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0


def _worker(job: dict, conn, parent: int) -> None:
    """A worker process: trains one run, sends back train_job's result, exits. In its own process
    group, so that a Ctrl-C at the terminal reaches the command alone, which stops each worker
    once (a second signal would abort a run before its checkpoint). When the command dies, the
    kernel sends it SIGTERM (Linux), or else its heartbeat (train_job) sees the command gone."""
    global _parent, _kernel_stops_orphans
    if os.name == "posix":
        os.setpgrp()
    _parent, _kernel_stops_orphans = parent, _die_with_parent()
    if _orphaned():  # the command died before the kernel was asked
        return
    try:
        result = train_job(job)
    except BaseException as e:  # stopped (common.Interrupted: its checkpoint is saved), or a second stop
        said = str(e) if isinstance(e, common.Interrupted) else error_sentence(e)
        result = {**job, "error": said, "wall_s": None, "log": str(log_path(job))}
        with contextlib.suppress(OSError), open(log_path(job), "a") as f:  # (the command may be gone: say
            f.write(f"\nthe worker ended: {said}\n")                        # it in the run's log too)
    with contextlib.suppress(OSError):  # (the command may be gone)
        conn.send(result)


def train_in_workers(jobs: list, n: int, finished) -> None:
    """Train the jobs n at a time, each in a worker process of its own (spawned: CUDA cannot be
    forked), and call finished(result) here as each ends. However this ends (done, an error,
    Ctrl-C, SIGTERM: see sigterm_stops), no worker is left running: stop_workers()."""
    ctx = mp.get_context("spawn")
    waiting, running = list(jobs), {}  # running: the end of a worker's pipe -> (worker, job)
    try:
        while waiting or running:
            while waiting and len(running) < n:
                job = waiting.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                worker = ctx.Process(target=_worker, args=(job, send, os.getpid()))
                worker.start()
                send.close()  # (the worker holds the other copy: its exit ends the pipe)
                running[receive] = (worker, job)
            for receive in mp.connection.wait(list(running)):
                worker, job = running.pop(receive)
                try:
                    result = receive.recv()
                except EOFError:  # the worker died without a result (killed, out of memory)
                    worker.join()
                    code = worker.exitcode
                    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
                    result = {**job, "error": f"its worker process ended without a result ({how})",
                              "wall_s": None, "log": str(log_path(job))}
                worker.join()
                receive.close()
                finished(result)
    finally:
        stop_workers([worker for worker, _ in running.values()])


def stop_workers(workers: list) -> None:
    """SIGTERM to each worker still running: it finishes its step, saves a checkpoint and exits.
    Wait for them (STOP_GRACE_S at most, or until a second Ctrl-C or SIGTERM), then kill the rest."""
    workers = [w for w in workers if w.is_alive()]
    if not workers:
        return
    print(f"stopping {len(workers)} run(s) in training: each saves a checkpoint", file=sys.stderr, flush=True)
    for w in workers:
        w.terminate()  # (SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    with contextlib.suppress(KeyboardInterrupt):
        for w in workers:
            w.join(max(0.0, deadline - time.monotonic()))
    for w in workers:
        if w.is_alive():
            w.kill()
            w.join()


class Stopped(KeyboardInterrupt):
    """SIGTERM to the command. A KeyboardInterrupt, like Ctrl-C's: no `except Exception` takes it."""


@contextlib.contextmanager
def sigterm_stops():
    """Within it, SIGTERM raises Stopped in this process (the main thread's), as Ctrl-C raises
    KeyboardInterrupt: the command stops its workers and ends (the scripts' loops still stop
    after their step on SIGTERM: they replace this handler while they run)."""
    def stop(signum, frame):
        raise Stopped

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def plan(script: str, a, work: Path) -> list:
    """The training runs of one script: per seed, its main run and the paper's comparison (the
    laptop tier: `--preset laptop` and seeds by laptop_seeds, unless --seeds says)."""
    spec, jobs = SPECS.get(script), []
    laptop = a.tier == "laptop"

    def seeds(run):
        return range(a.seeds) if a.seeds else laptop_seeds(script, run) if a.tier in CPU_TIERS else range(1)

    def add(run, s, argv, images):
        jobs.append({"script": script, "run": run, "seed": s, "argv": ["--seed", str(s), "--device", a.device, *argv],
                     "device": a.device, "images": images, "dir": str(work / script / f"{run}-seed{s}"),
                     "threads": a.threads, "resume": a.resume_runs})

    if script == "seqgan":
        for name, extra in (("seqgan", []), ("mle", ["--mle-only"])):
            for s in seeds(name):
                add(name, s, [*seqgan_flags(a), *extra], None)
        return sorted(jobs, key=lambda j: j["seed"])
    for name, (extra, size) in {"main": ((), None), **tier_variants(script, a.tier)}.items():
        if a.tier == "mnist":
            flags, images = mnist_flags(script, name, size, a.budget, a.tiny)
            flags += ("--data-root", a.data_root)
        elif laptop and a.budget is None:
            images = LAPTOP_VARIANT_IMAGES.get(script, laptop_images(script)) if size else laptop_images(script)
            flags = with_flags(laptop_preset(script), {"--dataset-size": size, "--epochs": round(images / size)}
                               if size else {})
        else:
            base = tuple(laptop_preset(script)) if laptop else ()
            flags, images = budget_flags(script, a.budget, size, a.tiny, base)
        for s in seeds(name):
            add(name, s, [*flags, *extra], images)
            if spec.curve and name == "main":
                argv = jobs[-1]["argv"]
                epochs = int(_flag(argv, "--epochs", None) or _flag(laptop_preset(script), "--epochs"))
                jobs[-1]["segments"] = list(range(1, epochs + 1)) if epochs > 1 else [1]
                jobs[-1]["curve_n"] = a.n_eval
    return sorted(jobs, key=lambda j: j["seed"])  # (seed 0 of every run first: the gallery, then the spreads)


def seqgan_flags(a) -> list:
    if a.tiny:
        flags = ["--vocab-size", "12", "--seq-len", "6", "--emb-dim", "8", "--hidden-dim", "8", "--d-emb-dim", "8",
                 "--d-filter-scale", "0.02", "--batch-size", "16", "--num-samples", "64", "--eval-samples", "64",
                 "--rollout-num", "4", "--k-epochs", "1", "--d-steps", "2", "--eval-every", "2",
                 "--pretrain-epochs", "3", "--d-pretrain-rounds", "2", "--epochs", "3"]
    elif a.tier == "laptop":
        flags = list(with_flags(laptop_preset("seqgan"), {} if a.budget is None else {"--epochs": a.budget}))
    else:
        flags = [] if a.budget is None else ["--epochs", str(a.budget)]
    return flags + (["--oracle", str(a.oracle)] if a.oracle and not a.tiny else [])


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------
def read_rows(run_dir) -> list:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _column(rows, key) -> list:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


def score_run(script: str, job: dict, a, nets_cache: dict, device) -> dict:
    """Every measure of one trained run (and, for the main run, the untrained anchor)."""
    run_dir = Path(job["dir"])
    if script == "seqgan":
        rows = read_rows(run_dir)
        nll = [(int(r["step"]), float(r["nll_oracle"])) for r in rows if r.get("nll_oracle")]
        return {"nll_oracle_final": nll[-1][1], "nll_oracle_untrained": nll[0][1],
                "nll_oracle_curve": nll, "nll_test_final": _column(rows, "nll_test")[-1]}
    module, args, nets, _ = load_models(script, run_dir, device)
    n, space = a.n_eval, space_of(a.tier)
    digits = a.data_root if a.tier == "mnist" else None
    real_ref, real_other = real_sets(script, args, n, device, digits)
    clf, _, cfg = nets_cache[args.channels]
    real = embed(clf, real_ref, cfg, device)
    out = {}
    if script == "cyclegan":
        out.update(score_cyclegan(module, args, nets, clf, cfg, n, device, real))
    else:
        images = draw(sampler(script, run_dir, device), n)
        out.update(image_scores(embed(clf, images, cfg, device), real, space=space))
        out["_grid"] = images[:64]
    if job["run"] == "main":  # the ceiling on the same scale, for this seed: G at initialisation
        if script == "cyclegan":
            gen_untrained = translate(load_models(script, run_dir, device, untrained=True)[2]["G_AB"], args, n,
                                      device)[0]
        else:
            gen_untrained = draw(sampler(script, run_dir, device, untrained=True), n)
        u = embed(clf, gen_untrained, cfg, device)
        out["fd_ceiling"] = frechet_distance(u["features"], real["features"])
        out["confident_rate_untrained"] = coverage(u["probs"])["confident_rate"]
    if script == "infogan":
        out.update(score_infogan_digits(module, args, nets, clf, cfg, n, device, digits, run_dir) if digits
                   else score_infogan(module, args, nets, clf, cfg, n, device))
    if script == "vaegan":  # held-out reconstructions: the reference set (never trained on)
        x = real_ref.to(device) if digits else common.shapes_data(n, args.image_size, args.channels, device,
                                                                  stream=1).images
        rec = module.reconstruct(nets["E"], nets["Dec"], x.float().div(127.5).sub(1))
        out["heldout_recon_mse"] = float((rec - x.float().div(127.5).sub(1)).pow(2).mean())
        out[f"fd_{space}_reconstructions"] = frechet_distance(
            embed(clf, to_uint8(rec).cpu(), cfg, device)["features"], real["features"])
    if SPECS[script].curve and job.get("segments"):
        out.update(score_curve(script, job, clf, cfg, device, real, space))
    if script == "began":
        k = _column(read_rows(run_dir), "k_t")
        out.update(k_t_min=min(k), k_t_max=max(k), k_t_final=k[-1])
    return out


def score_curve(script, job, clf, cfg, device, real, space: str = "shapes") -> dict:
    """FD-shapes after each segment against the logged quantity there (the mean of the
    segment's last quarter of metrics rows): their rank correlation. A row belongs to the
    segment by its step (after the previous checkpoint's step, up to this one's), not by its
    epoch column: WGAN's critic draws several batches a step, so a segment's last row can
    carry an epoch just past the segment's end (e.g. 1.067 for the end of epoch 1)."""
    key, rows = SPECS[script].curve, read_rows(job["dir"])
    row_steps = [int(r["step"]) for r in rows]
    fds, logged = [], []
    for k, end in enumerate(job["segment_steps"]):
        images = torch.load(Path(job["dir"]) / f"curve-{k:02d}.pt", weights_only=True)
        fds.append(frechet_distance(embed(clf, images, cfg, device)["features"], real["features"]))
        start = job["segment_steps"][k - 1] if k else 0
        seg = [float(r[key]) for r, step in zip(rows, row_steps) if start < step <= end and r.get(key)]
        seg = seg[len(seg) - max(1, len(seg) // 4):]
        logged.append(float(np.mean(seg)) if seg else float("nan"))
    return {f"{key}_at_checkpoints": logged, f"fd_{space}_at_checkpoints": fds,
            f"spearman_{key}_vs_fd": spearman(logged, fds)}


@torch.no_grad()
def translate(G, args, n, device, b_to_a=False) -> tuple:
    test_A, test_B = common.load_unpaired("shapes", image_size=args.image_size, channels=args.channels,
                                          device=device, size=n, split="test")
    x = (test_B if b_to_a else test_A).images
    out = torch.cat([to_uint8(G(c.float().div(127.5).sub(1))).cpu() for c in x.split(100)])
    return out, test_A, test_B


def score_cyclegan(module, args, nets, clf, cfg, n, device, real_B) -> dict:
    """real_B: the embedded reference outlines (real_sets: an independent stream, not the
    paired targets of the test split); the paired errors use the paired targets."""
    fake_B, test_A, test_B = translate(nets["G_AB"], args, n, device)
    fake_A = translate(nets["G_BA"], args, n, device, b_to_a=True)[0]
    labels = test_A.labels.cpu()
    gen = embed(clf, fake_B, cfg, device)
    err_AB, err_BA, err_id = module.paired_errors(nets["G_AB"], nets["G_BA"], test_A, test_B).tolist()
    pa = embed(clf, fake_A, cfg, device)["probs"]
    out = image_scores(gen, real_B)
    out.update(paired_err_AB=err_AB, paired_err_BA=err_BA, paired_err_identity=err_id,
               class_preserved_AB=float((gen["probs"].argmax(1) == labels).float().mean()),
               class_preserved_BA=float((pa.argmax(1) == labels).float().mean()))
    grid = torch.stack([test_A.images[:32].cpu(), fake_B[:32]], 1).flatten(0, 1)  # rows: a | G_AB(a)
    out["_grid"] = grid
    return out


@torch.no_grad()
def score_infogan(module, args, nets, clf, cfg, n, device) -> dict:
    """The categorical code: Q's code on real held-out shapes vs their class (the paper's
    MNIST measure) and the classifier's class of G's samples vs their code, each after the
    best matching; the continuous codes: how they track the classifier's size, brightness
    and rotation on G's samples."""
    out = {}
    if not args.n_cat:
        return out
    real = common.shapes_data(n, args.image_size, args.channels, device, stream=1)
    q = torch.cat([nets["D"](x)[1]["cat"][:, 0].argmax(1) for x, _ in real.in_order(500)]).cpu()
    out["code_acc_q_real"] = code_accuracy(q, real.labels.cpu(), args.cat_dim)
    g_in, codes = module.sample_latent(n, args.nz, args.n_cat, args.cat_dim, args.n_cont, device)
    images = torch.cat([to_uint8(nets["G"](c)).cpu() for c in g_in.split(500)])
    e = embed(clf, images, cfg, device)
    pred = e["probs"].argmax(1)
    out["code_acc_generated"] = code_accuracy(codes["cat"][:, 0].cpu(), pred, args.cat_dim)
    order = torch.tensor(data.SYMMETRY)[pred]
    angle = torch.atan2(e["factors"][:, 2], e["factors"][:, 1])
    for j in range(args.n_cont):
        c = codes["cont"][:, j].cpu()
        name = f"c{args.n_cat + j + 1}"
        out[f"{name}_corr_size"] = _pearson(c, e["factors"][:, 0])
        out[f"{name}_corr_brightness"] = _pearson(c, e["factors"][:, 3])
        out[f"{name}_corr_rotation"] = circular_linear(c[order > 0], angle[order > 0])
    return out


TRAVERSAL_STEPS = 10  # values of a continuous code per traversal when its correlations are measured


def digit_order(mapping: list) -> list:
    """Code values in the order of the digits they were matched to (then any code left over)."""
    matched = sorted((label, code) for code, label in enumerate(mapping) if label >= 0)
    return [code for _, code in matched] + [code for code, label in enumerate(mapping) if label < 0]


@torch.no_grad()
def code_correlations(G, module, args, n: int, device) -> dict:
    """How each continuous code c_i of InfoGAN's G changes its digits: n // TRAVERSAL_STEPS
    latents drawn as in training (module.sample_latent), each with c_i set to TRAVERSAL_STEPS
    values from -1 to 1 (its training range), everything else fixed within the group; the
    correlation of c_i with the slant, the ink and the stroke width of G's images within these
    groups: c<i>_corr_slant, c<i>_corr_ink, c<i>_corr_width (codes numbered as the paper's,
    the categorical ones first)."""
    out, steps, groups = {}, TRAVERSAL_STEPS, max(2, n // TRAVERSAL_STEPS)
    g_in, codes = module.sample_latent(groups, args.nz, args.n_cat, args.cat_dim, args.n_cont, device)
    z, values = g_in[:, :args.nz], torch.linspace(-1, 1, steps, device=device)
    for j in range(args.n_cont):
        cont = codes["cont"].repeat_interleave(steps, 0)
        cont[:, j] = values.repeat(groups)
        latent = module.generator_input(z.repeat_interleave(steps, 0),
                                        {"cat": codes["cat"].repeat_interleave(steps, 0), "cont": cont}, args.cat_dim)
        images = torch.cat([to_uint8(G(c)).cpu() for c in latent.split(500)])
        name = f"c{args.n_cat + j + 1}"
        for measure, fn in (("slant", slant), ("ink", ink_area), ("width", stroke_width)):
            out[f"{name}_corr_{measure}"] = within_group_correlation(cont[:, j].cpu(), fn(images), steps)
    return out


@torch.no_grad()
def score_infogan_digits(module, args, nets, clf, cfg, n, device, root, run_dir) -> dict:
    """InfoGAN on MNIST, the paper's measures (Sec. 6.1, Fig. 2):
    - the categorical code: Q's code (the argmax of its logits; D in eval mode) on all 10,000
      test digits against the digit, after the best one-to-one matching of code values to digits
      (best_matching): code_acc_q_real, code_error_q_test (the paper: about 5%), code_to_digit
      (the matching); code_acc_per_epoch: the same measure on each epoch's training batches, as
      the run logged it (infogan.py's code_acc);
    - code_acc_generated: the digit classifier's class of G's samples against their code;
    - each continuous code: its correlations with the digits' slant, ink and stroke width
      (code_correlations);
    - the Figure 2 grids (a: c1 along the rows, new z along the columns; c, d: c1 along the
      rows, the continuous code from -2 to 2 along the columns, z and the other code fixed),
      rows in the order of the digits matched to the code values: returned as _traversals."""
    out, dims = {}, (args.nz, args.n_cat, args.cat_dim, args.n_cont, device)
    order = list(range(args.cat_dim))
    if args.n_cat:
        x, labels = mnist_digits(root, "test", args.image_size)
        q = torch.cat([nets["D"](c.to(device).float().div(127.5).sub(1))[1]["cat"][:, 0].argmax(1).cpu()
                       for c in x.split(500)])
        mapping, matched = best_matching(confusion_matrix(q, labels, args.cat_dim))
        out["code_acc_q_real"] = matched / len(labels)
        out["code_error_q_test"] = 1 - out["code_acc_q_real"]
        out["code_to_digit"] = mapping
        out["code_acc_per_epoch"] = _column(read_rows(run_dir), "code_acc")
        order = digit_order(mapping)
        g_in, codes = module.sample_latent(n, *dims)
        images = torch.cat([to_uint8(nets["G"](c)).cpu() for c in g_in.split(500)])
        pred = embed(clf, images, cfg, device)["probs"].argmax(1)
        out["code_acc_generated"] = code_accuracy(codes["cat"][:, 0].cpu(), pred, args.cat_dim)
    out.update(code_correlations(nets["G"], module, args, n, device))
    grids = {}
    for sweep in ([None] if args.n_cat else []) + list(range(args.n_cont)):
        with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
            torch.manual_seed(0)  # the same z and codes in every grid
            images = to_uint8(nets["G"](module.grid_latent(*dims, sweep=sweep))).cpu()
        rows = images.view(-1, 10, *images.shape[1:])                   # (rows, 10 columns, C, S, S)
        grids["c1" if sweep is None else f"c{args.n_cat + sweep + 1}"] = \
            (rows[order] if args.n_cat else rows).flatten(0, 1)
    out["_traversals"] = grids
    return out


def summarise(values: list) -> dict:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "values": values}
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "min": float(np.min(v)), "max": float(np.max(v)), "n": len(v), "values": values}


def targets(script: str, runs: dict, anchors: dict, tier: str = "paper") -> dict:
    """The targets of the tier, each with its value and whether it was met (never tuned)."""
    t = {}
    m = runs.get("main", {}).get("metrics", {})
    goal = {"laptop": LAPTOP_TARGETS, "mnist": MNIST_TARGETS}.get(tier, PAPER_TARGETS)

    def mean(d, k):
        return d.get(k, {}).get("mean")

    if script != "seqgan":
        pos = mean(m, "fd_position")
        lowest = m.get("classes_covered", {}).get("min")
        name = "all ten classes covered" if goal["classes"] == NUM_CLASSES else \
            f"at least {goal['classes']} of {NUM_CLASSES} classes covered"
        t[name] = {"value": mean(m, "classes_covered"), "met": lowest is not None and lowest >= goal["classes"]}
        t[f"confident-sample rate >= {goal['confident']:.0%}"] = {
            "value": mean(m, "confident_rate"), "met": (mean(m, "confident_rate") or 0) >= goal["confident"]}
        t[f"fd_position <= {goal['fd_position']}"] = {"value": pos,
                                                      "met": pos is not None and pos <= goal["fd_position"]}
    if script == "infogan" and tier == "mnist":  # the paper's figure, as an error
        acc = mean(m, "code_acc_q_real")
        t[f"matched error <= {1 - goal['code_accuracy']:.0%} (Q's code on the test digits)"] = {
            "value": None if acc is None else 1 - acc, "met": (acc or 0) >= goal["code_accuracy"]}
    elif script == "infogan":
        t[f"code accuracy >= {goal['code_accuracy']:.0%} (Q on real shapes)"] = {
            "value": mean(m, "code_acc_q_real"), "met": (mean(m, "code_acc_q_real") or 0) >= goal["code_accuracy"]}
    if script == "cyclegan":
        for d in ("AB", "BA"):
            t[f"class preserved {d} >= 90%"] = {"value": mean(m, f"class_preserved_{d}"),
                                               "met": (mean(m, f"class_preserved_{d}") or 0) >= 0.9}
            e, ident = mean(m, f"paired_err_{d}"), mean(m, "paired_err_identity")
            t[f"paired error {d} well below identity (< half)"] = {
                "value": e, "met": e is not None and ident is not None and e < 0.5 * ident}
    if script == "seqgan":
        mle = runs["mle"]["metrics"]
        gap = mean(runs.get("comparison", {}).get("metrics", {}), "mle_minus_seqgan")
        if tier == "laptop":
            t["SeqGAN below MLE at the end (NLL_oracle)"] = {"value": gap, "met": gap is not None and gap > 0}
        else:
            t["MLE NLL_oracle about 9.0-9.1"] = {"value": mean(mle, "nll_oracle_final"),
                                                 "met": 8.95 <= (mean(mle, "nll_oracle_final") or 0) <= 9.15}
            t["SeqGAN at least 0.15 below MLE, 2+ seeds"] = {
                "value": gap, "met": gap is not None and gap >= 0.15 and len(mle["nll_oracle_final"]["values"]) >= 2}
    return t


# Each paper's own comparison: (what the paper claims, run A, run B, measure, A better when lower?)
# reported with its sign whether or not it agrees.
COMPARISONS = {
    "relativistic_gan": [("RaSGAN beats SGAN on 2,000 images (lower FD)", "small-rasgan", "small-sgan",
                          "fd_shapes", True),
                         ("RaLSGAN beats SGAN on 2,000 images (lower FD)", "small-ralsgan", "small-sgan",
                          "fd_shapes", True)],
    "sagan": [("self-attention lowers FD", "main", "no-attention", "fd_shapes", True)],
    "progan": [("growing beats training at full size from the start (lower FD)", "main", "fixed-size",
                "fd_shapes", True)],
    "vaegan": [("VAE-GAN samples beat the plain VAE's (lower FD)", "main", "plain-vae", "fd_shapes", True),
               ("VAE-GAN reconstructions beat the plain VAE's (lower FD)", "main", "plain-vae",
                "fd_shapes_reconstructions", True)],
    "cyclegan": [("the cycle loss preserves the class (A->B)", "main", "no-cycle", "class_preserved_AB", False),
                 ("the cycle loss lowers the paired error (A->B)", "main", "no-cycle", "paired_err_AB", True)],
    "seqgan": [("SeqGAN below MLE (NLL_oracle)", "seqgan", "mle", "nll_oracle_final", True)],
}


# The papers' claims about a logged quantity: it tracks sample quality over training
# (Spearman rank correlation with FD-shapes over the checkpoints, > 0: both fall together).
CURVE_CLAIMS = {"wgan": "the critic's estimate of the EM distance falls as samples improve",
                "began": "M_global falls as samples improve"}


def verdict(a: dict, b: dict | None = None, lower: bool = True) -> str:
    """What the seeds say about a claim: A better than B (or a correlation above 0 when b is None)
    only when the difference of the means exceeds twice its standard error; 'within noise' when
    it does not; 'one seed' when there is no spread to judge it by."""
    na, nb = a.get("n") or len(a.get("values") or [1]), (b.get("n") or len(b.get("values") or [1])) if b else None
    diff = a["mean"] - (b["mean"] if b else 0.0)
    if na < 2 or (b is not None and nb < 2):
        return "one seed"
    se = math.sqrt(a["std"] ** 2 / na + (b["std"] ** 2 / nb if b else 0.0))
    if abs(diff) <= 2 * se:
        return "within noise"
    better = diff < 0 if (b is not None and lower) else diff > 0
    return "agrees" if better else "disagrees"


def tier_comparisons(script: str, tier: str = "paper") -> list:
    """The paper claims a tier tests: those whose runs it trains (COMPARISONS)."""
    runs = {"main", *tier_variants(script, tier)} if script in SPECS else None
    return [c for c in COMPARISONS.get(script, []) if runs is None or {c[1], c[2]} <= runs]


def comparisons(script: str, runs: dict, tier: str = "paper") -> list:
    """Each paper claim with every seed's values, the means and the verdict (see verdict())."""
    out = []

    def measure(run, key):
        return runs.get(run, {}).get("metrics", {}).get(key) or {}

    if script in CURVE_CLAIMS:
        key = f"spearman_{SPECS[script].curve}_vs_fd"
        rho = measure("main", key)
        item = {"claim": CURVE_CLAIMS[script] + f" (Spearman with FD-{FEATURE_NAMES[space_of(tier)]} over "
                                                "checkpoints > 0)",
                "runs": ["main"], "measure": key, "main": rho.get("mean")}
        if rho.get("mean") is None:
            item["missing"] = True
        else:
            item.update(spread={"main": rho}, agrees_with_paper=bool(rho["mean"] > 0), verdict=verdict(rho))
        out.append(item)
    for claim, a, b, key, lower in tier_comparisons(script, tier):
        claim, key = claim.replace(" images", " digits") if tier == "mnist" else claim, measure_name(key, tier)
        ma, mb = measure(a, key), measure(b, key)
        va, vb = ma.get("mean"), mb.get("mean")
        if va is None or vb is None:
            out.append({"claim": claim, "runs": [a, b], "measure": key, "missing": True})
            continue
        agrees = va < vb if lower else va > vb
        out.append({"claim": claim, "runs": [a, b], "measure": key, a: va, b: vb, "difference": va - vb,
                    "spread": {a: ma, b: mb}, "agrees_with_paper": bool(agrees), "verdict": verdict(ma, mb, lower)})
    return out


def shown_flags(argv: list) -> list:
    """A run's flags as its JSON records them: --data-root DIR (where MNIST was is this machine's
    business, not the result's)."""
    argv = list(argv)
    if "--data-root" in argv:
        argv[argv.index("--data-root") + 1] = "DIR"
    return argv


def score_script(script: str, jobs: list, a, nets_cache: dict, device, results_dir: Path, header: dict) -> dict:
    t0 = time.perf_counter()
    per_run: dict = {}
    grid = None
    traversals = {}
    for job in jobs:
        scores = score_run(script, job, a, nets_cache, device)
        if job["run"] == "main" and job["seed"] == 0:
            grid, traversals = scores.get("_grid"), scores.get("_traversals", {})
        scores.pop("_grid", None)
        scores.pop("_traversals", None)
        scores["train_wall_s"] = job["wall_s"]
        if job.get("cpu_s") is not None:
            scores["train_cpu_s"] = job["cpu_s"]
        per_run.setdefault(job["run"], []).append((job, scores))
    anchors, fd = {}, measure_name("fd_shapes", a.tier)
    if script != "seqgan":
        _, args, _, _ = load_models(script, jobs[0]["dir"], device)
        ref, other = real_sets(script, args, a.n_eval, device, a.data_root if a.tier == "mnist" else None)
        clf, _, cfg = nets_cache[args.channels]
        r1, r2 = embed(clf, ref, cfg, device), embed(clf, other, cfg, device)
        anchors["fd_floor"] = frechet_distance(r1["features"], r2["features"])
        anchors["kid_floor"] = kernel_inception_distance(r1["features"], r2["features"])[0]
        cov = coverage(r1["probs"])
        anchors["real_confident_rate"], anchors["real_classes_covered"] = cov["confident_rate"], cov["classes_covered"]
        ceiling = {j["seed"]: s["fd_ceiling"] for j, s in per_run["main"]}
        anchors["fd_ceiling"] = summarise(list(ceiling.values()))
        for items in per_run.values():
            for j, s in items:  # (a comparison run's seed without a main run: the mean ceiling)
                c = ceiling.get(j["seed"], anchors["fd_ceiling"]["mean"])
                s["fd_position"] = (s[fd] - anchors["fd_floor"]) / max(c - anchors["fd_floor"], 1e-12)
                s["fd_ratio_to_floor"] = s[fd] / max(anchors["fd_floor"], 1e-12)
    runs = {}
    for name, items in per_run.items():
        keys = [k for k in items[0][1] if not isinstance(items[0][1][k], list)]
        runs[name] = {"flags": shown_flags(items[0][0]["argv"]), "images_shown_to_D": items[0][0]["images"],
                      "seeds": [j["seed"] for j, _ in items],
                      "metrics": {k: summarise([s.get(k) for _, s in items]) for k in keys},
                      "per_seed": {str(j["seed"]): {k: v for k, v in s.items() if isinstance(v, list)}
                                   for j, s in items}}
    if script == "seqgan":
        gaps = [m["nll_oracle_final"] - g["nll_oracle_final"]
                for (_, m), (_, g) in zip(per_run["mle"], per_run["seqgan"])]
        runs["comparison"] = {"metrics": {"mle_minus_seqgan": summarise(gaps)}}
    result = {**header, "script": script, "seeds": sorted({j["seed"] for j in jobs}), "anchors": anchors, "runs": runs,
              "targets": targets(script, runs, anchors, a.tier), "comparisons": comparisons(script, runs, a.tier),
              "wall_s": {"training": round(sum(j["wall_s"] for j in jobs), 1),
                         "scoring": round(time.perf_counter() - t0, 1)}}
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"quality-{script}{a.suffix}.json"
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    if grid is not None:
        common.save_grid(grid.float().div(127.5).sub(1), results_dir / f"quality-{script}{a.suffix}.png", nrow=8)
    for name, images in traversals.items():  # (infogan on MNIST: the Figure 2 grids)
        common.save_grid(images.float().div(127.5).sub(1),
                         results_dir / f"quality-{script}{a.suffix}-traversal-{name}.png", nrow=10)
    return result


def real_grid(results_dir, suffix: str = "-laptop", digits=None) -> Path:
    """quality-real-laptop.png: 64 held-out real shapes (stream 1) as the laptop tier renders them
    (32 px grayscale), the gallery's reference beside the scripts' grids; with digits (the folder
    holding MNIST): quality-real-mnist.png, the first 64 test digits at 32 px."""
    path = Path(results_dir) / f"quality-real{suffix}.png"
    if not path.exists():
        if digits is not None:
            images = mnist_digits(digits, "test", 32)[0][:64]
        else:
            images = data.render_shapes(data.shape_factors(64, stream=1), 32, 1, "filled", "cpu")
        common.save_grid(images.float().div(127.5).sub(1), path, nrow=8)
    return path


def tier_flags(script: str, tier: str) -> list:
    """The flags of a script's main run in a CPU tier, as of today (without --data-root)."""
    return mnist_config(script) if tier == "mnist" else ["--preset", "laptop"]


def is_laptop_preset(script: str, result: dict, tier: str = "laptop") -> bool:
    """Whether a CPU tier's JSON's main run trained the script's current configuration of the tier
    (`--preset laptop`; on MNIST with the tier's overrides)."""
    run = result.get("runs", {}).get("seqgan" if script == "seqgan" else "main", {})
    if not run.get("flags"):
        return True  # (nothing to compare)
    module, skip = importlib.import_module(script), {"seed", "device", "preset", "oracle", "out", "data_root"}
    with contextlib.suppress(SystemExit, common.UserError):
        ran, preset = vars(module.parse_args(run["flags"])), vars(module.parse_args(tier_flags(script, tier)))
        preset["dataset_size"] = preset["dataset_size"] or SPECS.get(script, Spec()).dataset_size
        ran["dataset_size"] = ran["dataset_size"] or preset["dataset_size"]
        return all(ran[k] == preset[k] for k in preset if k not in skip)
    return False


def spread(m: dict, fmt: str = ".4g") -> str:
    """mean ± standard deviation over the seeds (the mean alone for one seed)."""
    return f"{m['mean']:{fmt}}" + (f" ± {m['std']:{fmt}}" if (m.get("n") or 1) > 1 else "")


TIER_OF_SUFFIX = {"-laptop": "laptop", "-mnist": "mnist"}


def results_table(results_dir, suffix: str = "-laptop", tier: str | None = None) -> str:
    """The README's results table, from the JSONs in results_dir (scripts without one are left out).
    The targets are the tier's current ones (recomputed from each JSON's measures; the tier: by the
    suffix, -laptop or -mnist, unless given); the last column is the longest run's CPU time (its wall
    time where no CPU time was recorded): with one thread per run, about its wall time alone on one core."""
    tier = tier or TIER_OF_SUFFIX.get(suffix, "paper")
    fd_key, fd_label = measure_name("fd_shapes", tier), f"FD-{FEATURE_NAMES[space_of(tier)]}"
    rows = [f"| script | {fd_label} (fd_position) | classes | confident | targets | the paper's own measure | "
            "longest run |", "|---|---|---|---|---|---|---|"]
    for s in SCRIPTS:
        path = Path(results_dir) / f"quality-{s}{suffix}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        m = r["runs"].get("main", r["runs"].get("seqgan", {})).get("metrics", {})

        def mean(k, m=m):
            return (m.get(k) or {}).get("mean")

        own, goals = [], targets(s, r["runs"], r.get("anchors", {}), tier)
        missed = [name.split(" (")[0] for name, t in goals.items() if not t["met"]]
        verdict_of_targets = "met" if not missed else "missed: " + ", ".join(missed)
        image_targets = ("classes covered", "confident-sample", "fd_position")
        for name, t in goals.items():
            if not any(k in name for k in image_targets) and s != "seqgan":  # (seqgan: its comparison says it)
                v = t["value"]
                own.append(f"{name.split(' (')[0]}: {'-' if v is None else f'{v:.3g}'}")
        if s == "infogan" and tier == "mnist":  # what each continuous code became
            for code in sorted({k.split("_")[0] for k in m if k.endswith("_corr_slant")}):
                rho = {k: spread(m[f"{code}_corr_{k}"], ".2f") for k in ("slant", "width", "ink")}
                own.append(f"{code}: ρ slant {rho['slant']}, width {rho['width']}, ink {rho['ink']}")
        for c in comparisons(s, r["runs"], tier):  # (from the runs' measures, whichever version wrote the JSON)
            if c.get("missing"):
                continue
            if c["runs"] == ["main"]:
                own.append(f"{c['claim'].split(' (')[0]}: ρ = {spread(c['spread']['main'], '.2f')} "
                           f"({c['verdict']})")
            else:
                a, b = c["runs"]
                label = {fd_key: fd_label, "nll_oracle_final": "NLL_oracle",
                         f"{fd_key}_reconstructions": f"{fd_label} of reconstructions",
                         "class_preserved_AB": "class kept A→B",
                         "paired_err_AB": "paired error A→B"}.get(c["measure"], c["measure"])
                own.append(f"{label} {a} {spread(c['spread'][a])} against {b} {spread(c['spread'][b])} "
                           f"({c['verdict']})")
        key = "train_cpu_s" if any("train_cpu_s" in run.get("metrics", {}) for run in r["runs"].values()) \
            else "train_wall_s"
        walls = [run["metrics"][key]["max"] for run in r["runs"].values()
                 if (run.get("metrics", {}).get(key) or {}).get("max") is not None]
        minutes = max(walls) / 60 if walls else None
        if s == "seqgan":
            fd = cls = conf = "-"
        else:
            fd = f"{spread(m[fd_key], '.1f')} ({mean('fd_position'):.2f})"
            cls, conf = f"{mean('classes_covered'):.0f}/10", f"{mean('confident_rate'):.0%}"
        wall = "-" if minutes is None else f"{minutes:.0f} min"
        name = f"{s}.py" + ("" if tier not in CPU_TIERS or is_laptop_preset(s, r, tier)
                            else " (an earlier configuration)")
        rows.append(f"| {name} | {fd} | {cls} | {conf} | {verdict_of_targets} | {'; '.join(own) or '-'} | {wall} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--tier", choices=("paper", "laptop", "mnist"), default="paper",
                   help="paper: the scripts' own networks and sizes (64 px; a GPU); laptop: the LAPTOP "
                        "configurations (32/28 px grayscale, reduced widths; a 2-core CPU), results named "
                        "quality-NAME-laptop, all ten scripts unless --script, two runs at a time with one "
                        "thread each, run folders kept in --work (default benchmarks/.work/laptop) so that a "
                        "stopped command resumes its runs, and scripts whose results exist skipped; mnist: the "
                        "same on MNIST's digits (--data-root) for the eight image scripts but cyclegan, "
                        "configurations MNIST_OVERRIDES, scored by a digit classifier, results named "
                        "quality-NAME-mnist, run folders in benchmarks/.work/mnist")
    p.add_argument("--data-root", default=None,
                   help="--tier mnist: the folder holding MNIST/raw/ (torchvision's layout; a script's "
                        "--dataset mnist --data-root DIR --download fetches it); default: shared/data in the "
                        "folder that holds the repository")
    p.add_argument("--table", action="store_true",
                   help="print the results table of the JSONs in --results-dir for --tier (no training)")
    p.add_argument("--script", nargs="+", default=None, choices=SCRIPTS, metavar="NAME",
                   help=f"one or more of {', '.join(SCRIPTS)} (required with --tier paper; --tier mnist: "
                        f"{', '.join(MNIST_SCRIPTS)})")
    p.add_argument("--budget", type=common.positive_int, default=None,
                   help="real images shown to D per run (default: the README's quick run, 5 epochs of the "
                        "script's built-in data; --tier mnist: the tier's configuration, with --tiny one epoch "
                        f"of {MNIST_TINY_DIGITS} digits); seqgan.py: adversarial epochs (default: its own, 20)")
    p.add_argument("--seeds", type=common.positive_int, default=None,
                   help="seeds 0..K-1 for every run (default 1; --tier laptop: seeds 0-2 for the runs a paper "
                        "comparison or curve claim rests on, seed 0 for the others)")
    p.add_argument("--n-eval", type=common.positive_int, default=5000,
                   help="generated (and real) images per measure (--tier mnist: at most 5,000, half the test "
                        "digits: the floor is one half against the other)")
    p.add_argument("--jobs", type=common.positive_int, default=None,
                   help="runs trained at once in worker processes (they share the device); 1: in this process "
                        "(default 1; --tier laptop: 2)")
    p.add_argument("--threads", type=common.positive_int, default=None,
                   help="CPU threads per run (default: PyTorch's; --tier laptop: 1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--oracle", default=None, metavar="FILE",
                   help="seqgan.py's oracle, as seqgan.py --oracle takes it (the paper's: "
                        "save/target_params_py3.pkl of the official repository); default: a fresh one from "
                        "the seed")
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"),
                   help="where quality-NAME.json and quality-NAME.png go")
    p.add_argument("--suffix", default=None,
                   help="appended to the result file names (e.g. '-cpu-tiny'; default '', --tier laptop: "
                        "'-laptop', --tier mnist: '-mnist')")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing quality-NAME.json / .png in --results-dir (without it: refused, "
                        "before anything trains; --tier laptop: those scripts are skipped)")
    p.add_argument("--work", default=None, help="folder for the run folders (default: a temporary one, removed)")
    p.add_argument("--cache", default=str(CACHE), help="where the trained classifier is cached ('' : nowhere)")
    p.add_argument("--classifier", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override the feature network's config (e.g. n_train=2000 epochs=1; it is cached "
                        "under its own key and reported in the JSON)")
    p.add_argument("--tiny", action="store_true",
                   help="the CPU smoke path: tiny networks, 16 px; pair it with a small --budget and --n-eval "
                        "(--tier mnist: on the first digits of MNIST)")
    a = p.parse_args(argv)
    cpu, mnist = a.tier in CPU_TIERS, a.tier == "mnist"
    a.data_root = str(Path(a.data_root).resolve() if a.data_root else DATA_ROOT.resolve()) if mnist else None
    if a.table:
        return a
    if mnist and not (Path(a.data_root) / "MNIST" / "raw").is_dir():
        p.error(f"--data-root {a.data_root} holds no MNIST/raw/; give the folder that holds MNIST (torchvision's "
                f"layout), or fetch it there with any script: --dataset mnist --data-root DIR --download")
    if a.script is None:
        if not cpu:
            p.error("--script is required with --tier paper (name one or more scripts)")
        a.script = list(MNIST_SCRIPTS if mnist else SCRIPTS)
    a.script = list(dict.fromkeys(a.script))
    if mnist and set(a.script) - set(MNIST_SCRIPTS):
        p.error(f"--tier mnist trains {', '.join(MNIST_SCRIPTS)}; not "
                f"{', '.join(sorted(set(a.script) - set(MNIST_SCRIPTS)))} (cyclegan needs two domains, seqgan "
                f"has no images)")
    a.jobs = a.jobs or (2 if cpu else 1)
    a.threads = a.threads or (1 if cpu else None)
    a.suffix = (f"-{a.tier}" if cpu else "") if a.suffix is None else a.suffix
    if a.tier == "laptop" and a.tiny:
        p.error("--tiny is the smoke path of the paper tier; --tier laptop has its own sizes")
    a.resume_runs = cpu
    if cpu and a.work is None:
        a.work = str(ROOT / "benchmarks" / ".work" / a.tier)
    overrides, defaults = {}, DIGIT_CLASSIFIER if mnist else CLASSIFIER
    for item in a.classifier:
        key, _, value = item.partition("=")
        if key not in defaults or not value:
            p.error(f"--classifier takes KEY=VALUE with KEY one of {', '.join(defaults)} (got {item!r})")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            p.error(f"--classifier {item}: the value must be JSON (a number, or a list such as "
                    f'[32,64] or ["filled"]; quote it for the shell).')
    problem = classifier_problem({**defaults, **overrides})
    if problem:
        p.error(f"--classifier: {problem}.")
    a.classifier = overrides
    if mnist and a.n_eval > MNIST_TEST // 2:
        p.error(f"--n-eval must be at most {MNIST_TEST // 2:,} with --tier mnist (the reference and the floor's "
                f"other set are the two halves of the {MNIST_TEST:,} test digits)")
    if a.n_eval < 4:
        p.error("--n-eval must be 4 or more (FD needs a covariance)")
    if a.oracle and not Path(a.oracle).exists():
        p.error(f"--oracle {a.oracle}: no such file")
    if a.oracle:
        a.oracle = str(Path(a.oracle).resolve())
    existing = [path for s in a.script for ext in ("json", "png")
                if (path := Path(a.results_dir) / f"quality-{s}{a.suffix}.{ext}").exists()]
    if existing and not a.overwrite:
        if not cpu:
            p.error(f"{existing[0]} exists; pass --overwrite to replace it, or --results-dir / --suffix for new files")
        done = [s for s in a.script if (Path(a.results_dir) / f"quality-{s}{a.suffix}.json").exists()]
        print(f"already scored (skipped; --overwrite to redo): {', '.join(done)}", flush=True)
        a.script = [s for s in a.script if s not in done]
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.table:
        if a.tier == "laptop":
            real_grid(a.results_dir)
        elif a.tier == "mnist" and (Path(a.data_root) / "MNIST" / "raw").is_dir():
            real_grid(a.results_dir, "-mnist", a.data_root)
        print({"laptop": laptop_table() + "\n\n", "mnist": mnist_table() + "\n\n"}.get(a.tier, ""), end="")
        print(results_table(a.results_dir, a.suffix if a.suffix is not None else
                            (f"-{a.tier}" if a.tier in CPU_TIERS else ""), a.tier))
        return {}
    device = common.select_device(a.device)
    a.device = device.type
    if not a.script:
        print("nothing to do: every script named has its results", flush=True)
        return {}
    if a.threads:
        torch.set_num_threads(a.threads)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="quality-"))
    if a.work and not a.resume_runs and work.exists() and any(p.name != common.LOCK_NAME for p in work.iterdir()):
        raise common.UserError(f"{work} already holds files; choose a new --work folder.")
    if a.work:  # one command at a time in a --work folder: a second one is refused here
        work.mkdir(parents=True, exist_ok=True)
        common.lock_folder(work)
    try:
        with sigterm_stops():
            return benchmark(a, device, work)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Stopped): the runs in training were stopped
        signum = signal.SIGTERM if isinstance(e, Stopped) else signal.SIGINT
        then = ("run the same command again to go on from the runs' checkpoints" if a.resume_runs
                else "nothing more is scored")
        print(f"{Path(sys.argv[0]).name}: {signal.Signals(signum).name}: stopped; {then}.", file=sys.stderr,
              flush=True)
        raise SystemExit(128 + signum) from None
    finally:
        if a.work:
            common.unlock_folder(work)


def benchmark(a, device, work: Path) -> dict:
    """Train every run (a.jobs at a time, in `work`) and score each script as its runs end."""
    results_dir = Path(a.results_dir)
    header = {"date": datetime.now().isoformat(timespec="seconds"), "device": str(device),
              "device_name": torch.cuda.get_device_name() if device.type == "cuda" else
              f"cpu ({os.cpu_count()} cores)", "torch": torch.__version__, "tiny": a.tiny,
              "n_eval": a.n_eval, "budget_unit": "real images shown to D (seqgan: the schedule's flags)",
              "tier": a.tier, "threads_per_run": a.threads or torch.get_num_threads(), "runs_at_once": a.jobs,
              "oracle": Path(a.oracle).name if a.oracle else None,
              "protocol": PROTOCOL_MNIST if a.tier == "mnist" else PROTOCOL}
    t0 = time.perf_counter()
    nets_cache, header["classifier"] = {}, {}
    cache = Path(a.cache) if a.cache else None
    if a.tier == "mnist":  # one feature network: the digit classifier (every run is grayscale)
        net, report, cfg = digit_classifier(device, a.data_root, a.classifier, cache=cache)
        nets_cache[1] = (net, report, cfg)
        header["classifier"]["mnist"] = {"config": cfg, **report}
        print(f"digit classifier: test accuracy {report['test_accuracy']:.4f}", flush=True)
    for channels in sorted({script_channels(s, a.tier) for s in a.script if s != "seqgan" and a.tier != "mnist"}):
        net, report, cfg = classifier(channels, device, a.classifier, cache=cache)
        nets_cache[channels] = (net, report, cfg)
        header["classifier"][f"{channels}ch"] = {"config": cfg, **report}
        print(f"classifier {channels} ch: held-out accuracy {report['heldout_accuracy']:.4f}", flush=True)
    jobs = sorted((job for s in a.script for job in plan(s, a, work)), key=lambda j: j["seed"])  # seed 0 first
    pending = {s: sum(j["script"] == s for j in jobs) for s in a.script}
    done: dict = {s: [] for s in a.script}
    results, failed = {}, []

    def finished(job):
        # A failed run is named. Its script is still scored from the runs that finished when
        # only comparison runs failed (the JSON lists the failed ones); when a main run (or
        # any of seqgan's paired runs) failed it is not scored. The other scripts always are.
        s, name = job["script"], f"{job['script']} {job['run']} seed {job['seed']}"
        if job.get("error"):
            failed.append(name)
            print(f"FAILED {name}: {job['error']} (log: {job['log']})", flush=True)
        else:
            print(f"{'reused' if job.get('reused') else 'trained'} {name} ({job['wall_s']:.0f} s of training)",
                  flush=True)
        done[s].append(job)
        if len(done[s]) < pending[s]:
            return
        bad = {f"{j['run']} seed {j['seed']}": j["error"] for j in done[s] if j.get("error")}
        if bad and (s == "seqgan" or any(j.get("error") for j in done[s] if j["run"] == "main")):
            print(f"{s}: not scored, {len(bad)} of {pending[s]} runs failed; no quality-{s}{a.suffix}.json written",
                  flush=True)
            return
        order = sorted((j for j in done[s] if not j.get("error")),
                       key=lambda j: (j["run"] != "main", j["run"], j["seed"]))
        try:
            results[s] = score_script(s, order, a, nets_cache, device, results_dir,
                                      {**header, "classifier": {k: v for k, v in header["classifier"].items()
                                                                if s != "seqgan"},
                                       **({"failed_runs": bad} if bad else {})})
        except Exception as e:  # (a defect of the scoring: its traceback, then the other scripts)
            traceback.print_exc()
            failed.append(f"{s} scoring")
            print(f"{s}: scoring FAILED: {error_sentence(e)}; no quality-{s}{a.suffix}.json written", flush=True)
            return
        met = [f"{k}: {'met' if v['met'] else 'MISSED'}" for k, v in results[s]["targets"].items()]
        partial = f" (partial: {', '.join(bad)} failed)" if bad else ""
        print(f"{s}: wrote {results_dir}/quality-{s}{a.suffix}.json{partial}  " + "; ".join(met), flush=True)

    try:
        if a.jobs == 1:
            for job in jobs:
                finished(train_job(job))
        else:
            train_in_workers(jobs, a.jobs, finished)
    finally:
        if not a.work and not failed:
            shutil.rmtree(work, ignore_errors=True)
    print(f"quality benchmark done in {time.perf_counter() - t0:.0f} s", flush=True)
    if failed:
        raise common.TrainingError(
            f"failed: {', '.join(failed)} (not scored; the other scripts were); the run logs are in {work}.")
    return results


if __name__ == "__main__":
    common.cli(main)
