"""Wasserstein GAN — Arjovsky, Chintala, Bottou (2017), arXiv:1701.07875

The critic f is trained to estimate the Earth-Mover (Wasserstein-1) distance between the
data and the generator's distribution through the Kantorovich-Rubinstein duality,
W(P_r, P_g) = max over 1-Lipschitz f of E_x[f(x)] - E_z[f(G(z))]. Lipschitz-ness is enforced,
crudely, by clipping every weight of the critic to [-c, c] after each update. The generator
then minimises the estimate. Unlike a GAN's discriminator loss, the estimate is a learning
curve: it falls as the samples get better.

Paper -> code:
  Eq. (3), the dual form of W                         -> critic_loss (the paper's one function)
  Alg. 1 line 10, G's update                          -> generator_loss
  Alg. 1 line 7, w <- clip(w, -c, c)                  -> clip_weights
  Alg. 1 lines 2-8 (n_critic critic updates, each on a fresh real batch and fresh z,
      RMSProp, clip after the update)                  -> critic_step, train
  Alg. 1 lines 9-11 (one G update)                    -> generator_step, train
  Alg. 1 defaults: alpha = 5e-5, c = 0.01, m = 64, n_critic = 5          -> parse_args
  Sec. 4.3 (robustness): DCGAN critic with three generators: DCGAN; DCGAN "without batch
      normalization and with a constant number of filters"; a "4-layer ReLU-MLP with 512
      hidden units"                                    -> Critic, Generator (--g-arch)

Sign convention: the paper's. The critic maximises E f(x) - E f(G(z)) (large f = real), so
we minimise critic_loss = E f(G(z)) - E f(x); the EM estimate logged is W = -critic_loss.
(The official code uses the mirrored sign, f -> -f, which is the same method.)

Deviations from the paper (each tagged `# DEVIATION:` below):
  1. Critic schedule: the official code's by default (`--critic-schedule official`, see
     critic_iters): 100 critic iterations for the first 25 generator iterations and every
     500th, n_critic otherwise; its README says the paper left this out by mistake.
     `--critic-schedule constant` is Alg. 1 as printed.
  2. Images of any power-of-two size from 16 up (the paper shows 64 px); the built-in shapes
     data replaces LSUN bedrooms.
Choices where the paper is silent or sources differ (official code: martinarjovsky/WassersteinGAN):
  - Clipping covers every critic parameter, BN's scale and shift included (official code), and
    comes after each update (Alg. 1; the official code clamps before each critic step).
  - DCGAN networks as the official code: ngf = ndf = 64, 4x4 kernels, no biases, LeakyReLU 0.2,
    a final 4x4 valid conv to one unbounded output; init N(0, 0.02), BN scale N(1, 0.02)
    (the MLP's linear layers: PyTorch's default).
  - G without BN: `--g-arch nobn-constant` is the paper's (Sec. 4.3, ngf filters at every
    stage); `--g-arch nobn` is the official DCGAN_G_nobn (DCGAN's widths without BN).
  - MLP generator: "4-layer ReLU-MLP with 512 hidden units" read as the official MLP_G does:
    4 linear layers, 3 hidden ReLU layers, no output tanh (Fig. 3 words it otherwise).
  - An epoch is a pass of the critic over the data, as in the official code; training stops
    after the generator iteration in which the last epoch ends.
  - z ~ N(0, I)^100, batch 64 (the official code).
A step is one generator iteration with its critic iterations. An epoch on the 60,000 built-in
shapes is 937 critic batches, so `--epochs 5` is about 460 generator iterations (the first 25
take 2,500 critic batches).

Logged (metrics.csv, besides step, epoch and images_per_s; a row every 10 generator
iterations by default):
  W_estimate  the EM estimate E f(x) - E f(G(z)) on each critic batch, before the update,
              averaged over the critic iterations: the paper's learning curve, which should
              fall as the samples improve (a scaled estimate: the clipped critic is
              K-Lipschitz for some unknown K)
  loss_G      -E f(G(z)) at the generator update

Samples, scores and the evidence behind the choices: benchmarks/README.md.
Run:  python wgan.py --epochs 5                       (built-in shapes data, no download)
      python wgan.py --g-arch mlp --epochs 5          (the paper's MLP generator)
      python wgan.py --g-arch nobn-constant --epochs 5   (the paper's G without BN)
      python wgan.py --dataset lsun --data-root ./data/lsun
      python wgan.py --preset laptop                  (for a CPU, PRESETS below: up to an hour on one core)
"""
import argparse
import math

import torch
import torch.nn as nn

import common

# --preset laptop: the laptop tier's configuration (benchmarks/README.md), made of this script's
# own flags for a 2-core CPU: 32 px grayscale, half-width networks, 20 epochs.
# The losses, optimiser settings and update schedule stay the paper's.
PRESETS = {"laptop": "--image-size 32 --channels 1 --ngf 32 --ndf 32 --epochs 20"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Wasserstein GAN (Arjovsky et al., 2017)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lr", type=common.positive_float, default=5e-5,
                   help="RMSProp learning rate of critic and G (Alg. 1: alpha = 0.00005)")
    p.add_argument("--clip", type=common.positive_float, default=0.01,
                   help="clipping parameter c (Alg. 1: c = 0.01)")
    p.add_argument("--n-critic", type=common.positive_int, default=5,
                   help="critic iterations per generator iteration (Alg. 1: n_critic = 5)")
    p.add_argument("--critic-schedule", choices=("official", "constant"), default="official",
                   help="official: 100 critic iterations for the first 25 and every 500th generator "
                        "iteration (official code); constant: n_critic always (Alg. 1 as printed)")
    p.add_argument("--g-arch", choices=("dcgan", "nobn", "nobn-constant", "mlp"), default="dcgan",
                   help="generator (Sec. 4.3): DCGAN; DCGAN without batch norm at DCGAN's widths "
                        "(nobn, official code) or with ngf filters at every stage (nobn-constant, "
                        "the paper's); or a 4-layer ReLU MLP")
    p.add_argument("--nz", type=common.positive_int, default=100, help="latent size (z ~ N(0, I))")
    p.add_argument("--ngf", type=common.positive_int, default=64, help="DCGAN G width (official code: 64)")
    p.add_argument("--ndf", type=common.positive_int, default=64, help="critic width (official code: 64)")
    p.add_argument("--mlp-units", type=common.positive_int, default=512,
                   help="hidden units of the MLP generator (Sec. 4: 512)")
    common.add_run_args(p, presets=PRESETS, batch_size=64, log_every=10)  # Alg. 1: m = 64
    args = common.parse_args(p, argv, "wgan")
    if args.image_size < 16 or args.image_size & (args.image_size - 1):
        p.error(f"--image-size must be a power of two, 16 or more (got {args.image_size}): each "
                f"stage of the DCGAN networks doubles or halves the side, from or to 4x4")
    return args


# ---------------------------------------------------------------------------------------------
# Networks (Sec. 4; DCGAN_G, DCGAN_G_nobn, MLP_G and DCGAN_D of the official code)
# ---------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """z (B, nz) -> image (B, C, S, S).

    "dcgan": z as a 1x1 map, transposed conv 4x4 to 4x4x(8*ngf) at 64 px, then stride-2
    transposed convs halving the channels, BN + ReLU, tanh at the output. "nobn": the same
    without batch norm (official DCGAN_G_nobn). "nobn-constant": no batch norm and ngf
    channels at every stage (Sec. 4.3, "a constant number of filters"). "mlp": Linear(nz, 512)
    and two Linear(512, 512), ReLU after each, then a Linear to C*S*S (official MLP_G: 3 hidden
    layers, no tanh; see the docstring's choices)."""

    def __init__(self, arch="dcgan", nz=100, ngf=64, channels=3, image_size=64, mlp_units=512):
        super().__init__()
        self.shape = (channels, image_size, image_size)
        if arch == "mlp":
            self.net = nn.Sequential(
                nn.Linear(nz, mlp_units), nn.ReLU(True),
                nn.Linear(mlp_units, mlp_units), nn.ReLU(True),
                nn.Linear(mlp_units, mlp_units), nn.ReLU(True),
                nn.Linear(mlp_units, channels * image_size * image_size))
            return
        bn = (lambda c: nn.BatchNorm2d(c)) if arch == "dcgan" else (lambda c: nn.Identity())
        # Sec. 4.3: "a constant number of filters" (nobn-constant); else DCGAN's halving widths.
        constant = arch == "nobn-constant"
        # DEVIATION: any power-of-two size (deviation 2); 64 px gives the paper's network.
        c = ngf if constant else ngf * image_size // 8   # channels at 4x4 (8 * ngf at 64 px)
        layers = [nn.ConvTranspose2d(nz, c, 4, 1, 0, bias=False), bn(c), nn.ReLU(True)]
        for _ in range(int(math.log2(image_size)) - 3):
            c_out = c if constant else c // 2
            layers += [nn.ConvTranspose2d(c, c_out, 4, 2, 1, bias=False), bn(c_out), nn.ReLU(True)]
            c = c_out
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if isinstance(self.net[0], nn.Linear):
            return self.net(z).view(-1, *self.shape)       # (B, C, S, S)
        return self.net(z.view(*z.shape, 1, 1))             # (B, nz, 1, 1) -> (B, C, S, S)


class Critic(nn.Module):
    """image (B, C, S, S) -> f(x) (B,), an unbounded score: no sigmoid, no log.

    DCGAN's discriminator: conv 4x4 s2 to ndf + LeakyReLU(0.2) (no BN), then conv s2 + BN +
    LeakyReLU doubling the channels down to 4x4, then a 4x4 valid conv to one number."""

    def __init__(self, ndf=64, channels=3, image_size=64):
        super().__init__()
        layers, c = [nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)], ndf
        for _ in range(int(math.log2(image_size)) - 3):
            layers += [nn.Conv2d(c, c * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c * 2),
                       nn.LeakyReLU(0.2, True)]
            c *= 2
        layers += [nn.Conv2d(c, 1, 4, 1, 0, bias=False)]  # (B, 1, 1, 1)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)  # (B,)


def weights_init(m: nn.Module) -> None:
    """The official code's init: convs N(0, 0.02); BN scale N(1, 0.02), shift 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# The loss: the paper is these four functions
# ---------------------------------------------------------------------------------------------
def critic_loss(c_real: torch.Tensor, c_fake: torch.Tensor) -> torch.Tensor:
    # Eq. (3): W(P_r, P_θ) = max_{‖f‖_L ≤ 1} E_x[f(x)] - E_z[f(g_θ(z))]
    # The critic ascends the estimate; we minimise its negative: L_C = E[f(G(z))] - E[f(x)].
    return c_fake.mean() - c_real.mean()


def generator_loss(c_fake: torch.Tensor) -> torch.Tensor:
    # Alg. 1 line 10: θ <- θ - α RMSProp(∇_θ -(1/m) Σ f(g_θ(z))), i.e. G minimises -E[f(G(z))].
    return -c_fake.mean()


@torch.no_grad()
def clip_weights(critic: nn.Module, c: float) -> None:
    # Alg. 1 line 7: w <- clip(w, -c, c), for every parameter of the critic.
    for p in critic.parameters():
        p.clamp_(-c, c)


def critic_iters(gen_iteration: int, n_critic: int) -> int:
    # DEVIATION: the official code's schedule (deviation 1): "100 critic iterations for the
    # first 25 generator iterations and every 500th", n_critic otherwise.
    return 100 if gen_iteration < 25 or gen_iteration % 500 == 0 else n_critic


# ---------------------------------------------------------------------------------------------
# Training (Alg. 1)
# ---------------------------------------------------------------------------------------------
def critic_step(G, critic, opt_C, real, nz, clip) -> torch.Tensor:
    """Alg. 1 lines 3-7: one RMSProp step on the critic with a fresh z, then the clip.
    Returns the EM estimate W = E f(x) - E f(G(z)) on this batch (before the step)."""
    z = torch.randn(real.size(0), nz, device=real.device)
    with torch.no_grad():
        fake = G(z)                      # G gets no gradient from the critic's update
    loss = critic_loss(critic(real), critic(fake))
    opt_C.zero_grad(set_to_none=True)
    loss.backward()
    opt_C.step()
    clip_weights(critic, clip)           # after the update, as in Alg. 1
    return -loss.detach()


def generator_step(G, critic, opt_G, batch_size, nz, device) -> torch.Tensor:
    """Alg. 1 lines 9-11: one RMSProp step on G with a fresh z; the critic is not updated."""
    critic.requires_grad_(False)         # no gradient for the critic's weights at all
    z = torch.randn(batch_size, nz, device=device)
    loss = generator_loss(critic(G(z)))
    opt_G.zero_grad(set_to_none=True)
    loss.backward()
    opt_G.step()
    critic.requires_grad_(True)
    return loss.detach()


def build(args, channels: int, device):
    G = Generator(args.g_arch, args.nz, args.ngf, channels, args.image_size, args.mlp_units).to(device)
    critic = Critic(args.ndf, channels, args.image_size).to(device)
    G.apply(weights_init)
    critic.apply(weights_init)
    # RMSProp, no momentum: the paper reports that a momentum-based optimiser such as Adam on
    # the critic made training unstable at times.
    opt_G = torch.optim.RMSprop(G.parameters(), lr=args.lr)
    opt_C = torch.optim.RMSprop(critic.parameters(), lr=args.lr)
    return G, critic, opt_G, opt_C


def train(args) -> dict:
    device = common.setup(args)
    data = common.load_dataset(args.dataset, args.data_root, args.image_size, args.channels,
                               args.download, device, args.dataset_size, args.workers)
    args.channels = data.channels  # saved with the checkpoint's flags
    G, critic, opt_G, opt_C = build(args, args.channels, device)
    state = {"fixed_z": torch.randn(64, args.nz, device=device)}  # one latent for every grid
    run = common.Run("wgan", args, {"G": G, "critic": critic, "opt_G": opt_G, "opt_C": opt_C}, state,
                     sample_fn=lambda: G(state["fixed_z"]), device=device)
    # --compile, --amp, --channels-last; under torchrun DDP (the clip then acts on parameters that
    # are identical on every process)
    G, critic = run.prepare(G, critic)
    critic_update, generator_update = run.fast_step(critic_step), run.fast_step(generator_step)  # --fast: graphs
    batches = run.stream(data)
    for gen_iteration in run.loop():            # Alg. 1: "while θ has not converged do"
        n_critic = (critic_iters(gen_iteration, args.n_critic) if args.critic_schedule == "official"
                    else args.n_critic)
        for _ in range(n_critic):               # lines 2-8: train the critic n_critic times,
            real, _ = next(batches)             # a fresh real batch each time
            W = critic_update(G, critic, opt_C, real, args.nz, args.clip)
            run.log(W_estimate=W)               # the EM estimate: the paper's learning curve
        # lines 9-11: one generator update against the critic just trained, a batch of m fresh z
        loss_G = generator_update(G, critic, opt_G, real.size(0), args.nz, device)
        run.log(loss_G=loss_G)
    return run.finish()


def generate(args) -> dict:
    """--generate N --resume RUN: N samples of the run's G (a grid and one PNG each)."""
    device = common.setup(args)
    G, *_ = build(args, args.channels, device)  # (the checkpoint's flags say what to build)
    run = common.Run("wgan", args, {"G": G}, device=device)
    run.generate(lambda n: G(torch.randn(n, args.nz, device=device)), args.generate)
    return {}


def main(argv=None) -> dict:
    args = parse_args(argv)
    return generate(args) if args.generate else train(args)


if __name__ == "__main__":
    common.cli(main)
