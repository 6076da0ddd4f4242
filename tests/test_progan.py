"""progan.py against its paper: fade-in identities, equalised LR, pixel norm, minibatch
stddev, the schedule, the losses, the step isolation, growing runs and exact resume.

Paper defaults and bad flags, equalised layers storing unit weights with the paper's gains,
pixel norm on the latent and every conv output, LeakyReLU 0.2 throughout, D's pooled old path
mid-fade, D's loss as WGAN-GP with the drift on D(real), real batches box-filtered and faded in,
samples from the weight average updated after each G step, both optimisers reset per phase, the
minibatch-stddev channel, G's and D's fade-in identities, `fade_reals`, a monotone and complete
schedule, the losses against their closed forms, the penalty on a linear critic and its
per-sample u, step isolation, steps under `--amp`, the weight average, a CLI run through every
phase, `--generate` at the resolution reached, exact resume mid-fade, a resume with a new
schedule refused.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import read_metrics

import common
import progan
import scale

# 16 px at the end (4 -> 8 -> 16), 8-channel nets, 8-d latent, batches of 8, 16 images a phase:
# phases end after steps 2 (4x4), 4 (fade-in 8), 6 (8x8), 8 (fade-in 16); an epoch of the 32
# images is 4 steps.
TINY_PG = ["--final-size", "16", "--dataset-size", "32", "--batch-size", "8", "--device", "cpu",
           "--log-every", "1", "--nz", "8", "--fmap-base", "64", "--fmap-max", "8", "--images-per-phase", "16"]


def _nets(final_size=16, seed=0, channels=3):
    torch.manual_seed(seed)
    G = progan.Generator(final_size, nz=8, channels=channels, fmap_base=64, fmap_max=8)
    D = progan.Discriminator(final_size, channels=channels, fmap_base=64, fmap_max=8)
    return G, D


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_paper_defaults():
    args = progan.parse_args([])
    assert (args.lr, args.beta1, args.beta2, args.gp_weight, args.drift, args.ema) == (1e-3, 0, 0.99, 10, 1e-3, 0.999)
    assert (args.nz, args.batch_size, args.image_size) == (512, 16, 64)
    assert args.mbstd_group is None and args.mirror == "auto"   # the whole batch (Sec. 3, preset-v1)
    assert progan.parse_args(["--mbstd-group", "4"]).mbstd_group == 4  # the official v2 setting
    assert progan.parse_batch_sizes(args.batch_sizes) == {256: 14, 512: 6, 1024: 3}   # App. A.1
    G = progan.Generator(256, args.nz, 3, args.fmap_base, args.fmap_max)
    widths = [rgb.weight.shape[1] for rgb in G.to_rgb]   # channels at 4, 8, ..., 256 px
    assert widths == [512, 512, 512, 512, 256, 128, 64]
    _, _, opt_G, opt_D = progan.build(args, 3, torch.device("cpu"))
    for opt in (opt_G, opt_D):
        assert opt.defaults["betas"] == (0.0, 0.99) and opt.defaults["eps"] == 1e-8 and opt.defaults["lr"] == 1e-3
    assert progan.parse_args(["--final-size", "32"]).image_size == 32     # an alias of --image-size


@pytest.mark.parametrize("argv", [["--final-size", "24"], ["--final-size", "4"], ["--batch-sizes", "8:0"],
                                  ["--batch-sizes", "12:4"], ["--batch-sizes", "rubbish"],
                                  ["--images-per-phase", "8"], ["--mbstd-group", "0"], ["--mbstd-group", "x"],
                                  ["--mirror", "yes"]])
def test_bad_flags_are_refused(argv):
    with pytest.raises(SystemExit):
        progan.parse_args(argv)


def test_equalized_layers_store_unit_weights_and_scale_at_run_time():
    torch.manual_seed(0)
    conv = progan.EqualizedConv2d(512, 64, 3, padding=1)
    assert abs(conv.weight.std().item() - 1) < 0.01 and abs(conv.weight.mean().item()) < 0.01
    assert conv.bias.abs().max() == 0
    assert math.isclose(conv.scale, math.sqrt(2) / math.sqrt(9 * 512)) and round(conv.scale, 4) == 0.0208
    x = torch.randn(2, 512, 5, 5)
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight * conv.scale, conv.bias, padding=1), atol=1e-5)
    # He's constant keeps the signal's scale: E[y²] ≈ gain² E[x²] for N(0, 1) inputs
    conv.padding = 0
    assert abs(conv(torch.randn(4, 512, 6, 6)).pow(2).mean().item() - 2) < 0.15
    lin = progan.EqualizedLinear(100, 7, gain=1.0)
    assert math.isclose(lin.scale, 0.1) and abs(lin.weight.std().item() - 1) < 0.15
    assert torch.allclose(lin(torch.ones(1, 100)), (lin.weight * 0.1).sum(1)[None], atol=1e-5)


def test_every_layer_is_equalized_with_the_paper_gains():
    G, D = _nets()
    for net in (G, D):
        assert not [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear,
                                                                torch.nn.BatchNorm2d))]
    # toRGB and D's last dense layer: gain 1 (linear outputs); everything else sqrt(2)
    assert all(math.isclose(m.scale, 1 / math.sqrt(m.weight[0].numel())) for m in G.to_rgb)
    last = D.blocks[0][-1]
    assert isinstance(last, progan.EqualizedLinear) and math.isclose(last.scale, 1 / math.sqrt(8))
    first = G.blocks[0][2]   # Table 2's Conv 4x4 on the 1x1 latent: fan-in 16 nz
    assert first.weight.shape[2:] == (4, 4) and math.isclose(first.scale, math.sqrt(2) / math.sqrt(16 * 8))


def test_every_activation_is_leaky_relu_0_2():
    G, D = _nets()
    acts = [m for net in (G, D) for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert len(acts) == (2 + 2 * 2) + (2 + 2 * 2 + 3)  # G: 2 at 4x4, 2 a stage; D: the same and 3 fromRGB
    for m in acts:
        assert torch.equal(m(torch.tensor([-1.0, 2.0])), torch.tensor([-0.2, 2.0])), m


def test_generator_pixel_norms_the_latent_and_every_conv_output():
    G, _ = _nets()
    seen = []
    for m in G.modules():
        if isinstance(m, progan.EqualizedConv2d):  # every conv's input: the normed latent or a normed feature map
            m.register_forward_hook(lambda m, inp, out: seen.append(inp[0].pow(2).mean(1)))
    z = torch.randn(4, 8)
    x = G(z, 2, 1.0)
    assert len(seen) == 2 + 2 * 2 + 1                              # 4x4, two stages, toRGB
    for ms in seen:
        assert torch.allclose(ms, torch.ones_like(ms), atol=1e-4)
    assert torch.allclose(G(5 * z, 2, 1.0), x, atol=1e-5)          # so the latent's scale does not matter


def test_pixel_norm_gives_unit_mean_square_over_channels():
    x = torch.randn(3, 16, 5, 5) * (0.5 + 10 * torch.rand(3, 1, 5, 5))   # a different scale per pixel
    y = progan.PixelNorm()(x)
    assert torch.allclose(y.pow(2).mean(dim=1), torch.ones(3, 5, 5), atol=1e-4)
    assert torch.allclose(progan.PixelNorm()(7 * x), y, atol=1e-5)    # scale-invariant per pixel
    z = torch.randn(4, 8)                                                # on latents too
    assert torch.allclose(progan.PixelNorm()(z).pow(2).mean(1), torch.ones(4), atol=1e-5)


def test_minibatch_stddev_is_over_the_whole_batch_by_default():
    # Sec. 3: "over the minibatch"; preset-v1 and the Theano original: one group, the whole batch
    assert progan.Discriminator(16, fmap_base=64, fmap_max=8).blocks[0][0].group_size is None
    mb = progan.MinibatchStdDev()
    x = (torch.arange(8) % 2).float().view(8, 1, 1, 1).expand(8, 2, 4, 4)    # samples 0, 1, 0, 1, ...
    assert torch.allclose(mb(x)[:, 2], torch.full((8, 4, 4), 0.5), atol=1e-6)  # std 0.5 over all 8
    # groups of 4 (official v2: samples {0, 2, 4, 6} and {1, 3, 5, 7}) see no variation at all
    assert torch.allclose(progan.MinibatchStdDev(4)(x)[:, 2], torch.full((8, 4, 4), 1e-4), rtol=1e-3)
    x = torch.cat([torch.zeros(7, 2, 4, 4), torch.full((7, 2, 4, 4), 2.0)])   # 14 (the paper's 256 px batch)
    assert torch.allclose(mb(x)[:, 2], torch.ones(14, 4, 4), atol=1e-6)
    with pytest.raises(ValueError):               # groups of 4 do not divide 14 (the official code asserts)
        progan.MinibatchStdDev(4)(x)


def test_a_group_size_that_does_not_divide_a_batch_is_refused(tmp_path):
    flags = TINY_PG + ["--out", str(tmp_path / "run"), "--epochs", "1"]
    with pytest.raises(common.UserError, match="--mbstd-group 3 does not divide the batch of 8 at 4 px"):
        progan.main(flags + ["--mbstd-group", "3"])
    with pytest.raises(common.UserError, match="batch of 6 at 16 px"):   # a per-resolution batch too
        progan.main(flags + ["--mbstd-group", "4", "--batch-sizes", "16:6"])


def test_minibatch_stddev_channel():
    mb = progan.MinibatchStdDev(group_size=4)
    x = torch.randn(8, 5, 4, 4)
    y = mb(x)
    assert y.shape == (8, 6, 4, 4) and torch.equal(y[:, :5], x)
    same = mb(torch.randn(1, 5, 4, 4).repeat(8, 1, 1, 1))[:, 5]
    assert torch.allclose(same, torch.full_like(same, 1e-4), rtol=1e-3)   # sqrt(1e-8)
    # groups are samples {0, 2, 4, 6} and {1, 3, 5, 7} (official reshape [G, M, ...]);
    # one group identical, the other +-1 everywhere: population std 1
    x = torch.zeros(8, 2, 4, 4)
    x[1::2] = torch.tensor([1.0, -1.0, 1.0, -1.0]).view(4, 1, 1, 1)
    s = mb(x)[:, 2]
    assert torch.allclose(s[0::2], torch.full((4, 4, 4), 1e-4), rtol=1e-3)
    assert torch.allclose(s[1::2], torch.ones(4, 4, 4), atol=1e-6)
    # fewer samples than the group size: one group of all
    assert torch.allclose(mb(x[[1, 3]])[:, 2], torch.ones(2, 4, 4), atol=1e-6)


def test_generator_fade_in_identities():
    G, _ = _nets()
    z = torch.randn(4, 8)
    for depth in (1, 2):
        old = F.interpolate(G(z, depth - 1), scale_factor=2, mode="nearest")
        new = G(z, depth, 1.0)
        assert new.shape == (4, 3, 4 * 2 ** depth, 4 * 2 ** depth)
        assert torch.equal(G(z, depth, 0.0), old)                 # alpha 0: the old path only
        mid = G(z, depth, 0.3)
        assert torch.allclose(mid, 0.7 * old + 0.3 * new, atol=1e-5)
    # alpha 1 ignores the old toRGB; alpha 0 ignores the new layers
    base0, base1 = G(z, 2, 0.0), G(z, 2, 1.0)
    with torch.no_grad():
        old_rgb = copy.deepcopy(G.to_rgb[1])
        G.to_rgb[1].weight.add_(1.0)
        assert torch.equal(G(z, 2, 1.0), base1) and not torch.equal(G(z, 2, 0.0), base0)
        G.to_rgb[1] = old_rgb
        G.blocks[2][1].weight.add_(1.0)
        G.to_rgb[2].weight.add_(1.0)
        assert torch.equal(G(z, 2, 0.0), base0) and not torch.equal(G(z, 2, 1.0), base1)


def test_discriminator_fade_in_identities():
    _, D = _nets()
    x = torch.randn(8, 3, 16, 16)
    # alpha 0 on faded reals: exactly the 8x8 network on the 8x8 images
    assert torch.allclose(D(progan.fade_reals(x, 0.0), 2, 0.0), D(F.avg_pool2d(x, 2), 1), atol=1e-5)
    assert D(x, 2).shape == (8,) and D(F.avg_pool2d(x, 4), 0).shape == (8,)
    base, y = D(x, 2, 1.0), progan.fade_reals(x, 0.0)
    base0 = D(y, 2, 0.0)
    with torch.no_grad():
        old_rgb = copy.deepcopy(D.from_rgb[1])
        D.from_rgb[1][0].weight.add_(1.0)                        # the old path: unused at alpha 1
        assert torch.equal(D(x, 2, 1.0), base) and not torch.equal(D(y, 2, 0.0), base0)
        D.from_rgb[1] = old_rgb
        D.from_rgb[2][0].weight.add_(1.0)                        # the new path: unused at alpha 0
        D.blocks[2][0].weight.add_(1.0)
        assert torch.equal(D(y, 2, 0.0), base0) and not torch.equal(D(x, 2, 1.0), base)


def test_discriminator_mid_fade_blends_the_pooled_old_path_with_the_new_block():
    _, D = _nets()
    x = torch.randn(8, 3, 16, 16)
    # Fig. 2 (b): h = (1 - alpha) fromRGB_old(avgpool(x)) + alpha block_new(fromRGB_new(x)), then the 8x8 net
    h = torch.lerp(D.from_rgb[1](F.avg_pool2d(x, 2)), D.blocks[2](D.from_rgb[2](x)), 0.3)
    assert torch.allclose(D(x, 2, 0.3), D.blocks[0](D.blocks[1](h)).squeeze(1), atol=1e-5)


def test_fade_reals():
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(progan.fade_reals(x, 1.0), x)
    low = progan.fade_reals(x, 0.0)
    assert torch.allclose(low, F.interpolate(F.avg_pool2d(x, 2), scale_factor=2), atol=0)
    assert torch.equal(low[..., 0::2, 0::2], low[..., 1::2, 1::2])      # constant on 2x2 blocks
    assert torch.allclose(progan.fade_reals(x, 0.25), 0.75 * low + 0.25 * x, atol=1e-6)


def test_schedule_is_monotone_and_complete():
    per, max_depth = 100, 4
    seen = range(0, 12 * per, 7)
    steps = [progan.schedule(n, per, max_depth) for n in seen]
    assert steps[0] == (0, 1.0) and progan.schedule(per - 1, per, max_depth) == (0, 1.0)   # 4x4 first
    progress = [d - 1 + a for d, a in steps]      # official "lod" in reverse: never goes back
    assert all(b >= a for a, b in zip(progress, progress[1:]))
    for d in range(1, max_depth + 1):
        start = (2 * d - 1) * per                 # fade-in of depth d, then stabilise
        assert progan.schedule(start, per, max_depth) == (d, 0.0)
        assert progan.schedule(start + per // 4, per, max_depth) == (d, 0.25)
        assert progan.schedule(start + per, per, max_depth) == (d, 1.0)
        assert progan.schedule(start + 2 * per - 1, per, max_depth) == (d, 1.0)
    assert progan.schedule(10**9, per, max_depth) == (max_depth, 1.0)        # complete, and stays
    assert [progan.phase_of(n * per, per, 2) for n in range(7)] == [0, 1, 2, 3, 4, 4, 4]


def test_losses_against_their_closed_forms():
    r, f = torch.tensor([2.0, -1.0, 3.0]), torch.tensor([0.5, -2.0, 1.0])
    gp = torch.tensor(0.3)
    expected = f.mean() - r.mean() + 10 * 0.3 + 0.001 * (r ** 2).mean()
    assert torch.allclose(progan.d_loss(r, f, gp), expected)
    assert torch.allclose(progan.d_loss(r, f, gp, gp_weight=0, drift=0), f.mean() - r.mean())
    assert progan.g_loss(f) == -f.mean()


class _Linear(torch.nn.Module):
    """D(x) = <w, x>: its gradient is w everywhere, so the penalty is (‖w‖ - 1)²."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x, depth, alpha=1.0):
        return (x * self.w).flatten(1).sum(1)


def test_gradient_penalty_on_a_linear_critic():
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    w = torch.randn(3, 4, 4)
    D = _Linear(w)
    gp = progan.gradient_penalty(D, real, fake, 0, 1.0, 4)           # 4x4 is the final size
    assert torch.allclose(gp, (w.norm() - 1) ** 2, atol=1e-5)
    assert progan.gradient_penalty(_Linear(w / w.norm()), real, fake, 0, 1.0, 4) < 1e-10
    gp.backward()                                     # the penalty trains the critic
    assert D.w.grad is not None and D.w.grad.abs().sum() > 0
    # at 4x4 of a 16 px network the norm is in 16 px pixels: ‖w‖ / 4, so 4w is the unit slope
    gp16 = progan.gradient_penalty(D, real, fake, 0, 1.0, 16)
    assert torch.allclose(gp16, (w.norm() / 4 - 1) ** 2, atol=1e-5)
    assert progan.gradient_penalty(_Linear(4 * w / w.norm()), real, fake, 0, 1.0, 16) < 1e-10


@pytest.mark.parametrize("depth, alpha", [(0, 1.0), (1, 0.0), (1, 0.5), (2, 0.3), (2, 1.0)])
def test_gradient_penalty_equals_the_official_form_on_final_size_images(depth, alpha):
    # The official D always takes final-size images: the current resolution's (reals and G's
    # outputs) nearest-neighbour upscaled by k = F / r, box-filtered back down inside D. Build
    # that D and that x̂, take the gradient there, and compare with the penalty computed at the
    # current resolution (the same u: the same seed).
    _, D = _nets(final_size=16)
    r = 4 * 2 ** depth
    k = 16 // r
    real, fake = torch.randn(8, 3, r, r), torch.randn(8, 3, r, r)
    torch.manual_seed(5)
    gp = progan.gradient_penalty(D, real, fake, depth, alpha, 16)
    torch.manual_seed(5)
    u = torch.rand(8, 1, 1, 1)

    def up(x):
        return F.interpolate(x, scale_factor=k, mode="nearest")         # (8, 3, 16, 16)

    x_hat = torch.lerp(up(real), up(fake), u).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(F.avg_pool2d(x_hat, k), depth, alpha).sum(), x_hat)
    norms = grad.flatten(1).norm(2, dim=1)
    assert torch.allclose(gp, ((norms - 1) ** 2).mean(), rtol=1e-4, atol=1e-7)
    if k > 1:  # and not the current resolution's norm, which is k times larger
        x_r = torch.lerp(real, fake, u).requires_grad_(True)
        (grad_r,) = torch.autograd.grad(D(x_r, depth, alpha).sum(), x_r)
        assert torch.allclose(grad_r.flatten(1).norm(2, dim=1), k * norms, rtol=1e-4)
        assert not torch.allclose(gp, ((k * norms - 1) ** 2).mean(), rtol=1e-2)


def test_gradient_penalty_mixes_each_sample_with_its_own_u():
    # real = 0 and fake = 1: x̂ = u, so the points the critic sees show the u drawn per sample.
    seen = []

    class Spy(_Linear):
        def forward(self, x, depth, alpha=1.0):
            seen.append(x.detach().clone())
            return super().forward(x, depth, alpha)

    progan.gradient_penalty(Spy(torch.ones(3, 4, 4)), torch.zeros(8, 3, 4, 4), torch.ones(8, 3, 4, 4), 0, 1.0, 4)
    u = seen[0].flatten(1)                                            # (8, 48)
    assert torch.equal(u, u[:, :1].expand_as(u))                      # one u for a whole image
    assert 0 <= u.min() and u.max() <= 1 and u[:, 0].unique().numel() == 8  # a fresh u per image


def test_steps_leave_the_other_network_alone():
    G, D = _nets()
    args = progan.parse_args(["--nz", "8", "--final-size", "16", "--device", "cpu"])
    opt_G = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.99))
    opt_D = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.99))
    real = progan.fade_reals(torch.rand(8, 3, 8, 8) * 2 - 1, 0.5)
    g0, d0 = _params(G), _params(D)
    progan.discriminator_step(G, D, opt_D, real, 1, 0.5, args)
    assert _same(_params(G), g0) and all(p.grad is None for p in G.parameters())
    assert not _same(_params(D), d0)
    # parameters of the 16x16 layers (not in use at depth 1) get no gradient and do not move
    assert all(p.grad is None for p in D.blocks[2].parameters())
    assert _same(_params(D.blocks[2]), _params(_nets()[1].blocks[2]))
    d1 = _params(D)
    progan.generator_step(G, D, opt_G, 8, 1, 0.5, args, torch.device("cpu"))
    assert _same(_params(D), d1) and not _same(_params(G), g0)
    assert all(p.requires_grad for p in D.parameters())


def test_discriminator_step_loss_is_wgan_gp_with_drift_on_d_of_real_and_fake():
    G, D = _nets()
    args = progan.parse_args(["--nz", "8", "--final-size", "16", "--device", "cpu"])
    opt_D = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.99))
    real = progan.fade_reals(torch.rand(8, 3, 8, 8) * 2 - 1, 0.5)
    torch.manual_seed(1)   # the step's draws: z for the fakes, then u for the penalty
    with torch.no_grad():
        fake = G(torch.randn(8, 8), 1, 0.5)
        r, f = D(real, 1, 0.5), D(fake, 1, 0.5)
    gp = progan.gradient_penalty(D, real, fake, 1, 0.5, 16).detach()
    expected = f.mean() - r.mean() + 10 * gp + 0.001 * r.pow(2).mean()
    torch.manual_seed(1)
    loss, W, penalty = progan.discriminator_step(G, D, opt_D, real, 1, 0.5, args)
    assert torch.allclose(penalty, gp) and gp > 0
    assert torch.allclose(W, r.mean() - f.mean(), atol=1e-6)       # the Wasserstein estimate: real minus fake
    assert torch.allclose(loss, expected, atol=1e-5)


def test_steps_under_amp():
    G, D = _nets()
    for net in (G, D):
        scale.bf16(net, "cpu")  # --amp (common.Run.prepare)
    args = progan.parse_args(["--nz", "8", "--final-size", "16", "--device", "cpu", "--amp"])
    opt_G, opt_D = (torch.optim.Adam(n.parameters(), lr=1e-3, betas=(0.0, 0.99)) for n in (G, D))
    real = progan.fade_reals(torch.rand(8, 3, 8, 8) * 2 - 1, 0.5)     # bf16 autocast on the CPU
    losses = [*progan.discriminator_step(G, D, opt_D, real, 1, 0.5, args),
              progan.generator_step(G, D, opt_G, 8, 1, 0.5, args, torch.device("cpu"))]
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in losses)


def test_update_ema():
    G, _ = _nets()
    ema = _nets(seed=1)[0]
    before = _params(ema)
    progan.update_ema(ema, G, 0.999)
    for e, b, g in zip(ema.parameters(), before, G.parameters()):
        assert torch.allclose(e, 0.999 * b + 0.001 * g, atol=1e-6)
    twin = _nets()[0]
    progan.update_ema(twin, G, 0.999)                 # equal weights stay equal
    assert _same(_params(twin), _params(G))


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """One uninterrupted run through every phase: 12 steps, 96 images (--epochs 3 of 32)."""
    out = tmp_path_factory.mktemp("progan") / "straight"
    progan.main(TINY_PG + ["--epochs", "3", "--out", str(out)])
    return out


def test_cli_grows_through_every_phase(grown):
    for name in ("res-004", "res-008", "res-016", "epoch-001", "epoch-003", "final"):
        assert (grown / "samples" / f"{name}.png").is_file(), name
    rows = read_metrics(grown)
    assert len(rows) == 12 and rows[-1]["epoch"] == "3.0"
    assert [float(r["resolution"]) for r in rows] == [4.0] * 2 + [8.0] * 4 + [16.0] * 6
    assert [float(r["alpha"]) for r in rows] == [1, 1, 0, 0.5, 1, 1, 0, 0.5, 1, 1, 1, 1]  # two fade-ins
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("loss_D", "loss_G", "W_estimate", "gp"))
    ckpt = torch.load(grown / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 12 and ckpt["state"]["images_seen"] == 96 and ckpt["state"]["phase"] == 4
    assert (ckpt["state"]["depth"], ckpt["state"]["alpha"]) == (2, 1.0)
    assert not _same(ckpt["modules"]["G"].values(), ckpt["modules"]["G_ema"].values())  # the average is not G
    # Adam's moments restart with each phase, G's and D's: the last phase began at step 9
    for opt in ("opt_G", "opt_D"):
        moments = ckpt["modules"][opt]["state"].values()
        assert moments and all(s["step"] == 4 for s in moments), opt
    # sample grids are shown at the final size, whatever the resolution
    from PIL import Image
    assert Image.open(grown / "samples" / "res-004.png").size == Image.open(grown / "samples" / "final.png").size


def test_generate_at_the_resolution_reached(grown):
    from PIL import Image
    progan.main(["--generate", "3", "--resume", str(grown)])
    (folder,) = grown.glob("generated-*")
    assert Image.open(folder / "00000.png").size == (16, 16) and (folder / "grid.png").is_file()


def test_resume_mid_fade_is_exact(grown, tmp_path):
    progan.main(TINY_PG + ["--epochs", "3", "--max-steps", "3", "--out", "split"])  # mid-fade
    ckpt = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["images_seen"] == 24 and progan.schedule(24, 16, 2) == (1, 0.5)
    assert (ckpt["state"]["phase"], ckpt["state"]["depth"], ckpt["state"]["alpha"]) == (1, 1, 0.0)
    # two steps at 4x4, then a reset, then one step of the fade-in: Adam has counted one step
    assert ckpt["modules"]["opt_D"]["state"][0]["step"] == 1
    progan.main(["--resume", "split", "--max-steps", "100"])  # --epochs 3 ends it at step 12
    a, b = read_metrics(grown), read_metrics(tmp_path / "split")
    assert len(b) == 12 and b[3]["alpha"] == "0.5"
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k != "images_per_s"} == \
               {k: v for k, v in y.items() if k != "images_per_s"}, x["step"]
    ca = torch.load(grown / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    for net in ("G", "G_ema", "D"):
        assert _same(ca["modules"][net].values(), cb["modules"][net].values()), net
    assert torch.equal(ca["state"]["fixed_z"], cb["state"]["fixed_z"])
    assert all(ca["state"][k] == cb["state"][k] for k in ("images_seen", "phase", "depth", "alpha"))
    assert sorted(p.name for p in (tmp_path / "split" / "samples").iterdir()) == \
           sorted(p.name for p in (grown / "samples").iterdir())


def test_resume_refuses_a_new_schedule(grown):
    with pytest.raises(common.UserError):
        progan.main(["--resume", str(grown), "--images-per-phase", "64"])


def test_real_batches_are_box_filtered_to_the_resolution_and_faded_in(monkeypatch, tmp_path):
    drawn, shown = [], []
    sampler, step = common.Run.sampler, progan.discriminator_step

    def spy_sampler(self, data):
        draw = sampler(self, data)
        return lambda n: drawn.append(draw(n)[0]) or (drawn[-1], None)

    monkeypatch.setattr(common.Run, "sampler", spy_sampler)
    monkeypatch.setattr(progan, "discriminator_step",
                        lambda G, D, opt, real, *a: shown.append(real) or step(G, D, opt, real, *a))
    progan.main(TINY_PG + ["--epochs", "3", "--max-steps", "4", "--out", "run"])
    assert len(drawn) == len(shown) == 4 and drawn[0].shape[-1] == 16
    for x, real in zip(drawn[:2], shown[:2]):                   # 4x4: 4x4 box filter of the 16 px data
        assert torch.allclose(real, F.avg_pool2d(x, 4), atol=1e-6)
    for x, real, alpha in zip(drawn[2:], shown[2:], (0.0, 0.5)):   # fade-in of 8x8 (official process_reals)
        low = F.interpolate(F.avg_pool2d(x, 4), scale_factor=2, mode="nearest")
        assert torch.allclose(real, low + alpha * (F.avg_pool2d(x, 2) - low), atol=1e-6)


def test_mirror_augment_flips_each_image_left_right_with_probability_one_half():
    torch.manual_seed(0)
    x = torch.randn(200, 3, 4, 4)
    y = progan.mirror_augment(x)
    same = (y == x).flatten(1).all(1)
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all()) and 70 < int(flipped.sum()) < 130   # each image whole, ~half


@pytest.mark.parametrize("flags, dataset, mirrored", [([], "shapes", False), (["--mirror", "on"], "shapes", True),
                                                      ([], "celeba", True), ([], "lsun", True),
                                                      (["--mirror", "off"], "celeba", False)])
def test_mirror_augmentation_is_on_for_celeba_and_lsun_by_default(monkeypatch, tmp_path, flags, dataset, mirrored):
    # official config.py: mirror_augment = True for CelebA(-HQ) and LSUN; the built-in shapes here
    # stand in for those datasets (loaded under their names), the flag's choice is what is tested
    drawn, shown, load = [], [], common.load_dataset
    sampler, step = common.Run.sampler, progan.discriminator_step

    def spy_sampler(self, data):
        draw = sampler(self, data)
        return lambda n: drawn.append(draw(n)[0]) or (drawn[-1], None)

    monkeypatch.setattr(common, "load_dataset", lambda name, *a: load("shapes", *a))
    monkeypatch.setattr(common.Run, "sampler", spy_sampler)
    monkeypatch.setattr(progan, "discriminator_step",
                        lambda G, D, opt, real, *a: shown.append(real) or step(G, D, opt, real, *a))
    progan.main(TINY_PG + ["--dataset", dataset, "--epochs", "1", "--max-steps", "2", "--out", str(tmp_path / "r")]
                + flags)
    x, real = torch.cat(drawn), torch.cat(shown)                   # 4x4 phase: pooled, maybe mirrored
    low = F.avg_pool2d(x, 4)
    flipped = (~torch.isclose(real, low, atol=1e-6)).flatten(1).any(1)
    assert torch.allclose(torch.where(flipped.view(-1, 1, 1, 1), low.flip(-1), low), real, atol=1e-6)
    assert bool(flipped.any()) == mirrored


def test_samples_come_from_the_average_of_g_after_each_g_step(tmp_path):
    # with decay 0 the average is G itself: it must equal the trained G, not the initial one
    progan.main(TINY_PG + ["--ema", "0", "--max-steps", "3", "--out", "run"])
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    G, G_ema = ckpt["modules"]["G"], ckpt["modules"]["G_ema"]
    assert G.keys() == G_ema.keys() and all(torch.equal(G[k], G_ema[k]) for k in G)
