"""Progressive Growing of GANs — Karras, Aila, Laine, Lehtinen (2018), arXiv:1710.10196

Training starts at 4x4 and adds layers to G and D as it goes: each new resolution is faded in
smoothly (its output blended with the upsampled output of the previous resolution, alpha
rising from 0 to 1), then trained on its own. Large-scale structure is learnt first, finer
detail later, which is faster and more stable than training at full size from the start.
Three further tricks make it work: equalised learning rate (weights stored N(0, 1), scaled at
run time by He's constant), pixelwise feature normalisation in G, and a minibatch standard
deviation feature in D. The loss is WGAN-GP with a small drift term.

Paper -> code:
  Sec. 2, Fig. 2 (growing; fade-in of G's toRGB and D's fromRGB paths) -> Generator, Discriminator
  Sec. 2 / official `process_reals` (the real images fade in too)         -> fade_reals
  Sec. 3 (minibatch standard deviation)                                   -> MinibatchStdDev
  Sec. 4.1 (equalised learning rate)                        -> EqualizedConv2d, EqualizedLinear
  Sec. 4.2 (pixelwise feature vector normalisation in G)                  -> PixelNorm
  App. A.1, Table 2 (networks, lReLU 0.2, widths; Adam 1e-3, (0, 0.99); batch 16; 800k images
      per fade and per stabilise phase; WGAN-GP, n_critic 1, epsilon_drift 0.001)
                                                        -> Generator, Discriminator, parse_args
  Official loss.py D_wgangp_acgan / G_wgan_acgan                -> gradient_penalty, d_loss, g_loss
  Official train.py TrainingSchedule, reset_opt_for_new_lod, G_smoothing 0.999
                                                        -> schedule, phase_of, update_ema, train
  Official train.py process_reals, mirror_augment (CelebA-HQ, LSUN)       -> mirror_augment, --mirror

Depth and alpha: `depth` d means a 4*2^d pixel network (0: 4x4); during a fade-in phase of
depth d, alpha rises from 0 (only the upsampled depth-(d-1) output counts) to 1 (only the new
layers count). Both are a function of the real images seen so far (`schedule`), saved in every
checkpoint: a run stopped mid-fade resumes with the same alpha.

What a run is: `--epochs E` means E x (dataset size) real images shown to D in all (the
official total_kimg): 4x4 for --images-per-phase images, then a fade-in and a stabilise phase
of --images-per-phase images for each new resolution; the final resolution trains on until the
run ends. With 30,000 images a phase the 60,000 built-in shapes reach 64x64 after 240,000
images, so `--epochs 5` stabilises at 64x64 for the last 60,000. A step is one D update then
one G update on one real batch, whose size depends on the resolution (--batch-sizes).

Deviations from the paper (each tagged `# DEVIATION:` below):
  1. 30,000 images per phase by default (paper: 800k; official code: 600k), so that one short
     GPU run grows to 64 px on the built-in shapes. `--images-per-phase 800000` is the paper.
  2. The built-in shapes replace CelebA-HQ / LSUN / CIFAR-10, and the final size is a flag
     (default 64; any power of two from 8).
Choices where the paper is silent or sources differ (official code: tkarras/progressive_growing_of_gans):
  - Optimiser state is reset at the start of every fade-in and of every stabilise phase, as
    the official reset_opt_for_new_lod fires at both.
  - G's first layer is Table 2's "Conv 4x4" on the 1x1 latent (a conv with padding 3: a dense
    layer with the official dense layer's scale).
  - Widths nf(stage) = min(fmap_base / 2^stage, fmap_max), official 8192 and 512; latent 512.
  - Real batches are drawn uniformly at random, with replacement, at the final size and
    box-filtered on the device to the current resolution, as the official dataset is made
    (celeba, lsun and folder are then read without DataLoader workers).
  - Minibatch stddev over the whole batch (Sec. 3, "over the minibatch"; the official preset-v1
    and the Theano original, which produced the paper's results); the official v2 default,
    groups of 4, is `--mbstd-group 4`, which must divide every batch of the run.
  - The gradient penalty's norm is taken in final-size pixels, as the official code's D sees
    final-size images at every stage: at resolution r of a final size F, the current-resolution
    norm divided by F / r (tested equal to the upscaled form). The paper is silent.
  - Mirror augmentation (official mirror_augment) on for celeba and lsun, as both official
    versions train them with it; off for the rest, the shapes included (`--mirror on|off`).
  - No learning-rate ramp-up: App. A.1 names none, nor does the official TensorFlow release
    (the Theano original has one).
  - G's weight average (0.999) is updated after each G step (the official code: with the D
    step, the same sequence); sample grids and --generate use the averaged G.
  - The schedule advances every step (the official code every 4 minibatches).
  - `--compile` compiles G's stages only: torch.compile does not support the double backward
    through D that the gradient penalty needs.
  - Batch 16 up to 128 px, then --batch-sizes 256:14,512:6,1024:3 (App. A.1).

A run that ends before its schedule does stops at a lower resolution: resume it with more
--epochs. A checkpoint is written at every phase change and after each epoch. Sample grids
(the averaged G on the fixed latent, shown at the final size) are written after each epoch, at
the end, and at the end of each resolution: samples/res-004.png ... res-064.png show the growth.

Logged (metrics.csv, besides step, epoch and images_per_s; epoch is real images drawn /
dataset size, and images_per_s counts real images, whose batch changes with the resolution):
  loss_D      D's loss E D(G(z)) - E D(x) + 10 (gradient penalty) + 0.001 E D(x)²
  loss_G      -E D(G(z)) at the G update
  W_estimate  E D(x) - E D(G(z)) on D's batch, before its update: the Wasserstein estimate
  gp          the gradient penalty E(‖∇D(x̂)‖₂ - 1)², before the weight λ
  resolution  the resolution trained (a mean over the interval: fractional across a change)
  alpha       the fade-in α (1 outside fade-in phases)

Samples, scores and the evidence behind the choices: benchmarks/README.md.
Run:  python progan.py --epochs 5                           (built-in shapes to 64x64, no download)
      python progan.py --images-per-phase 800000 --epochs 200     (the paper's schedule)
      python progan.py --mbstd-group 4 --batch-sizes 4:128,8:128,16:128,32:64,64:32   (official v2, 1-GPU batches)
      python progan.py --dataset celeba --final-size 128 --data-root ./data --epochs 20
      python progan.py --generate 64 --resume runs/progan-shapes-<time>   (at the resolution reached)
      python progan.py --preset laptop                      (for a CPU, PRESETS below: up to an hour on one core)
"""
import argparse
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


def parse_batch_sizes(text: str) -> dict:
    """'256:14,512:6' -> {256: 14, 512: 6}; raises ValueError on anything else."""
    sizes = {}
    for item in filter(None, text.replace(" ", "").split(",")):
        try:
            res, n = (int(v) for v in item.split(":"))
        except ValueError:
            raise ValueError(item) from None
        if res < 4 or res & (res - 1) or n < 1:
            raise ValueError(item)
        sizes[res] = n
    return sizes


# --preset laptop: the laptop tier's configuration (benchmarks/README.md), made of this script's
# own flags for a 2-core CPU: grown to 32 px grayscale, narrow feature maps, 9 epochs of 30,000 images.
# The losses, optimiser settings and update schedule stay the paper's.
PRESETS = {"laptop": "--final-size 32 --channels 1 --fmap-base 256 --fmap-max 64 --nz 64 "
                     "--images-per-phase 10000 --dataset-size 30000 --epochs 9"}


def parse_args(argv=None) -> argparse.Namespace:
    def group_size(text: str):
        """--mbstd-group: 'all' -> None (the whole batch), else a positive integer."""
        return None if text == "all" else common.positive_int(text)

    p = argparse.ArgumentParser(
        description="Progressive Growing of GANs (Karras et al., 2018). --epochs E: the run shows D "
                    "E x (dataset size) real images in all, drawn at random (official total_kimg); the "
                    "schedule grows G and D by one resolution every two --images-per-phase and the final "
                    "resolution trains on until the run ends. A step is one D and one G update.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--final-size", dest="image_size", type=common.positive_int, metavar="SIZE",
                   default=argparse.SUPPRESS,
                   help="resolution the networks grow to, a power of two >= 8 (same as --image-size; "
                        "default 64; the paper reaches 1024 on CelebA-HQ)")
    # DEVIATION: 30k rather than 800k images a phase (deviation 1), to reach 64 px in minutes.
    p.add_argument("--images-per-phase", type=common.positive_int, default=30_000,
                   help="real images per fade-in phase and per stabilise phase (App. A.1: 800k, official "
                        "code 600k; the default reaches 64 px at epoch 4 of the 60,000 built-in shapes)")
    p.add_argument("--batch-sizes", default="256:14,512:6,1024:3",
                   help="batch size per resolution, RES:N,... overriding --batch-size (App. A.1: 16 up "
                        "to 128 px, then 14, 6, 3; the official v2 1-GPU preset is 4:128,8:128,16:128,32:64,64:32, "
                        "with --mbstd-group 4)")
    p.add_argument("--nz", type=common.positive_int, default=512, help="latent size (Table 2: 512)")
    p.add_argument("--fmap-base", type=common.positive_int, default=8192,
                   help="channels at stage s are min(fmap_base / 2^s, fmap_max) (official code: 8192)")
    p.add_argument("--fmap-max", type=common.positive_int, default=512,
                   help="most channels in any layer (Table 2: 512)")
    p.add_argument("--lr", type=common.positive_float, default=1e-3, help="Adam learning rate (App. A.1: 0.001)")
    p.add_argument("--beta1", type=common.unit_interval, default=0.0, help="Adam beta1 (App. A.1: 0)")
    p.add_argument("--beta2", type=common.unit_interval, default=0.99, help="Adam beta2 (App. A.1: 0.99)")
    p.add_argument("--gp-weight", type=float, default=10.0, help="gradient penalty lambda (App. A.1: 10)")
    p.add_argument("--drift", type=float, default=0.001,
                   help="epsilon_drift, weight of D(x)^2 in D's loss (App. A.1: 0.001)")
    p.add_argument("--ema", type=common.unit_interval, default=0.999,
                   help="decay of G's weight average, used for samples (App. A.1 / official code: 0.999)")
    p.add_argument("--mbstd-group", type=group_size, default="all",
                   help="samples per group of the minibatch standard deviation: all, the whole batch (Sec. 3; "
                        "the official preset-v1 and the Theano original, which produced the paper's results), "
                        "or N (4: the official v2 default); N must divide every batch of the run")
    p.add_argument("--mirror", choices=("auto", "on", "off"), default="auto",
                   help="flip each real image left-right with probability 1/2 (official mirror_augment); "
                        "auto: on for celeba and lsun, as the official CelebA-HQ and LSUN runs")
    common.add_run_args(p, presets=PRESETS, batch_size=16)  # App. A.1: minibatch 16 up to 128x128
    args = common.parse_args(p, argv, "progan")
    if args.image_size < 8 or args.image_size & (args.image_size - 1):
        p.error(f"--final-size (--image-size) must be a power of two, 8 or more (got {args.image_size}): "
                f"the networks grow from 4x4 by doubling")
    try:
        sizes = parse_batch_sizes(args.batch_sizes)
    except ValueError as e:
        p.error(f"--batch-sizes takes RES:N,... with RES a power of two and N >= 1 (bad item: {e})")
    biggest = max(sizes.get(4 * 2 ** d, args.batch_size) for d in range(depth_of(args.image_size) + 1))
    if biggest > args.images_per_phase:
        p.error(f"--images-per-phase {args.images_per_phase} is smaller than a batch ({biggest})")
    return args


def depth_of(size: int) -> int:
    return int(math.log2(size)) - 2  # 4x4 is depth 0


# ---------------------------------------------------------------------------------------------
# Building blocks (Sec. 3, 4.1, 4.2)
# ---------------------------------------------------------------------------------------------
class EqualizedConv2d(nn.Module):
    """Sec. 4.1: weights stored as N(0, 1) and scaled at run time by c = gain / sqrt(fan_in)
    (He's constant), so Adam's step, which is invariant to the parameter's scale, is the same
    relative change for every layer. Biases start at 0."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, gain=math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size ** 2)
        self.stride, self.padding = stride, padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding)


class EqualizedLinear(nn.Module):
    """The dense layer with the equalised learning rate (see EqualizedConv2d)."""

    def __init__(self, in_features, out_features, gain=math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias)


class PixelNorm(nn.Module):
    """Sec. 4.2: b = a / sqrt(mean_over_channels(a^2) + 1e-8), at every pixel (dim 1)."""

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class MinibatchStdDev(nn.Module):
    """Sec. 3: the standard deviation of each feature over the minibatch, averaged over features
    and pixels, appended as one constant feature map. group_size None: over the whole batch (the
    paper's configuration); G: over groups of min(G, N) samples, sample i in group i mod (N / G),
    N a multiple of G (the official v2 code, G = 4). Population std with 1e-8 in the sqrt."""

    def __init__(self, group_size=None):
        super().__init__()
        self.group_size = group_size

    def forward(self, x):
        n, c, h, w = x.shape
        g = n if self.group_size is None else min(self.group_size, n)
        if n % g:  # (train() refuses such a run up front; the official code asserts)
            raise ValueError(f"a batch of {n} does not split into minibatch-stddev groups of {g}")
        y = x.reshape(g, n // g, c, h, w)           # (G, M, C, H, W)
        y = y - y.mean(dim=0, keepdim=True)
        y = torch.sqrt(y.pow(2).mean(dim=0) + 1e-8)  # (M, C, H, W): std over each group
        y = y.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)  # (M, 1, 1, 1)
        y = y.repeat(g, 1, h, w)                     # (N, 1, H, W)
        return torch.cat([x, y], dim=1)              # (N, C + 1, H, W)


def _lrelu():
    return nn.LeakyReLU(0.2)  # App. A.1: leaky ReLU 0.2 everywhere but the outputs


def _widths(fmap_base, fmap_max):
    return lambda stage: min(fmap_base // 2 ** stage, fmap_max)  # official nf(stage)


# ---------------------------------------------------------------------------------------------
# Networks (Table 2; the official G_paper / D_paper with structure "linear")
# ---------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """z (B, nz) -> image (B, C, 4*2^depth, 4*2^depth), linear output (no tanh).

    blocks[0]: pixel-normed z -> Conv 4x4 (on the 1x1 latent) -> Conv 3x3, at 4x4;
    blocks[d]: nearest upsample x2 -> Conv 3x3 -> Conv 3x3; to_rgb[d]: Conv 1x1, gain 1.
    lReLU 0.2 and pixel norm after every conv. Fade-in (Fig. 2):
    out = lerp(upsample(to_rgb[d-1](h)), to_rgb[d](blocks[d](h)), alpha)."""

    def __init__(self, final_size=64, nz=512, channels=3, fmap_base=8192, fmap_max=512):
        super().__init__()
        nf = _widths(fmap_base, fmap_max)
        self.blocks = nn.ModuleList([nn.Sequential(
            PixelNorm(), nn.Unflatten(1, (nz, 1, 1)),                        # (B, nz, 1, 1)
            EqualizedConv2d(nz, nf(1), 4, padding=3), _lrelu(), PixelNorm(),  # (B, nf(1), 4, 4)
            EqualizedConv2d(nf(1), nf(1), 3, padding=1), _lrelu(), PixelNorm())])
        for d in range(1, depth_of(final_size) + 1):
            self.blocks.append(nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"),
                EqualizedConv2d(nf(d), nf(d + 1), 3, padding=1), _lrelu(), PixelNorm(),
                EqualizedConv2d(nf(d + 1), nf(d + 1), 3, padding=1), _lrelu(), PixelNorm()))
        self.to_rgb = nn.ModuleList(EqualizedConv2d(nf(d + 1), channels, 1, gain=1.0)
                                    for d in range(len(self.blocks)))

    def forward(self, z, depth, alpha=1.0):
        h = self.blocks[0](z)
        for d in range(1, depth + 1):
            if d == depth and alpha < 1:
                old = F.interpolate(self.to_rgb[d - 1](h), scale_factor=2, mode="nearest")
            h = self.blocks[d](h)
        new = self.to_rgb[depth](h)
        return torch.lerp(old, new, alpha) if depth > 0 and alpha < 1 else new


class Discriminator(nn.Module):
    """image (B, C, 4*2^depth, 4*2^depth) -> score (B,), unbounded (a WGAN critic).

    from_rgb[d]: Conv 1x1 + lReLU; blocks[d], d >= 1: Conv 3x3 -> Conv 3x3 -> 2x2 average pool;
    blocks[0] at 4x4: minibatch stddev -> Conv 3x3 -> Conv 4x4 (a dense layer on the flattened
    map) -> dense to 1 (gain 1, linear). Fade-in mirrors G:
    h = lerp(from_rgb[d-1](avgpool(x)), blocks[d](from_rgb[d](x)), alpha)."""

    def __init__(self, final_size=64, channels=3, fmap_base=8192, fmap_max=512, mbstd_group=None):
        super().__init__()
        nf = _widths(fmap_base, fmap_max)
        self.blocks = nn.ModuleList([nn.Sequential(
            MinibatchStdDev(mbstd_group),                                      # (B, nf(1) + 1, 4, 4)
            EqualizedConv2d(nf(1) + 1, nf(1), 3, padding=1), _lrelu(),
            nn.Flatten(), EqualizedLinear(nf(1) * 16, nf(0)), _lrelu(),        # (B, nf(0))
            EqualizedLinear(nf(0), 1, gain=1.0))])                             # (B, 1)
        for d in range(1, depth_of(final_size) + 1):
            self.blocks.append(nn.Sequential(
                EqualizedConv2d(nf(d + 1), nf(d + 1), 3, padding=1), _lrelu(),
                EqualizedConv2d(nf(d + 1), nf(d), 3, padding=1), _lrelu(),
                nn.AvgPool2d(2)))
        self.from_rgb = nn.ModuleList(nn.Sequential(EqualizedConv2d(channels, nf(d + 1), 1), _lrelu())
                                      for d in range(len(self.blocks)))

    def forward(self, x, depth, alpha=1.0):
        h = self.from_rgb[depth](x)
        for d in range(depth, -1, -1):
            h = self.blocks[d](h)
            if d == depth > 0 and alpha < 1:
                h = torch.lerp(self.from_rgb[d - 1](F.avg_pool2d(x, 2)), h, alpha)
        return h.squeeze(1)  # (B,)


def fade_reals(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """The real images fade in with the new layers (official `process_reals`):
    x <- lerp(upsample(avgpool(x)), x, alpha), so at alpha = 0 D sees the previous resolution."""
    if alpha >= 1:
        return x
    low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    return torch.lerp(low, x, alpha)


def mirror_augment(x: torch.Tensor) -> torch.Tensor:
    """Official mirror_augment: each image flipped left-right with probability 1/2."""
    flip = torch.rand(x.size(0), 1, 1, 1, device=x.device) < 0.5
    return torch.where(flip, x.flip(-1), x)


# ---------------------------------------------------------------------------------------------
# The schedule (Sec. 2, App. A.1; official TrainingSchedule)
# ---------------------------------------------------------------------------------------------
def phase_of(images_seen: int, images_per_phase: int, max_depth: int) -> int:
    """0: 4x4; 2d - 1: fade-in of depth d; 2d: stabilise at depth d; the last phase never ends."""
    return min(images_seen // images_per_phase, 2 * max_depth)


def schedule(images_seen: int, images_per_phase: int, max_depth: int) -> tuple:
    """(depth, alpha) after `images_seen` real images. alpha rises linearly from 0 to 1 over
    each fade-in phase and is 1 otherwise; a pure function of integers, so it resumes exactly."""
    phase = phase_of(images_seen, images_per_phase, max_depth)
    depth = (phase + 1) // 2
    if phase % 2 == 0:
        return depth, 1.0
    return depth, (images_seen - phase * images_per_phase) / images_per_phase


# ---------------------------------------------------------------------------------------------
# Losses (WGAN-GP with the drift term; official loss.py)
# ---------------------------------------------------------------------------------------------
def gradient_penalty(D: nn.Module, real, fake, depth, alpha, final_size) -> torch.Tensor:
    """E[(‖∇D(x̂)‖₂ - 1)²] at x̂ = x + u·(x̃ - x), u ~ U[0, 1] per sample (official lerp), the
    norm in final-size pixels, as the official code: its D takes x̂ nearest-neighbour upscaled
    by k = final_size / r and average-pools it back by k, so its gradient is ours upscaled and
    divided by k², and its norm ours divided by k. (Tested equal to that upscaled form.)"""
    u = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    x_hat = torch.lerp(real, fake.detach(), u).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x_hat, depth, alpha).sum(), x_hat, create_graph=True)
    # (the paper is silent on the scale; the official code's, see the docstring's choices)
    k = final_size / real.size(-1)                      # F / r: 1 at the final resolution
    return ((grad.flatten(1).norm(2, dim=1) / k - 1) ** 2).mean()


def d_loss(real_scores, fake_scores, penalty, gp_weight=10.0, drift=0.001) -> torch.Tensor:
    # L_D = E[D(x̃)] - E[D(x)] + λ E[(‖∇D(x̂)‖₂ - 1)²] + ε_drift E[D(x)²]   (λ 10, ε_drift 0.001)
    # D is a critic: high scores mean "real"; the drift term keeps the scores near 0.
    return (fake_scores.mean() - real_scores.mean() + gp_weight * penalty
            + drift * real_scores.pow(2).mean())


def g_loss(fake_scores) -> torch.Tensor:
    # L_G = -E[D(G(z))]
    return -fake_scores.mean()


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def discriminator_step(G, D, opt_D, real, depth, alpha, args):
    """One Adam step on D with a fresh z; G is not updated. Returns loss, W estimate, penalty."""
    z = torch.randn(real.size(0), args.nz, device=real.device)
    with torch.no_grad():
        fake = G(z, depth, alpha)
    # real and fake go through D as separate batches (each has its own minibatch stddev)
    real_scores, fake_scores = D(real, depth, alpha).float(), D(fake, depth, alpha).float()
    penalty = gradient_penalty(D, real, fake, depth, alpha, args.image_size)
    loss = d_loss(real_scores, fake_scores, penalty, args.gp_weight, args.drift)
    opt_D.zero_grad(set_to_none=True)
    loss.backward()
    opt_D.step()
    return loss.detach(), (real_scores.mean() - fake_scores.mean()).detach(), penalty.detach()


def generator_step(G, D, opt_G, batch_size, depth, alpha, args, device):
    """One Adam step on G with a fresh z, through the D just updated; D's weights get no gradient."""
    D.requires_grad_(False)
    z = torch.randn(batch_size, args.nz, device=device)
    loss = g_loss(D(G(z, depth, alpha), depth, alpha).float())
    opt_G.zero_grad(set_to_none=True)
    loss.backward()
    opt_G.step()
    D.requires_grad_(True)
    return loss.detach()


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    # official Gs.setup_as_moving_average_of(G, beta): θ_ema <- β θ_ema + (1 - β) θ
    torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1 - beta)


def build(args, channels: int, device):
    G = Generator(args.image_size, args.nz, channels, args.fmap_base, args.fmap_max).to(device)
    D = Discriminator(args.image_size, channels, args.fmap_base, args.fmap_max, args.mbstd_group).to(device)
    # App. A.1: Adam, lr 0.001, β1 0, β2 0.99, ε 1e-8. Parameters of layers not yet in use get
    # no gradient (None) and are left alone until their resolution arrives.
    opts = [torch.optim.Adam(net.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), eps=1e-8)
            for net in (G, D)]
    return G, D, *opts


def train(args) -> dict:
    device = common.setup(args)
    # DEVIATION: the built-in shapes by default (deviation 2). The data is held at the final
    # size; each batch is box-filtered down to the current resolution.
    data = common.load_dataset(args.dataset, args.data_root, args.image_size, args.channels,
                               args.download, device, args.dataset_size, args.workers)
    args.channels = data.channels  # saved with the checkpoint's flags
    G, D, opt_G, opt_D = build(args, args.channels, device)
    G_ema = copy.deepcopy(G).requires_grad_(False)
    max_depth, per_phase = depth_of(args.image_size), args.images_per_phase
    batch_sizes = parse_batch_sizes(args.batch_sizes)
    for res in (4 * 2 ** d for d in range(max_depth + 1)):  # under torchrun, each batch this run
        n = batch_sizes.get(res, args.batch_size)            # uses must split over the processes
        m = common.per_rank(n, f"--batch-sizes {res}:{n}" if res in batch_sizes else None)
        if args.mbstd_group and m % min(args.mbstd_group, m):  # (official: asserted)
            raise common.UserError(f"--mbstd-group {args.mbstd_group} does not divide the batch of {m} at {res} px"
                                   f"{' on each process' if m != n else ''}; pass a group size that divides "
                                   f"every batch of the run, or all (the whole batch).")
    # Method state, saved in every checkpoint: images seen (the schedule's clock), the phase of
    # the last step (to notice a new one) and the depth and alpha of the last step (for samples).
    state = {"fixed_z": torch.randn(64, args.nz, device=device), "images_seen": 0, "phase": 0,
             "depth": 0, "alpha": 1.0}

    def samples():  # the averaged G on the fixed latent, shown at the final size (nearest)
        x = G_ema(state["fixed_z"], state["depth"], state["alpha"])
        return F.interpolate(x, size=args.image_size, mode="nearest")

    run = common.Run("progan", args, {"G": G, "G_ema": G_ema, "D": D, "opt_G": opt_G, "opt_D": opt_D},
                     state, sample_fn=samples, device=device)
    # --compile: G's stages only (D cannot be double-backwarded compiled, for the penalty); under
    # torchrun DDP, with find_unused: the layers of the resolutions not in use get no gradient
    G, D = run.prepare(G, D, compile=G.blocks, find_unused=True)
    full = 2 * max_depth * per_phase
    print(f"schedule: 4x4 -> {args.image_size}x{args.image_size}, {per_phase:,} images per phase, "
          f"{args.image_size} px faded in after {full:,} images (epoch {full / len(data):.2f}); this run: "
          f"{args.epochs * len(data):,} images (--epochs {args.epochs} of {len(data):,})", flush=True)

    def train_step(real, depth, alpha):
        # 1. one D step (n_critic = 1), 2. one G step through the D just updated, 3. G's average
        loss_D, W, penalty = discriminator_step(G, D, opt_D, real, depth, alpha, args)
        loss_G = generator_step(G, D, opt_G, real.size(0), depth, alpha, args, device)
        update_ema(G_ema, G, args.ema)
        return loss_D, loss_G, W, penalty

    # --fast: a stabilise phase's steps as one CUDA graph, captured at every phase (a fade-in's
    # alpha changes at every step: its steps run as plain calls)
    step = run.fast_step(train_step)
    mirror = args.mirror == "on" or (args.mirror == "auto" and args.dataset in ("celeba", "lsun"))
    draw = run.sampler(data)  # real batches of any size; the run counts epochs in images
    for _ in run.loop():
        phase = phase_of(state["images_seen"], per_phase, max_depth)
        if phase != state["phase"]:  # the previous step ended a phase
            if state["phase"] % 2 == 0:  # ... a stabilise phase: that resolution is done
                run.save_samples(f"res-{4 * 2 ** state['depth']:03d}")
            # official reset_opt_for_new_lod: fresh Adam moments at every new phase
            opt_G.state.clear()
            opt_D.state.clear()
            state["phase"] = phase
            run.save_checkpoint()
            size = 4 * 2 ** ((phase + 1) // 2)
            print(f"phase {phase}: {'fade-in' if phase % 2 else 'stabilise'} {size}x{size} from image "
                  f"{state['images_seen']:,}", flush=True)
        depth, alpha = schedule(state["images_seen"], per_phase, max_depth)
        state["depth"], state["alpha"] = depth, alpha
        res = 4 * 2 ** depth
        batch_size = batch_sizes.get(res, args.batch_size)
        real, _ = draw(batch_size)
        if res < args.image_size:
            real = F.avg_pool2d(real, args.image_size // res)  # (B, C, res, res)
        if mirror:  # (commutes with the pooling; official: before it)
            real = mirror_augment(real)
        real = fade_reals(real, alpha)
        loss_D, loss_G, W, penalty = step(real, depth, alpha)
        run.log(loss_D=loss_D, loss_G=loss_G, W_estimate=W, gp=penalty, resolution=res, alpha=alpha)
        state["images_seen"] += batch_size
    # the grid of the resolution the run stops at, if that resolution is done or the last one
    if state["phase"] % 2 == 0 and (state["depth"] == max_depth
                                    or phase_of(state["images_seen"], per_phase, max_depth) != state["phase"]):
        run.save_samples(f"res-{4 * 2 ** state['depth']:03d}")
    return run.finish()


def generate(args) -> dict:
    """--generate N --resume RUN: N samples of the run's averaged G at the resolution the run has
    reached (a grid and one PNG each)."""
    device = common.setup(args)
    G_ema, *_ = build(args, args.channels, device)  # (the checkpoint's flags say what to build)
    state = {}
    run = common.Run("progan", args, {"G_ema": G_ema}, state, device=device)
    run.generate(lambda n: G_ema(torch.randn(n, args.nz, device=device), state["depth"], state["alpha"]),
                 args.generate)
    return {}


def main(argv=None) -> dict:
    args = parse_args(argv)
    return generate(args) if args.generate else train(args)


if __name__ == "__main__":
    common.cli(main)
