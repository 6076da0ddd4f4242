"""Unsupervised Representation Learning with Deep Convolutional GANs — Radford, Metz, Chintala (2015), arXiv:1511.06434

DCGAN is the GAN of Goodfellow et al. with a set of architectural rules that made deep
convolutional GANs train reliably: strided convolutions instead of pooling, transposed
("fractionally-strided") convolutions to upsample in G, batch norm in both networks except
at G's output and D's input, no fully connected hidden layers, ReLU in G with tanh at the
output, LeakyReLU(0.2) in D. This file is the template the other nine scripts follow.

Paper -> code:
  Sec. 3, "Approach and model architecture" (the rules) -> Generator, Discriminator
  Fig. 1 (project z, reshape to 4x4, four transposed convs)  -> Generator
  Sec. 4, "Details of adversarial training" (init N(0, 0.02), Adam 2e-4, beta1 0.5, batch 128,
      LeakyReLU slope 0.2, z ~ U(-1, 1)^100, images in [-1, 1])  -> weights_init, parse_args
  Goodfellow et al. (2014) Eq. (1), the value function; non-saturating G loss -> d_loss, g_loss
  One D update then one G update per batch -> discriminator_step, generator_step, train

Deviations from the paper (each tagged `# DEVIATION:` below):
  1. Losses are computed on logits (binary_cross_entropy_with_logits) rather than a sigmoid
     followed by BCE: the same function, numerically stable. D therefore has no final sigmoid.
  2. Images of any power-of-two size from 16 up: a stage is added or removed per doubling
     (the paper shows 64 px). The built-in shapes data replaces LSUN / Imagenet / faces.
Choices where the paper is silent or sources differ (official code: Newmu/dcgan_code):
  - Widths and kernels of Fig. 1 and the official code (1024 channels at 4x4, 5x5 kernels);
    pytorch/examples' lighter network is `--ngf 64 --ndf 64 --kernel-size 4` (up to biases).
  - z ~ U(-1, 1)^100 as the paper; `--z-dist normal` draws z ~ N(0, I) as most ports do.
  - D's last layer maps the flattened 4x4 map to one logit ("the last convolution layer is
    flattened and then fed into a single sigmoid output", Sec. 3).
  - Adam's beta2 is not stated: Adam's default, 0.999.
  - Biases only where no BN follows (G's output conv, D's first conv, D's last layer; a bias
    before BN is cancelled by its mean): PyTorch's default; the official code has none.
  - BN of the projection per channel over the 4x4 map, like the convs and pytorch/examples;
    the official code normalises each of its 4*4*1024 units on its own.
  - No weight decay (Sec. 4 lists none); the official code adds an L2 penalty of 1e-5.
A step is one batch (one D update, then one G update on the same fakes); an epoch is one pass
over the data (468 steps of 128 on the 60,000 built-in shapes).

Logged (metrics.csv, besides step, epoch and images_per_s; means over each --log-every interval):
  loss_D  D's loss BCE(D(x), 1) + BCE(D(G(z)), 0): 2 ln 2 ≈ 1.386 when D cannot tell, near 0
          when D wins outright
  loss_G  G's non-saturating loss -log D(G(z)), after D's update; ln 2 ≈ 0.69 at the balance
  D_x     mean D(x) on the real batch (the probability "real")
  D_G_z   mean D(G(z)) on the fake batch, before D's update; a long stretch near 0 means D is
          winning and G learns slowly

Samples, scores and the evidence behind the choices: benchmarks/README.md.
Run:  python dcgan.py --epochs 5                 (built-in shapes data, no download)
      python dcgan.py --dataset cifar10 --image-size 32 --data-root ./data --download
      python dcgan.py --generate 64 --resume runs/dcgan-shapes-<time>
      python dcgan.py --preset laptop            (for a CPU, PRESETS below: up to an hour on one core)
"""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

# --preset laptop: the laptop tier's configuration (benchmarks/README.md), made of this script's
# own flags for a 2-core CPU: 32 px grayscale, pytorch/examples' lighter network at half its width, 12 epochs.
# The losses, optimiser settings and update schedule stay the paper's.
PRESETS = {"laptop": "--image-size 32 --channels 1 --ngf 32 --ndf 32 --kernel-size 4 --batch-size 64 "
                     "--epochs 12"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="DCGAN (Radford et al., 2015)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--nz", type=common.positive_int, default=100,
                   help="latent size (Sec. 4 / Fig. 1: 100-d z ~ U(-1, 1))")
    p.add_argument("--z-dist", choices=("uniform", "normal"), default="uniform",
                   help="latent distribution (Sec. 4: uniform on [-1, 1]; most ports use normal)")
    p.add_argument("--ngf", type=common.positive_int, default=128,
                   help="G width: channels before the output layer, doubled at each stage back "
                        "to 4x4 (8*ngf at 4x4 at 64 px; Fig. 1: 1024)")
    p.add_argument("--ndf", type=common.positive_int, default=128,
                   help="D width: channels after D's first conv (the mirror of G)")
    p.add_argument("--kernel-size", type=int, choices=(4, 5), default=5,
                   help="conv kernel size (official code: 5x5; pytorch/examples: 4x4)")
    p.add_argument("--lr", type=common.positive_float, default=2e-4,
                   help="Adam learning rate (Sec. 4: 0.0002; 0.001 was too high)")
    p.add_argument("--beta1", type=common.unit_interval, default=0.5,
                   help="Adam beta1 (Sec. 4: 0.5; 0.9 oscillated)")
    p.add_argument("--beta2", type=common.unit_interval, default=0.999,
                   help="Adam beta2 (not stated in the paper; Adam's default)")
    common.add_run_args(p, presets=PRESETS, batch_size=128)  # Sec. 4: mini-batch size 128
    args = common.parse_args(p, argv, "dcgan")
    if args.image_size < 16 or args.image_size & (args.image_size - 1):
        p.error(f"--image-size must be a power of two, 16 or more (got {args.image_size}): each "
                f"stage of G doubles the side from 4x4")
    return args


# ---------------------------------------------------------------------------------------------
# Networks (Sec. 3 and Fig. 1)
# ---------------------------------------------------------------------------------------------
def _updown_kwargs(kernel_size: int) -> dict:
    # Both kernel sizes halve (conv) or double (transposed conv) the side exactly.
    return {"kernel_size": 4, "stride": 2, "padding": 1} if kernel_size == 4 else \
           {"kernel_size": 5, "stride": 2, "padding": 2}


class Generator(nn.Module):
    """z (B, nz) -> image (B, C, S, S) in [-1, 1].

    Fig. 1 at 64 px: project z to 4x4x(8*ngf), then transposed convs to 4*ngf (8x8), 2*ngf
    (16x16), ngf (32x32) and C (64x64). BN + ReLU after every layer but the last (tanh)."""

    def __init__(self, nz=100, ngf=128, channels=3, image_size=64, kernel_size=5):
        super().__init__()
        # DEVIATION: any power-of-two size (deviation 2); Fig. 1 is the 64 px case, n_up = 4.
        n_up = int(math.log2(image_size)) - 2    # doublings from 4x4 to image_size
        self.top = ngf * 2 ** (n_up - 1)         # channels at 4x4 (8 * ngf at 64 px)
        # "project and reshape": a matrix multiply, then BN + ReLU (Sec. 3)
        self.project = nn.Linear(nz, self.top * 4 * 4, bias=False)
        self.bn0 = nn.BatchNorm2d(self.top)
        kw = _updown_kwargs(kernel_size)
        extra = {"output_padding": 1} if kernel_size == 5 else {}
        layers, c = [], self.top
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, bias=False, **kw, **extra),
                       nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c //= 2
        # no batch norm on G's output layer (Sec. 3); tanh bounds images to [-1, 1]
        layers += [nn.ConvTranspose2d(c, channels, **kw, **extra), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(-1, self.top, 4, 4)  # (B, top, 4, 4)
        return self.body(F.relu(self.bn0(h)))          # (B, C, S, S)


class Discriminator(nn.Module):
    """image (B, C, S, S) -> one logit per image (B,).

    The mirror of G: strided convs ndf, 2*ndf, ... up to the 4x4 map, LeakyReLU(0.2), BN on
    every conv but the first; the last conv map is flattened into a single output (Sec. 3)."""

    def __init__(self, ndf=128, channels=3, image_size=64, kernel_size=5):
        super().__init__()
        n_down = int(math.log2(image_size)) - 2
        kw = _updown_kwargs(kernel_size)
        # no batch norm on D's input layer (Sec. 3)
        layers, c = [nn.Conv2d(channels, ndf, **kw), nn.LeakyReLU(0.2, True)], ndf
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(c, c * 2, bias=False, **kw), nn.BatchNorm2d(c * 2),
                       nn.LeakyReLU(0.2, True)]
            c *= 2
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(c * 4 * 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x).flatten(1)   # (B, 8*ndf * 4 * 4) at 64 px
        # DEVIATION: no final sigmoid; the losses take logits (deviation 1).
        return self.out(h).squeeze(1)  # (B,) logits


def weights_init(m: nn.Module) -> None:
    """Sec. 4: "All weights were initialized from a zero-centered Normal distribution with
    standard deviation 0.02." BN scales start around 1 (N(1, 0.02)), shifts at 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def sample_z(batch_size: int, nz: int, device, dist: str = "uniform") -> torch.Tensor:
    """Sec. 4 / Fig. 1: z ~ U(-1, 1)^nz; `dist="normal"` gives N(0, I), as most ports use."""
    if dist == "normal":
        return torch.randn(batch_size, nz, device=device)
    return torch.rand(batch_size, nz, device=device) * 2 - 1


# ---------------------------------------------------------------------------------------------
# Losses (Goodfellow et al. 2014, Eq. 1; used unchanged by DCGAN)
# ---------------------------------------------------------------------------------------------
def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    # max_D  E_x[log D(x)] + E_z[log(1 - D(G(z)))]
    # minimised as BCE(D(x), 1) + BCE(D(G(z)), 0), with D = sigmoid(logit).
    # DEVIATION: on logits (log-sum-exp form) rather than sigmoid then log: same value, stable.
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    # Non-saturating G loss (Goodfellow et al., Sec. 3): max_G E_z[log D(G(z))]
    # minimised as BCE(D(G(z)), 1) = -E[log D(G(z))].
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def discriminator_step(D, opt_D, real, fake):
    """One Adam step on D for d_loss. `fake` is detached: G receives no gradient."""
    # real and fake go through D as separate batches, so each has its own BN statistics
    real_logits, fake_logits = D(real), D(fake.detach())
    loss = d_loss(real_logits, fake_logits)
    opt_D.zero_grad(set_to_none=True)
    loss.backward()
    opt_D.step()
    return loss, torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean()


def generator_step(D, opt_G, fake):
    """One Adam step on G for g_loss, through the just-updated D; D's weights get no gradient."""
    D.requires_grad_(False)  # saves computing D's weight gradients, which nobody would use
    loss = g_loss(D(fake))
    opt_G.zero_grad(set_to_none=True)
    loss.backward()
    opt_G.step()
    D.requires_grad_(True)
    return loss


def build(args, channels: int, device):
    G = Generator(args.nz, args.ngf, channels, args.image_size, args.kernel_size).to(device)
    D = Discriminator(args.ndf, channels, args.image_size, args.kernel_size).to(device)
    G.apply(weights_init)
    D.apply(weights_init)
    return G, D


def train(args) -> dict:
    device = common.setup(args)
    data = common.load_dataset(args.dataset, args.data_root, args.image_size, args.channels,
                               args.download, device, args.dataset_size, args.workers)
    args.channels = data.channels  # saved with the checkpoint's flags
    G, D = build(args, args.channels, device)
    # Sec. 4: Adam, lr 0.0002, beta1 0.5; beta2 is not stated (Adam's default 0.999).
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, args.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, args.beta2))
    state = {"fixed_z": sample_z(64, args.nz, device, args.z_dist)}  # one latent for every sample grid
    run = common.Run("dcgan", args, {"G": G, "D": D, "opt_G": opt_G, "opt_D": opt_D}, state,
                     sample_fn=lambda: G(state["fixed_z"]), device=device)
    G, D = run.prepare(G, D)  # --compile, --amp, --channels-last; under torchrun DDP

    def train_step(real):
        fake = G(sample_z(real.size(0), args.nz, device, args.z_dist))
        # 1. update D: maximise log D(x) + log(1 - D(G(z)))
        loss_D, D_x, D_G_z = discriminator_step(D, opt_D, real, fake)
        # 2. update G on the same z, through the D just updated: maximise log D(G(z))
        loss_G = generator_step(D, opt_G, fake)
        return loss_D, loss_G, D_x, D_G_z

    step = run.fast_step(train_step)  # --fast: the whole step as one CUDA graph
    for real, _ in run.batches(data):
        loss_D, loss_G, D_x, D_G_z = step(real)
        run.log(loss_D=loss_D, loss_G=loss_G, D_x=D_x, D_G_z=D_G_z)
    return run.finish()


def generate(args) -> dict:
    """--generate N --resume RUN: N samples of the run's G (a grid and one PNG each)."""
    device = common.setup(args)
    G, _ = build(args, args.channels, device)  # (the checkpoint's flags say what to build)
    run = common.Run("dcgan", args, {"G": G}, device=device)
    run.generate(lambda n: G(sample_z(n, args.nz, device, args.z_dist)), args.generate)
    return {}


def main(argv=None) -> dict:
    args = parse_args(argv)
    return generate(args) if args.generate else train(args)


if __name__ == "__main__":
    common.cli(main)
