"""Autoencoding beyond pixels using a learned similarity metric — Larsen, Sønderby, Larochelle,
Winther (2016), arXiv:1512.09300

VAE/GAN: a variational autoencoder whose decoder is also a GAN's generator. The VAE's
element-wise (pixel) reconstruction error is replaced by an error in the feature space of the
GAN discriminator's l-th layer, Dis_l: a similarity metric learned by the GAN, which tolerates
small translations that a pixel error punishes, and so gives sharper reconstructions and
samples. Each of the three networks is trained on its own loss: the encoder on the VAE terms,
the discriminator on the GAN term, the decoder on a γ-weighted mix of both.

Paper -> code:
  L_prior = KL(q(z|x) ‖ N(0, I)), the VAE's prior term              -> kl_loss
  L_llike^Dis_l: a Gaussian with identity covariance on Dis_l's features -> feature_recon_loss
  L_GAN with both kinds of fake, Dec(z_p) and Dec(Enc(x))            -> discriminator_loss
  Alg. 1 (one forward pass, then the three updates):
      θ_Enc ← -∇(L_prior + L_llike)                                  -> encoder_loss
      θ_Dec ← -∇(γ L_llike - L_GAN)                                  -> decoder_loss
      θ_Dis ← -∇L_GAN                                                -> discriminator_loss
      "Limiting error signals to relevant networks"                  -> set_gradients
  The 64x64 architecture (5x5 kernels, BN, z of 128), Dis_l = the 4th conv -> Encoder, Decoder,
                                                                         Discriminator
  RMSProp, lr 3e-4, batch 64                                         -> parse_args, build
  The pixel-VAE baseline of the comparisons (same networks)          -> --recon pixel

Sign convention: Alg. 1 has Dis *descend* L_GAN and Dec ascend it. We keep Dis(x) =
sigmoid(logit) = P(x is real), so Dis descends L_GAN = -[log Dis(x) + log(1 - Dis(x̃)) +
log(1 - Dis(x_p))], and the decoder's GAN gradient is the exact negative of Dis's: the minimax
game of Alg. 1 and the official code (andersbll/autoencoding_beyond_pixels), not the
non-saturating generator loss.

Normalisation and γ: L_llike is ½ Σ (Dis_l(x̃) - Dis_l(x))² over an image's features, L_prior a
sum over the latent dimensions, each L_GAN term a mean of -log(...); all then averaged over the
batch. The official code sums over the batch instead (same ratios), so its CelebA weight
recon_vs_gan_weight w = 1e-6 is γ = w / (1 - w) ≈ 1e-6 here, the default.

Deviations from the paper (each tagged `# DEVIATION:` below):
  1. Losses on logits (binary_cross_entropy_with_logits / softplus) rather than a sigmoid and
     a log: the same function, numerically stable. Dis therefore has no final sigmoid.
  2. Any image size that is a multiple of 8 from 16 up (the paper's networks are the 64 px
     case); the built-in shapes data replaces CelebA.
Choices where the paper is silent or sources differ (official code: architectures.py, aegan.py):
  - Dis_l is the 4th conv's raw output, before its BN and ReLU (the official recon_depth = 9).
  - The encoder's dense layer has 2048 units (the paper); the official code has 1024.
  - Dis sees [x, x̃, x_p] as one batch (one set of BN statistics; the official code runs [x̃, x]
    apart for Dis_l). --no-recon-fakes leaves x̃'s logits out of L_GAN (official CelebA script).
  - Dec decodes [z, z_p] as one batch (one pass; Alg. 1 and the official code decode z alone
    for L_llike), so in training x̃ shares BN statistics with x_p; --recon pixel has no z_p.
  - The three L_GAN terms weigh equally (the paper's sum); the official code weighs real
    against generated 1:1, i.e. each fake kind half as much as here.
  - RMSProp smoothing 0.9 (the official code's deeppy default; PyTorch's is 0.99), constant
    learning rate and no weight decay (the official code anneals the rate and uses 1e-5 decay).
  - PyTorch's default initialisation. Reconstruction grids and the held-out error decode
    z = μ(x) (the official encoder samples z also at test time); training samples z as both do.
  - The official update gating is `--gate`, off as Alg. 1 has none: Dis's update is skipped
    when -log Dis(x) or -log(1 - Dis(fake)) is below --equilibrium - --margin (0.68 - 0.35),
    the decoder's when one is above 0.68 + 0.35; one host sync per step.
  - `--width` w scales every network (default 32, the paper's widths at 64 px).
An epoch is one pass over the data, one step (all three updates) per batch: 937 steps of 64 on
the 60,000 built-in shapes.

Reconstructions: at the end of training and with `--generate N`, reconstructions.png holds rows
of 8 held-out inputs (the shapes' test stream; other datasets: their first images), each above
its row of Dec(μ(x)); their mean squared pixel error is printed and returned as heldout_recon_mse.

Logged (metrics.csv, besides step, epoch and images_per_s):
  L_prior          KL(q(z|x) ‖ N(0, I)), summed over the latent dimensions, mean over the batch
  L_llike          ½‖Dis_l(x̃) - Dis_l(x)‖² per image, batch mean (--recon pixel: ½‖x̃ - x‖²)
  recon_mse        mean squared pixel error of the training reconstructions x̃ = Dec(z), z
                   sampled (a monitor only, in both modes: the paper's pixel-space comparison)
  L_GAN            Dis's loss -[log Dis(x) + log(1 - Dis(x̃)) + log(1 - Dis(x_p))] (without the
                   x̃ term under --no-recon-fakes); 3 ln 2 ≈ 2.08 when Dis cannot tell
  loss_Dec         the decoder's loss γ L_llike - L_GAN
  D_x, D_x_tilde, D_x_p   mean Dis(·) (probability "real") on the real batch, the
                   reconstructions and the prior samples
  Dec_updated, Dis_updated   with --gate: the fraction of steps in which each was updated

Samples, scores and the evidence behind the choices: benchmarks/README.md.
Run:  python vaegan.py --epochs 5                    (built-in shapes, 64 px, no download)
      python vaegan.py --recon pixel --epochs 5      (the plain VAE baseline, same networks)
      python vaegan.py --generate 64 --resume runs/vaegan-shapes-<time>
      python vaegan.py --preset laptop               (for a CPU, PRESETS below: up to an hour on one core)
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

# --preset laptop: the laptop tier's configuration (benchmarks/README.md), made of this script's
# own flags for a 2-core CPU: 32 px grayscale, width 16, batch 32, 2 epochs of 40,000 images
# (4 epochs scored worse: FD-shapes 846 against 605, benchmarks/README.md).
# The losses, optimiser settings and update schedule stay the paper's.
PRESETS = {"laptop": "--image-size 32 --channels 1 --width 16 --batch-size 32 --dataset-size 40000 "
                     "--epochs 2"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="VAE/GAN (Larsen et al., 2016)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--recon", choices=("dis", "pixel"), default="dis",
                   help="reconstruction error: dis = in Dis_l's feature space (VAE/GAN); pixel = a plain "
                        "VAE with a Gaussian pixel likelihood and no GAN (the paper's baseline)")
    p.add_argument("--gamma", type=common.positive_float, default=1e-6,
                   help="γ, the weight of L_llike against L_GAN in the decoder's loss (Alg. 1); with "
                        "per-image sums (see the docstring) 1e-6 is the official CelebA setting")
    p.add_argument("--no-recon-fakes", action="store_true",
                   help="leave Dec(Enc(x)) out of L_GAN, as the official CelebA script does (the paper "
                        "uses both Dec(z_p) and Dec(Enc(x)))")
    p.add_argument("--gate", action="store_true",
                   help="official code: skip Dis's update when -log Dis(x) or -log(1 - Dis(fake)) is below "
                        "equilibrium - margin, and Dec's when one is above equilibrium + margin")
    p.add_argument("--equilibrium", type=common.positive_float, default=0.68,
                   help="--gate: the balanced value of each GAN cost (official code: 0.68, about ln 2)")
    p.add_argument("--margin", type=common.positive_float, default=0.35,
                   help="--gate: how far from equilibrium a cost may go (official code: 0.35)")
    p.add_argument("--lr", type=common.positive_float, default=3e-4,
                   help="RMSProp learning rate of all three networks (paper: 3e-4)")
    p.add_argument("--alpha", type=common.unit_interval, default=0.9,
                   help="RMSProp smoothing constant (not in the paper; official code, deeppy: 0.9)")
    p.add_argument("--nz", type=common.positive_int, default=128, help="latent size (paper: 128)")
    p.add_argument("--width", type=common.positive_int, default=32,
                   help="w: channels of Dis's first conv and of Dec's last hidden layer; all other widths "
                        "are fixed multiples (paper: 32, giving 64-128-256 in Enc, 32-128-256-256 in Dis)")
    common.add_run_args(p, presets=PRESETS, batch_size=64)  # paper: batch 64
    args = common.parse_args(p, argv, "vaegan")
    if args.image_size < 16 or args.image_size % 8:
        p.error(f"--image-size must be a multiple of 8, 16 or more (got {args.image_size}): the "
                f"encoder and Dis halve the side three times")
    if args.batch_size < 2:
        p.error(f"--batch-size must be at least 2 (got {args.batch_size}): the BatchNorm1d after the encoder's, "
                f"the decoder's and Dis's dense layers normalises each unit over the batch, which takes two "
                f"images or more")
    return args


# ---------------------------------------------------------------------------------------------
# Networks (the paper's 64x64 architecture; official architectures.py, img64x64)
# ---------------------------------------------------------------------------------------------
def _down(c_in: int, c_out: int) -> list:
    # 5x5 conv, stride 2 (halves the side), BN, ReLU; no bias before BN
    return [nn.Conv2d(c_in, c_out, 5, 2, 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]


def _up(c_in: int, c_out: int) -> list:
    # 5x5 transposed conv, stride 2 (doubles the side exactly), BN, ReLU
    return [nn.ConvTranspose2d(c_in, c_out, 5, 2, 2, output_padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(True)]


class Encoder(nn.Module):
    """x (B, C, S, S) -> (μ, log σ²), each (B, nz): the parameters of q(z|x).

    At 64 px (w = 32): convs 64, 128, 256 to 8x8 (BN + ReLU), dense 2048 (BN + ReLU), then two
    linear maps to μ and log σ²."""

    def __init__(self, nz=128, channels=3, image_size=64, width=32):
        super().__init__()
        w, s = width, image_size // 8
        # DEVIATION: any multiple of 8 from 16 (deviation 2); s = 8 at the paper's 64 px.
        self.convs = nn.Sequential(*_down(channels, 2 * w), *_down(2 * w, 4 * w), *_down(4 * w, 8 * w))
        self.dense = nn.Sequential(nn.Linear(8 * w * s * s, 64 * w, bias=False), nn.BatchNorm1d(64 * w),
                                   nn.ReLU(True))
        self.mu = nn.Linear(64 * w, nz)
        self.logvar = nn.Linear(64 * w, nz)

    def forward(self, x: torch.Tensor):
        h = self.dense(self.convs(x).flatten(1))  # (B, 8w, s, s) -> (B, 8w*s*s) -> (B, 64w)
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    """z (B, nz) -> image (B, C, S, S) in [-1, 1]; also the GAN's generator.

    At 64 px (w = 32): dense to 256x8x8 (BN + ReLU), transposed convs 256, 128, 32 to 64x64
    (BN + ReLU), a 5x5 conv to C channels, tanh."""

    def __init__(self, nz=128, channels=3, image_size=64, width=32):
        super().__init__()
        w, s = width, image_size // 8
        self.shape = (8 * w, s, s)
        self.dense = nn.Sequential(nn.Linear(nz, 8 * w * s * s, bias=False), nn.BatchNorm1d(8 * w * s * s),
                                   nn.ReLU(True))
        self.convs = nn.Sequential(*_up(8 * w, 8 * w), *_up(8 * w, 4 * w), *_up(4 * w, w),
                                   nn.Conv2d(w, channels, 5, 1, 2), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.convs(self.dense(z).view(-1, *self.shape))  # (B, 8w, s, s) -> (B, C, S, S)


class Discriminator(nn.Module):
    """image (B, C, S, S) -> (logit (B,), Dis_l features (B, 8w, S/8, S/8)).

    At 64 px (w = 32): conv 32 (stride 1) + ReLU, convs 128, 256, 256 (stride 2, BN + ReLU),
    dense 512 (BN + ReLU), one logit. Dis_l is the 4th conv's output, 256x8x8, taken before its
    BN and ReLU (the official code's recon_depth = 9)."""

    def __init__(self, channels=3, image_size=64, width=32):
        super().__init__()
        w, s = width, image_size // 8
        self.to_dis_l = nn.Sequential(
            nn.Conv2d(channels, w, 5, 1, 2), nn.ReLU(True), *_down(w, 4 * w), *_down(4 * w, 8 * w),
            nn.Conv2d(8 * w, 8 * w, 5, 2, 2, bias=False))  # the 4th conv: Dis_l
        self.head = nn.Sequential(
            nn.BatchNorm2d(8 * w), nn.ReLU(True), nn.Flatten(),  # (B, 8w, s, s) -> (B, 8w*s*s)
            nn.Linear(8 * w * s * s, 16 * w, bias=False), nn.BatchNorm1d(16 * w), nn.ReLU(True),
            # DEVIATION: no final sigmoid; the losses take logits (deviation 1).
            nn.Linear(16 * w, 1))

    def forward(self, x: torch.Tensor):
        features = self.to_dis_l(x)                         # (B, 8w, s, s)
        return self.head(features).squeeze(1), features     # (B,), (B, 8w, s, s)


# ---------------------------------------------------------------------------------------------
# Losses (all minimised; see the docstring for the sign convention and the normalisation)
# ---------------------------------------------------------------------------------------------
def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    # L_prior = D_KL(q(z|x) ‖ p(z)), p(z) = N(0, I), q(z|x) = N(μ, diag σ²):
    #         = -½ Σ_j (1 + log σ_j² - μ_j² - σ_j²), summed over the latent dims, mean over the batch.
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean()


def feature_recon_loss(feat_fake: torch.Tensor, feat_real: torch.Tensor) -> torch.Tensor:
    # L_llike^Dis_l = -E_q(z|x)[log p(Dis_l(x) | z)],  p(Dis_l(x) | z) = N(Dis_l(x) | Dis_l(x̃), I)
    #              = ½ ‖Dis_l(x̃) - Dis_l(x)‖² + const, summed over the features, mean over the batch.
    # The target Dis_l(x) is detached: it is data for this loss, not something to move.
    # (--recon pixel calls this on the images themselves: the VAE's Gaussian pixel likelihood.)
    diff = feat_fake.float() - feat_real.detach().float()
    return 0.5 * diff.pow(2).flatten(1).sum(1).mean()


def discriminator_loss(real_logits: torch.Tensor, recon_logits, prior_logits: torch.Tensor) -> torch.Tensor:
    # L_GAN = log Dis(x) + log(1 - Dis(Dec(z_p))) + log(1 - Dis(Dec(Enc(x)))), Dis = sigmoid(logit),
    # returned negated (mean over each batch): what Dis descends in Alg. 1 (see the docstring).
    # recon_logits None leaves out the reconstructions (--no-recon-fakes).
    # DEVIATION: on logits (deviation 1): -log sigmoid(l) = softplus(-l), -log(1 - sigmoid(l)) = softplus(l).
    loss = F.softplus(-real_logits).mean() + F.softplus(prior_logits).mean()
    if recon_logits is not None:
        loss = loss + F.softplus(recon_logits).mean()
    return loss


def encoder_loss(l_prior: torch.Tensor, l_llike: torch.Tensor) -> torch.Tensor:
    # Alg. 1: θ_Enc ← -∇_θEnc (L_prior + L_llike^Dis_l). No GAN term: see set_gradients.
    return l_prior + l_llike


def decoder_loss(l_llike: torch.Tensor, l_gan: torch.Tensor, gamma: float) -> torch.Tensor:
    # Alg. 1: θ_Dec ← -∇_θDec (γ L_llike^Dis_l - L_GAN): Dec ascends the L_GAN that Dis descends.
    return gamma * l_llike - l_gan


# ---------------------------------------------------------------------------------------------
# Training (Alg. 1)
# ---------------------------------------------------------------------------------------------
def forward(E, Dec, D, x: torch.Tensor, args) -> dict:
    """One forward pass of Alg. 1: every network's loss from the same x, ε and z_p.
    D is None with --recon pixel (a plain VAE: no GAN, no Dis)."""
    B = x.size(0)
    mu, logvar = (t.float() for t in E(x))                    # (B, nz) each
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, device=x.device)  # z ~ q(z|x)
    z_p = [] if D is None else [torch.randn(mu.shape, device=x.device)]        # z_p ~ N(0, I)
    # The decoder's graph starts at a detached copy of the latents: see set_gradients.
    z_dec = torch.cat([z.detach(), *z_p]).requires_grad_()     # (B or 2B, nz)
    # x̃ = Dec(z), then x_p = Dec(z_p), in one pass: one set of BN statistics (see the docstring)
    x_dec = Dec(z_dec)                                         # (B or 2B, C, S, S)
    out = {"z": z, "z_dec": z_dec, "L_prior": kl_loss(mu, logvar),
           "recon_mse": (x_dec[:B].detach().float() - x).pow(2).mean()}
    if D is None:
        out["L_llike"] = feature_recon_loss(x_dec, x)          # ½ ‖x̃ - x‖²: pixels
        out["loss_Enc"] = encoder_loss(out["L_prior"], out["L_llike"])
        out["loss_Dec"] = out["L_llike"]
        return out
    # Dis on [x, x̃, x_p] in one batch: one set of BN statistics for all three.
    logits, features = D(torch.cat([x, x_dec]))                # (3B,), (3B, 8w, s, s)
    real, recon, prior = logits.float().split(B)
    out["L_llike"] = feature_recon_loss(features[B:2 * B], features[:B])  # Dis_l(x̃) vs Dis_l(x)
    out["L_GAN"] = discriminator_loss(real, None if args.no_recon_fakes else recon, prior)
    out["loss_Enc"] = encoder_loss(out["L_prior"], out["L_llike"])
    out["loss_Dec"] = decoder_loss(out["L_llike"], out["L_GAN"], args.gamma)
    out["logits"] = (real, recon, prior)
    return out


def set_gradients(out: dict, E, Dec, D=None) -> None:
    """Set each network's .grad to the gradient of its own loss and nothing else ("Limiting
    error signals to relevant networks"). How this is ensured:
      1. The decoder's graph starts at z_dec, a detached copy of z: nothing computed from the
         decoder's output (x̃, x_p, Dis's logits, L_GAN) has an autograd path into the encoder,
         however it is differentiated (the official code's ScaleGradient(0) on z).
      2. The encoder's one bridge is written out: ∂L_llike/∂z, carried back through
         z = μ + σε together with L_prior. So the encoder gets ∇loss_Enc = ∇(L_prior + L_llike),
         and no L_GAN.
      3. torch.autograd.grad(loss, parameters of one network) gives that loss's gradient for that
         network only, and it is assigned, not accumulated: Dis gets ∇L_GAN without L_llike's
         gradient (Dis never minimises the feature error), Dec gets ∇(γL_llike - L_GAN).
    """
    B = out["z"].size(0)
    (g_z,) = torch.autograd.grad(out["L_llike"], out["z_dec"], retain_graph=True)
    enc_params = list(E.parameters())
    grads = [(enc_params, torch.autograd.grad([out["L_prior"], out["z"]], enc_params,
                                              [torch.ones_like(out["L_prior"]), g_z[:B]]))]
    dec_params = list(Dec.parameters())
    grads.append((dec_params, torch.autograd.grad(out["loss_Dec"], dec_params, retain_graph=D is not None)))
    if D is not None:
        dis_params = list(D.parameters())
        grads.append((dis_params, torch.autograd.grad(out["L_GAN"], dis_params)))
    for params, gs in grads:
        for p, g in zip(params, gs):
            p.grad = g


def gate(real_logits, fake_logits, equilibrium: float, margin: float, mean_over_processes=None):
    """The official code's update gating: (update Dec?, update Dis?). Reads two numbers from
    the device, so --gate costs one host sync per step. Under torchrun train passes
    `mean_over_processes` (common.all_reduce): the costs of the global batch, so every process
    gates alike."""
    real_cost, fake_cost = F.softplus(-real_logits).mean(), F.softplus(fake_logits).mean()
    if mean_over_processes is not None:
        real_cost, fake_cost = mean_over_processes(torch.stack([real_cost, fake_cost])).unbind()
    lo, hi = torch.stack([torch.minimum(real_cost, fake_cost), torch.maximum(real_cost, fake_cost)]).tolist()
    update_dis = lo >= equilibrium - margin   # Dis too far ahead: a cost near 0
    update_dec = hi <= equilibrium + margin   # Dis too far behind: a cost far above ln 2
    if not (update_dec or update_dis):
        return True, True
    return update_dec, update_dis


def build(args, channels: int, device):
    E = Encoder(args.nz, channels, args.image_size, args.width).to(device)
    Dec = Decoder(args.nz, channels, args.image_size, args.width).to(device)
    D = None if args.recon == "pixel" else Discriminator(channels, args.image_size, args.width).to(device)
    # RMSProp with the paper's learning rate, one optimiser per network (each its own loss).
    opts = {name: torch.optim.RMSprop(net.parameters(), lr=args.lr, alpha=args.alpha)
            for name, net in (("Enc", E), ("Dec", Dec), ("Dis", D)) if net is not None}
    return E, Dec, D, opts


@torch.no_grad()
def reconstruct(E, Dec, x: torch.Tensor) -> torch.Tensor:
    """Dec(μ(x)) in eval mode (BN on running statistics, as the official code's test phase);
    z = μ is our choice (the official encoder samples z ~ q(z|x) there too)."""
    modes = E.training, Dec.training
    E.eval()
    Dec.eval()
    x_rec = torch.cat([Dec(E(chunk)[0]) for chunk in x.split(256)]).float()
    E.train(modes[0])
    Dec.train(modes[1])
    return x_rec


def held_out(args, n: int, device) -> torch.Tensor:
    """n images for reconstruction grids: shapes' test stream (never trained on), else the
    first n images of the dataset."""
    if args.dataset == "shapes":
        data = common.shapes_data(n, args.image_size, args.channels, device, stream=1)
    else:
        data = common.load_dataset(args.dataset, args.data_root, args.image_size, args.channels,
                                   False, device, n, 0)
    return next(data.batches(min(n, len(data)), 0, args.seed))[0]


def save_reconstructions(E, Dec, x: torch.Tensor, path, nrow: int = 8) -> torch.Tensor:
    """A grid of rows of nrow inputs, each above the row of their reconstructions. Returns the
    mean squared pixel error of the reconstructions."""
    x_rec = reconstruct(E, Dec, x)
    pad = (-len(x)) % nrow                                   # fill the last row pair with black
    x_pad, r_pad = (torch.cat([t.float(), -torch.ones(pad, *t.shape[1:], device=t.device)]) for t in (x, x_rec))
    pairs = torch.stack([x_pad.view(-1, nrow, *x.shape[1:]), r_pad.view(-1, nrow, *x.shape[1:])], 1)
    common.save_grid(pairs.flatten(0, 2), path, nrow=nrow)  # (rows, 2, nrow, C, S, S) -> (2N', C, S, S)
    return (x_rec - x.float()).pow(2).mean()


def train(args) -> dict:
    device = common.setup(args)
    data = common.load_dataset(args.dataset, args.data_root, args.image_size, args.channels,
                               args.download, device, args.dataset_size, args.workers)
    args.channels = data.channels  # saved with the checkpoint's flags
    E, Dec, D, opts = build(args, args.channels, device)
    nets = {"E": E, "Dec": Dec, **({"D": D} if D is not None else {})}
    state = {"fixed_z": torch.randn(64, args.nz, device=device)}  # one latent for every sample grid
    run = common.Run("vaegan", args, {**nets, **{f"opt_{k}": o for k, o in opts.items()}}, state,
                     sample_fn=lambda: Dec(state["fixed_z"]), device=device)
    # --compile, --amp, --channels-last; under torchrun no DDP: its hooks never see gradients set
    # from torch.autograd.grad, so each optimiser averages them over the processes before it steps
    E, Dec, D = run.prepare(E, Dec, D, ddp=False)

    def train_step(real):
        out = forward(E, Dec, D, real, args)           # Alg. 1: all losses from one forward pass
        set_gradients(out, E, Dec, D)                  # each network: its own loss's gradient only
        update = {"Enc": True, "Dec": True, "Dis": D is not None}
        metrics = {"L_prior": out["L_prior"], "L_llike": out["L_llike"], "recon_mse": out["recon_mse"]}
        if D is not None and args.gate:                # (a host decision: never captured, see below)
            real_l, recon_l, prior_l = out["logits"]
            fake_l = prior_l if args.no_recon_fakes else torch.cat([recon_l, prior_l])
            update["Dec"], update["Dis"] = gate(real_l, fake_l, args.equilibrium, args.margin, common.all_reduce)
            metrics.update(Dec_updated=float(update["Dec"]), Dis_updated=float(update["Dis"]))
        for name, opt in opts.items():                 # the three updates of Alg. 1, from the same pass
            if update[name]:
                opt.step()
        if D is not None:
            real_l, recon_l, prior_l = (torch.sigmoid(t).mean() for t in out["logits"])
            metrics.update(L_GAN=out["L_GAN"], loss_Dec=out["loss_Dec"], D_x=real_l, D_x_tilde=recon_l,
                           D_x_p=prior_l)
        return metrics

    # --fast: the whole step as one CUDA graph; not with --gate, whose decisions are made on the host
    step = run.fast_step(train_step, capture=not args.gate)
    for real, _ in run.batches(data):
        run.log(**step(real))
    result = run.finish()
    if not common.is_main():  # (under torchrun, rank 0 writes the reconstructions)
        return result
    mse = save_reconstructions(E, Dec, held_out(args, 64, device), run.dir / "samples" / "reconstructions.png")
    print(f"held-out reconstructions: {run.dir}/samples/reconstructions.png (pixel MSE {mse.item():.4f})")
    return {**result, "heldout_recon_mse": mse.item()}


def generate(args) -> dict:
    """--generate N --resume RUN: N samples of the run's decoder (a grid and one PNG each) and
    reconstructions of N held-out images (reconstructions.png)."""
    device = common.setup(args)
    E, Dec, *_ = build(args, args.channels, device)  # (the checkpoint's flags say what to build)
    run = common.Run("vaegan", args, {"E": E, "Dec": Dec}, device=device)
    out = run.generate(lambda n: Dec(torch.randn(n, args.nz, device=device)), args.generate)
    mse = save_reconstructions(E, Dec, held_out(args, args.generate, device), out / "reconstructions.png")
    print(f"wrote {out}/reconstructions.png (inputs above reconstructions; pixel MSE {mse.item():.4f})")
    return {"heldout_recon_mse": mse.item()}


def main(argv=None) -> dict:
    args = parse_args(argv)
    return generate(args) if args.generate else train(args)


if __name__ == "__main__":
    common.cli(main)
