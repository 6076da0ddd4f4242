"""dcgan.py against its paper: init, architecture rules, shapes, step isolation, losses.

Paper defaults, init of every layer, BN's N(1, 0.02) included, BN placement, ReLU in G and
LeakyReLU 0.2 in D with biases only where no BN follows, uniform or normal latents, shapes per
size, real and fake through D as separate batches, one D step then one G step on the same fakes
with each network's own optimiser, step isolation, losses against their closed forms, D's
unbounded logits squashed once by the step, steps under `--amp` in bf16 and close to fp32.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
from conftest import (
    TINY,
    amp_and_fp32_runs,
    assert_close_to_fp32_but_not_equal,
    assert_layers_ran_in_bf16_only_under_amp,
)

import dcgan


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_paper_defaults():
    args = dcgan.parse_args([])
    assert (args.lr, args.beta1, args.beta2, args.batch_size, args.nz) == (2e-4, 0.5, 0.999, 128, 100)
    assert args.image_size == 64 and args.dataset == "shapes" and args.z_dist == "uniform"
    assert (args.ngf, args.ndf, args.kernel_size) == (128, 128, 5)  # Fig. 1: 1024 channels at 4x4
    G = dcgan.Generator(args.nz, args.ngf, 3, args.image_size, args.kernel_size)
    assert G.project.out_features == 1024 * 4 * 4


def test_weights_init_matches_sec_4():
    torch.manual_seed(0)
    G = dcgan.Generator(ngf=64)
    D = dcgan.Discriminator(ndf=64)
    for net in (G, D):
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(0.5)  # not PyTorch's defaults (BN: weight 1, bias 0): the init must set each
        net.apply(dcgan.weights_init)
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                assert abs(m.weight.std().item() - 0.02) < 0.002
                assert abs(m.weight.mean().item()) < 0.002
                assert m.bias is None or m.bias.abs().max() == 0
        # BN scales N(1, 0.02) (pooled over the layers: ~900 values a net), shifts 0
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        scale = torch.cat([m.weight for m in bns])
        assert abs(scale.mean().item() - 1) < 0.005 and abs(scale.std().item() - 0.02) < 0.005
        assert all(m.bias.abs().max() == 0 for m in bns)


def _layers(net):
    return [m for m in net.modules() if not isinstance(m, (nn.Sequential, dcgan.Generator, dcgan.Discriminator))]


@pytest.mark.parametrize("kernel_size", [4, 5])
def test_batch_norm_placement(kernel_size):
    G, D = dcgan.Generator(kernel_size=kernel_size), dcgan.Discriminator(kernel_size=kernel_size)
    g = _layers(G.body)
    assert isinstance(g[-1], nn.Tanh) and isinstance(g[-2], nn.ConvTranspose2d)  # no BN before tanh
    d = _layers(D.body)
    assert isinstance(d[0], nn.Conv2d) and isinstance(d[1], nn.LeakyReLU)        # no BN after conv 1
    assert d[1].negative_slope == 0.2
    # every other conv in both nets is followed by BN
    for layers in (g[:-2], d[2:]):
        convs = [i for i, m in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        assert convs and all(isinstance(layers[i + 1], nn.BatchNorm2d) for i in convs)
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in list(G.modules()) + list(D.modules()))


def test_relu_in_g_leaky_relu_0_2_in_d_and_biases_only_where_no_bn_follows():
    G, D = dcgan.Generator(nz=10, ngf=8, image_size=32), dcgan.Discriminator(ndf=8, image_size=32)
    G.apply(dcgan.weights_init)
    # every layer of G after the projection sees ReLU'd (non-negative) input, the projection too
    seen = []
    for m in G.body:
        if isinstance(m, nn.ConvTranspose2d):
            m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].min().item()))
    G(dcgan.sample_z(4, 10, "cpu"))
    assert len(seen) == 3 and min(seen) >= 0
    assert not any(isinstance(m, nn.LeakyReLU) for m in G.modules())
    lrelus = [m for m in D.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(lrelus) == sum(isinstance(m, nn.Conv2d) for m in D.modules()) == 3
    assert all(m.negative_slope == 0.2 for m in lrelus)
    # the docstring's biases: G's output conv, D's first conv and D's last layer, nothing else
    with_bias = [m for net in (G, D) for m in net.modules() if getattr(m, "bias", None) is not None
                 and not isinstance(m, nn.BatchNorm2d)]
    assert with_bias == [G.body[-2], D.body[0], D.out]


def test_paper_width_gives_figure_1():
    G = dcgan.Generator(ngf=128, kernel_size=5)
    assert G.project.out_features == 1024 * 4 * 4                       # 4x4x1024
    convs = [m for m in G.body if isinstance(m, nn.ConvTranspose2d)]
    assert [m.out_channels for m in convs] == [512, 256, 128, 3]
    assert all(m.kernel_size == (5, 5) for m in convs)


@pytest.mark.parametrize("size", [16, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_for_every_supported_size(size, channels):
    G = dcgan.Generator(nz=10, ngf=8, channels=channels, image_size=size)
    D = dcgan.Discriminator(ndf=8, channels=channels, image_size=size)
    G.apply(dcgan.weights_init)
    z = dcgan.sample_z(5, 10, "cpu")
    assert z.min() >= -1 and z.max() <= 1
    x = G(z)
    assert x.shape == (5, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (5,)
    n_up = sum(isinstance(m, nn.ConvTranspose2d) for m in G.modules())
    assert n_up == int(math.log2(size)) - 2


def test_latents_are_uniform_on_minus_one_one_or_standard_normal():
    torch.manual_seed(0)
    z = dcgan.sample_z(4000, 25, "cpu")
    assert z.shape == (4000, 25) and z.min() >= -1 and z.max() <= 1
    assert z.min() < -0.999 and z.max() > 0.999                       # U(-1, 1), not U(0, 1)
    assert abs(z.mean().item()) < 0.01 and abs(z.var().item() - 1 / 3) < 0.01
    n = dcgan.sample_z(4000, 25, "cpu", "normal")
    assert abs(n.mean().item()) < 0.01 and abs(n.std().item() - 1) < 0.01


def test_sizes_the_architecture_cannot_make_are_refused(capsys):
    for bad in ("48", "8", "100"):
        with pytest.raises(SystemExit) as e:
            dcgan.parse_args(["--image-size", bad])
        assert e.value.code == 2
    assert "power of two" in capsys.readouterr().err


def test_losses_equal_their_closed_forms():
    r = torch.tensor([2.0, -1.0, 0.5])
    f = torch.tensor([-3.0, 0.0, 1.5])
    sig = torch.sigmoid
    expected_d = -(torch.log(sig(r)).mean() + torch.log(1 - sig(f)).mean())
    assert torch.allclose(dcgan.d_loss(r, f), expected_d)
    expected_g = -torch.log(sig(f)).mean()                # non-saturating: -log D(G(z))
    assert torch.allclose(dcgan.g_loss(f), expected_g)
    # sign conventions: a D that is right has a small loss; a fooled D a large one
    assert dcgan.d_loss(torch.full((4,), 9.0), torch.full((4,), -9.0)) < 1e-3
    assert dcgan.d_loss(torch.full((4,), -9.0), torch.full((4,), 9.0)) > 10
    assert dcgan.g_loss(torch.full((4,), 9.0)) < 1e-3
    # stable on logits where sigmoid + log would overflow
    assert torch.isfinite(dcgan.d_loss(torch.tensor([200.0]), torch.tensor([-200.0])))
    assert torch.isfinite(dcgan.g_loss(torch.tensor([-200.0])))


def _nets():
    torch.manual_seed(0)
    G = dcgan.Generator(nz=10, ngf=8, image_size=16)
    D = dcgan.Discriminator(ndf=8, image_size=16)
    G.apply(dcgan.weights_init)
    D.apply(dcgan.weights_init)
    opt_G = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    return G, D, opt_G, opt_D


def test_d_step_changes_d_only_and_g_step_changes_g_only():
    G, D, opt_G, opt_D = _nets()
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    fake = G(dcgan.sample_z(8, 10, "cpu"))
    g0, d0 = _params(G), _params(D)
    dcgan.discriminator_step(D, opt_D, real, fake)
    assert _same(_params(G), g0) and not _same(_params(D), d0)
    assert all(p.grad is None for p in G.parameters())
    g1, d1 = _params(G), _params(D)
    d_grads = [p.grad.clone() for p in D.parameters()]
    dcgan.generator_step(D, opt_G, fake)
    assert _same(_params(D), d1) and not _same(_params(G), g1)
    assert _same([p.grad for p in D.parameters()], d_grads)  # the G step added no gradient to D
    assert all(p.requires_grad for p in D.parameters())  # and are trainable again afterwards


def test_g_step_follows_the_gradient_of_the_non_saturating_loss():
    # After one G step, D scores G's new samples higher.
    G, D, opt_G, _ = _nets()
    for group in opt_G.param_groups:
        group["lr"] = 1e-3  # 5x the paper's 2e-4, so one step moves D's score visibly; still small
    z = dcgan.sample_z(64, 10, "cpu")
    D.eval()  # fixed BN statistics, so D is the same function before and after
    before = D(G(z)).mean()
    dcgan.generator_step(D, opt_G, G(z))
    assert D(G(z)).mean() > before


def test_d_step_learns_to_separate_real_from_fake():
    G, D, _, opt_D = _nets()
    real = torch.full((16, 3, 16, 16), 0.8)
    fake = G(dcgan.sample_z(16, 10, "cpu")).detach()
    first = None
    for _ in range(20):
        loss, D_x, D_G_z = dcgan.discriminator_step(D, opt_D, real, fake)
        first = first if first is not None else loss.item()
    assert loss.item() < first and D_x > D_G_z


def test_d_gives_unbounded_logits_and_the_step_squashes_them_once():
    # D ends in its linear layer, no sigmoid (the losses take logits): its outputs follow the
    # last bias anywhere on the real line, and the step's D(x) is sigmoid(logit), applied once
    _, D, _, opt_D = _nets()
    real, fake = torch.rand(8, 3, 16, 16) * 2 - 1, torch.rand(8, 3, 16, 16) * 2 - 1
    D.eval()                                          # fixed BN statistics: one function throughout
    with torch.no_grad():
        for bias in (-5.0, 5.0):
            D.out.bias.fill_(bias)
            logits = D(real)
            assert torch.allclose(logits, torch.full((8,), bias), atol=0.5), logits   # far outside (0, 1)
        before = copy.deepcopy(D)
    _, D_x, _ = dcgan.discriminator_step(D, opt_D, real, fake)
    assert torch.allclose(D_x, torch.sigmoid(before(real)).mean(), atol=1e-6) and D_x > 0.99


def test_d_step_scores_real_and_fake_as_separate_batches():
    # Each batch has its own BN statistics: the loss is d_loss of D(real) and D(fake), each
    # through D in training mode on its own (not one concatenated batch).
    G, D, _, opt_D = _nets()
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    fake = G(dcgan.sample_z(8, 10, "cpu")).detach()
    before = copy.deepcopy(D)
    r, f = before(real), before(fake)
    loss, D_x, D_G_z = dcgan.discriminator_step(D, opt_D, real, fake)
    assert torch.allclose(loss, dcgan.d_loss(r, f), atol=1e-6)
    assert torch.allclose(D_x, torch.sigmoid(r).mean()) and torch.allclose(D_G_z, torch.sigmoid(f).mean())


def test_training_alternates_one_d_step_then_one_g_step_on_the_same_fakes(monkeypatch):
    calls = []
    d_step, g_step = dcgan.discriminator_step, dcgan.generator_step

    def spy_d(D, opt_D, real, fake):
        calls.append(("D", fake, opt_D, {id(p) for p in D.parameters()}))
        return d_step(D, opt_D, real, fake)

    def spy_g(D, opt_G, fake):
        calls.append(("G", fake, opt_G, {id(p) for p in D.parameters()}))
        return g_step(D, opt_G, fake)

    monkeypatch.setattr(dcgan, "discriminator_step", spy_d)
    monkeypatch.setattr(dcgan, "generator_step", spy_g)
    dcgan.main(TINY + ["--max-steps", "2", "--out", "run"])
    assert [c[0] for c in calls] == ["D", "G", "D", "G"]
    for (_, fake_d, opt_D, d_params), (_, fake_g, opt_G, _) in (calls[:2], calls[2:]):
        assert fake_g is fake_d                       # G is updated on the z that D just judged
        for opt in (opt_D, opt_G):                    # Sec. 4's Adam for both networks
            assert [(g["lr"], g["betas"]) for g in opt.param_groups] == [(2e-4, (0.5, 0.999))]
        optimised = lambda opt: {id(p) for g in opt.param_groups for p in g["params"]}  # noqa: E731
        assert optimised(opt_D) == d_params and not optimised(opt_G) & d_params
    assert calls[0][1] is not calls[2][1]             # a new batch of fakes every step


def test_amp_steps_run_in_bf16_and_stay_close_to_fp32(one_thread):
    # two steps from the same seed, in fp32 and with --amp (bf16 autocast on the CPU): G's and
    # D's layers compute in bf16 in both steps, and the logged values stay within 2% of fp32
    runs = amp_and_fp32_runs(dcgan.main, TINY + ["--max-steps", "2"])
    assert_layers_ran_in_bf16_only_under_amp(runs, ("Conv2d", "ConvTranspose2d", "Linear"))
    assert_close_to_fp32_but_not_equal(runs, ("loss_D", "loss_G", "D_x", "D_G_z"))
