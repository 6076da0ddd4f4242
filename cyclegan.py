"""Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks
— Zhu, Park, Isola, Efros (2017), arXiv:1703.10593

Two generators learn to translate between two sets of images that are not paired: G maps
domain X to Y and F maps Y to X. Two discriminators make G(x) look like Y and F(y) like X.
Fooling them is not enough, since many mappings do; a cycle-consistency loss asks that the
round trips F(G(x)) and G(F(y)) give back the input, which rules out mappings that forget it.

Names: domain A is the paper's X and B is Y; G_AB is G (X -> Y) and G_BA is F (Y -> X); D_B is
D_Y (real b against G_AB(a)) and D_A is D_X (real a against G_BA(b)). On the built-in shapes,
A draws each shape filled and B as an outline; the test split is paired (B[i] is A[i] drawn as
an outline), so the translation error is measured exactly.

Paper -> code:
  Eq. (1), the adversarial loss, in the least-squares form of Sec. 4 ("Training details"):
      D minimises (D(y) - 1)² + D(G(x))², halved (App. 7.1); G minimises (D(G(x)) - 1)²
                                                           -> lsgan_d_loss, lsgan_g_loss
  Eq. (2), the cycle-consistency loss                      -> cycle_loss
  Eq. (3), the full objective, λ = 10 (Sec. 4)             -> generator_step
  Sec. 5.2 ("photo generation from paintings"), the identity loss -> identity_loss, --lambda-idt
  Sec. 4, the history of 50 generated images (Shrivastava et al. 2017) -> ImagePool
  Sec. 4: Adam lr 2e-4, batch 1, 100 epochs at that lr then 100 of linear decay to 0
                                                           -> parse_args, lr_lambda, train
  App. 7.2, the networks: ResNet generator (6 or 9 blocks), 70x70 PatchGAN -> Generator,
      Discriminator;  App. 7.1 / official code: init N(0, 0.02) -> weights_init
  Sec. 5.1.4 / Tables 4-5, the ablation "GAN alone"        -> --no-cycle
  One step (official code, cycle_gan_model.py): both generators in one Adam step with the
      discriminators frozen, then both discriminators in one Adam step on fakes from the
      pools                                                -> generator_step, discriminator_step

Deviations from the paper (each tagged `# DEVIATION:` below):
  1. The identity loss is on by default (weight 0.5·λ = 5), as in the official code; the paper
     uses it only for painting -> photo (Sec. 5.2). `--lambda-idt 0` gives the paper's other runs.
  2. Built-in shapes at 64 px (6 residual blocks) replace the paper's 256 px photos; there the
     PatchGAN's map is 6x6, each output's 70x70 field covering most of the image. Any multiple
     of 4 from 24 px works (G halves the side twice; D needs 24 px for one output).
  3. Augmentation (official code: resize to 286, random 256 crop, random flip) on the device,
     for folder data, the load size 286/256 of --image-size; off on the shapes by default
     (`--augment on`). Folder images are scaled on the shorter side and centre-cropped, where
     the official code squeezes them to load_size x load_size.
  4. An epoch is one pass over domain A, with a random B image drawn for each A image, as the
     official code draws B; the official epoch has max(|A|, |B|) steps. Equal on the shapes.
Choices where the paper is silent or sources differ (from junyanz/pytorch-CycleGAN-and-pix2pix):
  - ‖·‖₁ in Eq. (2) and the identity loss is the mean absolute error per pixel (nn.L1Loss),
    the scale λ = 10 was used with; the LSGAN terms are means over the patch map.
  - The PatchGAN's C512 and its output conv have stride 1 (App. 7.2 writes stride 2 for every
    Ck): this is what makes the receptive field 70x70 and the map 30x30 at 256 px.
  - G's last layer is conv + tanh (no norm, no ReLU); every conv has a bias (instance norm has
    no affine parameters); downsampling convs pad with zeros, the 7x7 and residual convs reflect.
  - lr factor per epoch e (from 0): 1 - max(0, e + 1 - n_epochs) / (n_epochs_decay + 1), stepped
    at each epoch's end (Sec. 4 and the official niter / niter_decay rule): 100 epochs at the
    full rate, then 100 falling linearly, the last at lr / 101.
  - --no-cycle removes the cycle terms only; the identity term keeps its weight (5). The paper's
    "GAN alone" row (its Cityscapes runs had no identity term) is `--no-cycle --lambda-idt 0`.
  - --epochs is how far this invocation trains; the lr schedule always follows --n-epochs and
    --n-epochs-decay (default --epochs: their sum, the whole schedule).

Data: the built-in two-domain shapes (1,000 images a domain, the size of the paper's datasets),
or `--dataset folder --data-root DIR` in the layout DIR/trainA, DIR/trainB (and testA, testB).
A step is one image of each domain: an A image in shuffled order, a B image drawn at random; an
epoch on the built-in data is 1,000 steps. A short run that decays shrinks the schedule itself
(--n-epochs 3 --n-epochs-decay 2); `--epochs 5` alone stops 5 epochs into the 200.

Samples: samples/epoch-NNN.png holds six fixed test pairs, one a row:
a | G_AB(a) | G_BA(G_AB(a)) | b | G_BA(b) | G_AB(G_BA(b)). `--generate N` translates the first N
test images each way into translated-<time>/ (rows input | translated | reconstructed, and each
translation alone) and, on the shapes, prints the paired errors (below).

Logged (metrics.csv, besides step, epoch and images_per_s; the LSGAN and L1 terms unweighted;
images_per_s counts A images, so at batch 1 it is steps per second):
  loss_G                 the generators' whole loss: adversarial + λ cycle + 0.5 λ identity
                         (without the cycle term under --no-cycle)
  adv_AB, adv_BA         the LSGAN G losses mean (D_B(G_AB(a)) - 1)² and mean (D_A(G_BA(b)) - 1)²:
                         0.25 when D outputs ½ for everything
  cyc_A, cyc_B           mean |G_BA(G_AB(a)) - a| and mean |G_AB(G_BA(b)) - b| (logged under
                         --no-cycle too, untrained there)
  idt_A, idt_B           mean |G_BA(a) - a| and mean |G_AB(b) - b| (absent with --lambda-idt 0)
  loss_D_A, loss_D_B     each D's halved LSGAN loss ½[mean (D(real) - 1)² + mean D(pool fake)²]:
                         0.25 when D outputs ½ for everything, 0 when it wins outright
  lr                     the learning rate of this step (both optimisers share it)
  test_err_AB, test_err_BA   built-in data only, in the row at each epoch's end: the paired
                         error on 200 test pairs, mean |G_AB(a) - b| and |G_BA(b) - a| per pixel
                         in [-1, 1] units (the identity mapping scores 0.194)

Samples, scores and the evidence behind the choices: benchmarks/README.md.
Run:  python cyclegan.py --n-epochs 3 --n-epochs-decay 2     (quick: the whole schedule in 5 epochs)
      python cyclegan.py                                     (the paper's 100 + 100 epochs)
      python cyclegan.py --no-cycle --n-epochs 3 --n-epochs-decay 2   (the ablation)
      python cyclegan.py --dataset folder --data-root ./horse2zebra --image-size 256
      python cyclegan.py --generate 100 --resume runs/cyclegan-shapes-<time>
      python cyclegan.py --preset laptop                     (for a CPU, PRESETS below: up to an hour on one core)
"""
import argparse
from datetime import datetime
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

EVAL_PAIRS = 200  # paired shapes test images for the translation error logged after each epoch
EVAL_BATCH = 32   # images per batch when translating test images (also rows per --generate page)
FIXED = 6         # test images of each domain in every sample grid


# --preset laptop: the laptop tier's configuration (benchmarks/README.md), made of this script's
# own flags for a 2-core CPU: 32 px grayscale, 16-channel networks with 3 residual blocks, 10
# epochs (6 + 4 decaying) of 3,000 images.
# The losses, optimiser settings and update schedule stay the paper's.
PRESETS = {"laptop": "--image-size 32 --channels 1 --ngf 16 --ndf 16 --n-blocks 3 --dataset-size 3000 "
                     "--n-epochs 6 --n-epochs-decay 4"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="CycleGAN (Zhu et al., 2017)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ngf", type=common.positive_int, default=64,
                   help="generator width: channels of its first layer c7s1-64 (App. 7.2: 64)")
    p.add_argument("--ndf", type=common.positive_int, default=64,
                   help="PatchGAN width: channels of its first layer C64 (App. 7.2: 64)")
    p.add_argument("--n-blocks", type=common.positive_int, default=None,
                   help="residual blocks in G (App. 7.2: 9 for 256 px and above, 6 for 128 px); "
                        "None: 9 from 256 px, else 6")
    p.add_argument("--lr", type=common.positive_float, default=2e-4,
                   help="Adam learning rate of both G and both D (Sec. 4: 0.0002)")
    p.add_argument("--beta1", type=common.unit_interval, default=0.5, help="Adam beta1 (official code: 0.5)")
    p.add_argument("--beta2", type=common.unit_interval, default=0.999,
                   help="Adam beta2 (official code: Adam's default 0.999)")
    p.add_argument("--lambda-cyc", type=common.positive_float, default=10.0,
                   help="weight λ of the cycle loss (Sec. 4: λ = 10 in Eq. 3)")
    p.add_argument("--lambda-idt", type=common.non_negative_float, default=0.5,
                   help="identity loss weight as a fraction of λ (Sec. 5.2, used there for painting->photo; "
                        "official default 0.5, i.e. 5); 0 turns it off, as in the paper's other experiments")
    p.add_argument("--no-cycle", action="store_true",
                   help="ablation (Sec. 5.1.4, 'GAN alone'): drop the cycle loss, everything else equal; "
                        "add --lambda-idt 0 for the paper's row exactly")
    p.add_argument("--pool-size", type=common.non_negative_int, default=50,
                   help="generated images each discriminator's history holds (Sec. 4: 50; 0: no history)")
    p.add_argument("--n-epochs", type=common.positive_int, default=100,
                   help="epochs at the initial learning rate (Sec. 4: 100)")
    p.add_argument("--n-epochs-decay", type=common.non_negative_int, default=100,
                   help="epochs of linear decay of the learning rate to 0 after them (Sec. 4: 100)")
    p.add_argument("--augment", choices=("auto", "on", "off"), default="auto",
                   help="resize training images to --load-size, then a random --image-size crop and a random "
                        "horizontal flip, on the device (official code: 286, crop 256); auto: on for folder "
                        "data, off for the shapes")
    p.add_argument("--load-size", type=common.positive_int, default=None,
                   help="side of the training images before the random crop; None: --image-size x 286/256")
    # Sec. 4: batch size 1. About 1,000 images per domain, the size of the paper's datasets.
    common.add_run_args(p, presets=PRESETS, batch_size=1, epochs=None, help={  # three shared flags mean more here
        "epochs": "epochs (passes over domain A) to train in this run; None: --n-epochs + --n-epochs-decay, "
                  "the whole schedule. Fewer stop early at the lr reached then; --resume RUN --epochs N "
                  "continues the same schedule",
        "generate": "translate the first N test images of each domain with the --resume checkpoint "
                    "(side-by-side grids; on the shapes, the paired error too) instead of training",
        "dataset_size": "images per domain (shapes: how many to render, None: 1000; folder: the first N, "
                        "None: all)"})
    args = common.parse_args(p, argv, "cyclegan")
    if args.dataset not in ("shapes", "folder"):
        p.error(f"CycleGAN needs two domains: --dataset shapes or --dataset folder (DIR/trainA, "
                f"DIR/trainB), not {args.dataset}")
    if args.image_size % 4 or args.image_size < 24:
        p.error(f"--image-size must be a multiple of 4 and at least 24 (got {args.image_size}): G halves "
                f"the side twice and doubles it back, and the 70x70 PatchGAN needs 24 px for one output")
    # DEVIATION: 64 px shapes by default, any multiple of 4 from 24 px (deviation 2); App. 7.2's
    # rule for the blocks: 9 at 256 px, 6 at 128 px (and below).
    args.n_blocks = args.n_blocks or (9 if args.image_size >= 256 else 6)
    args.load_size = args.load_size or round(args.image_size * 286 / 256)
    if args.load_size < args.image_size:
        p.error(f"--load-size {args.load_size} is smaller than --image-size {args.image_size}, the crop")
    if args.dataset == "shapes" and args.dataset_size is None:
        args.dataset_size = 1000
    total = args.n_epochs + args.n_epochs_decay
    args.epochs = args.epochs or total
    if args.epochs > total:
        p.error(f"--epochs {args.epochs} goes past the end of the learning-rate schedule ({args.n_epochs} + "
                f"{args.n_epochs_decay} epochs, where the lr reaches 0)")
    return args


# ---------------------------------------------------------------------------------------------
# Networks (App. 7.2)
# ---------------------------------------------------------------------------------------------
def _norm(channels: int) -> nn.Module:
    # Instance normalization (Ulyanov et al.), no affine parameters and no running statistics:
    # each image is normalised by its own statistics, in training and in testing alike.
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResidualBlock(nn.Module):
    """Rk: two 3x3 convs with reflection padding and the same width, IN, ReLU between; plus x."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """image (B, C, S, S) -> image (B, C, S, S) in [-1, 1], S a multiple of 4.

    App. 7.2 with ngf = 64: c7s1-64, d128, d256, R256 x n_blocks, u128, u64, c7s1-3 (tanh).
    c7s1-k: 7x7 conv, stride 1 (reflection padding); dk: 3x3 conv, stride 2; uk: 3x3
    fractionally-strided conv, stride 1/2; each followed by IN and ReLU but the last."""

    def __init__(self, channels=3, ngf=64, n_blocks=9):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(channels, ngf, 7), _norm(ngf), nn.ReLU(True)]
        for c in (ngf, 2 * ngf):  # d128, d256: (B, 4*ngf, S/4, S/4) after both
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _norm(2 * c), nn.ReLU(True)]
        layers += [ResidualBlock(4 * ngf) for _ in range(n_blocks)]
        for c in (4 * ngf, 2 * ngf):  # u128, u64: back to (B, ngf, S, S)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                       _norm(c // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Discriminator(nn.Module):
    """70x70 PatchGAN: image (B, C, S, S) -> one score per patch, (B, 1, S/8 - 2, S/8 - 2).

    App. 7.2: C64 (no norm), C128, C256, C512, then a conv to 1 channel; 4x4 kernels, IN,
    LeakyReLU 0.2, no sigmoid (least squares). Each output sees a 70x70 patch of the input:
    a 30x30 map at 256 px, 14x14 at 128 px, 6x6 at 64 px (where a field covers most of the image)."""

    def __init__(self, channels=3, ndf=64):
        super().__init__()
        layers, c = [nn.Conv2d(channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)], ndf
        for stride in (2, 2, 1):  # C128, C256 halve the side; C512 keeps it (official code)
            layers += [nn.Conv2d(c, 2 * c, 4, stride=stride, padding=1), _norm(2 * c), nn.LeakyReLU(0.2, True)]
            c *= 2
        layers += [nn.Conv2d(c, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 1, S/8 - 2, S/8 - 2): 30x30 at 256 px


def weights_init(m: nn.Module) -> None:
    """Weights from N(0, 0.02) (App. 7.1; official code init_type 'normal'), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        nn.init.zeros_(m.bias)


class ImagePool:
    """The image history of Sec. 4 (Shrivastava et al. 2017): D is updated on a history of
    generated images rather than only the ones the latest generator made, to reduce oscillation.

    `state_dict` / `load_state_dict` put the stored images in every checkpoint."""

    def __init__(self, size: int = 50):
        self.size, self.images = size, []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W), detached. Per image: until the pool holds `size`, store
        it and return it; after that, with probability 1/2 return a random stored image and store
        the new one in its place, else return the new one. The coins come from torch's CPU RNG
        (saved with every checkpoint), so there is no device synchronisation."""
        if self.size == 0:
            return images.detach()
        out = []
        for image in images.detach().unbind(0):
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif torch.rand(()) < 0.5:
                j = int(torch.randint(self.size, ()))
                out.append(self.images[j].to(image.device))  # (a resumed pool starts on the CPU)
                self.images[j] = image
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict:
        return {"images": torch.stack([i.cpu() for i in self.images]) if self.images else torch.empty(0)}

    def load_state_dict(self, state: dict) -> None:
        self.images = list(state["images"].unbind(0))


# ---------------------------------------------------------------------------------------------
# Losses (Sec. 3 and 4). Each returns a scalar to minimise.
# ---------------------------------------------------------------------------------------------
def lsgan_d_loss(real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
    # Eq. (1) with least squares (Sec. 4): D minimises E_y[(D(y) - 1)²] + E_x[D(G(x))²];
    # App. 7.1: "we divide the objective by 2 while optimizing D, which slows down the rate at
    # which D learns, relative to the rate of G". Means over the batch and the patch map.
    return 0.5 * (F.mse_loss(real_out, torch.ones_like(real_out))
                  + F.mse_loss(fake_out, torch.zeros_like(fake_out)))


def lsgan_g_loss(fake_out: torch.Tensor) -> torch.Tensor:
    # Sec. 4: G minimises E_x[(D(G(x)) - 1)²] (the least-squares form of Eq. 1; not halved).
    return F.mse_loss(fake_out, torch.ones_like(fake_out))


def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    # Eq. (2): L_cyc(G, F) = E_x[‖F(G(x)) - x‖₁] + E_y[‖G(F(y)) - y‖₁]; this is one of the two
    # terms, as the mean absolute error per pixel (official code: nn.L1Loss), the scale λ = 10
    # was chosen for.
    return F.l1_loss(reconstructed, original)


def identity_loss(same: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    # Sec. 5.2: L_identity(G, F) = E_y[‖G(y) - y‖₁] + E_x[‖F(x) - x‖₁]: a generator fed an image
    # of its own target domain should return it unchanged. One term, mean absolute error per pixel.
    return F.l1_loss(same, original)


def lr_lambda(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    # Sec. 4: "We keep the same learning rate for the first 100 epochs and linearly decay the
    # rate to zero over the next 100 epochs." The official code's factor, epoch counted from 0:
    # 1 through epoch n_epochs - 1, then falling by 1/(n_epochs_decay + 1) an epoch, so the last
    # epoch (n_epochs + n_epochs_decay - 1) trains at lr / (n_epochs_decay + 1).
    return 1.0 - max(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def generator_step(G_AB, G_BA, D_A, D_B, opt_G, real_A, real_B, lambda_cyc=10.0, lambda_idt=0.5,
                   cycle=True):
    """One Adam step on G_AB and G_BA together for Eq. (3) plus the identity term, with D_A and
    D_B frozen. Returns the fakes (detached, for the pools) and the loss terms (unweighted)."""
    for D in (D_A, D_B):
        D.requires_grad_(False)  # no gradient for the discriminators' weights at all
    fake_B, fake_A = G_AB(real_A), G_BA(real_B)                         # G(x), F(y)
    adv_AB, adv_BA = lsgan_g_loss(D_B(fake_B)), lsgan_g_loss(D_A(fake_A))
    with torch.set_grad_enabled(cycle):  # --no-cycle: the cycle error is only measured
        cyc_A = cycle_loss(G_BA(fake_B), real_A)                         # ‖F(G(x)) - x‖₁
        cyc_B = cycle_loss(G_AB(fake_A), real_B)                         # ‖G(F(y)) - y‖₁
    loss = adv_AB + adv_BA + (lambda_cyc * (cyc_A + cyc_B) if cycle else 0)
    terms = {"adv_AB": adv_AB, "adv_BA": adv_BA, "cyc_A": cyc_A, "cyc_B": cyc_B}
    if lambda_idt > 0:
        # DEVIATION: on by default (deviation 1); the paper adds it for painting -> photo only.
        idt_A = identity_loss(G_BA(real_A), real_A)                      # ‖F(x) - x‖₁
        idt_B = identity_loss(G_AB(real_B), real_B)                      # ‖G(y) - y‖₁
        loss = loss + lambda_idt * lambda_cyc * (idt_A + idt_B)
        terms.update(idt_A=idt_A, idt_B=idt_B)
    opt_G.zero_grad(set_to_none=True)
    loss.backward()
    opt_G.step()
    for D in (D_A, D_B):
        D.requires_grad_(True)
    terms = {k: v.detach() for k, v in terms.items()}
    return fake_A.detach(), fake_B.detach(), {"loss_G": loss.detach(), **terms}


def discriminator_step(D_A, D_B, opt_D, real_A, real_B, fake_A, fake_B):
    """One Adam step on D_A and D_B together. The fakes come from the pools, detached: the
    generators get no gradient. Returns the two (halved) LSGAN losses."""
    loss_A = lsgan_d_loss(D_A(real_A), D_A(fake_A))  # D_X: real a against F(b)
    loss_B = lsgan_d_loss(D_B(real_B), D_B(fake_B))  # D_Y: real b against G(a)
    opt_D.zero_grad(set_to_none=True)
    (loss_A + loss_B).backward()
    opt_D.step()
    return loss_A.detach(), loss_B.detach()


def random_crop_flip(x: torch.Tensor, size: int) -> torch.Tensor:
    """The official training augmentation, on the device: from each image (B, C, L, L) a random
    size x size crop, mirrored left-right with probability 1/2 (torch's RNG on x's device)."""
    b, c, h, w = x.shape
    top = torch.randint(h - size + 1, (b, 1, 1), device=x.device)
    left = torch.randint(w - size + 1, (b, 1, 1), device=x.device)
    flip = torch.rand(b, 1, 1, device=x.device) < 0.5
    k = torch.arange(size, device=x.device)
    rows = top + k.view(1, -1, 1)                                      # (B, size, 1)
    cols = left + torch.where(flip, size - 1 - k, k).view(b, 1, size)   # (B, 1, size)
    index = (rows * w + cols).view(b, 1, size * size).expand(-1, c, -1)  # flat pixel indices
    return x.flatten(2).gather(2, index).view(b, c, size, size)


def build(args, channels: int, device):
    G_AB = Generator(channels, args.ngf, args.n_blocks).to(device)  # the paper's G: A -> B
    G_BA = Generator(channels, args.ngf, args.n_blocks).to(device)  # the paper's F: B -> A
    D_A, D_B = Discriminator(channels, args.ndf).to(device), Discriminator(channels, args.ndf).to(device)
    for net in (G_AB, G_BA, D_A, D_B):
        net.apply(weights_init)
    # One Adam over both generators, one over both discriminators (official code).
    adam = {"lr": args.lr, "betas": (args.beta1, args.beta2)}
    opt_G = torch.optim.Adam([*G_AB.parameters(), *G_BA.parameters()], **adam)
    opt_D = torch.optim.Adam([*D_A.parameters(), *D_B.parameters()], **adam)
    return G_AB, G_BA, D_A, D_B, opt_G, opt_D


def load_test(args, device, n: int):
    """Test images of both domains at --image-size, uncropped: the paired shapes split, or a
    folder's testA/ and testB/ (its first training images, said once, when it has none)."""
    split = "test"
    if args.dataset == "folder" and not all((Path(args.data_root) / f"test{d}").is_dir() for d in "AB"):
        print(f"note: {args.data_root} has no testA/ and testB/; using its first training images "
              f"(trainA/, trainB/) as test images instead.")
        split = "train"
    return common.load_unpaired(args.dataset, args.data_root, args.image_size, args.channels, device, n, split)


@torch.no_grad()
def translation_grid(G_AB, G_BA, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows [a | G(a) | F(G(a)) | b | F(b) | G(F(b))]: (6k, C, S, S) for a grid six wide."""
    fake_B, fake_A = G_AB(a), G_BA(b)
    columns = [a, fake_B, G_BA(fake_B), b, fake_A, G_AB(fake_A)]
    return torch.stack(columns, 1).flatten(0, 1)  # (k, 6, C, S, S) -> (6k, C, S, S)


@torch.no_grad()
def paired_errors(G_AB, G_BA, test_A, test_B) -> torch.Tensor:
    """On the paired shapes split: mean |G_AB(a) - b|, mean |G_BA(b) - a| and, for reference,
    the identity mapping's mean |a - b|, per pixel in [-1, 1] units. A (3,) tensor (no sync)."""
    sums = 0
    for (a, _), (b, _) in zip(test_A.in_order(EVAL_BATCH), test_B.in_order(EVAL_BATCH)):
        fake_B, fake_A = G_AB(a).float(), G_BA(b).float()
        sums = sums + torch.stack([(fake_B - b).abs().sum(), (fake_A - a).abs().sum(), (a - b).abs().sum()])
    return sums / (test_A.n * a[0].numel())


def train(args) -> dict:
    device = common.setup(args)
    augment = args.augment == "on" or (args.augment == "auto" and args.dataset == "folder")
    # DEVIATION: augmentation on folder data only, by default; folder images are centre-cropped
    # square, not squeezed, before it (deviation 3).
    A, B = common.load_unpaired(args.dataset, args.data_root, args.load_size if augment else args.image_size,
                                args.channels, device, args.dataset_size, "train", args.workers)
    args.channels = A.channels  # saved with the checkpoint's flags
    test_A, test_B = load_test(args, device, EVAL_PAIRS if args.dataset == "shapes" else FIXED)
    G_AB, G_BA, D_A, D_B, opt_G, opt_D = build(args, args.channels, device)
    # Sec. 4: constant lr for n_epochs, then linear decay; stepped once at the end of each epoch.
    sched_G, sched_D = (torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: lr_lambda(e, args.n_epochs, args.n_epochs_decay)) for opt in (opt_G, opt_D))
    pool_A, pool_B = ImagePool(args.pool_size), ImagePool(args.pool_size)  # fakes for D_A, D_B
    # the same test images in every sample grid (wrapped if there are fewer)
    state = {f"fixed_{d}": next(data.in_order(FIXED))[0][torch.arange(FIXED) % min(FIXED, data.n)]
             for d, data in (("A", test_A), ("B", test_B))}
    modules = {"G_AB": G_AB, "G_BA": G_BA, "D_A": D_A, "D_B": D_B, "opt_G": opt_G, "opt_D": opt_D,
               "sched_G": sched_G, "sched_D": sched_D, "pool_A": pool_A, "pool_B": pool_B}
    run = common.Run("cyclegan", args, modules, state, device=device,
                     sample_fn=lambda: translation_grid(G_AB, G_BA, state["fixed_A"], state["fixed_B"]))
    # --compile, --amp, --channels-last; under torchrun DDP (the image pools stay each process's
    # own: docs/multi-gpu.md)
    G_AB, G_BA, D_A, D_B = run.prepare(G_AB, G_BA, D_A, D_B)
    total = args.n_epochs + args.n_epochs_decay
    if args.epochs < total:
        print(f"note: training to epoch {args.epochs} of the {total}-epoch schedule ({args.n_epochs} at lr "
              f"{args.lr:g}, then {args.n_epochs_decay} decaying to 0); --resume the run with --epochs "
              f"{total} to finish it.")

    # --fast: each of the two updates as one CUDA graph (the pools stay on the host side between them)
    g_update, d_update = run.fast_step(generator_step), run.fast_step(discriminator_step)
    batches = run.stream(A)  # DEVIATION: an epoch is a pass over A (deviation 4)
    for _ in run.loop():     # one step: one image of each domain at batch size 1
        real_A, _ = next(batches)
        real_B, _ = B.sample(real_A.size(0))  # unpaired: a random B image (official code)
        if augment:
            real_A, real_B = random_crop_flip(real_A, args.image_size), random_crop_flip(real_B, args.image_size)
        # 1. both generators, with D_A and D_B frozen
        fake_A, fake_B, terms = g_update(G_AB, G_BA, D_A, D_B, opt_G, real_A, real_B, args.lambda_cyc,
                                         args.lambda_idt, not args.no_cycle)
        # 2. both discriminators, on fakes drawn through the image histories
        loss_D_A, loss_D_B = d_update(D_A, D_B, opt_D, real_A, real_B, pool_A.query(fake_A), pool_B.query(fake_B))
        run.log(**terms, loss_D_A=loss_D_A, loss_D_B=loss_D_B, lr=opt_G.param_groups[0]["lr"])
        if run.epochs_done > sched_G.last_epoch:  # this step ended an epoch
            sched_G.step()
            sched_D.step()
            if args.dataset == "shapes":  # the exact translation error on the paired test split
                err = paired_errors(G_AB, G_BA, test_A, test_B)
                run.log(test_err_AB=err[0], test_err_BA=err[1])
    return run.finish()


@torch.no_grad()
def generate(args) -> dict:
    """--generate N --resume RUN: translate N test images each way; pages of rows [input |
    translated | reconstructed] (A2B-000.png, ...) and each translation alone (A2B/00000.png, ...)."""
    import torchvision.utils as vutils

    device = common.setup(args)
    G_AB, G_BA, *_ = build(args, args.channels, device)  # (the checkpoint's flags say what to build)
    run = common.Run("cyclegan", args, {"G_AB": G_AB, "G_BA": G_BA}, device=device)
    test_A, test_B = load_test(args, device, args.generate)
    out = run.dir / f"translated-{datetime.now():%Y%m%d-%H%M%S}"
    while out.exists():
        out = out.with_name(out.name + "-2")
    for name, G, back, data in (("A2B", G_AB, G_BA, test_A), ("B2A", G_BA, G_AB, test_B)):
        (out / name).mkdir(parents=True)
        for page, (x, _) in enumerate(data.in_order(EVAL_BATCH)):
            y = G(x)
            rows = torch.stack([x, y, back(y)], 1).flatten(0, 1)  # (3k, C, S, S)
            common.save_grid(rows, out / f"{name}-{page:03d}.png", nrow=3)
            for i, image in enumerate(y.cpu()):
                vutils.save_image(image.add(1).div(2).clamp(0, 1), out / name / f"{page * EVAL_BATCH + i:05d}.png")
    print(f"wrote {test_A.n} A->B and {test_B.n} B->A translations to {out}/ (pages of rows input | "
          f"translated | reconstructed: A2B-*.png, B2A-*.png; each translation alone in A2B/, B2A/)")
    if args.dataset != "shapes":
        return {}
    err_AB, err_BA, err_id = paired_errors(G_AB, G_BA, test_A, test_B).tolist()
    print(f"paired test error on {test_A.n} shapes (mean |x - y| per pixel, [-1, 1] units): "
          f"G_AB(a) vs b {err_AB:.4f}, G_BA(b) vs a {err_BA:.4f}; identity mapping (a vs b) {err_id:.4f}")
    return {"test_err_AB": err_AB, "test_err_BA": err_BA, "test_err_identity": err_id}


def main(argv=None) -> dict:
    args = parse_args(argv)
    return generate(args) if args.generate else train(args)


if __name__ == "__main__":
    common.cli(main)
