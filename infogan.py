"""InfoGAN: Interpretable Representation Learning by Information Maximizing GANs
— Chen, Duan, Houthooft, Schulman, Sutskever, Abbeel (2016), arXiv:1606.03657

The generator's input is split into incompressible noise z and a structured code c (here one
10-way categorical code and two continuous codes). A GAN is free to ignore c; InfoGAN adds a
term that rewards high mutual information I(c; G(z, c)). I is intractable, so a network
Q(c|x) gives a variational lower bound L_I(G, Q) = E[log Q(c|x)] + H(c) <= I, maximised by G
and Q together. Q shares the discriminator's body and adds one small head, so the extra cost
is nearly nothing. Unsupervised, the categorical code comes to pick the digit (here: the shape
class) and the continuous codes rotation and width (here: size, rotation).

Paper -> code:
  Sec. 3, the GAN value function V(D, G) (non-saturating G loss)    -> d_loss, g_loss
  Sec. 5, the variational bound L_I(G, Q) = E_{c~P(c), x~G(z,c)}[log Q(c|x)] + H(c)
      (categorical: -cross-entropy; continuous: factored Gaussian log-likelihood)  -> info_loss
  Sec. 5, the InfoGAN game min_{G,Q} max_D V(D, G) - λ L_I(G, Q)     -> discriminator_step
      (D's optimiser: shared body, D head, Q head), generator_step (G's optimiser), train
  Sec. 6 + App. C, Table 1 (MNIST): shared D/Q body, Q head FC 128, lReLU 0.1, G input
      62 + 10 + 2, λ = 1, Adam lr 2e-4 (D) / 1e-3 (G)       -> Generator, Discriminator, parse_args
  Official code (openai/InfoGAN): Adam β1 0.5 (infogan_trainer.py), batch 128
      (launchers/run_mnist_exp.py), the init (misc/custom_ops.py)  -> parse_args, weights_init
  App. C, the latents z ~ U(-1, 1)^62, c1 ~ Cat(10), c2, c3 ~ U(-1, 1)   -> sample_latent
  Fig. 1 (L_I reaches its maximum H(c) = ln 10 ≈ 2.30 early in training) -> the logged L_I, H_c
  Fig. 2, latent traversals (one code varied along a row, the rest fixed) -> grid_latent, --generate

Sign convention: info_loss returns the two negative log-likelihoods -E log Q(c|x) (the
categorical cross-entropy and the Gaussian NLL), which are minimised; L_I = H(c) - (their
sum), so adding λ * (discrete + continuous) to both players' losses is subtracting λ L_I.

Deviations from the paper (each tagged `# DEVIATION:` below):
  1. G ends in tanh and images are in [-1, 1], the range every script of this collection
     trains on; the official code ends in a sigmoid with MNIST in [0, 1] (a Bernoulli mean).
  2. Any image size that is a multiple of 4 (the MNIST network is the 28 px case: G projects
     to (S/4)x(S/4), D ends at (S/4)x(S/4)); the built-in shapes, grayscale, 28 px, replace MNIST.
  3. Losses on logits (BCE with logits; cross-entropy on Q's raw logits): the same functions,
     numerically stable. D has no final sigmoid and Q no softmax (a softmax before the
     cross-entropy would apply it twice and cap L_I below ln K).
Choices where the paper is silent or sources differ (official code: openai/InfoGAN):
  - Q's head is trained by D's optimiser with the shared body, G's optimiser trains G alone
    (official code); both minimise -λ L_I, D's step on a detached fake, G's through a frozen D.
  - Each G step draws a fresh latent and passes through the D just updated (official code).
  - σ = 1 for the continuous codes (the official MNIST run); `--learn-sigma` is the appendix's
    σ = exp(output). Q always outputs a μ and a log σ per continuous code (official code).
  - lReLU slope 0.1 (paper; official default 0.01). Init as the official code: D's convs
    N(0, 0.02) truncated at ±0.04, G's transposed convs and linears N(0, 0.02), BN scale N(1, 0.02).
  - β1 0.5 and batch 128 (App. C gives neither; the official code's), β2 0.999 (Adam's default).
  - The codes (--n-cat, --cat-dim, --n-cont) and λ are flags; `--info-weight 0` is the control,
    a plain GAN with an untrained Q.
An epoch is one pass of D over the data (60,000 images: 468 steps of 128); a step is one D
update and one G update, each with a fresh latent, the G update through the D just updated.

Samples: the per-epoch grids have row r at c1 = r, so each row should become one shape class.
`--generate N` also writes the Fig. 2 traversals: traversal-c1.png (rows: c1 = 0..9, columns:
different z), traversal-c2.png and traversal-c3.png (columns: that code from -2 to 2, beyond
its training range; z and the other code fixed).

Logged (metrics.csv, besides step, epoch and images_per_s):
  loss_D     D's GAN loss BCE(D(x), 1) + BCE(D(G(z, c)), 0), without the λ L_I term:
             2 ln 2 ≈ 1.386 when D cannot tell
  loss_G     G's non-saturating loss -log D(G(z, c)), without the λ L_I term
  D_x, D_G_z mean D(x) on the real batch and D(G(z, c)) on the fake batch, in D's step
  L_I        the bound of the categorical code(s), H(c) - cross-entropy of Q's logits on G's
             samples (D's step, before its update), in nats; 0 for a Q that knows nothing,
             at most H_c
  H_c        H(c) = ln K per categorical code (ln 10 ≈ 2.303): the bound L_I should approach
             (Fig. 1)
  nll_cont   the continuous codes' term -E log Q(c2, c3 | x), summed over the codes; with σ = 1
             at least 0.5 ln 2π ≈ 0.919 per code (a Q that always says 0: about 1.09 per code)
  code_acc   once an epoch, with labelled data: Q's first categorical code (argmax) on that
             epoch's real images against the true class, after the best one-to-one matching
             of codes to classes (exact); chance 0.1, the paper's MNIST error about 5%

Samples, scores and the evidence behind the choices: benchmarks/README.md.
Run:  python infogan.py --epochs 5                       (built-in shapes, 28 px grayscale)
      python infogan.py --learn-sigma --epochs 5         (the appendix's learned σ)
      python infogan.py --info-weight 0 --epochs 5       (the control: no L_I)
      python infogan.py --dataset mnist --data-root ./data --download
      python infogan.py --generate 100 --resume runs/infogan-shapes-<time>   (+ Fig. 2 grids)
      python infogan.py --preset laptop                  (for a CPU, PRESETS below: up to an hour on one core)
"""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

# --preset laptop: the laptop tier's configuration (benchmarks/README.md), made of this script's
# own flags for a 2-core CPU: the paper's 28 px MNIST networks at half width, 30 epochs.
# The losses, optimiser settings and update schedule stay the paper's.
PRESETS = {"laptop": "--channels 1 --ngf 32 --ndf 32 --fc-units 512 --epochs 30"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="InfoGAN (Chen et al., 2016)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--nz", type=common.positive_int, default=62,
                   help="incompressible noise z ~ U(-1, 1) (App. C, MNIST: 62)")
    p.add_argument("--n-cat", type=common.non_negative_int, default=1,
                   help="number of categorical codes (App. C, MNIST: one, c1)")
    p.add_argument("--cat-dim", type=common.positive_int, default=10,
                   help="categories K of each categorical code (App. C, MNIST: Cat(K = 10))")
    p.add_argument("--n-cont", type=common.non_negative_int, default=2,
                   help="number of continuous codes c ~ U(-1, 1) (App. C, MNIST: two, c2 and c3)")
    p.add_argument("--info-weight", type=common.non_negative_float, default=1.0,
                   help="λ, the weight of the mutual-information term (App. C: λ = 1 for MNIST)")
    p.add_argument("--learn-sigma", action="store_true",
                   help="learn σ = exp(Q output) for the continuous codes (appendix); default σ = 1 "
                        "(the official MNIST run)")
    p.add_argument("--lr-d", type=common.positive_float, default=2e-4,
                   help="Adam learning rate of D and Q (App. C: 2e-4)")
    p.add_argument("--lr-g", type=common.positive_float, default=1e-3,
                   help="Adam learning rate of G (App. C: 1e-3)")
    p.add_argument("--beta1", type=common.unit_interval, default=0.5,
                   help="Adam beta1 (not in the paper; official infogan_trainer.py: 0.5)")
    p.add_argument("--beta2", type=common.unit_interval, default=0.999,
                   help="Adam beta2 (not stated; Adam's default)")
    p.add_argument("--ngf", type=common.positive_int, default=64,
                   help="G width: channels at S/2; 2*ngf at S/4 (Table 1: 64 and 128)")
    p.add_argument("--ndf", type=common.positive_int, default=64,
                   help="D width: channels of D's first conv; 2*ndf after the second (Table 1: 64, 128)")
    p.add_argument("--fc-units", type=common.positive_int, default=1024,
                   help="units of G's first and D's last fully connected layer (Table 1: 1024)")
    p.add_argument("--q-units", type=common.positive_int, default=128,
                   help="units of the Q head's hidden layer (Table 1: FC 128)")
    # batch 128 (official run_mnist_exp.py; the paper gives none), MNIST 28x28 grayscale
    common.add_run_args(p, presets=PRESETS, batch_size=128, image_size=28, channels=1)
    args = common.parse_args(p, argv, "infogan")
    if args.image_size < 8 or args.image_size % 4:
        p.error(f"--image-size must be a multiple of 4, 8 or more (got {args.image_size}): G "
                f"doubles the side twice from S/4 and D halves it twice")
    if args.n_cat + args.n_cont == 0:
        p.error("InfoGAN needs at least one code: give --n-cat or --n-cont above 0")
    if args.batch_size < 2:
        p.error(f"--batch-size must be at least 2 (got {args.batch_size}): the BatchNorm1d after G's, D's and "
                f"Q's fully connected layers normalises each unit over the batch, which takes two images or more")
    return args


# ---------------------------------------------------------------------------------------------
# Networks (Table 1 / App. C, the MNIST networks)
# ---------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """(z, one-hot c_cat, c_cont) (B, nz + n_cat*K + n_cont) -> image (B, C, S, S) in [-1, 1].

    FC 1024 BN ReLU -> FC (S/4)·(S/4)·128 BN ReLU -> deconv 4x4 s2 64 BN ReLU -> deconv 4x4 s2 C."""

    def __init__(self, n_in=74, channels=1, image_size=28, ngf=64, fc_units=1024):
        super().__init__()
        # DEVIATION: any multiple of 4 (deviation 2); 28 px gives Table 1's 7x7x128.
        self.side, self.top = image_size // 4, 2 * ngf
        self.fc = nn.Sequential(
            nn.Linear(n_in, fc_units, bias=False), nn.BatchNorm1d(fc_units), nn.ReLU(True),
            nn.Linear(fc_units, self.top * self.side ** 2, bias=False),
            nn.BatchNorm1d(self.top * self.side ** 2), nn.ReLU(True))
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(self.top, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            # DEVIATION: tanh and data in [-1, 1] (deviation 1); the official code: sigmoid, [0, 1].
            nn.ConvTranspose2d(ngf, channels, 4, 2, 1), nn.Tanh())

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        h = self.fc(latent).view(-1, self.top, self.side, self.side)  # (B, 128, S/4, S/4)
        return self.deconv(h)                                         # (B, C, S, S)


class Discriminator(nn.Module):
    """image (B, C, S, S) -> (d_logit (B,), q_out), both from one shared body.

    Body: conv 4x4 s2 64 lReLU -> conv 4x4 s2 128 BN lReLU -> FC 1024 BN lReLU (lReLU 0.1).
    D head: FC -> 1 logit. Q head: FC 128 BN lReLU -> FC (n_cat*K logits + 2 per continuous code).
    q_out = {"cat": (B, n_cat, K) raw logits, "mu": (B, n_cont), "log_sigma": (B, n_cont)}."""

    def __init__(self, channels=1, image_size=28, ndf=64, fc_units=1024, q_units=128,
                 n_cat=1, cat_dim=10, n_cont=2):
        super().__init__()
        self.n_cat, self.cat_dim, self.n_cont = n_cat, cat_dim, n_cont
        self.body = nn.Sequential(
            nn.Conv2d(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.1, True),
            nn.Conv2d(ndf, 2 * ndf, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * ndf), nn.LeakyReLU(0.1, True),
            nn.Flatten(),                                                   # (B, 128 * S/4 * S/4)
            # DEVIATION: any multiple of 4 (deviation 2); 28 px gives Table 1's FC on 7x7x128.
            nn.Linear(2 * ndf * (image_size // 4) ** 2, fc_units, bias=False),
            nn.BatchNorm1d(fc_units), nn.LeakyReLU(0.1, True))
        self.d_head = nn.Linear(fc_units, 1)
        self.q_head = nn.Sequential(
            nn.Linear(fc_units, q_units, bias=False), nn.BatchNorm1d(q_units), nn.LeakyReLU(0.1, True),
            nn.Linear(q_units, n_cat * cat_dim + 2 * n_cont))

    def forward(self, x: torch.Tensor):
        h = self.body(x)                        # (B, fc_units): the features D and Q share
        q = self.q_head(h)                      # (B, n_cat*K + 2*n_cont)
        k = self.n_cat * self.cat_dim
        # DEVIATION: no sigmoid on the D logit, no softmax on Q's logits (deviation 3).
        q_out = {"cat": q[:, :k].view(len(q), self.n_cat, self.cat_dim),  # (B, n_cat, K)
                 "mu": q[:, k:k + self.n_cont], "log_sigma": q[:, k + self.n_cont:]}
        return self.d_head(h).squeeze(1), q_out


def weights_init(m: nn.Module) -> None:
    """Official code (custom_ops.py): D's convs N(0, 0.02) truncated at two standard deviations
    (TF's truncated_normal_initializer: draws beyond ±0.04 are redrawn), the transposed convs
    and fully connected layers N(0, 0.02); biases 0; BN scale N(1, 0.02), shift 0."""
    if isinstance(m, nn.Conv2d):
        nn.init.trunc_normal_(m.weight, 0.0, 0.02, -0.04, 0.04)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# Latents (App. C) and the Figure 2 grids
# ---------------------------------------------------------------------------------------------
def generator_input(z: torch.Tensor, codes: dict, cat_dim: int) -> torch.Tensor:
    """Concatenate z (B, nz), the one-hot categorical codes and the continuous codes."""
    onehot = F.one_hot(codes["cat"], cat_dim).flatten(1).to(z.dtype)  # (B, n_cat * K)
    return torch.cat([z, onehot, codes["cont"]], 1)                   # (B, nz + n_cat*K + n_cont)


def sample_latent(batch_size: int, nz=62, n_cat=1, cat_dim=10, n_cont=2, device="cpu"):
    """z ~ U(-1, 1)^nz, c_cat ~ Cat(K) (n_cat codes, uniform), c_cont ~ U(-1, 1)^n_cont.
    Returns (generator input, codes) with codes = {"cat": (B, n_cat) long, "cont": (B, n_cont)}."""
    z = torch.rand(batch_size, nz, device=device) * 2 - 1
    codes = {"cat": torch.randint(cat_dim, (batch_size, n_cat), device=device),
             "cont": torch.rand(batch_size, n_cont, device=device) * 2 - 1}
    return generator_input(z, codes, cat_dim), codes


def grid_latent(nz=62, n_cat=1, cat_dim=10, n_cont=2, device="cpu", sweep=None, n_cols=10):
    """Generator inputs for a Figure-2-style grid, row-major (rows * n_cols, ·).

    Row r sets the first categorical code to r (K rows; 10 rows of new z if there is none).
    Along a row, sweep=None changes z (Fig. 2a); sweep=j moves continuous code j from -2 to 2
    (Fig. 2c, d: beyond the training range U(-1, 1)), the other continuous codes at 0.
    Everything else is the same in the whole grid."""
    n_rows = cat_dim if n_cat else 10
    n = n_rows * n_cols
    row = torch.arange(n, device=device).div(n_cols, rounding_mode="floor")
    col = torch.arange(n, device=device) % n_cols
    z = torch.rand(n, nz, device=device) * 2 - 1                          # all different...
    if sweep is None and n_cat:
        z = z[col]                                                        # ...one z per column
    elif sweep is not None:
        z = z[row] if not n_cat else z[:1].expand(n, nz)                  # ...one per row / grid
    cat = torch.randint(cat_dim, (1, n_cat), device=device).repeat(n, 1)  # (n, n_cat), fixed
    if n_cat:
        cat[:, 0] = row
    cont = torch.zeros(n, n_cont, device=device)
    if sweep is not None:
        cont[:, sweep] = torch.linspace(-2, 2, n_cols, device=device)[col]
    return generator_input(z, {"cat": cat, "cont": cont}, cat_dim)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    # V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z, c)))], maximised by D;
    # minimised here as BCE(D(x), 1) + BCE(D(G(z, c)), 0), with D = sigmoid(logit).
    # DEVIATION: on logits (deviation 3): the same value, stable.
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    # Non-saturating G loss (as the official code): max_G E[log D(G(z, c))], i.e. minimise BCE(D(G), 1).
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def info_loss(q_out: dict, codes: dict, learn_sigma: bool = False):
    """-E log Q(c|x), split into (discrete_term, continuous_term); each summed over its codes,
    averaged over the batch. L_I = H(c) - discrete_term - continuous_term."""
    # Sec. 5: L_I(G, Q) = E_{c~P(c), x~G(z,c)}[log Q(c|x)] + H(c) <= I(c; G(z, c)).
    # Categorical: log Q(c|x) = log softmax(logits)[c], so -log Q is the cross-entropy on the
    # raw logits (F.cross_entropy applies the softmax itself: none before it).
    logits, cat = q_out["cat"].float(), codes["cat"]                 # (B, n_cat, K), (B, n_cat)
    discrete = F.cross_entropy(logits.flatten(0, 1), cat.flatten(), reduction="sum") / cat.shape[0]
    # Continuous: factored Gaussian, -log N(c; μ, σ²) = 0.5 ((c - μ)/σ)² + log σ + 0.5 ln 2π;
    # σ = 1 (official MNIST run) or σ = exp(output) with --learn-sigma (appendix).
    mu = q_out["mu"].float()
    log_sigma = q_out["log_sigma"].float() if learn_sigma else torch.zeros_like(mu)
    nll = 0.5 * ((codes["cont"] - mu) * torch.exp(-log_sigma)) ** 2 + log_sigma + 0.5 * math.log(2 * math.pi)
    return discrete, nll.sum(1).mean()


def matched_accuracy(confusion: torch.Tensor) -> float:
    """Accuracy of the best one-to-one matching of codes (rows) to classes (columns) for a
    confusion matrix of counts: exact (what the Hungarian algorithm finds), by dynamic
    programming over the sets of columns used so far; fast up to ~16 columns."""
    m = confusion.tolist()
    if len(m) > len(m[0]):
        m = [list(col) for col in zip(*m)]  # match the smaller side into the larger one
    best = {0: 0}                           # {set of used columns (bitmask): best count}
    for row in m:
        new = {}
        for used, total in best.items():
            for j, count in enumerate(row):
                if not used >> j & 1 and total + count > new.get(used | 1 << j, -1):
                    new[used | 1 << j] = total + count
        best = new
    return max(best.values()) / max(1, sum(map(sum, m)))


# ---------------------------------------------------------------------------------------------
# Training (Sec. 5-6; one D update, then one G update, per batch)
# ---------------------------------------------------------------------------------------------
def discriminator_step(G, D, opt_D, real, latent, info_weight, learn_sigma=False):
    """One Adam step on D's body, D head and Q head for L_D + λ (-L_I) on `latent` (the
    generator input, codes). The fake is detached: G receives no gradient.
    Returns (metrics, Q's categorical logits on the real batch)."""
    g_in, codes = latent
    with torch.no_grad():
        fake = G(g_in)
    # real and fake go through D as separate batches (separate BN statistics), as the official code
    real_logits, q_real = D(real)
    fake_logits, q_fake = D(fake)
    adv = d_loss(real_logits, fake_logits)
    discrete, continuous = info_loss(q_fake, codes, learn_sigma)
    loss = adv + info_weight * (discrete + continuous)  # = L_D - λ L_I (+ the constant λ H(c))
    opt_D.zero_grad(set_to_none=True)
    loss.backward()
    opt_D.step()
    metrics = {"loss_D": adv.detach(), "discrete": discrete.detach(), "continuous": continuous.detach(),
               "D_x": torch.sigmoid(real_logits.detach()).mean(),
               "D_G_z": torch.sigmoid(fake_logits.detach()).mean()}
    return metrics, q_real["cat"].detach()


def generator_step(G, D, opt_G, latent, info_weight, learn_sigma=False) -> torch.Tensor:
    """One Adam step on G for L_G + λ (-L_I) on a fresh `latent`, through the D just updated
    (a new forward pass: nothing of D's step is reused). D and Q are not updated."""
    D.requires_grad_(False)  # no gradient for D's or Q's weights: G's optimiser owns G alone
    g_in, codes = latent
    fake_logits, q_fake = D(G(g_in))
    adv = g_loss(fake_logits)
    discrete, continuous = info_loss(q_fake, codes, learn_sigma)
    loss = adv + info_weight * (discrete + continuous)  # = L_G - λ L_I (+ the constant λ H(c))
    opt_G.zero_grad(set_to_none=True)
    loss.backward()
    opt_G.step()
    D.requires_grad_(True)
    return adv.detach()


def build(args, channels: int, device):
    G = Generator(args.nz + args.n_cat * args.cat_dim + args.n_cont, channels, args.image_size,
                  args.ngf, args.fc_units).to(device)
    D = Discriminator(channels, args.image_size, args.ndf, args.fc_units, args.q_units,
                      args.n_cat, args.cat_dim, args.n_cont).to(device)
    G.apply(weights_init)
    D.apply(weights_init)
    # One optimiser per network (App. C): D's owns the shared body, the D head and the Q head.
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=(args.beta1, args.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(args.beta1, args.beta2))
    return G, D, opt_G, opt_D


def write_traversals(G, args, folder, device) -> None:
    """Fig. 2: traversal-c1.png (rows: c1 = 0..K-1, columns: new z) and one grid per continuous
    code, traversal-c<i>.png (rows: c1, columns: the code from -2 to 2), codes numbered as the
    paper's (categorical first). Everything else fixed within a grid. (The paper's rows are
    random draws of the other inputs; here each row is one value of c1, so one class.)"""
    dims = (args.nz, args.n_cat, args.cat_dim, args.n_cont, device)
    sweeps = ([None] if args.n_cat else []) + list(range(args.n_cont))
    G.eval()
    with torch.no_grad():
        for sweep in sweeps:
            name = "c1" if sweep is None else f"c{args.n_cat + sweep + 1}"
            common.save_grid(G(grid_latent(*dims, sweep=sweep)), folder / f"traversal-{name}.png", nrow=10)
    print(f"wrote the Figure 2 traversals to {folder}/traversal-*.png")


def train(args) -> dict:
    device = common.setup(args)
    data = common.load_dataset(args.dataset, args.data_root, args.image_size, args.channels,
                               args.download, device, args.dataset_size, args.workers)
    args.channels = data.channels  # saved with the checkpoint's flags
    G, D, opt_G, opt_D = build(args, args.channels, device)
    dims = (args.nz, args.n_cat, args.cat_dim, args.n_cont, device)
    n_classes = data.num_classes or 0
    state = {  # the epoch's grid: rows = c1, columns = z (Fig. 2a); and Q-vs-label counts
        "fixed_latent": grid_latent(*dims, n_cols=args.cat_dim if args.n_cat else 10),
        "confusion": torch.zeros(args.cat_dim, max(1, n_classes), dtype=torch.long, device=device)}
    run = common.Run("infogan", args, {"G": G, "D": D, "opt_G": opt_G, "opt_D": opt_D}, state,
                     sample_fn=lambda: G(state["fixed_latent"]), device=device)
    G, D = run.prepare(G, D)  # --compile, --amp, --channels-last; under torchrun DDP

    h_c = args.n_cat * math.log(args.cat_dim)  # H(c) of the categorical codes: L_I's upper bound
    steps_per_epoch = data.steps_per_epoch(args.batch_size)
    def train_step(real):
        # 1. D and Q: minimise L_D - λ L_I on a fresh latent (the fake detached)
        metrics, q_real = discriminator_step(G, D, opt_D, real, sample_latent(real.size(0), *dims),
                                             args.info_weight, args.learn_sigma)
        # 2. G: minimise L_G - λ L_I on another fresh latent, through the updated D (official code)
        loss_G = generator_step(G, D, opt_G, sample_latent(real.size(0), *dims), args.info_weight, args.learn_sigma)
        return metrics, q_real, loss_G

    step = run.fast_step(train_step)  # --fast: the whole step as one CUDA graph
    for real, labels in run.batches(data):
        metrics, q_real, loss_G = step(real)
        run.log(loss_D=metrics["loss_D"], loss_G=loss_G, D_x=metrics["D_x"], D_G_z=metrics["D_G_z"])
        if args.n_cat:
            run.log(L_I=h_c - metrics["discrete"], H_c=h_c)
        if args.n_cont:
            run.log(nll_cont=metrics["continuous"])
        if n_classes and args.n_cat and labels is not None:
            # counts of (Q's code on the real image, true class), on the device: no host sync;
            # under torchrun summed over the processes, so every process holds the global counts
            pred = q_real[:, 0].argmax(1)
            counts = torch.zeros_like(state["confusion"])
            counts.view(-1).index_add_(0, pred * n_classes + labels.long(), torch.ones_like(pred))
            state["confusion"] += common.all_reduce(counts, "sum")
            if run.batches_drawn % steps_per_epoch == 0:  # the epoch's last batch: one sync
                run.log(code_acc=matched_accuracy(state["confusion"]))
                state["confusion"].zero_()
    return run.finish()


def generate(args) -> dict:
    """--generate N --resume RUN: N samples of the run's G (a grid and one PNG each) and the
    Figure 2 traversals."""
    device = common.setup(args)
    G, *_ = build(args, args.channels, device)  # (the checkpoint's flags say what to build)
    run = common.Run("infogan", args, {"G": G}, device=device)
    dims = (args.nz, args.n_cat, args.cat_dim, args.n_cont, device)
    out = run.generate(lambda n: G(sample_latent(n, *dims)[0]), args.generate)
    write_traversals(G, args, out, device)
    return {}


def main(argv=None) -> dict:
    args = parse_args(argv)
    return generate(args) if args.generate else train(args)


if __name__ == "__main__":
    common.cli(main)
