"""The plain training loop of each image script: the baseline of benchmarks/speed.py.

Each loop trains the script's own networks (its classes, built by its `build` with its default
hyperparameters and its own init) on the script's losses in the script's update order, but
written the way most published examples train (pytorch/examples' dcgan, eriklindernoren's
PyTorch-GAN, the papers' official PyTorch ports):
  - a torchvision-style Dataset of PIL images (the built-in shapes, rendered once and converted
    to PIL), transforms.ToTensor() + Normalize((0.5,)*C, (0.5,)*C), through a DataLoader
    (shuffle=True, drop_last=True, `workers` processes, no pinned memory, no persistent
    workers), `.to(device)` per batch;
  - fp32 with PyTorch's default backend flags (cudnn.benchmark off, no TF32 matmuls);
  - the script's optimiser built the default way (torch.optim.Adam(params, lr, betas), no
    fused/foreach flag), `zero_grad()` / `backward()` / `step()`;
  - `.item()` on every logged loss, every step (the usual per-step logging).
Flags passed to a plain loop set its networks and hyperparameters; --amp and --compile are
ignored (the plain loop is fp32 and eager by definition), and the two flags a plain loop does
not mirror (vaegan's --gate, cyclegan's --augment on) are refused.
What stays the script's: networks, init, losses (imported where they are pure functions),
the order of the updates, what each update sees, the latent distributions. The tests in
tests/test_speed.py check one plain step against the script's step functions. Where a typical
port would change the method, the plain loop keeps the script's meaning: sagan.py's D sees
real and fake in one batch and is in eval mode for G's step (one spectral-norm power iteration
per D step, as the official code); vaegan.py gives each network its own loss's gradient with
backward(inputs=...); cyclegan.py's image history is the script's ImagePool. Where the script
differs from the usual port without changing the function, the plain loop is the usual port:
began.py's D sees real and fake in two passes; relativistic_gan.py's G loss takes C(x_r) with
its graph (official code); progan.py's weight average is a per-parameter loop; wgan.py's fakes
for the critic are G(z).detach() rather than computed under no_grad.

`make(script, argv, device, workers)` returns a loop object with
  .batches()       an endless iterator over the DataLoader (epoch after epoch)
  .step(batches)   one training step as the script counts steps; returns the images shown to D
  .noise(...)      the latent draws, one method, so a test can inject them
  .last            the losses of the last step, as Python floats
"""
from __future__ import annotations

import copy
import itertools
import math
import os
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import data  # noqa: E402

SCRIPTS = ("dcgan", "wgan", "relativistic_gan", "infogan", "began", "vaegan", "sagan", "progan", "cyclegan")


def default_workers() -> int:
    """A typical DataLoader setting: 4 worker processes, or the CPU count if smaller."""
    return min(4, os.cpu_count() or 1)


def default_backends() -> None:
    """PyTorch's own defaults (the scripts switch on cudnn.benchmark and TF32 matmuls)."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions


# ---------------------------------------------------------------------------------------------
# Data: the built-in shapes as PIL images, the torchvision way
# ---------------------------------------------------------------------------------------------
def _pil_images(n: int, image_size: int, channels: int, style: str, stream: int, device) -> tuple:
    from PIL import Image

    factors = data.shape_factors(n, seed=0, stream=stream)
    x = data.render_shapes(factors, image_size, channels, style, device).cpu()  # (N, C, S, S) uint8
    if channels == 1:
        images = [Image.fromarray(a[0].numpy(), mode="L") for a in x]
    else:
        images = [Image.fromarray(a.permute(1, 2, 0).numpy(), mode="RGB") for a in x]
    return images, factors["class"].tolist()


def _transform(channels: int):
    import torchvision.transforms as T

    return T.Compose([T.ToTensor(), T.Normalize((0.5,) * channels, (0.5,) * channels)])


class ShapesPIL(torch.utils.data.Dataset):
    """The built-in shapes as a list of PIL images with their class labels (like
    torchvision.datasets.MNIST): __getitem__ applies the transform to one PIL image."""

    def __init__(self, n, image_size, channels=3, style="filled", stream=0, device="cpu", transform=None):
        self.images, self.labels = _pil_images(n, image_size, channels, style, stream, device)
        self.transform = transform or _transform(channels)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


class UnalignedShapes(torch.utils.data.Dataset):
    """CycleGAN's two domains as the official UnalignedDataset serves them: A[i] with a random
    B image (filled shapes for A, outlines for B, as common.load_unpaired draws them)."""

    def __init__(self, n, image_size, channels=3, device="cpu"):
        self.A, _ = _pil_images(n, image_size, channels, "filled", 0, device)
        self.B, _ = _pil_images(n, image_size, channels, "outline", 2, device)
        self.transform = _transform(channels)

    def __len__(self):
        return len(self.A)

    def __getitem__(self, i):
        return self.transform(self.A[i]), self.transform(self.B[random.randint(0, len(self.B) - 1)])


def endless(loader):
    while True:
        yield from loader


# ---------------------------------------------------------------------------------------------
# The loops
# ---------------------------------------------------------------------------------------------
class Plain:
    """What every plain loop shares: the script's flags, the device, the DataLoader, logging."""

    script = ""
    default_size = 60000

    def __init__(self, argv, device, workers: int | None = None, dataset=None):
        import importlib

        self.m = importlib.import_module(self.script)
        self.device = torch.device(device)
        self.args = self.m.parse_args([*argv, "--device", self.device.type])
        self.args.channels = self.args.channels or 3
        self.C = self.args.channels
        self.B = self.args.batch_size
        self.workers = default_workers() if workers is None else workers
        self._dataset = dataset
        self.last = {}
        self.steps_per_epoch = 0  # set by batches()
        self.build()

    def dataset(self):
        return ShapesPIL(self.args.dataset_size or self.default_size, self.args.image_size, self.C,
                         device=self.device)

    def batches(self):
        ds = self._dataset if self._dataset is not None else self.dataset()
        self.steps_per_epoch = len(ds) // self.B
        loader = torch.utils.data.DataLoader(ds, batch_size=self.B, shuffle=True,
                                             num_workers=self.workers, drop_last=True)
        return endless(loader)

    def log(self, **values) -> None:
        self.last = {k: v.item() if torch.is_tensor(v) else float(v) for k, v in values.items()}

    def build(self):
        raise NotImplementedError

    def step(self, batches) -> int:
        raise NotImplementedError


def adam(params, lr, betas, **kw):
    return torch.optim.Adam(params, lr=lr, betas=betas, **kw)


class DCGAN(Plain):
    script = "dcgan"

    def build(self):
        a = self.args
        self.G, self.D = self.m.build(a, self.C, self.device)
        self.opt_G = adam(self.G.parameters(), a.lr, (a.beta1, a.beta2))
        self.opt_D = adam(self.D.parameters(), a.lr, (a.beta1, a.beta2))

    def noise(self, n):
        return self.m.sample_z(n, self.args.nz, self.device, self.args.z_dist)

    def step(self, batches):
        real, _ = next(batches)
        real = real.to(self.device)
        fake = self.G(self.noise(real.size(0)))
        # (1) update D: maximise log D(x) + log(1 - D(G(z)))
        self.opt_D.zero_grad()
        real_logits, fake_logits = self.D(real), self.D(fake.detach())
        loss_D = self.m.d_loss(real_logits, fake_logits)
        loss_D.backward()
        self.opt_D.step()
        # (2) update G on the same z, through the updated D: maximise log D(G(z))
        self.opt_G.zero_grad()
        loss_G = self.m.g_loss(self.D(fake))
        loss_G.backward()
        self.opt_G.step()
        self.log(loss_D=loss_D, loss_G=loss_G, D_x=torch.sigmoid(real_logits).mean(),
                 D_G_z=torch.sigmoid(fake_logits).mean())
        return real.size(0)


class WGAN(Plain):
    script = "wgan"

    def build(self):
        self.G, self.critic, _, _ = self.m.build(self.args, self.C, self.device)
        self.opt_G = torch.optim.RMSprop(self.G.parameters(), lr=self.args.lr)
        self.opt_C = torch.optim.RMSprop(self.critic.parameters(), lr=self.args.lr)
        self.gen_iteration = 0

    def noise(self, n):
        return torch.randn(n, self.args.nz, device=self.device)

    def step(self, batches):
        a = self.args
        n_critic = (self.m.critic_iters(self.gen_iteration, a.n_critic) if a.critic_schedule == "official"
                    else a.n_critic)
        images = 0
        for _ in range(n_critic):  # each critic iteration on a fresh real batch and a fresh z
            real, _ = next(batches)
            real = real.to(self.device)
            fake = self.G(self.noise(real.size(0))).detach()
            self.opt_C.zero_grad()
            loss_C = self.m.critic_loss(self.critic(real), self.critic(fake))
            loss_C.backward()
            self.opt_C.step()
            with torch.no_grad():
                for p in self.critic.parameters():
                    p.clamp_(-a.clip, a.clip)
            self.log(W_estimate=-loss_C)
            images += real.size(0)
        self.opt_G.zero_grad()
        loss_G = self.m.generator_loss(self.critic(self.G(self.noise(self.B))))
        loss_G.backward()
        self.opt_G.step()
        self.log(loss_G=loss_G, **self.last)
        self.gen_iteration += 1
        return images


class RelativisticGAN(Plain):
    script = "relativistic_gan"

    def build(self):
        a = self.args
        self.G, self.D, _, _ = self.m.build(a, self.C, self.device)
        self.opt_G = adam(self.G.parameters(), a.lr, (a.beta1, a.beta2))
        self.opt_D = adam(self.D.parameters(), a.lr, (a.beta1, a.beta2))

    def noise(self, n):
        return torch.randn(n, self.args.nz, device=self.device)

    def step(self, batches):
        a, images = self.args, 0
        for _ in range(a.n_d):  # n_D discriminator updates, a fresh batch each
            real, _ = next(batches)
            real = real.to(self.device)
            fake = self.G(self.noise(real.size(0))).detach()
            self.opt_D.zero_grad()
            r, f = self.D(real), self.D(fake)
            loss_D = self.m.d_loss(a.loss, r, f)
            if a.gp:
                loss_D = loss_D + a.gp_weight * self.m.gradient_penalty(self.D, real, fake)
            loss_D.backward()
            self.opt_D.step()
            images += real.size(0)
        real = None
        if a.loss in self.m.RELATIVISTIC:  # the relativistic G loss looks at a fresh real batch
            real = next(batches)[0].to(self.device)
            images += real.size(0)
        self.opt_G.zero_grad()
        f = self.D(self.G(self.noise(self.B)))
        r = self.D(real) if real is not None else None  # as the official code: with its graph
        loss_G = self.m.g_loss(a.loss, r, f)
        loss_G.backward()
        self.opt_G.step()
        self.log(loss_D=loss_D, loss_G=loss_G)
        return images


class InfoGAN(Plain):
    script = "infogan"

    def build(self):
        a = self.args
        self.G, self.D, _, _ = self.m.build(a, self.C, self.device)
        self.opt_G = adam(self.G.parameters(), a.lr_g, (a.beta1, a.beta2))
        self.opt_D = adam(self.D.parameters(), a.lr_d, (a.beta1, a.beta2))  # D's body, D head, Q head

    def noise(self, n):  # (generator input, codes)
        a = self.args
        return self.m.sample_latent(n, a.nz, a.n_cat, a.cat_dim, a.n_cont, self.device)

    def step(self, batches):
        a = self.args
        real, _ = next(batches)
        real = real.to(self.device)
        g_in, codes = self.noise(real.size(0))
        fake = self.G(g_in).detach()
        # (1) D and Q: minimise L_D - λ L_I
        self.opt_D.zero_grad()
        real_logits, _ = self.D(real)
        fake_logits, q_fake = self.D(fake)
        loss_D = self.m.d_loss(real_logits, fake_logits)
        discrete, continuous = self.m.info_loss(q_fake, codes, a.learn_sigma)
        (loss_D + a.info_weight * (discrete + continuous)).backward()
        self.opt_D.step()
        # (2) G: minimise L_G - λ L_I on a fresh latent, through the updated D
        g_in, codes = self.noise(real.size(0))
        self.opt_G.zero_grad()
        fake_logits_g, q = self.D(self.G(g_in))
        loss_G = self.m.g_loss(fake_logits_g)
        discrete_g, continuous_g = self.m.info_loss(q, codes, a.learn_sigma)
        (loss_G + a.info_weight * (discrete_g + continuous_g)).backward()
        self.opt_G.step()
        self.log(loss_D=loss_D, loss_G=loss_G, discrete=discrete, continuous=continuous,
                 D_x=torch.sigmoid(real_logits).mean(), D_G_z=torch.sigmoid(fake_logits).mean())
        return real.size(0)


class BEGAN(Plain):
    script = "began"

    def build(self):
        a = self.args
        self.G, self.D, _, _ = self.m.build(a, self.C, self.device)
        self.opt_G = adam(self.G.parameters(), a.lr, (a.beta1, a.beta2))
        self.opt_D = adam(self.D.parameters(), a.lr, (a.beta1, a.beta2))
        self.k_t, self.steps, self.window, self.previous = a.k0, 0, [], math.inf

    def noise(self, n):
        return self.m.sample_z(n, self.args.nz, self.device)

    def step(self, batches):
        a = self.args
        real, _ = next(batches)
        real = real.to(self.device)
        fake = self.G(self.noise(real.size(0))).detach()  # G(z_D)
        # (1) D: minimise L(x) - k_t L(G(z_D))
        self.opt_D.zero_grad()
        loss_real = self.m.ae_loss(real, self.D(real))
        loss_D = loss_real - self.k_t * self.m.ae_loss(fake, self.D(fake))
        loss_D.backward()
        self.opt_D.step()
        # (2) G: minimise L(G(z_G)), a fresh z_G, through the updated D
        self.opt_G.zero_grad()
        fake = self.G(self.noise(real.size(0)))
        loss_G = self.m.ae_loss(fake, self.D(fake))
        loss_G.backward()
        self.opt_G.step()
        # (3) k_t and the convergence measure, on the host, as the published ports do
        L_x, L_G = loss_real.item(), loss_G.item()
        M_global = L_x + abs(a.gamma * L_x - L_G)
        self.log(loss_D=loss_D, loss_G=L_G, L_x=L_x, k_t=self.k_t, M_global=M_global)
        self.k_t = min(max(self.k_t + a.lambda_k * (a.gamma * L_x - L_G), 0.0), 1.0)
        # (4) the lr decay at the end of each window of --lr-window steps
        self.window.append(M_global)
        self.steps += 1
        if self.steps % a.lr_window == 0:
            mean, factor = sum(self.window) / len(self.window), 0.5 if a.lr_decay == "fixed" else 1.0
            if a.lr_decay == "stall":
                factor = 0.5 if self.m.stalled(mean, self.previous, a.stall_tol) else 1.0
                self.previous = mean
            self.window = []
            for group in self.opt_G.param_groups + self.opt_D.param_groups:
                group["lr"] *= factor
        return real.size(0)


class VAEGAN(Plain):
    script = "vaegan"

    def build(self):
        a = self.args
        if a.gate:
            raise common.UserError("the plain vaegan loop has no --gate (the official code's update gating).")
        self.E, self.Dec, self.D, _ = self.m.build(a, self.C, self.device)
        nets = {"Enc": self.E, "Dec": self.Dec, "Dis": self.D}
        self.opts = {k: torch.optim.RMSprop(n.parameters(), lr=a.lr, alpha=a.alpha)
                     for k, n in nets.items() if n is not None}

    def noise(self, shape):
        return torch.randn(shape, device=self.device)

    def step(self, batches):
        a = self.args
        x, _ = next(batches)
        x = x.to(self.device)
        B = x.size(0)
        # Alg. 1: one forward pass
        mu, logvar = self.E(x)
        z = mu + torch.exp(0.5 * logvar) * self.noise(mu.shape)        # z ~ q(z|x)
        if self.D is None:                                              # --recon pixel: a plain VAE
            x_tilde = self.Dec(z)
            L_prior, L_llike = self.m.kl_loss(mu, logvar), self.m.feature_recon_loss(x_tilde, x)
            losses = {"Enc": L_prior + L_llike, "Dec": L_llike}
        else:
            x_dec = self.Dec(torch.cat([z, self.noise(mu.shape)]))      # [x̃, x_p] in one batch
            logits, features = self.D(torch.cat([x, x_dec]))            # Dis on [x, x̃, x_p]
            real, recon, prior = logits.split(B)
            L_prior = self.m.kl_loss(mu, logvar)
            L_llike = self.m.feature_recon_loss(features[B:2 * B], features[:B])
            L_GAN = self.m.discriminator_loss(real, None if a.no_recon_fakes else recon, prior)
            losses = {"Enc": L_prior + L_llike, "Dec": a.gamma * L_llike - L_GAN, "Dis": L_GAN}
        # the three updates of Alg. 1, each network on its own loss only
        nets = {"Enc": self.E, "Dec": self.Dec, "Dis": self.D}
        for opt in self.opts.values():
            opt.zero_grad()
        names = list(self.opts)
        for i, name in enumerate(names):
            losses[name].backward(inputs=list(nets[name].parameters()), retain_graph=i < len(names) - 1)
        for opt in self.opts.values():
            opt.step()
        self.log(**{f"loss_{k}": v for k, v in losses.items()}, L_prior=L_prior, L_llike=L_llike)
        return B


class SAGAN(Plain):
    script = "sagan"

    def build(self):
        a = self.args
        a.num_classes = 0 if a.unconditional else len(data.SHAPE_NAMES)
        self.G, self.D, _, _ = self.m.build(a, self.C, self.device)
        self.opt_G = adam(self.G.parameters(), a.lr_g, (a.beta1, a.beta2))  # TTUR
        self.opt_D = adam(self.D.parameters(), a.lr_d, (a.beta1, a.beta2))

    def noise(self, n):
        return torch.randn(n, self.args.nz, device=self.device)

    def step(self, batches):
        real, labels = next(batches)
        real, labels = real.to(self.device), labels.to(self.device)
        y = labels if self.args.num_classes else None
        fake = self.G(self.noise(real.size(0)), y)
        # (1) D on hinge loss. Real and fake in one batch (as BigGAN-PyTorch): one power iteration
        self.opt_D.zero_grad()
        logits = self.D(torch.cat([real, fake.detach()]), None if y is None else torch.cat([y, y]))
        d_real, d_fake = logits.chunk(2)
        loss_D = self.m.d_hinge_loss(d_real, d_fake)
        loss_D.backward()
        self.opt_D.step()
        # (2) G on hinge loss, same z and labels; D's power iteration frozen (official NO_OPS)
        self.D.eval()
        self.opt_G.zero_grad()
        loss_G = self.m.g_hinge_loss(self.D(fake, y))
        loss_G.backward()
        self.opt_G.step()
        self.D.train()
        self.log(loss_D=loss_D, loss_G=loss_G, D_real=d_real.mean(), D_fake=d_fake.mean())
        return real.size(0)


class ProGAN(Plain):
    """At one fixed phase: the final resolution, stabilising (alpha = 1), with the script's
    minibatch size for that resolution. The real images come at the final size."""

    script = "progan"

    def build(self):
        a = self.args
        self.G, self.D, _, _ = self.m.build(a, self.C, self.device)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False)
        self.opt_G = adam(self.G.parameters(), a.lr, (a.beta1, a.beta2), eps=1e-8)
        self.opt_D = adam(self.D.parameters(), a.lr, (a.beta1, a.beta2), eps=1e-8)
        self.depth, self.alpha = self.m.depth_of(a.image_size), 1.0
        self.B = self.m.parse_batch_sizes(a.batch_sizes).get(a.image_size, a.batch_size)

    def noise(self, n):
        return torch.randn(n, self.args.nz, device=self.device)

    def step(self, batches):
        a, d, al = self.args, self.depth, self.alpha
        real, _ = next(batches)
        real = real.to(self.device)
        # (1) D: WGAN-GP with the drift term (n_critic = 1)
        fake = self.G(self.noise(real.size(0)), d, al).detach()
        self.opt_D.zero_grad()
        real_scores, fake_scores = self.D(real, d, al), self.D(fake, d, al)
        penalty = self.m.gradient_penalty(self.D, real, fake, d, al, a.image_size)
        loss_D = self.m.d_loss(real_scores, fake_scores, penalty, a.gp_weight, a.drift)
        loss_D.backward()
        self.opt_D.step()
        # (2) G through the updated D, a fresh z
        self.opt_G.zero_grad()
        loss_G = self.m.g_loss(self.D(self.G(self.noise(self.B), d, al), d, al))
        loss_G.backward()
        self.opt_G.step()
        # (3) G's running average, parameter by parameter
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.mul_(a.ema).add_(p, alpha=1 - a.ema)
        self.log(loss_D=loss_D, loss_G=loss_G, W_estimate=real_scores.mean() - fake_scores.mean(), gp=penalty)
        return real.size(0)


class CycleGAN(Plain):
    """Batch 1, as the script; counts one image per step, as the script's images_per_s does."""

    script = "cyclegan"

    def build(self):
        a = self.args
        if a.augment == "on":
            raise common.UserError("the plain cyclegan loop trains without --augment (as the script on the shapes).")
        self.G_AB, self.G_BA, self.D_A, self.D_B, _, _ = self.m.build(a, self.C, self.device)
        self.opt_G = adam(itertools.chain(self.G_AB.parameters(), self.G_BA.parameters()), a.lr, (a.beta1, a.beta2))
        self.opt_D = adam(itertools.chain(self.D_A.parameters(), self.D_B.parameters()), a.lr, (a.beta1, a.beta2))
        rule = lambda e: self.m.lr_lambda(e, a.n_epochs, a.n_epochs_decay)
        self.scheds = [torch.optim.lr_scheduler.LambdaLR(o, rule) for o in (self.opt_G, self.opt_D)]
        self.pool_A, self.pool_B = self.m.ImagePool(a.pool_size), self.m.ImagePool(a.pool_size)
        self.steps = 0

    def dataset(self):
        return UnalignedShapes(self.args.dataset_size, self.args.image_size, self.C, self.device)

    def step(self, batches):
        a, m = self.args, self.m
        real_A, real_B = next(batches)
        real_A, real_B = real_A.to(self.device), real_B.to(self.device)
        # (1) both generators, discriminators frozen
        for D in (self.D_A, self.D_B):
            D.requires_grad_(False)
        self.opt_G.zero_grad()
        fake_B, fake_A = self.G_AB(real_A), self.G_BA(real_B)
        loss_G = m.lsgan_g_loss(self.D_B(fake_B)) + m.lsgan_g_loss(self.D_A(fake_A))
        if not a.no_cycle:
            loss_G = loss_G + a.lambda_cyc * (m.cycle_loss(self.G_BA(fake_B), real_A)
                                              + m.cycle_loss(self.G_AB(fake_A), real_B))
        if a.lambda_idt > 0:
            loss_G = loss_G + a.lambda_idt * a.lambda_cyc * (m.identity_loss(self.G_BA(real_A), real_A)
                                                             + m.identity_loss(self.G_AB(real_B), real_B))
        loss_G.backward()
        self.opt_G.step()
        for D in (self.D_A, self.D_B):
            D.requires_grad_(True)
        # (2) both discriminators on fakes from the image histories
        self.opt_D.zero_grad()
        fake_A, fake_B = self.pool_A.query(fake_A), self.pool_B.query(fake_B)
        loss_D_A = m.lsgan_d_loss(self.D_A(real_A), self.D_A(fake_A.detach()))
        loss_D_B = m.lsgan_d_loss(self.D_B(real_B), self.D_B(fake_B.detach()))
        (loss_D_A + loss_D_B).backward()
        self.opt_D.step()
        self.log(loss_G=loss_G, loss_D_A=loss_D_A, loss_D_B=loss_D_B)
        self.steps += 1
        if self.steps_per_epoch and self.steps % self.steps_per_epoch == 0:  # an epoch ended: lr schedule
            for s in self.scheds:
                s.step()
        return real_A.size(0)


LOOPS = {c.script: c for c in (DCGAN, WGAN, RelativisticGAN, InfoGAN, BEGAN, VAEGAN, SAGAN, ProGAN, CycleGAN)}


def make(script: str, argv=(), device="cpu", workers: int | None = None, dataset=None) -> Plain:
    """The plain loop of `script`, with the script's flags `argv` (e.g. tiny sizes for tests)."""
    if script not in LOOPS:
        raise common.UserError(f"no plain loop for '{script}'; choose one of {', '.join(SCRIPTS)}.")
    return LOOPS[script](list(argv), device, workers, dataset)
