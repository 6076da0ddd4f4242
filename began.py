"""BEGAN: Boundary Equilibrium Generative Adversarial Networks — Berthelot, Schumm, Metz (2017), arXiv:1703.10717

The discriminator is an autoencoder. Its loss on an image is how badly it reconstructs it,
L(v) = mean |v - D(v)|. D learns to reconstruct real images well and generated ones badly; G
learns to make images D reconstructs well. Instead of matching the data distributions, BEGAN
matches the distributions of these reconstruction losses (a lower bound of the Wasserstein
distance between them). A proportional controller k_t holds the two players at the
equilibrium E[L(G(z))] = γ E[L(x)]: γ, the diversity ratio, trades sample diversity (high γ)
for quality (low γ). The same quantities give M_global, a convergence measure that falls as
the samples improve, a learning curve most GANs lack.

Paper -> code (section titles; the numbering differs between the arXiv versions):
  Eq. (1), L(v) = |v - D(v)|^η with η = 1 (the pixel-wise L1 reconstruction loss) -> ae_loss
  "Boundary Equilibrium GAN", the BEGAN objective:
      L_D = L(x) - k_t L(G(z_D))   for D's parameters         -> d_loss, discriminator_step
      L_G = L(G(z_G))              for G's parameters         -> generator_step
      k_{t+1} = k_t + λ_k (γ L(x) - L(G(z_G))), k in [0, 1], k_0 = 0  -> update_k
  "Convergence measure": M_global = L(x) + |γ L(x) - L(G(z_G))|  -> convergence_measure
  "Model architecture", Fig. 1 (3x3 convs + ELU, no batch norm, filters growing linearly with
      each down-sampling, stride-2 sub-sampling, nearest-neighbour up-sampling, FC layers with no
      nonlinearity to and from h; G has the decoder's architecture, its own weights)
                                                              -> Encoder, Decoder, Discriminator,
                                                                 Generator
  "Optional improvements": vanishing residuals (for successive same-sized layers,
      in_{x+1} = carry * in_x + (1 - carry) * out_x, carry falling from 1 to 0 "over 16000
      steps (one epoch)")                                     -> ConvELU, carry_at, --vanishing-residual
      and skip connections (h0 up-sampled and concatenated after each up-sampling step of the
      decoder)                                                -> Decoder(skip=True), --skip
  Experiments: Adam, lr in [5e-5, 1e-4] "decaying by a factor of 2 when the measure of
      convergence stalls", N_h = N_z = 64, z ~ U(-1, 1)       -> parse_args, stalled, lr_factor, train

Deviations from the paper (each tagged `# DEVIATION:` below):
  1. Images of any power-of-two size from 16 up (the paper trains 32 to 256, "adding or
     removing convolution layers", always down to 8x8); the built-in shapes data replaces CelebA.
Choices where the paper is silent or vague (the paper has no official code; the accepted port
is carpedm20/BEGAN-tensorflow, whose models.py and trainer.py these follow unless stated):
  - The stall (`--lr-decay stall`, the default, the rule left commented out in the port's
    trainer.py): every --lr-window steps (3750, one epoch here) the window's mean M_global is
    compared with the previous window's; less than --stall-tol (1%) lower halves both rates.
    The port's own schedule, halving every 100,000 steps, is `--lr-decay fixed --lr-window 100000`.
  - Both rules halve down to --lr-floor 2e-5, the port's lr_lower_boundary (the paper names no
    floor; `--lr-floor 0` halves without end).
  - lr 1e-4, the top of the paper's range (the port: 8e-5); Adam's betas (0.9, 0.999), eps 1e-8,
    what the port trains with (it declares beta1 0.5, `--beta1 0.5`, but never passes it).
  - Update order: D's Adam step (real batch, z_D), then G's with a fresh z_G through the D just
    updated, then k_t, as the paper's separate z_D and z_G suggest (the port: one z, one pass).
  - Networks as the port's: encoder conv to n, then per stage two convs to n*(stage+1) and (but
    in the last stage) a stride-2 conv; decoder FC to 8x8xn, two convs at n per stage; no output
    tanh (grids are clamped to [-1, 1]); Xavier-uniform weights, zero biases; batch 16.
  - D sees the real and fake batches as one batch (no batch norm: only speed changes); under
    --amp the L1 losses are computed in float32.
  - γ = 0.7 (--gamma), the top of the paper's range 0.3-0.7, where the port and the paper's main
    results use 0.5: at 0.5, on the built-in shapes and on MNIST, k_t falls to 0 and G collapses
    onto one image (benchmarks/README.md, "began.py"). `--gamma 0.5` is the paper's setting.
  - λ_k = 0.001, n = 128 filters; k_t stays on the device and is checkpointed.
  - Vanishing residuals (--vanishing-residual, off as the paper's optional improvement): the
    author's block (tf_img_tech layers.py) on every conv whose input and output have the same
    shape, carry falling linearly from 1 to 0 over --carry-steps (16000, the paper's); carry is
    a function of the step and a buffer of the state dict.
A step is one D update and one G update on one real batch; an epoch is a pass over the real
data (60,000 shapes / 16 = 3,750 steps). The paper trains for hundreds of thousands of steps
(the port: 500,000); five epochs show the dynamics, not the paper's quality.

Logged (metrics.csv, besides step, epoch and images_per_s; M_global is also in losses.png):
  loss_D    D's loss L(x) - k_t L(G(z_D)), with the k_t of this step
  loss_G    G's loss L(G(z_G)), D's mean absolute reconstruction error on a fresh fake batch
            after D's update; at equilibrium γ times L_x
  L_x       L(x), D's mean absolute reconstruction error on the real batch, in the units of
            the pixel range [-1, 1] (0 is perfect)
  k_t       the k_t used in this step, in [0, 1]: it rises while D reconstructs G's samples
            too well (L(G(z)) < γ L(x)) and falls otherwise; it should settle inside (0, 1)
  M_global  L(x) + |γ L(x) - L(G(z_G))|, the convergence measure: it should fall as the samples
            improve; its window means drive the lr decay
  lr        both networks' Adam learning rate in this step, halving at each stall (stored as
            float32, so 1e-4 shows as 9.99999e-05)

Samples, scores and the evidence behind the choices: benchmarks/README.md.
Run:  python began.py --epochs 5                      (built-in shapes, 64 px, no download)
      python began.py --gamma 0.5 --epochs 5          (the paper's main setting: less diversity)
      python began.py --lr-decay fixed --lr-window 100000   (the port's lr schedule)
      python began.py --dataset celeba --data-root ./data
      python began.py --generate 64 --resume runs/began-shapes-<time>
      python began.py --preset laptop                 (for a CPU, PRESETS below: up to an hour on one core)
"""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

# --preset laptop: the laptop tier's configuration (benchmarks/README.md), made of this script's
# own flags for a 2-core CPU: 32 px grayscale, 16 filters, 10 epochs of 12,000 images (7,500 steps).
# The losses, optimiser settings and update schedule stay the paper's.
PRESETS = {"laptop": "--image-size 32 --channels 1 --n-filters 16 --dataset-size 12000 --epochs 10"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="BEGAN (Berthelot et al., 2017)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--gamma", type=common.positive_float, default=0.7,
                   help="diversity ratio γ = E[L(G(z))] / E[L(x)] the controller holds (paper: results shown "
                        "for 0.3-0.7, main setting 0.5; 0.7 here: at 0.5 G collapses on the built-in shapes and "
                        "on MNIST)")
    p.add_argument("--lambda-k", type=common.positive_float, default=0.001,
                   help="λ_k, the proportional gain of the k_t controller (paper: 0.001)")
    p.add_argument("--k0", type=float, default=0.0, help="k_0, the initial k_t, in [0, 1] (paper: 0)")
    p.add_argument("--n-filters", type=common.positive_int, default=128,
                   help="n, the filters of the first stage; stage i of the encoder has n*(i+1) (paper: 128)")
    p.add_argument("--nz", type=common.positive_int, default=64, help="N_z, the size of z ~ U(-1, 1) (paper: 64)")
    p.add_argument("--nh", type=common.positive_int, default=64,
                   help="N_h, the size of D's embedding h (paper: 64)")
    p.add_argument("--skip", action="store_true",
                   help="the paper's optional skip connections: h0 up-sampled and concatenated after each "
                        "up-sampling step of the decoder (\"Optional improvements\")")
    p.add_argument("--vanishing-residual", action=argparse.BooleanOptionalAction, default=False,
                   help="the paper's optional vanishing residuals: each 3x3 conv whose input and output have "
                        "the same shape computes carry * x + (1 - carry) * elu(conv(x)), carry annealed from 1 "
                        "to 0 (\"Optional improvements\")")
    p.add_argument("--carry-steps", type=common.positive_int, default=16000,
                   help="steps over which carry falls linearly from 1 to 0 (paper: \"over 16000 steps (one "
                        "epoch)\")")
    p.add_argument("--lr", type=common.positive_float, default=1e-4,
                   help="initial Adam learning rate of D and G (paper: in [5e-5, 1e-4]; port: 8e-5)")
    p.add_argument("--beta1", type=common.unit_interval, default=0.9,
                   help="Adam beta1 (the paper gives none; the port trains with TensorFlow's default 0.9: it "
                        "declares 0.5 but never passes it to its optimiser)")
    p.add_argument("--beta2", type=common.unit_interval, default=0.999,
                   help="Adam beta2 (port: TensorFlow's default 0.999)")
    p.add_argument("--lr-decay", choices=("stall", "fixed", "none"), default="stall",
                   help="halve both lrs when M_global stalls (paper), every --lr-window steps (port), or never")
    p.add_argument("--lr-window", type=common.positive_int, default=3750,
                   help="steps per window: M_global is averaged over each window and compared with the "
                        "previous one (stall), or the halving period (fixed; port: 100000)")
    p.add_argument("--lr-floor", type=common.non_negative_float, default=2e-5,
                   help="the lr never halves below this (port: lr_lower_boundary 2e-5; 0: no floor)")
    p.add_argument("--stall-tol", type=common.unit_interval, default=0.01,
                   help="a window stalled when its mean M_global is not this fraction below the previous "
                        "window's (the port's commented-out rule: 1%%)")
    common.add_run_args(p, presets=PRESETS, batch_size=16)  # the port's default batch size
    args = common.parse_args(p, argv, "began")
    if args.resume and "vanishing_residual" not in common.read_checkpoint(args.resume, "began")["args"]:
        args.vanishing_residual = False  # a run saved before the flag existed trained without them
    if args.image_size < 16 or args.image_size & (args.image_size - 1):
        p.error(f"--image-size must be a power of two, 16 or more (got {args.image_size}): the "
                f"autoencoder halves and doubles the side between 8x8 and the image size")
    if not 0 <= args.k0 <= 1:
        p.error(f"--k0 must be in [0, 1] (got {args.k0}): k_t is clipped to that interval")
    return args


# ---------------------------------------------------------------------------------------------
# Networks ("Model architecture", Fig. 1; the port's models.py)
# ---------------------------------------------------------------------------------------------
def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride, 1)


class ConvELU(nn.Module):
    """A 3x3 conv and an ELU; with residual=True and the same shape in and out, a vanishing
    residual ("Optional improvements": for successive same-sized layers the next layer's input
    is carry * in + (1 - carry) * out): x -> carry * x + (1 - carry) * elu(conv(x)). carry is
    a buffer (in the state dict, so a loaded network has the value it last trained with), set
    by the training loop from the step (carry_at); 1 at initialisation, where the block is the
    identity. Without residual, or where the shapes differ, it is elu(conv(x))."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, residual: bool = False):
        super().__init__()
        self.conv, self.act = _conv(c_in, c_out, stride), nn.ELU(inplace=True)
        self.residual = residual and c_in == c_out and stride == 1
        if self.residual:
            self.register_buffer("carry", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        return self.carry * x + (1 - self.carry) * y if self.residual else y


def carry_at(step: int, carry_steps: int) -> float:
    """The vanishing residuals' carry in training step `step` (0-based): 1 at the start, falling
    linearly to 0 at `carry_steps`, 0 after ("we start with carry = 1 and progressively decrease
    it to 0 over 16000 steps (one epoch)"; the paper does not say linearly)."""
    return max(0.0, 1.0 - step / carry_steps)


def set_carry(net: nn.Module, carry: float) -> None:
    """Set the carry of every vanishing-residual block in `net` (in place: no new tensors, so a
    CUDA graph or a compiled network reads the new value)."""
    for m in net.modules():
        if isinstance(m, ConvELU) and m.residual:
            m.carry.fill_(carry)


def _stages(image_size: int) -> int:
    # DEVIATION: any power-of-two size from 16 (deviation 1); 64 px gives 4 stages: 8, 16, 32, 64.
    return int(math.log2(image_size)) - 2


class Encoder(nn.Module):
    """image (B, C, S, S) -> embedding h (B, N_h).

    conv 3x3 to n, then per stage i = 0, 1, ...: two 3x3 convs to n*(i+1) and, but in the last
    stage, a stride-2 3x3 conv (the paper's sub-sampling); ELU after every conv; at 8x8 an FC
    layer to N_h with no nonlinearity. Filters grow linearly: n, 2n, 3n, 4n at 64 px. With
    vanishing_residual, the stride-1 convs that keep the channels are vanishing residuals."""

    def __init__(self, nh=64, n=128, channels=3, image_size=64, vanishing_residual=False):
        super().__init__()
        stages, vr = _stages(image_size), vanishing_residual
        layers, c = [ConvELU(channels, n)], n
        for i in range(stages):
            c_out = n * (i + 1)
            layers += [ConvELU(c, c_out, residual=vr), ConvELU(c_out, c_out, residual=vr)]
            if i < stages - 1:
                layers.append(ConvELU(c_out, c_out, stride=2))  # halves the side
            c = c_out
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c * 8 * 8, nh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))  # (B, stages*n, 8, 8) -> (B, N_h)


class Decoder(nn.Module):
    """h (B, N_h) -> image (B, C, S, S).

    FC to h0, an 8x8xn map (no nonlinearity), then per stage two 3x3 convs at n channels with
    ELU, 2x nearest-neighbour up-sampling between stages, and a last 3x3 conv to the image
    channels (no nonlinearity). With skip=True (the paper's skip connections), after each
    up-sampling h0 is up-sampled to the same side and concatenated, so that stage's first conv
    sees 2n. With vanishing_residual, the convs from n to n are vanishing residuals."""

    def __init__(self, nh=64, n=128, channels=3, image_size=64, skip=False, vanishing_residual=False):
        super().__init__()
        self.n, self.skip = n, skip
        self.fc = nn.Linear(nh, 8 * 8 * n)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.stages = nn.ModuleList(
            nn.Sequential(ConvELU(2 * n if skip and i > 0 else n, n, residual=vanishing_residual),
                          ConvELU(n, n, residual=vanishing_residual))
            for i in range(_stages(image_size)))
        self.out = _conv(n, channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h0 = self.fc(h).view(-1, self.n, 8, 8)  # (B, n, 8, 8)
        x = h0
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.up(x)                   # (B, n, 2s, 2s)
                if self.skip:
                    x = torch.cat([x, F.interpolate(h0, size=x.shape[-2:], mode="nearest")], 1)  # (B, 2n, 2s, 2s)
            x = stage(x)
        return self.out(x)                       # (B, C, S, S)


class Generator(Decoder):
    """z (B, N_z) -> image (B, C, S, S): the decoder's architecture with its own weights
    ("The generator G uses the same architecture (though not the same weights) as the
    discriminator decoder")."""


class Discriminator(nn.Module):
    """The autoencoder: image (B, C, S, S) -> its reconstruction (B, C, S, S)."""

    def __init__(self, nh=64, n=128, channels=3, image_size=64, skip=False, vanishing_residual=False):
        super().__init__()
        self.encoder = Encoder(nh, n, channels, image_size, vanishing_residual)
        self.decoder = Decoder(nh, n, channels, image_size, skip, vanishing_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def weights_init(m: nn.Module) -> None:
    """TF-slim's defaults, as the port uses: Xavier-uniform weights, zero biases."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)


def sample_z(batch_size: int, nz: int, device) -> torch.Tensor:
    """z ~ U(-1, 1)^N_z."""
    return torch.rand(batch_size, nz, device=device) * 2 - 1


# ---------------------------------------------------------------------------------------------
# Losses, the controller and the convergence measure (the paper is these functions)
# ---------------------------------------------------------------------------------------------
def ae_loss(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    # Eq. (1): L(v) = |v - D(v)|^η, η = 1, averaged over pixels, channels and the batch (the
    # port's reduce_mean), in float32 whatever the autocast dtype. A loss, not a score: D
    # lowers it on real images and (weighted by k_t) raises it on fakes; G lowers it on fakes.
    return (x.float() - recon.float()).abs().mean()


def d_loss(loss_real: torch.Tensor, loss_fake: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    # BEGAN objective: L_D = L(x) - k_t L(G(z_D)), minimised over D's parameters: reconstruct
    # real images well and, weighted by k_t, fake ones badly. (L_G = L(G(z_G)) is ae_loss itself.)
    return loss_real - k * loss_fake


def update_k(k, gamma: float, loss_real, loss_fake, lambda_k: float):
    # BEGAN objective: k_{t+1} = k_t + λ_k (γ L(x) - L(G(z_G))), with k_t ∈ [0, 1] (clipped,
    # as the port does). Python numbers give a float; tensors give a tensor on their device
    # (the training loop's case: no host synchronisation).
    k = k + lambda_k * (gamma * loss_real - loss_fake)
    return torch.clamp(k, 0.0, 1.0) if torch.is_tensor(k) else min(max(k, 0.0), 1.0)


def convergence_measure(loss_real, loss_fake, gamma: float):
    # "Convergence measure": M_global = L(x) + |γ L(x) - L(G(z_G))|: the reconstruction of real
    # images plus the distance from the equilibrium. Falls as training converges. Python
    # numbers give a float, tensors a tensor.
    return loss_real + abs(gamma * loss_real - loss_fake)


def stalled(window_mean: float, previous_mean: float, tol: float) -> bool:
    """Experiments: lr "decaying by a factor of 2 when the measure of convergence stalls". A
    window stalled when its mean M_global is not at least `tol` (relative) below the previous
    window's mean (the rule commented out in the port's trainer.py, with tol = 1%)."""
    return window_mean > (1 - tol) * previous_mean


def lr_factor(state: dict, decay: str, window: int, tol: float) -> float:
    """At the end of a window of `window` steps: 0.5 to halve the learning rates, else 1.

    stall: the window's mean M_global (state["window_sum"] / window) against the previous
    window's (state["previous_mean"], inf at first); fixed: always 0.5 (the port's schedule);
    none: always 1. Starts the next window. One host sync per window (stall only)."""
    factor = 0.5 if decay == "fixed" else 1.0
    if decay == "stall":
        mean = (state["window_sum"] / window).item()
        factor = 0.5 if stalled(mean, state["previous_mean"], tol) else 1.0
        state["previous_mean"] = mean
    state["window_sum"].zero_()
    return factor


def decayed_lr(lr: float, factor: float, floor: float) -> float:
    """lr * factor, but not below `floor` (the port: max(lr / 2, lr_lower_boundary)); a rate
    already below the floor stays where it is."""
    return max(lr * factor, min(lr, floor))


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def discriminator_step(D, opt_D, real, fake, k):
    """One Adam step on D for L_D = L(x) - k_t L(G(z_D)). `fake` is detached: G gets no
    gradient. Returns (L_D, L(x)), detached."""
    fake = fake.detach()                              # the target of L(G(z_D)) too
    recon = D(torch.cat([real, fake]))                # (2B, C, S, S): one pass, no batch norm
    recon_real, recon_fake = recon.chunk(2)           # (B, C, S, S) each
    loss_real = ae_loss(real, recon_real)
    loss = d_loss(loss_real, ae_loss(fake, recon_fake), k)
    opt_D.zero_grad(set_to_none=True)
    loss.backward()
    opt_D.step()
    return loss.detach(), loss_real.detach()


def generator_step(G, D, opt_G, batch_size, nz, device):
    """One Adam step on G for L_G = L(G(z_G)), a fresh z_G, through the just-updated D. The
    gradient reaches G along both paths, G(z) and D(G(z)); D's weights get none."""
    D.requires_grad_(False)  # saves computing D's weight gradients, which nobody would use
    fake = G(sample_z(batch_size, nz, device))
    loss = ae_loss(fake, D(fake))
    opt_G.zero_grad(set_to_none=True)
    loss.backward()
    opt_G.step()
    D.requires_grad_(True)
    return loss.detach()


def build(args, channels: int, device):
    vr = getattr(args, "vanishing_residual", False)  # (absent from the flags of older runs: off)
    G = Generator(args.nz, args.n_filters, channels, args.image_size, args.skip, vr).to(device)
    D = Discriminator(args.nh, args.n_filters, channels, args.image_size, args.skip, vr).to(device)
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
    # Method state, saved in every checkpoint: k_t, and the lr-decay rule's running window.
    state = {"fixed_z": sample_z(64, args.nz, device),           # one latent for every sample grid
             "k_t": torch.tensor(args.k0, device=device),        # k_0
             "window_sum": torch.zeros((), device=device),       # Σ M_global over the current window
             "previous_mean": math.inf}                          # mean M_global of the previous window
    run = common.Run("began", args, {"G": G, "D": D, "opt_G": opt_G, "opt_D": opt_D}, state,
                     sample_fn=lambda: G(state["fixed_z"]), device=device)
    G, D = run.prepare(G, D)  # --compile, --amp, --channels-last; under torchrun DDP

    def train_step(real, k_t):
        with torch.no_grad():
            fake = G(sample_z(real.size(0), args.nz, device))   # G(z_D), no graph to G
        # 1. D: minimise L(x) - k_t L(G(z_D))
        loss_D, loss_real = discriminator_step(D, opt_D, real, fake, k_t)
        # 2. G: minimise L(G(z_G)) with a fresh z_G, through the D just updated
        loss_G = generator_step(G, D, opt_G, real.size(0), args.nz, device)
        return loss_D, loss_real, loss_G

    updates = run.fast_step(train_step)  # --fast: both updates as one CUDA graph
    batches = run.stream(data)
    for step in run.loop():                   # one real batch per step
        real, _ = next(batches)
        if args.vanishing_residual:           # this step's carry, from the step alone: exact on resume
            for net in (G, D):
                set_carry(net, carry_at(step, args.carry_steps))
        loss_D, loss_real, loss_G = updates(real, state["k_t"])
        # under torchrun: the global batch's losses (the mean over the processes), so that k_t,
        # M_global and the lr rule agree on every process
        loss_real, loss_G = common.all_reduce(torch.stack([loss_real, loss_G])).unbind()
        # 3. the convergence measure and the controller, from this step's losses (detached)
        M_global = convergence_measure(loss_real, loss_G, args.gamma)
        run.log(loss_D=loss_D, loss_G=loss_G, L_x=loss_real, k_t=state["k_t"], M_global=M_global,
                lr=opt_G.param_groups[0]["lr"])         # k_t and lr: the values this step used
        state["k_t"] = update_k(state["k_t"], args.gamma, loss_real, loss_G, args.lambda_k)
        state["window_sum"] += M_global
        # 4. at the end of a window: halve both learning rates if M_global stalled (--lr-decay)
        if (step + 1) % args.lr_window == 0:
            factor = lr_factor(state, args.lr_decay, args.lr_window, args.stall_tol)
            for group in opt_G.param_groups + opt_D.param_groups:
                group["lr"] = decayed_lr(group["lr"], factor, args.lr_floor)
    return run.finish()


def generate(args) -> dict:
    """--generate N --resume RUN: N samples of the run's G (a grid and one PNG each)."""
    device = common.setup(args)
    G, *_ = build(args, args.channels, device)  # (the checkpoint's flags say what to build)
    run = common.Run("began", args, {"G": G}, device=device)
    run.generate(lambda n: G(sample_z(n, args.nz, device)), args.generate)
    return {}


def main(argv=None) -> dict:
    args = parse_args(argv)
    return generate(args) if args.generate else train(args)


if __name__ == "__main__":
    common.cli(main)
