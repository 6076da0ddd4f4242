"""relativistic_gan.py against its paper: every loss and identity.

Setups (a) and (b) and both optimisers' lr and betas, sizes refused, the CIFAR generator's
layers, init of every conv (the raw weight under spectral norm) and BN scale, the D step's loss
and C_gap, every loss against its closed form, swap symmetry, shift invariance, the values at
r = f, permutation behaviour, the G loss's dependence on the real logits, gradients through the
batch means r̄ and f̄, the penalty (one u in [0, 1] per sample, reaching the critic's parameters)
and `--gp` reaching D's loss and gradient, D getting no gradient in G's step, each `--loss` from
the command line.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import TINY_RUN, read_metrics

import relativistic_gan as rg

TINY_RG = TINY_RUN + ["--width", "8"]

R = torch.tensor([1.5, -0.5, 2.0, 0.3])
Fk = torch.tensor([-1.0, 0.4, 0.1, -2.2])
RA = ("rasgan", "ralsgan", "rahingegan")


def bce1(z):  # -mean log sigmoid(z), written the slow way
    return -torch.log(torch.sigmoid(z)).mean()


def bce0(z):
    return -torch.log(1 - torch.sigmoid(z)).mean()


def closed_forms(R, Fk):
    """{loss: (D loss, G loss)} from the spec's table; r̄, f̄ are plain means (not detached)."""
    return {
        "sgan": (bce1(R) + bce0(Fk), bce1(Fk)),
        "rsgan": (bce1(R - Fk), bce1(Fk - R)),
        "rasgan": ((bce1(R - Fk.mean()) + bce0(Fk - R.mean())) / 2,
                   (bce0(R - Fk.mean()) + bce1(Fk - R.mean())) / 2),
        "lsgan": (((R - 1) ** 2).mean() + (Fk ** 2).mean(), ((Fk - 1) ** 2).mean()),
        "ralsgan": ((((R - Fk.mean() - 1) ** 2).mean() + ((Fk - R.mean() + 1) ** 2).mean()) / 2,
                    (((R - Fk.mean() + 1) ** 2).mean() + ((Fk - R.mean() - 1) ** 2).mean()) / 2),
        "hingegan": (torch.clamp(1 - R, min=0).mean() + torch.clamp(1 + Fk, min=0).mean(), -Fk.mean()),
        "rahingegan": ((torch.clamp(1 - (R - Fk.mean()), min=0).mean()
                        + torch.clamp(1 + (Fk - R.mean()), min=0).mean()) / 2,
                       (torch.clamp(1 + (R - Fk.mean()), min=0).mean()
                        + torch.clamp(1 - (Fk - R.mean()), min=0).mean()) / 2),
    }


CLOSED_FORMS = closed_forms(R, Fk)  # on the hand-made R, Fk


def test_every_loss_is_listed_and_has_a_closed_form():
    assert set(rg.LOSSES) == set(CLOSED_FORMS) and len(rg.LOSSES) == 7
    assert set(rg.RELATIVISTIC) == {"rsgan", "rasgan", "ralsgan", "rahingegan"}


@pytest.mark.parametrize("loss", list(CLOSED_FORMS))
def test_losses_against_their_closed_forms(loss):
    d, g = CLOSED_FORMS[loss]
    assert torch.allclose(rg.d_loss(loss, R, Fk), d, atol=1e-6)
    assert torch.allclose(rg.g_loss(loss, R, Fk), g, atol=1e-6)


def _grads(value, r, f):
    """d value / d (r, f), zeros for an input the value does not use."""
    return [torch.zeros_like(x) if g is None else g
            for x, g in zip((r, f), torch.autograd.grad(value, (r, f), allow_unused=True))]


@pytest.mark.parametrize("loss", list(CLOSED_FORMS))
def test_gradients_flow_through_the_batch_means(loss):
    # r̄, f̄ are not detached: the gradient of every loss w.r.t. r and f (what reaches D and G)
    # is the closed form's, mean terms included (detaching them halves G's gradient in RaSGAN).
    r, f = R.clone().requires_grad_(True), Fk.clone().requires_grad_(True)
    ref_d, ref_g = closed_forms(r, f)[loss]
    for got, ref in ((rg.d_loss(loss, r, f), ref_d), (rg.g_loss(loss, r, f), ref_g)):
        for a, b in zip(_grads(got, r, f), _grads(ref, r, f)):
            assert torch.allclose(a, b, atol=1e-6), (a, b)
    # one by hand: RaSGAN's G loss w.r.t. f_j, with s = sigmoid, n = 4, a = r - f̄, b = f - r̄:
    # d/df_j [BCE0(a) + BCE1(b)] / 2 = -[mean_i s(a_i) + 1 - s(b_j)] / (2n), the first term via f̄
    if loss == "rasgan":
        n = len(Fk)
        by_hand = -(torch.sigmoid(R - Fk.mean()).mean() + 1 - torch.sigmoid(Fk - R.mean())) / (2 * n)
        assert torch.allclose(_grads(rg.g_loss(loss, r, f), r, f)[1], by_hand, atol=1e-6)


@pytest.mark.parametrize("loss", ["rsgan", *RA])
def test_swap_symmetry(loss):
    # G's loss is D's loss with the roles of real and fake exchanged
    assert torch.allclose(rg.g_loss(loss, R, Fk), rg.d_loss(loss, Fk, R))


@pytest.mark.parametrize("loss", ["rsgan", *RA])
def test_shift_invariance(loss):
    for k in (-3.0, 0.7, 10.0):
        assert torch.allclose(rg.d_loss(loss, R + k, Fk + k), rg.d_loss(loss, R, Fk), atol=1e-5)
        assert torch.allclose(rg.g_loss(loss, R + k, Fk + k), rg.g_loss(loss, R, Fk), atol=1e-5)


def test_values_when_d_cannot_tell_real_from_fake():
    for value in (0.3, -1.2, 5.0):                  # every logit the same, real and fake
        same = torch.full((3,), value)
        assert math.isclose(rg.d_loss("rasgan", same, same).item(), math.log(2), rel_tol=1e-6)
        assert math.isclose(rg.d_loss("ralsgan", same, same).item(), 1.0, rel_tol=1e-6)
        assert math.isclose(rg.d_loss("rahingegan", same, same).item(), 1.0, rel_tol=1e-6)
    pairs = torch.tensor([0.3, -1.2, 2.0])          # RSGAN compares pairs: equal pairs suffice
    assert math.isclose(rg.d_loss("rsgan", pairs, pairs).item(), math.log(2), rel_tol=1e-6)


def test_permuting_the_fakes_changes_rsgan_but_not_the_average_losses():
    perm = torch.tensor([2, 0, 3, 1])
    assert not torch.allclose(rg.d_loss("rsgan", R, Fk[perm]), rg.d_loss("rsgan", R, Fk))
    assert not torch.allclose(rg.g_loss("rsgan", R, Fk[perm]), rg.g_loss("rsgan", R, Fk))
    for loss in RA:
        assert torch.allclose(rg.d_loss(loss, R, Fk[perm]), rg.d_loss(loss, R, Fk))
        assert torch.allclose(rg.g_loss(loss, R, Fk[perm]), rg.g_loss(loss, R, Fk))


@pytest.mark.parametrize("loss", ["rsgan", *RA])
def test_the_relativistic_g_loss_depends_on_the_real_logits(loss):
    # the bug of other collections: a relativistic G loss overwritten by the standard one
    r = R.clone().requires_grad_(True)
    rg.g_loss(loss, r, Fk).backward()
    assert r.grad.abs().sum() > 0
    assert not torch.allclose(rg.g_loss(loss, R, Fk), rg.g_loss(loss, R + torch.tensor([1.0, 0, 0, 0]), Fk))


@pytest.mark.parametrize("loss", ["sgan", "lsgan", "hingegan"])
def test_the_baseline_g_losses_ignore_real_data(loss):
    assert torch.equal(rg.g_loss(loss, None, Fk), rg.g_loss(loss, R, Fk))


def test_losses_are_stable_on_large_logits():
    big = torch.tensor([300.0, -300.0])
    for loss in rg.LOSSES:
        assert torch.isfinite(rg.d_loss(loss, big, -big)) and torch.isfinite(rg.g_loss(loss, big, -big))


def test_gradient_penalty_is_zero_for_a_unit_slope_critic_and_positive_otherwise():
    w = torch.zeros(3 * 4 * 4)
    w[0] = 1.0                                    # C(x) = x[0]: gradient norm exactly 1
    linear = lambda x: x.flatten(1) @ w          # noqa: E731
    real, fake = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    assert rg.gradient_penalty(linear, real, fake).abs() < 1e-10
    steep = lambda x: 3 * x.flatten(1) @ w       # noqa: E731  gradient norm 3: penalty (3-1)^2
    assert torch.allclose(rg.gradient_penalty(steep, real, fake), torch.tensor(4.0))


def test_gradient_penalty_draws_one_u_in_0_1_per_sample():
    # C(x) = ½‖x‖²: ∇C(x̂) = x̂ = u·x_r (x_f = 0), so the penalty is mean((u_i·‖x_r‖ - 1)²) with
    # the u_i drawn as torch.rand(B, 1, 1, 1); one u for the batch, or u ~ N(0, 1), differ
    half_sq = lambda x: 0.5 * (x ** 2).flatten(1).sum(1)          # noqa: E731
    real, fake = torch.full((6, 1, 2, 2), 0.5), torch.zeros(6, 1, 2, 2)   # ‖x_r‖ = 1
    torch.manual_seed(3)
    penalty = rg.gradient_penalty(half_sq, real, fake)
    torch.manual_seed(3)
    u = torch.rand(6)
    assert u.std() > 0.1                                          # the draws differ
    assert torch.allclose(penalty, ((u - 1) ** 2).mean())


def test_gradient_penalty_reaches_the_critic_s_parameters():
    # create_graph=True: the penalty is differentiable w.r.t. D's weights, else --gp trains nothing.
    # C(x) = a·<w, x> with ‖w‖ = 1: penalty (|a| - 1)², d/da = 2(a - 1) = 4 at a = 3
    a = torch.tensor(3.0, requires_grad=True)
    w = torch.zeros(3 * 4 * 4)
    w[5] = 1.0
    critic = lambda x: a * (x.flatten(1) @ w)                      # noqa: E731
    penalty = rg.gradient_penalty(critic, torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4))
    penalty.backward()
    assert torch.allclose(penalty, torch.tensor(4.0)) and torch.allclose(a.grad, torch.tensor(4.0))


class _MeanCritic(nn.Module):
    """C(x) = w · mean pixel of x: a critic whose logits are known by hand."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return self.w * x.mean((1, 2, 3))


def test_the_d_step_returns_its_loss_and_the_real_minus_fake_critic_gap():
    args, G, _, _, _ = _nets()
    D = _MeanCritic()
    real = torch.ones(4, 3, 16, 16)                               # C(x_r) = 2, above any fake's
    torch.manual_seed(7)
    loss, gap = rg.discriminator_step(G, D, torch.optim.SGD(D.parameters(), lr=0.0), real, args)
    torch.manual_seed(7)
    with torch.no_grad():
        f = D(G(torch.randn(4, args.nz)))
    r = torch.full((4,), 2.0)
    assert gap > 0.5 and torch.allclose(gap, r.mean() - f.mean())
    assert torch.allclose(loss, rg.d_loss("rasgan", r, f))


def test_setups_and_defaults():
    a = rg.parse_args([])
    assert (a.loss, a.lr, a.beta1, a.beta2, a.n_d, a.batch_size, a.image_size, a.nz, a.d_norm) == \
        ("rasgan", 2e-4, 0.5, 0.999, 1, 32, 32, 128, "spectral")
    b = rg.parse_args(["--setup", "b"])
    assert (b.lr, b.beta1, b.beta2, b.n_d) == (1e-4, 0.5, 0.9, 5)
    assert rg.parse_args(["--setup", "b", "--lr", "3e-4"]).lr == 3e-4
    assert (a.gp, a.gp_weight) == (False, 10.0)                   # --gp: lambda = 10


@pytest.mark.parametrize("size", ["8", "24", "48"])
def test_image_sizes_that_are_not_a_power_of_two_from_16_are_refused(size):
    # each stage doubles or halves the side from or to 4x4: 24 px would build a 16 px G
    with pytest.raises(SystemExit):
        rg.parse_args(["--image-size", size])


def test_the_cifar_network():
    G, D = rg.Generator(), rg.Discriminator()
    assert G.dense.out_features == 512 * 4 * 4 and D.dense.in_features == 512 * 4 * 4
    convs = [m for m in D.net if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size[0], m.stride[0]) for m in convs] == [
        (64, 3, 1), (64, 4, 2), (128, 3, 1), (128, 4, 2), (256, 3, 1), (256, 4, 2), (512, 3, 1)]
    assert all(m.negative_slope == 0.1 for m in D.net if isinstance(m, nn.LeakyReLU))
    assert G(torch.randn(2, 128)).shape == (2, 3, 32, 32)
    # spectral norm on every conv, no batch norm (the paper's CIFAR runs) ...
    assert not any(isinstance(m, nn.BatchNorm2d) for m in D.modules())
    assert sum(hasattr(m, "parametrizations") for m in D.modules()) == 7
    assert not hasattr(D.dense, "parametrizations")
    # ... or batch norm after every conv but the last (the official code's default)
    bn = rg.Discriminator(norm="batch")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.net) == 6
    assert not any(hasattr(m, "parametrizations") for m in bn.modules())
    assert rg.Discriminator(image_size=64)(rg.Generator(image_size=64)(torch.randn(2, 128))).shape == (2,)


def test_the_cifar_generator_layers():
    # Linear to 512x4x4 straight into the first ConvT (no BN or activation), then
    # [ConvT 4 s2, BN, ReLU] x 3 (256, 128, 64), a 3x3 conv to 3 channels, tanh
    G = rg.Generator()
    kinds = [type(m) for m in G.net]
    assert kinds == [nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU] * 3 + [nn.Conv2d, nn.Tanh]
    convs = [m for m in G.net if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d))]
    assert [(m.out_channels, m.kernel_size[0], m.stride[0]) for m in convs] == [
        (256, 4, 2), (128, 4, 2), (64, 4, 2), (3, 3, 1)]
    out = G(100 * torch.randn(4, 128))                            # huge z: still inside [-1, 1]
    assert out.abs().max() <= 1 and out.abs().max() > 0.9


def test_weights_init_convs_n0_002_and_bn_scales_n1_002():
    # the official init, on G's convs and on the raw weights under D's spectral norm
    # (PyTorch's default init gives stds from 0.036 to 0.11 on these 16 px layers)
    args, G, D, _, _ = _nets()
    convs = [m for m in [*G.modules(), *D.modules()] if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 3 + 5                                    # 16 px: G 3, D 5
    for m in convs:
        w = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
        assert abs(w.std().item() - 0.02) < 0.004 and abs(w.mean().item()) < 0.004, (m, w.std())
    bns = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
    scales = torch.cat([m.weight.detach() for m in bns])
    assert 0.01 < scales.std() < 0.03 and abs(scales.mean() - 1) < 0.01
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bns)


def test_both_adam_optimisers_use_the_setup_s_lr_and_betas():
    for setup, (lr, betas) in (("a", (2e-4, (0.5, 0.999))), ("b", (1e-4, (0.5, 0.9)))):
        _, G, D, opt_G, opt_D = _nets("rasgan", "--setup", setup)
        for opt, net in ((opt_G, G), (opt_D, D)):
            assert isinstance(opt, torch.optim.Adam)
            group = opt.param_groups[0]
            assert (group["lr"], group["betas"]) == (lr, betas)
            assert {id(p) for p in group["params"]} == {id(p) for p in net.parameters()}


def _nets(loss="rasgan", *flags):
    torch.manual_seed(0)
    args = rg.parse_args(["--image-size", "16", "--width", "8", "--loss", loss, *flags])
    return args, *rg.build(args, 3, torch.device("cpu"))


def test_steps_change_only_their_own_network():
    args, G, D, opt_G, opt_D = _nets()
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    g0 = [p.detach().clone() for p in G.parameters()]
    rg.discriminator_step(G, D, opt_D, real, args)
    assert all(torch.equal(a, b) for a, b in zip(g0, G.parameters()))
    assert all(p.grad is None for p in G.parameters())           # the fake is made without a graph
    d0 = [p.detach().clone() for p in D.parameters()]
    d_grads = [p.grad.clone() for p in D.parameters()]          # left by D's step
    rg.generator_step(G, D, opt_G, real, args, 4, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(d0, D.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(g0, G.parameters()))
    # D gets no gradient in G's step (nothing added to what D's step left), and is trainable again
    assert all(torch.equal(p.grad, g) for p, g in zip(D.parameters(), d_grads))
    assert all(p.requires_grad for p in D.parameters())


def test_the_gradient_penalty_is_added_to_d_s_loss_and_gradient():
    # with --gp the D step minimises d_loss + λ·penalty: its logged loss is the one without --gp
    # plus exactly λ times the penalty, and D's gradient is the gradient of that sum
    args, G, D, _, _ = _nets("rasgan", "--gp", "--gp-weight", "7")
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    D_plain, D_gp, D_ref = (copy.deepcopy(D) for _ in range(3))
    losses = {}
    for gp, net in ((False, D_plain), (True, D_gp)):
        args.gp = gp
        torch.manual_seed(5)
        loss, _ = rg.discriminator_step(G, net, torch.optim.SGD(net.parameters(), lr=0.0), real, args)
        losses[gp] = loss
    torch.manual_seed(5)                                          # the same z, then the same u
    fake = G(torch.randn(4, args.nz)).detach()
    d = rg.d_loss("rasgan", D_ref(real), D_ref(fake))
    penalty = rg.gradient_penalty(D_ref, real, fake)
    assert penalty > 1e-3                                         # not a vacuous comparison
    assert torch.allclose(losses[True] - losses[False], 7 * penalty.detach(), rtol=1e-4)
    (d + 7 * penalty).backward()
    for p, q in zip(D_gp.parameters(), D_ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7)


def test_the_g_step_sees_the_real_batch_for_relativistic_losses():
    args, G, D, opt_G, _ = _nets("rasgan")
    state = {k: v.clone() for k, v in G.state_dict().items()}
    torch.manual_seed(1)
    rg.generator_step(G, D, opt_G, torch.rand(4, 3, 16, 16), args, 4, torch.device("cpu"))
    after_a = [p.detach().clone() for p in G.parameters()]
    args, G, D, opt_G, _ = _nets("rasgan")
    G.load_state_dict(state)
    torch.manual_seed(1)
    rg.generator_step(G, D, opt_G, -torch.rand(4, 3, 16, 16), args, 4, torch.device("cpu"))
    assert not all(torch.equal(a, p) for a, p in zip(after_a, G.parameters()))


@pytest.mark.parametrize("loss", rg.LOSSES)
def test_cli_smoke_for_every_loss(loss, tmp_path):
    rg.main(TINY_RG + ["--loss", loss, "--max-steps", "3", "--out", "run"])
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 3 and all(r["loss_D"] and r["loss_G"] and r["C_gap"] for r in rows)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    # one batch for D, and a fresh one for G when the loss is relativistic
    assert ckpt["batches_drawn"] == 3 * (2 if loss in rg.RELATIVISTIC else 1)
    assert (tmp_path / "run" / "samples" / "final.png").exists()


def test_cli_setup_b_with_penalty_and_batch_norm_resumes_exactly(tmp_path):
    flags = TINY_RG + ["--setup", "b", "--gp", "--d-norm", "batch", "--loss", "ralsgan"]
    rg.main(flags + ["--max-steps", "4", "--out", "straight"])
    rg.main(flags + ["--max-steps", "2", "--out", "split"])
    rg.main(["--resume", "split", "--max-steps", "4"])
    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split")
    assert [r["loss_D"] for r in a] == [r["loss_D"] for r in b]
    ckpt = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    assert ckpt["batches_drawn"] == 4 * 6   # n_D = 5 fresh batches, and one for G


def test_sigmoid_is_nowhere_in_d():
    D = rg.Discriminator()
    assert not any(isinstance(m, nn.Sigmoid) for m in D.modules())
    x = torch.randn(5)
    assert torch.allclose(rg.d_loss("sgan", x, x), F.binary_cross_entropy_with_logits(x, torch.ones(5))
                          + F.binary_cross_entropy_with_logits(x, torch.zeros(5)))
