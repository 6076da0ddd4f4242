"""infogan.py against its paper: the bound, the Gaussian term, who owns which gradient, the
step order, the Figure 2 layout, the toy recovery of the categorical code.

Table 1 networks layer by layer and App. C defaults, both networks' init, the D step's reported
values, D then G each on its own fresh latent, H_c over every categorical code, code_acc as Q's
matched accuracy on each epoch's real images, traversals from G in eval mode, d_loss and the
non-saturating g_loss against their closed forms, each step's gradient equal to that of its GAN
loss plus both information terms (fixed and learned σ), D and Q reading one body tensor, L_I's
gradient reaching G, the body and the Q head but not the D head, the bound ln K for a perfect Q,
raw logits into the cross-entropy, the fixed- and learned-σ Gaussian terms against their closed
forms, one optimiser per network, every backward after a fresh forward, the Figure 2 latent
layout and grid sizes, a 2-D toy where the categorical code picks the mode with λ = 1 and stays
at chance with λ = 0, exact resume, the CLI.
"""
import copy
import itertools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import TINY, read_metrics

import common
import infogan

TINY_IG = TINY + ["--fc-units", "32", "--q-units", "16"]


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _nets(**flags):
    torch.manual_seed(0)
    argv = ["--image-size", "16", "--ngf", "8", "--ndf", "8", "--fc-units", "32", "--q-units", "16"]
    for key, value in flags.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    args = infogan.parse_args(argv)
    return (args, *infogan.build(args, 1, torch.device("cpu")))


def _latent(args, n=8):
    return infogan.sample_latent(n, args.nz, args.n_cat, args.cat_dim, args.n_cont)


def test_paper_defaults_and_table_1_networks():
    args = infogan.parse_args([])
    assert (args.nz, args.n_cat, args.cat_dim, args.n_cont, args.info_weight) == (62, 1, 10, 2, 1.0)
    assert (args.lr_d, args.lr_g, args.beta1, args.batch_size) == (2e-4, 1e-3, 0.5, 128)
    assert (args.image_size, args.channels, args.dataset, args.learn_sigma) == (28, 1, "shapes", False)
    G, D, opt_G, opt_D = infogan.build(args, 1, torch.device("cpu"))
    linears = [m for m in G.fc if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(74, 1024), (1024, 7 * 7 * 128)]
    assert [m.out_channels for m in G.deconv if isinstance(m, nn.ConvTranspose2d)] == [64, 1]
    assert isinstance(G.deconv[-1], nn.Tanh)
    assert [m.out_channels for m in D.body if isinstance(m, nn.Conv2d)] == [64, 128]
    assert [m.out_features for m in D.body if isinstance(m, nn.Linear)] == [1024]
    assert D.d_head.out_features == 1
    assert [m.out_features for m in D.q_head if isinstance(m, nn.Linear)] == [128, 10 + 2 * 2]
    slopes = {m.negative_slope for m in D.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.1}                                     # the paper's 0.1, not the code's 0.01
    assert not any(isinstance(m, (nn.Sigmoid, nn.Softmax, nn.LogSoftmax)) for m in D.modules())
    x = G(infogan.sample_latent(3)[0])
    assert x.shape == (3, 1, 28, 28) and x.abs().max() <= 1
    d_logit, q = D(x)
    assert d_logit.shape == (3,) and q["cat"].shape == (3, 1, 10)
    assert q["mu"].shape == q["log_sigma"].shape == (3, 2)


@pytest.mark.parametrize("size", [16, 28, 32])
def test_every_multiple_of_four(size):
    G = infogan.Generator(74, 1, size, ngf=8, fc_units=32)
    D = infogan.Discriminator(1, size, ndf=8, fc_units=32, q_units=16, n_cat=2, cat_dim=3, n_cont=1)
    x = G(torch.rand(4, 74) * 2 - 1)
    assert x.shape == (4, 1, size, size)
    d_logit, q = D(x)
    assert d_logit.shape == (4,) and q["cat"].shape == (4, 2, 3) and q["mu"].shape == (4, 1)


def test_layer_order_is_table_1():
    # BN on every layer but D's first and G's last; ReLU in G, lReLU in D's body and Q's head
    _, G, D, _, _ = _nets()
    kinds = lambda seq: [type(m).__name__ for m in seq]
    assert kinds(G.fc) == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU"]
    assert kinds(G.deconv) == ["ConvTranspose2d", "BatchNorm2d", "ReLU", "ConvTranspose2d", "Tanh"]
    assert kinds(D.body) == ["Conv2d", "LeakyReLU", "Conv2d", "BatchNorm2d", "LeakyReLU", "Flatten",
                             "Linear", "BatchNorm1d", "LeakyReLU"]
    assert kinds(D.q_head) == ["Linear", "BatchNorm1d", "LeakyReLU", "Linear"]
    assert isinstance(D.d_head, nn.Linear)


def test_both_networks_start_from_the_official_init():
    # every conv/linear weight N(0, 0.02) and bias 0; every BN scale N(1, 0.02) and shift 0;
    # D's convs truncated at two standard deviations (official custom_conv2d: truncated_normal)
    args = infogan.parse_args([])
    torch.manual_seed(0)
    G, D, _, _ = infogan.build(args, 1, torch.device("cpu"))
    for name, net in (("G", G), ("D", D)):
        weights = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
        norms = [m for m in net.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
        assert weights and norms, name
        for m in weights:
            w = m.weight.detach()
            assert abs(w.mean()) < 0.01 and 0.015 < w.std() < 0.025, (name, m)
            assert m.bias is None or not m.bias.any(), (name, m)
            if type(m) is nn.Conv2d:   # truncated: std 0.02 * 0.88
                assert w.abs().max() <= 0.04 and 0.016 < w.std() < 0.0195, (name, m)
            else:                      # plain normal: ~4.6% beyond two standard deviations
                assert w.abs().max() > 0.04, (name, m)
        scale = torch.cat([m.weight.detach() for m in norms])
        assert abs(scale.mean() - 1) < 0.01 and 0.015 < scale.std() < 0.025, name
        assert not torch.cat([m.bias.detach() for m in norms]).any(), name
    assert sum(type(m) is nn.Conv2d for m in D.modules()) == 2


def test_bad_flags_are_refused(capsys):
    for argv in (["--image-size", "30"], ["--image-size", "4"], ["--n-cat", "0", "--n-cont", "0"],
                 ["--info-weight", "-1"]):
        with pytest.raises(SystemExit) as e:
            infogan.parse_args(argv)
        assert e.value.code == 2
    assert "multiple of 4" in capsys.readouterr().err
    assert infogan.parse_args(["--info-weight", "0"]).info_weight == 0


def test_batch_size_one_is_refused_before_its_batchnorm_fails_and_two_trains(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        infogan.main(TINY_IG + ["--batch-size", "1", "--out", "one"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and not (tmp_path / "one").exists()
    assert err.splitlines()[-1].endswith(
        "error: --batch-size must be at least 2 (got 1): the BatchNorm1d after G's, D's and Q's fully "
        "connected layers normalises each unit over the batch, which takes two images or more")
    infogan.main(TINY_IG + ["--batch-size", "2", "--max-steps", "1", "--out", "two"])
    assert (tmp_path / "two" / "checkpoint.pt").exists()


def test_sample_latent_follows_app_c():
    torch.manual_seed(0)
    g_in, codes = infogan.sample_latent(5000, nz=62, n_cat=1, cat_dim=10, n_cont=2)
    assert g_in.shape == (5000, 74)
    z, onehot, cont = g_in[:, :62], g_in[:, 62:72], g_in[:, 72:]
    assert z.min() >= -1 and z.max() <= 1 and abs(z.mean()) < 0.01          # U(-1, 1)
    assert torch.equal(onehot, F.one_hot(codes["cat"][:, 0], 10).float())  # the one-hot of c1
    assert torch.equal(cont, codes["cont"]) and cont.min() >= -1 and cont.max() <= 1
    assert abs(cont.mean()) < 0.02 and cont.min() < -0.99 and cont.max() > 0.99   # U(-1, 1), not U(0, 1)
    counts = torch.bincount(codes["cat"][:, 0], minlength=10)
    assert counts.min() > 400 and counts.max() < 600                        # uniform over K


def test_d_and_q_read_one_shared_body_tensor():
    _, _, D, _, _ = _nets()
    seen = {}
    D.body.register_forward_hook(lambda m, i, o: seen.__setitem__("body", o))
    D.d_head.register_forward_hook(lambda m, i, o: seen.__setitem__("d", i[0]))
    D.q_head.register_forward_hook(lambda m, i, o: seen.__setitem__("q", i[0]))
    D(torch.rand(4, 1, 16, 16))
    assert seen["d"] is seen["body"] and seen["q"] is seen["body"]


def test_l_i_alone_reaches_g_the_shared_body_and_the_q_head():
    args, G, D, _, _ = _nets()
    g_in, codes = _latent(args)
    _, q = D(G(g_in))
    discrete, continuous = infogan.info_loss(q, codes)
    (discrete + continuous).backward()
    for name, net in (("G", G), ("body", D.body), ("Q head", D.q_head)):
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in net.parameters()), name
    assert all(p.grad is None for p in D.d_head.parameters())  # L_I does not touch the D head


def test_d_and_g_losses_against_their_closed_forms():
    r, f = torch.tensor([2.0, -0.5, 0.3]), torch.tensor([-1.5, 0.8, -0.2])
    sig = torch.sigmoid
    # D maximises E log D(x) + E log(1 - D(G(z))): minimises the negative
    assert torch.allclose(infogan.d_loss(r, f), -torch.log(sig(r)).mean() - torch.log(1 - sig(f)).mean())
    # G, non-saturating: maximises E log D(G(z)) (not: minimises E log(1 - D(G(z))))
    assert torch.allclose(infogan.g_loss(f), -torch.log(sig(f)).mean())
    # signs: D's loss falls as real logits rise and fake ones fall; G's falls as fake logits rise
    assert infogan.d_loss(r + 1, f) < infogan.d_loss(r, f) and infogan.d_loss(r, f - 1) < infogan.d_loss(r, f)
    assert infogan.g_loss(f + 1) < infogan.g_loss(f)
    # non-saturating: a G that D rejects outright still gets a gradient of -1/B per sample
    rejected = torch.full((4,), -30.0, requires_grad=True)
    infogan.g_loss(rejected).backward()
    assert torch.allclose(rejected.grad, torch.full((4,), -0.25))


def _reference_loss(adv, q, codes, info_weight, learn_sigma):
    """The adversarial loss + λ (-E log Q(c|x)), written independently of info_loss."""
    discrete = -torch.log_softmax(q["cat"], -1).gather(-1, codes["cat"][..., None]).sum() / len(codes["cat"])
    sigma = q["log_sigma"].exp() if learn_sigma else torch.ones_like(q["mu"])
    continuous = -torch.distributions.Normal(q["mu"], sigma).log_prob(codes["cont"]).sum(1).mean()
    return adv + info_weight * (discrete + continuous)


def _close(grads, ref):
    """Whole gradients equal up to float error (relative to their size)."""
    a, b = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in ref])
    return ((a - b).norm() / b.norm()).item() < 1e-4


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_each_step_minimises_its_gan_loss_plus_both_information_terms(learn_sigma):
    # L_D - λ L_I and L_G - λ L_I, with -L_I = discrete + continuous (+ const): each step's
    # gradient is that of the written-out loss, σ learned or fixed as asked
    args, G, D, opt_G, opt_D = _nets()
    real, latent = torch.rand(8, 1, 16, 16) * 2 - 1, _latent(args)
    G_ref, D_ref = copy.deepcopy(G), copy.deepcopy(D)   # BN in train mode: the same outputs
    infogan.discriminator_step(G, D, opt_D, real, latent, 0.7, learn_sigma)
    with torch.no_grad():
        fake = G_ref(latent[0])
    (real_logits, _), (fake_logits, q) = D_ref(real), D_ref(fake)
    adv = -F.logsigmoid(real_logits).mean() - F.logsigmoid(-fake_logits).mean()
    _reference_loss(adv, q, latent[1], 0.7, learn_sigma).backward()
    assert _close([p.grad for p in D.parameters()], [p.grad for p in D_ref.parameters()])

    latent = _latent(args)
    G_ref, D_ref = copy.deepcopy(G), copy.deepcopy(D)
    infogan.generator_step(G, D, opt_G, latent, 0.7, learn_sigma)
    fake_logits, q = D_ref(G_ref(latent[0]))
    _reference_loss(-F.logsigmoid(fake_logits).mean(), q, latent[1], 0.7, learn_sigma).backward()
    assert _close([p.grad for p in G.parameters()], [p.grad for p in G_ref.parameters()])


def test_a_perfect_q_reaches_the_bound_h_c():
    K = 10
    c = torch.arange(20).view(10, 2) % K                         # two categorical codes, (B, 2)
    perfect = 50.0 * F.one_hot(c, K).float()                     # (B, 2, K) logits
    empty = torch.zeros(10, 0)
    discrete, continuous = infogan.info_loss({"cat": perfect, "mu": empty, "log_sigma": empty},
                                             {"cat": c, "cont": empty})
    h_c = 2 * math.log(K)                                        # H(c) of two Cat(10) codes
    assert abs((h_c - discrete).item() - h_c) < 1e-5 and continuous == 0
    # a Q that knows nothing (uniform) gives L_I = 0
    discrete, _ = infogan.info_loss({"cat": torch.zeros(10, 2, K), "mu": empty, "log_sigma": empty},
                                    {"cat": c, "cont": empty})
    assert abs(discrete.item() - h_c) < 1e-5


def test_the_discrete_term_is_cross_entropy_on_raw_logits():
    torch.manual_seed(0)
    logits, c = torch.randn(6, 1, 10) * 3, torch.randint(10, (6, 1))
    empty = torch.zeros(6, 0)
    d, _ = infogan.info_loss({"cat": logits, "mu": empty, "log_sigma": empty}, {"cat": c, "cont": empty})
    expected = -torch.log_softmax(logits[:, 0], 1).gather(1, c).mean()   # -E log Q(c|x)
    assert torch.allclose(d, expected)
    assert not torch.allclose(d, F.cross_entropy(torch.softmax(logits[:, 0], 1), c[:, 0]))
    d_shift, _ = infogan.info_loss({"cat": logits + 7.0, "mu": empty, "log_sigma": empty},
                                   {"cat": c, "cont": empty})
    assert torch.allclose(d, d_shift)                                    # logits, not probabilities


def test_the_fixed_sigma_term_is_half_the_squared_error_plus_half_log_2_pi():
    mu = torch.tensor([[0.5, -1.0], [0.0, 2.0]])
    cont = torch.tensor([[0.1, 0.3], [-0.7, 1.0]])
    q = {"cat": torch.zeros(2, 0, 10), "mu": mu, "log_sigma": torch.full((2, 2), 3.0)}  # ignored
    codes = {"cat": torch.zeros(2, 0, dtype=torch.long), "cont": cont}
    discrete, continuous = infogan.info_loss(q, codes)
    per_code = 0.5 * (cont - mu) ** 2 + 0.5 * math.log(2 * math.pi)
    assert discrete == 0 and torch.allclose(continuous, per_code.sum(1).mean())
    one = infogan.info_loss({"cat": q["cat"], "mu": mu[:, :1], "log_sigma": mu[:, :1]},
                            {"cat": codes["cat"], "cont": cont[:, :1]})[1]
    assert torch.allclose(one, (0.5 * (cont[:, 0] - mu[:, 0]) ** 2).mean() + 0.5 * math.log(2 * math.pi))
    # --learn-sigma: the Gaussian log-likelihood with σ = exp(output)
    log_sigma = torch.tensor([[0.2, -0.5], [1.0, 0.0]])
    q["log_sigma"] = log_sigma
    _, learned = infogan.info_loss(q, codes, learn_sigma=True)
    expected = -torch.distributions.Normal(mu, log_sigma.exp()).log_prob(cont).sum(1).mean()
    assert torch.allclose(learned, expected)


def test_one_optimiser_per_network_and_q_belongs_to_ds():
    args, G, D, opt_G, opt_D = _nets()
    ids = lambda opt: {id(p) for group in opt.param_groups for p in group["params"]}
    assert ids(opt_G) == {id(p) for p in G.parameters()}
    assert ids(opt_D) == {id(p) for p in D.parameters()}                # body + D head + Q head
    assert {id(p) for p in D.q_head.parameters()} <= ids(opt_D)
    assert not ids(opt_G) & ids(opt_D)
    assert opt_G.defaults["lr"] == 1e-3 and opt_D.defaults["lr"] == 2e-4
    assert opt_G.defaults["betas"] == opt_D.defaults["betas"] == (0.5, 0.999)   # β2: Adam's default


def test_d_step_updates_d_and_q_only_and_g_step_updates_g_only():
    args, G, D, opt_G, opt_D = _nets()
    g0, q0, body0 = _params(G), _params(D.q_head), _params(D.body)
    metrics, q_real = infogan.discriminator_step(G, D, opt_D, torch.rand(8, 1, 16, 16) * 2 - 1,
                                                 _latent(args), 1.0)
    assert _same(_params(G), g0) and all(p.grad is None for p in G.parameters())
    assert not _same(_params(D.q_head), q0) and not _same(_params(D.body), body0)
    assert q_real.shape == (8, 1, 10) and set(metrics) >= {"loss_D", "discrete", "continuous"}
    d1, d_grads = _params(D), [p.grad.clone() for p in D.parameters()]
    infogan.generator_step(G, D, opt_G, _latent(args), 1.0)
    assert _same(_params(D), d1) and not _same(_params(G), g0)
    assert _same([p.grad for p in D.parameters()], d_grads)            # no gradient added to D or Q
    assert all(p.requires_grad for p in D.parameters())


def test_d_step_reports_d_on_real_and_fake_and_its_losses():
    args, G, D, _, opt_D = _nets()
    real, latent = torch.rand(8, 1, 16, 16) * 2 - 1, _latent(args)
    G_ref, D_ref = copy.deepcopy(G), copy.deepcopy(D)   # BN in train mode: the same outputs
    metrics, q_real = infogan.discriminator_step(G, D, opt_D, real, latent, 1.0)
    with torch.no_grad():
        (real_logits, q_r), (fake_logits, q_f) = D_ref(real), D_ref(G_ref(latent[0]))
    discrete, continuous = infogan.info_loss(q_f, latent[1])
    assert torch.allclose(metrics["D_x"], torch.sigmoid(real_logits).mean())       # D(x)
    assert torch.allclose(metrics["D_G_z"], torch.sigmoid(fake_logits).mean())     # D(G(z, c))
    assert torch.allclose(metrics["loss_D"], infogan.d_loss(real_logits, fake_logits))
    assert torch.allclose(metrics["discrete"], discrete) and torch.allclose(metrics["continuous"], continuous)
    assert torch.allclose(q_real, q_r["cat"])                    # Q's code on the real batch, before the step


def test_with_lambda_zero_q_gets_no_update():
    args, G, D, _, opt_D = _nets()
    q0 = _params(D.q_head)
    infogan.discriminator_step(G, D, opt_D, torch.rand(8, 1, 16, 16), _latent(args), 0.0)
    assert _same(_params(D.q_head), q0)


def test_every_backward_follows_a_fresh_forward_not_a_step(monkeypatch):
    # The pitfall: computing L_D and L_G from one forward pass, stepping D, then calling
    # backward on L_G through D's weights that the step modified in place.
    args, G, D, opt_G, opt_D = _nets()
    events = []
    D.register_forward_hook(lambda *a: events.append("D forward"))
    for name, opt in (("step D", opt_D), ("step G", opt_G)):
        step = opt.step
        monkeypatch.setattr(opt, "step", lambda *a, _s=step, _n=name, **k: (events.append(_n), _s(*a, **k))[1])
    backward = torch.Tensor.backward
    monkeypatch.setattr(torch.Tensor, "backward", lambda self, *a, **k: (events.append("backward"),
                                                                         backward(self, *a, **k))[1])
    for _ in range(3):
        real = torch.rand(8, 1, 16, 16) * 2 - 1
        infogan.discriminator_step(G, D, opt_D, real, _latent(args), 1.0)
        infogan.generator_step(G, D, opt_G, _latent(args), 1.0)
    assert events[:7] == ["D forward", "D forward", "backward", "step D", "D forward", "backward", "step G"]
    for i, event in enumerate(events):
        if event == "backward":
            since_step = events[:i][::-1]
            last_step = next((k for k, e in enumerate(since_step) if e.startswith("step")), len(since_step))
            assert "D forward" in since_step[:last_step]   # the graph was built after the last step


def test_matched_accuracy_is_the_best_one_to_one_matching():
    assert infogan.matched_accuracy(torch.eye(4, dtype=torch.long)[[2, 0, 3, 1]] * 5) == 1.0
    torch.manual_seed(0)
    for rows, cols in ((5, 5), (3, 5), (5, 3)):
        conf = torch.randint(0, 20, (rows, cols))
        m = conf.tolist()
        if rows <= cols:
            best = max(sum(m[i][p[i]] for i in range(rows)) for p in itertools.permutations(range(cols), rows))
        else:
            best = max(sum(m[p[j]][j] for j in range(cols)) for p in itertools.permutations(range(rows), cols))
        assert infogan.matched_accuracy(conf) == pytest.approx(best / conf.sum().item())


def test_grid_latent_is_the_figure_2_layout():
    torch.manual_seed(0)
    nz, K = 5, 4
    g = infogan.grid_latent(nz, 1, K, 2, sweep=1, n_cols=10).view(K, 10, -1)   # (rows, cols, ·)
    z, onehot, cont = g[..., :nz], g[..., nz:nz + K], g[..., nz + K:]
    assert torch.equal(z, z[:1, :1].expand_as(z))                              # one z for the grid
    assert torch.equal(onehot.argmax(-1), torch.arange(K)[:, None].expand(K, 10))  # rows: c1 = 0..K-1
    assert torch.allclose(cont[..., 1], torch.linspace(-2, 2, 10).expand(K, 10))   # columns: -2..2
    assert torch.equal(cont[..., 0], torch.zeros(K, 10))                        # the other code fixed
    g = infogan.grid_latent(nz, 1, K, 2, sweep=None, n_cols=6).view(K, 6, -1)    # Fig. 2a
    assert torch.equal(g[..., :nz], g[:1, :, :nz].expand(K, 6, nz))              # z per column
    assert len({tuple(v) for v in g[0, :, :nz].tolist()}) == 6
    assert torch.equal(g[..., nz:nz + K].argmax(-1), torch.arange(K)[:, None].expand(K, 6))


class _ToyD(nn.Module):
    """A shared MLP body with a D head and a Q head, returning what infogan.Discriminator returns."""

    def __init__(self, k, h=64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, h), nn.LeakyReLU(0.1), nn.Linear(h, h), nn.LeakyReLU(0.1))
        self.d_head, self.q_head, self.k = nn.Linear(h, 1), nn.Linear(h, k), k

    def forward(self, x):
        h = self.body(x)
        q = self.q_head(h)
        return self.d_head(h).squeeze(1), {"cat": q.view(-1, 1, self.k), "mu": q[:, :0], "log_sigma": q[:, :0]}


def _toy_code_recovery(info_weight, seed, steps=300, nz=4):
    """InfoGAN with MLPs on four 2-D Gaussians at (±1, ±1), a Cat(4) code, through
    infogan's own steps. Returns (how well c predicts the mode of G(z, c), how well Q's code
    classifies real points), each as accuracy after the best one-to-one matching; chance 0.25."""
    K, n = 4, 4000
    centres = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    torch.manual_seed(seed)
    G = nn.Sequential(nn.Linear(nz + K, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    D = _ToyD(K)
    opt_G = torch.optim.Adam(G.parameters(), 1e-3, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), 1e-3, betas=(0.5, 0.999))
    for _ in range(steps):
        real = centres[torch.randint(K, (128,))] + 0.1 * torch.randn(128, 2)
        infogan.discriminator_step(G, D, opt_D, real, infogan.sample_latent(128, nz, 1, K, 0), info_weight)
        infogan.generator_step(G, D, opt_G, infogan.sample_latent(128, nz, 1, K, 0), info_weight)

    def accuracy(pred, target):
        conf = torch.zeros(K, K, dtype=torch.long)
        conf.view(-1).index_add_(0, pred * K + target, torch.ones_like(pred))
        return infogan.matched_accuracy(conf)

    with torch.no_grad():
        g_in, codes = infogan.sample_latent(n, nz, 1, K, 0)
        mode = torch.cdist(G(g_in), centres).argmin(1)           # the Gaussian each sample lands in
        label = torch.randint(K, (n,))
        real = centres[label] + 0.1 * torch.randn(n, 2)
        return accuracy(codes["cat"][:, 0], mode), accuracy(D(real)[1]["cat"][:, 0].argmax(1), label)


def test_toy_categorical_code_is_recovered_with_lambda_1_and_not_with_0():
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster, and steady on a shared CPU
    with_info = [_toy_code_recovery(1.0, seed) for seed in (0, 1)]
    without = [_toy_code_recovery(0.0, seed) for seed in (0, 1)]
    for g_acc, q_acc in with_info:
        assert g_acc > 0.9 and q_acc > 0.9, with_info         # c picks the mode; Q classifies real data
    for g_acc, _ in without:
        assert g_acc < 0.45, without                          # near chance (0.25): G ignores c


def test_cli_logs_l_i_next_to_its_bound_and_resumes_exactly(tmp_path):
    flags = TINY_IG + ["--dataset-size", "128"]                          # 4 steps an epoch
    infogan.main(flags + ["--epochs", "2", "--out", "straight"])
    rows = read_metrics(tmp_path / "straight")
    header = list(rows[0])
    assert header.index("H_c") == header.index("L_I") + 1
    assert len(rows) == 8 and all(float(r["H_c"]) == pytest.approx(math.log(10)) for r in rows)
    assert all(float(r["L_I"]) <= math.log(10) for r in rows)
    assert all(float(r["nll_cont"]) > 0 for r in rows)
    accs = [r["code_acc"] for r in rows]
    assert [bool(a) for a in accs] == [i % 4 == 3 for i in range(8)]   # once an epoch
    assert all(0 <= float(a) <= 1 for a in accs if a)
    infogan.main(flags + ["--max-steps", "3", "--out", "split"])       # stops mid-epoch
    infogan.main(["--resume", "split", "--max-steps", "8"])
    split = read_metrics(tmp_path / "split")
    assert len(split) == 8
    for a, b in zip(rows, split):
        assert {k: v for k, v in a.items() if k != "images_per_s"} == \
               {k: v for k, v in b.items() if k != "images_per_s"}, a["step"]


def test_generate_writes_samples_and_the_figure_2_traversals(tmp_path):
    from PIL import Image

    infogan.main(TINY_IG + ["--cat-dim", "4", "--max-steps", "2", "--out", "run"])
    infogan.main(["--generate", "6", "--resume", "run"])
    (out,) = (tmp_path / "run").glob("generated-*")
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"{i:05d}.png" for i in range(6)] + ["grid.png", "traversal-c1.png",
                                                          "traversal-c2.png", "traversal-c3.png"]
    for name in ("traversal-c1.png", "traversal-c2.png", "traversal-c3.png"):
        with Image.open(out / name) as im:  # rows: c1 = 0..3; 10 columns; 16 px tiles, 2 px padding
            assert im.size == (2 + 10 * 18, 2 + 4 * 18), name
    with Image.open(tmp_path / "run" / "samples" / "final.png") as im:  # Fig. 2a: K x K
        assert im.size == (2 + 4 * 18, 2 + 4 * 18)


def test_learn_sigma_and_lambda_zero_from_the_command_line(tmp_path, monkeypatch):
    seen = []  # train's step hands --learn-sigma to D's and G's step: two info_loss calls a step
    info_loss = infogan.info_loss
    monkeypatch.setattr(infogan, "info_loss", lambda q, codes, learn_sigma=False:
                        (seen.append(learn_sigma), info_loss(q, codes, learn_sigma))[1])
    infogan.main(TINY_IG + ["--learn-sigma", "--max-steps", "1", "--out", "a"])
    assert seen == [True, True]
    infogan.main(TINY_IG + ["--info-weight", "0", "--n-cont", "0", "--max-steps", "1", "--out", "b"])
    assert seen == [True, True, False, False]
    assert read_metrics(tmp_path / "a")[-1]["nll_cont"]
    assert "nll_cont" not in read_metrics(tmp_path / "b")[0]
    with pytest.raises(common.UserError):
        infogan.main(["--resume", "a", "--learn-sigma", "--info-weight", "0.5"])


def test_cli_steps_d_then_g_each_on_its_own_fresh_latent(tmp_path, monkeypatch):
    events = []
    d_step, g_step = infogan.discriminator_step, infogan.generator_step
    monkeypatch.setattr(infogan, "discriminator_step", lambda G, D, opt, real, latent, *a:
                        (events.append(("D", latent[0].clone())), d_step(G, D, opt, real, latent, *a))[1])
    monkeypatch.setattr(infogan, "generator_step", lambda G, D, opt, latent, *a:
                        (events.append(("G", latent[0].clone())), g_step(G, D, opt, latent, *a))[1])
    infogan.main(TINY_IG + ["--max-steps", "3", "--out", "run"])
    assert [who for who, _ in events] == ["D", "G"] * 3        # G's step through the D just updated
    latents = [g_in for _, g_in in events]
    for a, b in itertools.combinations(latents, 2):
        assert not torch.equal(a[:, :62], b[:, :62])           # a new z for every step of each player
    for a, b in zip(latents[::2], latents[1::2]):
        assert not torch.equal(a[:, 62:], b[:, 62:])           # and new codes for G's step


def test_cli_h_c_counts_every_categorical_code(tmp_path):
    infogan.main(TINY_IG + ["--n-cat", "2", "--cat-dim", "4", "--max-steps", "2", "--out", "run"])
    rows = read_metrics(tmp_path / "run")
    assert all(float(r["H_c"]) == pytest.approx(2 * math.log(4)) for r in rows)   # H(c1, c2) = 2 ln K
    assert all(float(r["L_I"]) <= 2 * math.log(4) for r in rows)


def test_code_acc_is_the_matched_accuracy_of_q_on_each_epochs_real_images(tmp_path, monkeypatch):
    preds, labels, seen = [], [], []
    d_step, batches, matched = infogan.discriminator_step, common.Run.batches, infogan.matched_accuracy

    def spy_d_step(*a):
        metrics, q_real = d_step(*a)
        preds.append(q_real[:, 0].argmax(1))                   # Q's code for each real image
        return metrics, q_real

    def spy_batches(self, *a, **k):
        for real, y in batches(self, *a, **k):
            labels.append(y)
            yield real, y

    monkeypatch.setattr(infogan, "discriminator_step", spy_d_step)
    monkeypatch.setattr(common.Run, "batches", spy_batches)
    monkeypatch.setattr(infogan, "matched_accuracy", lambda conf: (seen.append(conf.clone()), matched(conf))[1])
    infogan.main(TINY_IG + ["--cat-dim", "4", "--dataset-size", "128", "--epochs", "2", "--out", "run"])
    assert len(seen) == 2 and len(preds) == len(labels) == 8            # 4 steps an epoch
    for epoch, conf in enumerate(seen):                                 # this epoch's images only
        pred, label = torch.cat(preds[4 * epoch:4 * epoch + 4]), torch.cat(labels[4 * epoch:4 * epoch + 4])
        expected = torch.zeros_like(conf)
        expected.index_put_((pred, label.long()), torch.ones_like(pred), accumulate=True)
        assert conf.shape == (4, 10) and torch.equal(conf, expected), epoch
    accs = [float(r["code_acc"]) for r in read_metrics(tmp_path / "run") if r["code_acc"]]
    assert accs == [pytest.approx(matched(c)) for c in seen]


def test_traversals_come_from_g_in_eval_mode(tmp_path, monkeypatch):
    # BN on running statistics, as every sample: a traversal must not depend on the rest of its grid
    args, G, _, _, _ = _nets(cat_dim=4)
    for _ in range(3):                                         # running statistics away from (0, 1)
        G(_latent(args, 16)[0] * 3 + 1)
    saved = []
    monkeypatch.setattr(common, "save_grid", lambda images, path, nrow=None: saved.append(images))
    torch.manual_seed(1)
    infogan.write_traversals(G, args, tmp_path, "cpu")
    assert len(saved) == 3 and not G.training
    torch.manual_seed(1)
    dims = (args.nz, args.n_cat, args.cat_dim, args.n_cont, "cpu")
    with torch.no_grad():
        for sweep, images in zip([None, 0, 1], saved):
            assert torch.allclose(images, G(infogan.grid_latent(*dims, sweep=sweep)), atol=1e-6), sweep
