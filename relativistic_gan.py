"""The relativistic discriminator: a key element missing from standard GAN
— Alexia Jolicoeur-Martineau (2018), arXiv:1807.00734

A standard discriminator estimates the probability that its input is real. The relativistic
one estimates the probability that real data is *more realistic* than fake data: it scores
the difference of critic values C(x_r) - C(x_f) (RSGAN), or the difference to the average
critic value of the other kind (RaSGAN, "relativistic average"). The generator's loss then
depends on real data too: G also pushes real samples to look less real, as a divergence
minimiser should (the paper's argument: D(x_r) should fall as D(x_f) rises), which
stabilises training. Any GAN loss can be made relativistic; this file has all the paper's.

Paper -> code (section titles rather than numbers, which differ between the arXiv versions):
  "Relativistic standard GAN" (RSGAN: the D and G losses)        -> d_loss / g_loss, "rsgan"
  "Relativistic average GAN" (RaSGAN, and the recipe applied to LSGAN and HingeGAN: RaLSGAN,
      RaHingeGAN)                                                 -> d_loss / g_loss, "ra*"
  The baselines SGAN (non-saturating), LSGAN, HingeGAN           -> d_loss / g_loss
  The algorithms (n_D updates of D, then one of G that sees a fresh real batch) -> train
  CIFAR-10 experiments: setups (a) and (b), the standard CNN     -> --setup, Generator,
                                                                    Discriminator
  Gradient-penalty variants (WGAN-GP's penalty on D)             -> gradient_penalty, --gp
The paper is d_loss and g_loss: read those two functions. The relativistic G losses take the
real logits r too (a test holds g_loss to it).

Notation: C(x) is the discriminator's raw output (a logit, no sigmoid); r = C(x_real),
f = C(x_fake) over a batch; r̄, f̄ are batch means (gradients flow through them).
BCE1(z) = mean softplus(-z) = -mean log sigmoid(z) (target "real"), BCE0(z) = mean
softplus(z) (target "fake").

Deviations from the paper (each tagged `# DEVIATION:` below):
  1. The relativistic average losses (rasgan, ralsgan, rahingegan) halve the sum of their two
     terms, as the official code (AlexiaJM/RelativisticGAN, GAN_losses_iter.py) does; the
     paper writes the sum. A scale factor of the loss (equivalently of the learning rate).
  2. Losses on logits (softplus) rather than a sigmoid followed by BCE: the same functions,
     numerically stable.
  3. Images of any power-of-two size from 16 (the paper's CIFAR network is the 32 px case:
     a stage is added or removed per doubling); the built-in shapes data replaces CIFAR-10.
  4. Real batches come in epochs (each image once per pass, order fixed by the seed); the
     official code draws every batch at random from the whole dataset.
Choices where the paper is silent (from the official code, --arch 1):
  - D has spectral norm on every conv and no batch norm, as the official script of the paper's
    CIFAR-10 runs (code/stable.sh: --spectral True); `--d-norm batch` is the code's default.
  - Init: convs N(0, 0.02), BN scale N(1, 0.02); linear layers keep PyTorch's default.
  - The G step draws a fresh real batch only for the relativistic losses (the baselines'
    G losses do not look at real data).
  - z ~ N(0, I)^128, batch 32, 32 px (`--image-size 64` adds a stage); `--gp` is WGAN-GP's
    penalty with λ = 10 (`--gp-weight`).
A step is one generator iteration: n_D D updates (setup a: 1, setup b: 5), each on a fresh real
batch, then one G update.

Logged (metrics.csv, besides step, epoch and images_per_s):
  loss_D  D's loss for --loss, plus the penalty with --gp; RaSGAN: ln 2 ≈ 0.693 when D cannot
          tell, RaLSGAN and RaHinge: 1
  loss_G  G's loss for --loss
  C_gap   mean C(x_real) - mean C(x_fake) on D's batches: how much more real D finds the real
          data, the quantity the relativistic losses are built on

Samples, scores and the evidence behind the choices: benchmarks/README.md.
Run:  python relativistic_gan.py --epochs 5                  (RaSGAN, built-in shapes, 32 px)
      python relativistic_gan.py --loss sgan --epochs 5      (the baseline, same everything else)
      python relativistic_gan.py --loss ralsgan --setup b --dataset cifar10 --download
      python relativistic_gan.py --preset laptop             (for a CPU, PRESETS below: up to an hour on one core)
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

LOSSES = ("sgan", "rsgan", "rasgan", "lsgan", "ralsgan", "hingegan", "rahingegan")
RELATIVISTIC = ("rsgan", "rasgan", "ralsgan", "rahingegan")
# The two CIFAR-10 setups under which the paper compares the losses (its Table 1 is setup a).
SETUPS = {"a": {"lr": 2e-4, "beta1": 0.5, "beta2": 0.999, "n_d": 1},
          "b": {"lr": 1e-4, "beta1": 0.5, "beta2": 0.9, "n_d": 5}}


# --preset laptop: the laptop tier's configuration (benchmarks/README.md), made of this script's
# own flags for a 2-core CPU: 32 px grayscale, width 16, 25 epochs.
# The losses, optimiser settings and update schedule stay the paper's.
PRESETS = {"laptop": "--image-size 32 --channels 1 --width 16 --epochs 25"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Relativistic GANs (Jolicoeur-Martineau, 2018)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--loss", choices=LOSSES, default="rasgan", help="the GAN loss (Table 1 rows)")
    p.add_argument("--setup", choices=tuple(SETUPS), default="a",
                   help="CIFAR-10 setups: (a) Adam lr 2e-4, betas (0.5, 0.999), n_D 1; "
                        "(b) lr 1e-4, betas (0.5, 0.9), n_D 5")
    p.add_argument("--lr", type=common.positive_float, default=None, help="Adam lr (default: the setup's)")
    p.add_argument("--beta1", type=common.unit_interval, default=None, help="Adam beta1 (default: the setup's)")
    p.add_argument("--beta2", type=common.unit_interval, default=None, help="Adam beta2 (default: the setup's)")
    p.add_argument("--n-d", type=common.positive_int, default=None,
                   help="D updates per G update, each on a fresh batch (default: the setup's)")
    p.add_argument("--gp", action="store_true", help="add the gradient penalty to D's loss")
    p.add_argument("--gp-weight", type=common.positive_float, default=10.0, help="penalty weight lambda")
    p.add_argument("--d-norm", choices=("spectral", "batch"), default="spectral",
                   help="normalisation in D: spectral norm on every conv (the paper's CIFAR-10 runs, "
                        "official stable.sh: --spectral True) or batch norm (the official code's default)")
    p.add_argument("--nz", type=common.positive_int, default=128, help="latent size (z ~ N(0, I), 128)")
    p.add_argument("--width", type=common.positive_int, default=64,
                   help="channels of D's first conv and G's last hidden layer; the others scale with "
                        "it (the paper's CNN: 64, so 512 at 4x4)")
    common.add_run_args(p, presets=PRESETS, batch_size=32, image_size=32)  # CIFAR-10 setups: batch 32, 32x32
    args = common.parse_args(p, argv, "relativistic_gan")
    for key, value in SETUPS[args.setup].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.image_size < 16 or args.image_size & (args.image_size - 1):
        p.error(f"--image-size must be a power of two, 16 or more (got {args.image_size}): each "
                f"stage of the networks doubles or halves the side, from or to 4x4")
    return args


# ---------------------------------------------------------------------------------------------
# Networks (the CIFAR-10 "standard CNN", the official code's --arch 1, 32 px)
# ---------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """z (B, nz) -> image (B, C, S, S) in [-1, 1].

    At 32 px: Linear to 512x4x4 (no BN or activation), transposed convs 4x4 s2 to 256, 128,
    64 channels with BN + ReLU, a 3x3 conv to C channels, tanh."""

    def __init__(self, nz=128, channels=3, image_size=32, width=64):
        super().__init__()
        # DEVIATION: any power-of-two size (deviation 3); 32 px is the paper's network.
        n_up = int(math.log2(image_size)) - 2
        self.top = width * 2 ** n_up                       # channels at 4x4: 512 at 32 px
        self.dense = nn.Linear(nz, self.top * 4 * 4)
        layers, c = [], self.top
        for _ in range(n_up):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1), nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.Conv2d(c, channels, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.dense(z).view(-1, self.top, 4, 4))  # (B, top, 4, 4) -> (B, C, S, S)


class Discriminator(nn.Module):
    """image (B, C, S, S) -> C(x) (B,), a raw logit (the losses decide what it means).

    At 32 px: conv3 64, then three stages of [conv4 s2 keeping the channels, conv3 doubling
    them] (64, 128 | 128, 256 | 256, 512), LeakyReLU(0.1) after each, spectral norm on every
    conv (or batch norm after each but the last); a linear map of the 512x4x4 map to 1."""

    def __init__(self, channels=3, image_size=32, norm="spectral", width=64):
        super().__init__()
        # DEVIATION: any power-of-two size (deviation 3); 32 px is the paper's network.
        n_down = int(math.log2(image_size)) - 2
        sn = nn.utils.parametrizations.spectral_norm if norm == "spectral" else (lambda m: m)

        def block(c_in, c_out, k, s, bn=True):
            norm_layer = [nn.BatchNorm2d(c_out)] if bn and norm == "batch" else []
            return [sn(nn.Conv2d(c_in, c_out, k, s, 1)), *norm_layer, nn.LeakyReLU(0.1, True)]

        layers, c = block(channels, width, 3, 1), width
        for i in range(n_down):
            layers += block(c, c, 4, 2) + block(c, 2 * c, 3, 1, bn=i < n_down - 1)
            c *= 2
        self.net = nn.Sequential(*layers)
        self.dense = nn.Linear(c * 4 * 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.net(x).flatten(1)).view(-1)  # (B, c*4*4) -> (B,)


def weights_init(m: nn.Module) -> None:
    """The official code's init: convs N(0, 0.02); BN scale N(1, 0.02), shift 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
        nn.init.normal_(weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# The losses: the paper is these two functions
# ---------------------------------------------------------------------------------------------
def _bce1(z: torch.Tensor) -> torch.Tensor:  # -mean log sigmoid(z): "z says real"
    return F.softplus(-z).mean()


def _bce0(z: torch.Tensor) -> torch.Tensor:  # -mean log(1 - sigmoid(z)): "z says fake"
    return F.softplus(z).mean()


# DEVIATION: softplus on logits, not sigmoid then BCE (deviation 2); Ra* losses halved (deviation 1).
def d_loss(loss: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss (minimised) for `loss` in LOSSES."""
    r, f = real_logits, fake_logits
    if loss == "sgan":        # -E log D(x_r) - E log(1 - D(x_f)),  D = sigmoid(C)
        return _bce1(r) + _bce0(f)
    if loss == "rsgan":       # -E log sigmoid(C(x_r) - C(x_f)), pairs matched by batch index
        return _bce1(r - f)
    if loss == "rasgan":      # -E log D̃(x_r) - E log(1 - D̃(x_f)),  D̃(x_r) = sigmoid(C(x_r) - f̄)
        return (_bce1(r - f.mean()) + _bce0(f - r.mean())) / 2
    if loss == "lsgan":       # E (C(x_r) - 1)² + E C(x_f)²
        return ((r - 1) ** 2).mean() + (f ** 2).mean()
    if loss == "ralsgan":     # E (C(x_r) - f̄ - 1)² + E (C(x_f) - r̄ + 1)²
        return (((r - f.mean() - 1) ** 2).mean() + ((f - r.mean() + 1) ** 2).mean()) / 2
    if loss == "hingegan":    # E max(0, 1 - C(x_r)) + E max(0, 1 + C(x_f))
        return F.relu(1 - r).mean() + F.relu(1 + f).mean()
    if loss == "rahingegan":  # E max(0, 1 - (C(x_r) - f̄)) + E max(0, 1 + (C(x_f) - r̄))
        return (F.relu(1 - (r - f.mean())).mean() + F.relu(1 + (f - r.mean())).mean()) / 2
    raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")


def g_loss(loss: str, real_logits: torch.Tensor | None, fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's loss (minimised). The relativistic ones use the real logits too (and
    swap the roles of real and fake in D's loss); the baselines ignore them."""
    r, f = real_logits, fake_logits
    if loss == "sgan":        # non-saturating: -E log D(x_f)
        return _bce1(f)
    if loss == "rsgan":       # -E log sigmoid(C(x_f) - C(x_r))
        return _bce1(f - r)
    if loss == "rasgan":      # -E log D̃(x_f) - E log(1 - D̃(x_r)),  D̃(x_f) = sigmoid(C(x_f) - r̄)
        return (_bce0(r - f.mean()) + _bce1(f - r.mean())) / 2
    if loss == "lsgan":       # E (C(x_f) - 1)²
        return ((f - 1) ** 2).mean()
    if loss == "ralsgan":     # E (C(x_r) - f̄ + 1)² + E (C(x_f) - r̄ - 1)²
        return (((r - f.mean() + 1) ** 2).mean() + ((f - r.mean() - 1) ** 2).mean()) / 2
    if loss == "hingegan":    # -E C(x_f)
        return -f.mean()
    if loss == "rahingegan":  # E max(0, 1 + (C(x_r) - f̄)) + E max(0, 1 - (C(x_f) - r̄))
        return (F.relu(1 + (r - f.mean())).mean() + F.relu(1 - (f - r.mean())).mean()) / 2
    raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")


def gradient_penalty(D: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E[(‖∇C(x̂)‖₂ - 1)²] at x̂ = u·x_r + (1 - u)·x_f, u ~ U[0, 1] per sample (WGAN-GP)."""
    u = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    x_hat = (u * real + (1 - u) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def discriminator_step(G, D, opt_D, real, args):
    """One Adam step on D with a fresh z (and the penalty with --gp); G is not updated."""
    z = torch.randn(real.size(0), args.nz, device=real.device)
    with torch.no_grad():
        fake = G(z)
    r, f = D(real), D(fake)
    loss = d_loss(args.loss, r, f)
    if args.gp:
        loss = loss + args.gp_weight * gradient_penalty(D, real, fake)
    opt_D.zero_grad(set_to_none=True)
    loss.backward()
    opt_D.step()
    return loss.detach(), (r.mean() - f.mean()).detach()


def generator_step(G, D, opt_G, real, args, batch_size, device):
    """One Adam step on G with a fresh z; `real` is a fresh real batch (relativistic losses)
    or None (baselines). D's weights are not updated and get no gradient."""
    D.requires_grad_(False)
    z = torch.randn(batch_size, args.nz, device=device)
    f = D(G(z))
    with torch.no_grad():    # r does not depend on G: no graph needed
        r = D(real) if real is not None else None
    loss = g_loss(args.loss, r, f)
    opt_G.zero_grad(set_to_none=True)
    loss.backward()
    opt_G.step()
    D.requires_grad_(True)
    return loss.detach()


def build(args, channels: int, device):
    G = Generator(args.nz, channels, args.image_size, args.width).to(device)
    D = Discriminator(channels, args.image_size, args.d_norm, args.width).to(device)
    G.apply(weights_init)
    D.apply(weights_init)
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, args.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, args.beta2))
    return G, D, opt_G, opt_D


def train(args) -> dict:
    device = common.setup(args)
    data = common.load_dataset(args.dataset, args.data_root, args.image_size, args.channels,
                               args.download, device, args.dataset_size, args.workers)
    args.channels = data.channels  # saved with the checkpoint's flags
    G, D, opt_G, opt_D = build(args, args.channels, device)
    state = {"fixed_z": torch.randn(64, args.nz, device=device)}  # one latent for every grid
    run = common.Run("relativistic_gan", args, {"G": G, "D": D, "opt_G": opt_G, "opt_D": opt_D}, state,
                     sample_fn=lambda: G(state["fixed_z"]), device=device)
    G, D = run.prepare(G, D)  # --compile, --amp, --channels-last; under torchrun DDP
    d_update, g_update = run.fast_step(discriminator_step), run.fast_step(generator_step)  # --fast: graphs

    # DEVIATION: batches come in seeded epochs (deviation 4); the official code draws each at random.
    batches = run.stream(data)
    for _ in run.loop():                      # one generator iteration per step
        for _ in range(args.n_d):             # n_D discriminator updates, a fresh batch each
            real, _ = next(batches)
            loss_D, gap = d_update(G, D, opt_D, real, args)
            run.log(loss_D=loss_D, C_gap=gap)
        # the G update on as many fresh z; a relativistic G loss also needs C(x_r): a fresh real batch
        fresh = next(batches)[0] if args.loss in RELATIVISTIC else None
        loss_G = g_update(G, D, opt_G, fresh, args, real.size(0), device)
        run.log(loss_G=loss_G)
    return run.finish()


def generate(args) -> dict:
    """--generate N --resume RUN: N samples of the run's G (a grid and one PNG each)."""
    device = common.setup(args)
    G, *_ = build(args, args.channels, device)  # (the checkpoint's flags say what to build)
    run = common.Run("relativistic_gan", args, {"G": G}, device=device)
    run.generate(lambda n: G(torch.randn(n, args.nz, device=device)), args.generate)
    return {}


def main(argv=None) -> dict:
    args = parse_args(argv)
    return generate(args) if args.generate else train(args)


if __name__ == "__main__":
    common.cli(main)
