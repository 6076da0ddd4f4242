"""Self-Attention Generative Adversarial Networks — Zhang, Goodfellow, Metaxas, Odena (2018), arXiv:1805.08318

Convolutions see only a local neighbourhood, so a convolutional GAN models long-range structure
(the legs of a dog, the far side of a ring) through many layers, poorly. SAGAN adds a
self-attention block to both networks: every position of a feature map computes a softmax over
all positions and adds the weighted sum of their values, scaled by a learned gamma that starts
at 0, so the networks first rely on local cues and learn to look further away. Training is
stabilised by spectral normalisation of every layer of G *and* D, the hinge loss, and two
time-scale learning rates (TTUR: D learns four times faster than G, one D step per G step).

Paper -> code:
  Sec. 3, the self-attention block: s_ij = f(x_i)ᵀ g(x_j), β_{j,i} = softmax_i(s_ij),
      o_j = W_v Σ_i β_{j,i} h(x_i), y_i = γ o_i + x_i, γ initialised to 0  -> SelfAttention
  Sec. 3, the hinge version of the adversarial loss                        -> d_hinge_loss, g_hinge_loss
  Sec. 4, spectral normalisation in G and D; TTUR (lr_D 4e-4, lr_G 1e-4)    -> sn_conv / sn_linear, parse_args
  Sec. 5, Adam β1 = 0, β2 = 0.9; conditional BN in G, projection D; one D step per G step
                                                        -> CondBatchNorm2d, Discriminator.forward, train
  Table 1 (attention at feat32/feat64 beats feat8/feat16)                -> --attention-res, --no-attention
  Official code (brain-research/self-attention-gan): residual blocks, widths 16ch..ch, Glorot init,
      global sum pooling, SN embedding, D's fake pass without a power-iteration update
                                                        -> GBlock, DBlock, Generator, Discriminator

Deviations from the paper (each tagged `# DEVIATION:` below):
  1. 64 px instead of ImageNet 128 px: one residual block fewer in each network, attention on
     the 32x32 maps of both. Any power of two from 16 to 256 works, with the width rule that
     gives the official network at 128 px (G: ch*min(16, S/r) channels at side r; D:
     ch*min(16, S/2r)) and attention at min(32, S/2) (Table 1: 32x32 was best at 128 px).
  2. Default width ch = 32 (the official code: 64), so that `--epochs 5` on the 60,000 shapes
     takes minutes on one GPU; `--ch 64` is the official width.
  3. The built-in shapes (10 classes, class-conditional) replace ImageNet. Data without labels
     (an unlabelled folder, celeba, lsun) or `--unconditional` trains the unconditional
     variant: plain BN in G and no projection term in D (not in the paper).
Choices where the paper is silent or sources differ (official code: the repository above):
  - The attention block is the paper's (Sec. 3): f, g, h all C/8 channels, W_v back to C, every
    position a key, 1x1 convs without bias; the official block (h C/2, 2x2 max-pooled keys) is not.
  - Adam β2 = 0.9 (the paper, Sec. 5); the official code builds AdamOptimizer(lr, beta1), so it
    trains with TensorFlow's default β2 = 0.999 (`--beta2 0.999`).
  - G's BN running averages (its samples use them): PyTorch's momentum 0.1, a decay of 0.9 per
    step; the paper is silent; the official code decays them at 0.999 (conditional BN) and
    0.9999 (G's last BN, an average that after a short run still leans on its initial values).
  - Labels of the fake batch: the real batch's, a draw of y ~ p_data as the paper's L_D and L_G
    write it (the official code draws them uniformly; the shapes classes are balanced).
  - G's update reuses the z and labels D just saw (as dcgan.py); the official code draws fresh z.
  - Spectral norm (1 power iteration) on every conv and linear of G and D and on D's class
    embedding (paper Sec. 4; official generator() and sn_embedding); not on G's per-class BN
    gains and biases (the official plain variables, initialised to 1 and 0).
  - D sees the real and fake batch as one batch (no BN in D: the same function) and updates its
    power-iteration vectors once per D step; in G's step D is in eval mode, which freezes them
    (the official update_collection="NO_OPS").
  - Batch 64 (the paper gives none): the official code's per-tower batch (4 towers of 64,
    gradients averaged); `--batch-size 256` is its global batch. z ~ N(0, I)^128; Glorot-uniform
    init, zero biases; nearest-neighbour upsampling, 2x2 average pooling; G's last BN is plain.
A step is one D update and one G update on one real batch; an epoch is one pass over the data
(937 steps at batch 64 on the 60,000 built-in shapes).

Samples: the per-epoch grids are 10 rows of 10, row r from class r. `--generate N` draws the
classes uniformly (`--class K`: all from class K) and, with attention, writes attention.png (the
paper's Fig. 1): samples beside the attention map of one query position (green) of G's block.

Logged (metrics.csv, besides step, epoch and images_per_s):
  loss_D            D's hinge loss mean relu(1 - D(x)) + mean relu(1 + D(G(z))): 2 when D
                    outputs 0 for everything, 0 when every real logit is >= 1 and every fake <= -1
  loss_G            G's loss -mean D(G(z)), through the D just updated
  D_real, D_fake    mean logit D(x, y) on the real batch and D(G(z), y) on the fake batch,
                    before D's update
  gamma_G, gamma_D  the attention blocks' γ in G and D: 0 at the start; how much each network
                    has come to use attention (absent with --no-attention)

Samples, scores and the evidence behind the choices: benchmarks/README.md.
Run:  python sagan.py --epochs 5                             (built-in shapes, 64 px, conditional)
      python sagan.py --no-attention --epochs 5              (the ablation: same network, no attention)
      python sagan.py --unconditional --epochs 5
      python sagan.py --generate 64 --class 3 --resume runs/sagan-shapes-<time>
      python sagan.py --preset laptop                        (for a CPU, PRESETS below: up to an hour on one core)
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

import common

# --preset laptop: the laptop tier's configuration (benchmarks/README.md), made of this script's
# own flags for a 2-core CPU: 32 px grayscale, 16 channels, batch 32, 6 epochs.
# The losses, optimiser settings and update schedule stay the paper's.
PRESETS = {"laptop": "--image-size 32 --channels 1 --ch 16 --batch-size 32 --epochs 6"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Self-Attention GAN (Zhang et al., 2018)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--nz", type=common.positive_int, default=128, help="latent size (official code: z ~ N(0, I)^128)")
    # DEVIATION: half the official width by default (deviation 2), for minutes rather than hours.
    p.add_argument("--ch", type=common.positive_int, default=32,
                   help="network width: at 64 px G has 16*ch channels at 4x4 and ch at 64x64 (official: 64)")
    p.add_argument("--lr-d", type=common.positive_float, default=4e-4, help="D's Adam lr (Sec. 5, TTUR: 0.0004)")
    p.add_argument("--lr-g", type=common.positive_float, default=1e-4, help="G's Adam lr (Sec. 5, TTUR: 0.0001)")
    p.add_argument("--beta1", type=common.unit_interval, default=0.0, help="Adam beta1 (Sec. 5: 0)")
    p.add_argument("--beta2", type=common.unit_interval, default=0.9,
                   help="Adam beta2 (Sec. 5: 0.9; the official code: TensorFlow's default, 0.999)")
    p.add_argument("--no-attention", action="store_true",
                   help="leave out both attention blocks (the paper's SNGAN-projection baseline)")
    p.add_argument("--attention-res", type=common.positive_int, default=None,
                   help="side of the feature maps that get attention, 8 to image-size/2 (default: "
                        "min(32, image-size/2); Table 1: feat32 was best at 128 px)")
    p.add_argument("--unconditional", action="store_true",
                   help="ignore the labels: plain BN in G, no projection in D (automatic for unlabelled data)")
    p.add_argument("--class", dest="sample_class", type=int, default=None, metavar="K",
                   help="with --generate: draw every sample from class K")
    p.add_argument("--num-classes", type=int, default=None, help=argparse.SUPPRESS)  # set from the data
    common.add_run_args(p, presets=PRESETS, batch_size=64)
    args = common.parse_args(p, argv, "sagan", per_invocation=("sample_class",))
    S = args.image_size
    if S < 16 or S & (S - 1):
        p.error(f"--image-size must be a power of two, 16 or more (got {S}): each residual block "
                f"doubles or halves the side, from or to 4x4")
    if args.attention_res is None:
        args.attention_res = min(32, S // 2)
    if not 8 <= args.attention_res <= S // 2 or args.attention_res & (args.attention_res - 1):
        p.error(f"--attention-res must be a power of two from 8 to {S // 2} at --image-size {S} "
                f"(got {args.attention_res}): both networks have a feature map of that side")
    narrowest = args.ch * min(16, S // (2 * args.attention_res))  # D's channels at the attention map
    if not args.no_attention and narrowest < 8:
        p.error(f"--ch {args.ch} gives D {narrowest} channels at the {args.attention_res}x{args.attention_res} "
                f"attention map, and self-attention needs 8 or more (C/8 query channels); pass a larger "
                f"--ch or --no-attention")
    if args.sample_class is not None and not args.generate:
        p.error("--class K only makes sense with --generate N --resume RUN")
    return args


# ---------------------------------------------------------------------------------------------
# Networks (Sec. 3 and 5; residual blocks of the official code, scaled to 64 px)
# ---------------------------------------------------------------------------------------------
def sn_conv(c_in: int, c_out: int, k: int, bias: bool = True) -> nn.Module:
    """Spectrally normalised conv (Sec. 4: SN in G and D), Glorot-uniform init as official ops.py.
    The weight is initialised before spectral_norm is applied, so its u and v start converged."""
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias)
    nn.init.xavier_uniform_(conv.weight)
    if bias:
        nn.init.zeros_(conv.bias)
    return spectral_norm(conv)  # W / σ(W), σ from 1 power iteration per training forward


def sn_linear(n_in: int, n_out: int) -> nn.Module:
    linear = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return spectral_norm(linear)


class SelfAttention(nn.Module):
    """Sec. 3: x (B, C, H, W) -> y = γ·o + x, o the attention output; γ starts at 0.

    f (keys) and g (queries) are 1x1 convs to C/8 channels, h (values) too (C̄ = C/8), and W_v a
    1x1 conv back to C; all spectrally normalised. β_{j,i} is how much output position j
    attends to position i: `attention_weights` returns it, one row per j."""

    def __init__(self, channels: int):
        super().__init__()
        if channels < 8:
            raise ValueError(f"self-attention needs 8 or more channels (C/8 >= 1), got {channels}")
        c_bar = channels // 8
        self.f = sn_conv(channels, c_bar, 1, bias=False)
        self.g = sn_conv(channels, c_bar, 1, bias=False)
        self.h = sn_conv(channels, c_bar, 1, bias=False)
        self.v = sn_conv(c_bar, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))  # "γ is initialized as 0"

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        f = self.f(x).flatten(2)                  # (B, C/8, N), N = H*W: f(x_i), the keys
        g = self.g(x).flatten(2)                  # (B, C/8, N): g(x_j), the queries
        s = torch.bmm(g.transpose(1, 2), f)       # (B, N, N): s[b, j, i] = f(x_i)ᵀ g(x_j)
        return F.softmax(s, dim=-1)               # β_{j,i} = exp(s_ij) / Σ_i exp(s_ij)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        beta = self.attention_weights(x)                      # (B, N, N)
        h = self.h(x).flatten(2)                              # (B, C/8, N)
        o = torch.bmm(beta, h.transpose(1, 2))                # (B, N, C/8): row j = Σ_i β_{j,i} h(x_i)
        o = self.v(o.transpose(1, 2).reshape(B, -1, H, W))    # (B, C, H, W): W_v (...)
        y = self.gamma * o + x                                # y_i = γ o_i + x_i
        # y in x's memory layout (o comes out channels-last: its reshape above is a channels-last
        # view), so that γ = 0 is the identity bit for bit, in what the next layers compute too
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class CondBatchNorm2d(nn.Module):
    """Conditional BN (Sec. 5, after de Vries et al. 2017): BN without its own affine, then a
    per-class gain (init 1) and bias (init 0). num_classes = 0: ordinary BN."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        # running averages with PyTorch's momentum 0.1 (decay 0.9); official code: decay 0.999
        self.bn = nn.BatchNorm2d(channels, affine=num_classes == 0)
        if num_classes:
            self.gain = nn.Embedding(num_classes, channels)
            self.bias = nn.Embedding(num_classes, channels)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = self.bn(x)
        if not self.num_classes:
            return h
        return h * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]  # (B, C, 1, 1)


class GBlock(nn.Module):
    """Up-ResBlock: CBN-ReLU-upsample-conv3-CBN-ReLU-conv3, shortcut upsample-conv1."""

    def __init__(self, c_in: int, c_out: int, num_classes: int):
        super().__init__()
        self.bn1, self.conv1 = CondBatchNorm2d(c_in, num_classes), sn_conv(c_in, c_out, 3)
        self.bn2, self.conv2 = CondBatchNorm2d(c_out, num_classes), sn_conv(c_out, c_out, 3)
        self.skip = sn_conv(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.skip(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DBlock(nn.Module):
    """Down-ResBlock: ReLU-conv3-ReLU-conv3-avgpool, shortcut conv1-avgpool. The first block
    ("optimised", on the image) has no leading ReLU and pools before its shortcut conv."""

    def __init__(self, c_in: int, c_out: int, downsample: bool = True, first: bool = False):
        super().__init__()
        self.downsample, self.first = downsample, first
        self.conv1, self.conv2 = sn_conv(c_in, c_out, 3), sn_conv(c_out, c_out, 3)
        self.skip = sn_conv(c_in, c_out, 1) if downsample or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(x if self.first else F.relu(x))))
        s = x
        if self.first:
            s = self.skip(F.avg_pool2d(x, 2))
        elif self.skip is not None:
            s = self.skip(x)
            s = F.avg_pool2d(s, 2) if self.downsample else s
        return (F.avg_pool2d(h, 2) if self.downsample else h) + s


class Generator(nn.Module):
    """(z (B, nz), y (B,) or None) -> image (B, C, S, S) in [-1, 1].

    SN-linear to 4x4x(16*ch) at 64 px, up-ResBlocks to 8*ch (8x8), 4*ch (16), 2*ch (32, then
    self-attention), ch (64), then BN-ReLU-conv3-tanh."""

    def __init__(self, nz=128, ch=32, channels=3, image_size=64, num_classes=0, attention_res=32):
        super().__init__()
        # DEVIATION: 64 px and any power of two (deviation 1): ch*min(16, S/r) channels at side r.
        width = [ch * min(16, image_size // 2 ** k) for k in range(2, int(math.log2(image_size)) + 1)]
        self.top, self.attention_res = width[0], attention_res
        self.linear = sn_linear(nz, self.top * 4 * 4)
        self.blocks = nn.ModuleList(GBlock(a, b, num_classes) for a, b in zip(width, width[1:]))
        self.attention = SelfAttention(width[int(math.log2(attention_res)) - 2]) if attention_res else None
        self.bn = nn.BatchNorm2d(ch)  # momentum 0.1 (decay 0.9); official code: decay 0.9999
        self.conv = sn_conv(ch, channels, 3)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.linear(z).view(-1, self.top, 4, 4)   # (B, 16*ch, 4, 4) at 64 px
        for block in self.blocks:
            h = block(h, y)                            # (B, c, 2r, 2r)
            if self.attention is not None and h.shape[-1] == self.attention_res:
                h = self.attention(h)
        return torch.tanh(self.conv(F.relu(self.bn(h))))


class Discriminator(nn.Module):
    """(image (B, C, S, S), y (B,) or None) -> one logit per image (B,).

    Optimised block to ch (32x32 at 64 px, then self-attention), down-ResBlocks to 2*ch, 4*ch,
    8*ch (4x4), one 8*ch block without downsampling, ReLU, global sum pooling to φ(x); the logit
    is ψ(φ(x)) + ⟨embed(y), φ(x)⟩ (the projection discriminator, Miyato & Koyama 2018)."""

    def __init__(self, ch=32, channels=3, image_size=64, num_classes=0, attention_res=32):
        super().__init__()
        # DEVIATION: 64 px and any power of two (deviation 1): ch*min(16, S/2r) channels at side r.
        n = int(math.log2(image_size)) - 2                                # downsampling blocks
        width = [ch * min(16, 2 ** k) for k in range(n)]                  # at sides S/2 ... 4
        self.blocks = nn.ModuleList([DBlock(channels, width[0], first=True)])
        self.blocks.extend(DBlock(a, b) for a, b in zip(width, width[1:]))
        self.blocks.append(DBlock(width[-1], width[-1], downsample=False))
        self.attention_res = attention_res
        self.attention = (SelfAttention(width[int(math.log2(image_size // attention_res)) - 1])
                          if attention_res else None)
        self.linear = sn_linear(width[-1], 1)
        self.embed = None
        if num_classes:  # official sn_embedding: spectrally normalised, Glorot init
            self.embed = nn.Embedding(num_classes, width[-1])
            nn.init.xavier_uniform_(self.embed.weight)
            self.embed = spectral_norm(self.embed)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = x
        for block in self.blocks:
            h = block(h)
            if self.attention is not None and h.shape[-1] == self.attention_res:
                h = self.attention(h)
        phi = F.relu(h).sum(dim=(2, 3))                # (B, 8*ch): global sum pooling
        out = self.linear(phi).squeeze(1)              # (B,)
        if self.embed is not None:
            out = out + (self.embed(y) * phi).sum(1)   # projection: ⟨embed(y), φ(x)⟩
        return out


# ---------------------------------------------------------------------------------------------
# Losses (Sec. 3: "the hinge version of the adversarial loss", after Lim & Ye 2017)
# ---------------------------------------------------------------------------------------------
def d_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    # L_D = -E_{(x,y)~p_data}[min(0, -1 + D(x, y))] - E_{z~p_z, y~p_data}[min(0, -1 - D(G(z), y))]
    # -min(0, -1 + t) = relu(1 - t): minimised as written; large logits mean "real".
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def g_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    # L_G = -E_{z~p_z, y~p_data}[D(G(z), y)]: minimised as written.
    return -fake_logits.mean()


# ---------------------------------------------------------------------------------------------
# Training (Sec. 5: Adam β = (0, 0.9), TTUR, one D step per G step)
# ---------------------------------------------------------------------------------------------
def discriminator_step(D, opt_D, real, fake, y):
    """One Adam step on D for L_D; `fake` is detached. Real and fake go through D as one batch
    (no batch norm in D: the same function), so SN's power iteration runs once per D step."""
    logits = D(torch.cat([real, fake.detach()]), None if y is None else torch.cat([y, y]))
    real_logits, fake_logits = logits.chunk(2)  # (B,), (B,)
    loss = d_hinge_loss(real_logits, fake_logits)
    opt_D.zero_grad(set_to_none=True)
    loss.backward()
    opt_D.step()
    return loss.detach(), real_logits.detach().mean(), fake_logits.detach().mean()


def generator_step(D, opt_G, fake, y):
    """One Adam step on G for L_G through the D just updated. D gets no gradient, and eval mode
    keeps its SN vectors u, v fixed (official: update_collection="NO_OPS" on the fake pass)."""
    D.requires_grad_(False)
    D.eval()  # D has no BN or dropout: eval only stops the power-iteration update
    loss = g_hinge_loss(D(fake, y))
    opt_G.zero_grad(set_to_none=True)
    loss.backward()
    opt_G.step()
    D.train()
    D.requires_grad_(True)
    return loss.detach()


def build(args, channels: int, device):
    attention_res = 0 if args.no_attention else args.attention_res
    K = args.num_classes or 0
    G = Generator(args.nz, args.ch, channels, args.image_size, K, attention_res).to(device)
    D = Discriminator(args.ch, channels, args.image_size, K, attention_res).to(device)
    # Sec. 5 (TTUR): lr_D = 0.0004, lr_G = 0.0001, Adam β1 = 0, β2 = 0.9.
    betas = (args.beta1, args.beta2)
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=betas)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=betas)
    return G, D, opt_G, opt_D


@torch.no_grad()
def attention_figure(G: Generator, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Fig. 1 of the paper: for each sample, the image and, beside it, where one query position
    looks (its row β_{j,·} of G's attention, as a heat map over the dimmed image). The query j
    (green) is the attention-map cell where the sample is brightest: on the object, for shapes.
    Returns (2k, 3, S, S) images in [0, 1], pairs (sample, map)."""
    seen = {}
    hook = G.attention.register_forward_hook(lambda m, inp, out: seen.update(beta=m.attention_weights(inp[0])))
    try:
        images = G(z, y).float().add(1).div(2).clamp(0, 1).expand(-1, 3, -1, -1)  # (k, 3, S, S)
    finally:
        hook.remove()
    k, S, r = len(z), images.shape[-1], G.attention_res
    brightness = F.adaptive_avg_pool2d(images.mean(1, keepdim=True), r).flatten(1)  # (k, r*r)
    query = brightness.argmax(1)                                                    # (k,)
    heat = seen["beta"].float()[torch.arange(k), query].view(k, 1, r, r)            # β_{j,·}
    heat = F.interpolate(heat / heat.amax(dim=(2, 3), keepdim=True), size=S, mode="nearest")
    hot = torch.cat([3 * heat, 3 * heat - 1, 3 * heat - 2], 1).clamp(0, 1)          # black-red-yellow-white
    overlay = 0.35 * images.mean(1, keepdim=True) + 0.65 * hot
    cell, m = S // r, max(1, S // 32)                       # pixels per attention cell; marker half-size
    green = torch.tensor([0.0, 1.0, 0.0], device=overlay.device)[:, None, None]
    for i, j in enumerate(query.tolist()):
        cy, cx = (j // r) * cell + cell // 2, (j % r) * cell + cell // 2  # the query cell's centre
        overlay[i, :, max(0, cy - m):cy + m + 1, max(0, cx - m):cx + m + 1] = green
    return torch.stack([images, overlay.clamp(0, 1)], 1).flatten(0, 1)


def train(args) -> dict:
    device = common.setup(args)
    data = common.load_dataset(args.dataset, args.data_root, args.image_size, args.channels,
                               args.download, device, args.dataset_size, args.workers)
    args.channels = data.channels  # saved with the checkpoint's flags
    # DEVIATION: unlabelled data (or --unconditional) trains the unconditional variant (deviation 3).
    args.num_classes = K = 0 if args.unconditional else (data.num_classes or 0)
    if not args.unconditional and not K:
        print(f"{args.dataset} has no class labels: training the unconditional variant.")
    G, D, opt_G, opt_D = build(args, args.channels, device)
    # One latent for every sample grid; conditional: 10 rows of 10, row r from class r mod K.
    fixed_y = (torch.arange(100, device=device) // 10) % K if K else None
    state = {"fixed_z": torch.randn(100 if K else 64, args.nz, device=device), "fixed_y": fixed_y}
    run = common.Run("sagan", args, {"G": G, "D": D, "opt_G": opt_G, "opt_D": opt_D}, state,
                     sample_fn=lambda: G(state["fixed_z"], state["fixed_y"]), device=device)
    G, D = run.prepare(G, D)  # --compile, --amp, --channels-last; under torchrun DDP

    def train_step(real, y):
        fake = G(torch.randn(real.size(0), args.nz, device=device), y)
        # 1. D step on L_D (lr 4e-4), then 2. G step on L_G (lr 1e-4) through the updated D
        loss_D, D_real, D_fake = discriminator_step(D, opt_D, real, fake, y)
        loss_G = generator_step(D, opt_G, fake, y)
        return loss_D, loss_G, D_real, D_fake

    step = run.fast_step(train_step)  # --fast: the whole step as one CUDA graph
    for real, labels in run.batches(data):
        # y ~ p_data for the fake batch: the real batch's labels (None when unconditional)
        loss_D, loss_G, D_real, D_fake = step(real, labels if K else None)
        gammas = {} if G.attention is None else {"gamma_G": G.attention.gamma.detach(),
                                                 "gamma_D": D.attention.gamma.detach()}
        run.log(loss_D=loss_D, loss_G=loss_G, D_real=D_real, D_fake=D_fake, **gammas)
    return run.finish()


def generate(args) -> dict:
    """--generate N --resume RUN [--class K]: N samples of the run's G (a grid and one PNG each),
    of class K or of classes drawn uniformly, and attention.png: where G's attention looks."""
    device = common.setup(args)
    G, *_ = build(args, args.channels, device)  # (the checkpoint's flags say what to build)
    run = common.Run("sagan", args, {"G": G}, device=device)
    K, sample_class = args.num_classes or 0, args.sample_class  # (--class: never taken from the checkpoint)
    if sample_class is not None and not K:
        raise common.UserError("--class needs a class-conditional model, and this run was trained "
                               "unconditionally.")
    if sample_class is not None and not 0 <= sample_class < K:
        raise common.UserError(f"--class must be from 0 to {K - 1} for this model (got {sample_class}).")
    first = {}

    def sample(n):
        z = torch.randn(n, args.nz, device=device)
        y = None
        if K:  # --class K, or classes drawn uniformly
            y = (torch.full((n,), sample_class, device=device) if sample_class is not None
                 else torch.randint(K, (n,), device=device))
        first.setdefault("zy", (z, y))
        return G(z, y)

    out = run.generate(sample, args.generate)
    if G.attention is not None:  # the first samples again (eval mode: the same images), with maps
        z, y = first["zy"]
        k = min(8, len(z))
        G.eval()
        common.save_grid(attention_figure(G, z[:k], None if y is None else y[:k]) * 2 - 1,
                         out / "attention.png", nrow=2)
        print(f"wrote {out / 'attention.png'}: samples 0-{k - 1} and where one query position (green) "
              f"attends in G's {G.attention_res}x{G.attention_res} attention block")
    return {}


def main(argv=None) -> dict:
    args = parse_args(argv)
    return generate(args) if args.generate else train(args)


if __name__ == "__main__":
    common.cli(main)
