"""wgan.py against its paper: the loss, the clip, the schedule, the toy check.

Clipping after every critic update, a critic step returning the EM estimate and raising it,
Alg. 1's order with a fresh batch per critic step and W averaged over them, the critic schedule
asked with the generator iteration, RMSProp's smoothing, the critic's and generator's layers, no
output tanh on the MLP, the two-Gaussian toy check of the EM estimate, step isolation, init and
default widths, the paper's constant-width generator without BN against the official one, exact
resume of every remaining step, a bad image size and a missing MNIST folder each refused with its
own sentence, steps under `--amp` in bf16 and close to fp32.
"""
import pytest
import torch
import torch.nn as nn
from conftest import (
    TINY,
    amp_and_fp32_runs,
    assert_close_to_fp32_but_not_equal,
    assert_layers_ran_in_bf16_only_under_amp,
    read_metrics,
)

import common
import wgan


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _nets(arch="dcgan"):
    torch.manual_seed(0)
    args = wgan.parse_args(["--image-size", "16", "--ngf", "8", "--ndf", "8", "--nz", "10",
                            "--g-arch", arch])
    return wgan.build(args, 3, torch.device("cpu"))


def test_paper_defaults_and_rmsprop():
    args = wgan.parse_args([])
    assert (args.lr, args.clip, args.n_critic, args.batch_size) == (5e-5, 0.01, 5, 64)
    assert args.critic_schedule == "official" and args.g_arch == "dcgan" and args.nz == 100
    G, critic, opt_G, opt_C = wgan.build(args, 3, torch.device("cpu"))
    for opt in (opt_G, opt_C):
        assert type(opt) is torch.optim.RMSprop and opt.defaults["lr"] == 5e-5
        assert opt.defaults["momentum"] == 0


def test_losses_are_the_dual_form_with_the_stated_sign():
    r, f = torch.tensor([3.0, 1.0]), torch.tensor([-1.0, 0.0])
    assert wgan.critic_loss(r, f) == f.mean() - r.mean() == -2.5   # minimised: -(E f(x) - E f(G(z)))
    assert wgan.generator_loss(f) == -f.mean() == 0.5
    # unbounded: no sigmoid or log anywhere, linear in the scores
    assert wgan.critic_loss(1000 * r, 1000 * f) == 1000 * wgan.critic_loss(r, f)


def test_the_critic_output_is_unbounded():
    _, critic, _, _ = _nets()
    assert not any(isinstance(m, (nn.Sigmoid, nn.Tanh)) for m in critic.modules())
    with torch.no_grad():
        for p in critic.parameters():
            p.fill_(1.0)
    assert critic(torch.ones(2, 3, 16, 16)).abs().min() > 1.0


def test_critic_iters_follows_the_official_schedule():
    for it in (0, 1, 24, 500, 1000, 1500):
        assert wgan.critic_iters(it, 5) == 100
    for it in (25, 26, 100, 250, 499, 501, 999):          # every 500th only
        assert wgan.critic_iters(it, 5) == 5
    assert wgan.critic_iters(501, 7) == 7


def test_every_critic_parameter_is_clipped_after_each_update():
    G, critic, _, opt_C = _nets()
    assert any(p.abs().max() > 0.01 for p in critic.parameters())  # N(0, 0.02) init and BN scales
    for _ in range(4):
        real = torch.rand(8, 3, 16, 16) * 2 - 1
        before = _params(critic)
        wgan.critic_step(G, critic, opt_C, real, nz=10, clip=0.01)
        assert not _same(_params(critic), before)
        for p in critic.parameters():                                # BN scale and shift included
            assert p.min() >= -0.01 and p.max() <= 0.01


def test_clip_weights_clamps_and_leaves_small_weights_alone():
    net = nn.Linear(3, 3)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.5, -0.5, 0.001]] * 3))
    wgan.clip_weights(net, 0.01)
    assert torch.equal(net.weight[0], torch.tensor([0.01, -0.01, 0.001]))


@pytest.mark.parametrize("arch", ["dcgan", "nobn", "nobn-constant", "mlp"])
def test_generator_architectures(arch):
    G, critic, _, _ = _nets(arch)
    x = G(torch.randn(4, 10))
    assert x.shape == (4, 3, 16, 16) and critic(x).shape == (4,)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in G.modules())
    assert has_bn == (arch == "dcgan")
    if arch == "mlp":
        linears = [m for m in G.modules() if isinstance(m, nn.Linear)]
        assert len(linears) == 4 and linears[0].out_features == 512


def _convs(net):
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def _n_params(net):
    return sum(p.numel() for p in net.parameters())


def test_nobn_constant_is_the_papers_generator_and_nobn_the_official_one():
    # Sec. 4.3: "without batch normalization and with a constant number of filters"; Fig. 6:
    # "the number of parameters is therefore reduced by a bit more than an order of magnitude".
    dcgan, nobn, const = (wgan.Generator(arch) for arch in ("dcgan", "nobn", "nobn-constant"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in const.modules())
    assert [(m.in_channels, m.out_channels) for m in _convs(const)] == \
        [(100, 64), (64, 64), (64, 64), (64, 64), (64, 3)]              # ngf at every stage
    assert [m.out_channels for m in _convs(nobn)] == [m.out_channels for m in _convs(dcgan)] == \
        [512, 256, 128, 64, 3]                                          # official DCGAN_G_nobn
    assert (_n_params(dcgan), _n_params(nobn), _n_params(const)) == (3_576_704, 3_574_784, 302_080)
    assert 10 < _n_params(dcgan) / _n_params(const) < 15
    with torch.no_grad():
        for p in const.parameters():
            p.mul_(10)                                                  # large pre-activations
    x = const(torch.randn(4, 100))
    assert x.shape == (4, 3, 64, 64) and x.abs().max() <= 1 and x.abs().max() > 0.99  # tanh


def test_weights_init_and_default_widths():
    # Official code: ngf = ndf = 64; convs N(0, 0.02), BN scale N(1, 0.02), BN shift 0.
    args = wgan.parse_args([])
    assert (args.ngf, args.ndf, args.image_size) == (64, 64, 64)
    torch.manual_seed(0)
    G, critic, _, _ = wgan.build(args, 3, torch.device("cpu"))
    assert [m.out_channels for m in _convs(G)] == [512, 256, 128, 64, 3]
    assert [m.out_channels for m in _convs(critic)] == [64, 128, 256, 512, 1]
    for net in (G, critic):
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(0.5)                                            # so the init must set each
        net.apply(wgan.weights_init)
        w = torch.cat([m.weight.flatten() for m in _convs(net)])
        assert abs(w.mean().item()) < 0.001 and abs(w.std().item() - 0.02) < 0.001
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        scale = torch.cat([m.weight for m in bns])
        assert abs(scale.mean().item() - 1) < 0.005 and abs(scale.std().item() - 0.02) < 0.005
        assert all(m.bias.abs().max() == 0 for m in bns)


def test_critic_and_generator_steps_do_not_touch_each_other():
    G, critic, opt_G, opt_C = _nets()
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    g0 = _params(G)
    wgan.critic_step(G, critic, opt_C, real, nz=10, clip=0.01)
    assert _same(_params(G), g0) and all(p.grad is None for p in G.parameters())
    c0, c_grads = _params(critic), [p.grad.clone() for p in critic.parameters()]
    wgan.generator_step(G, critic, opt_G, 8, 10, torch.device("cpu"))
    assert _same(_params(critic), c0) and not _same(_params(G), g0)
    assert _same([p.grad for p in critic.parameters()], c_grads)
    assert all(p.requires_grad for p in critic.parameters())


def _toy_estimate(d, steps=400, seed=0):
    """Train a clipped MLP critic on N(0, I2) (real) vs N((d, d)/√2, I2) (fake); return the
    EM estimate E f(x) - E f(y) on fresh samples."""
    torch.manual_seed(seed)
    critic = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.RMSprop(critic.parameters(), lr=5e-3)
    shift = torch.tensor([d, d]) / 2 ** 0.5                 # distance d between the means
    for _ in range(steps):
        real, fake = torch.randn(256, 2), torch.randn(256, 2) + shift
        loss = wgan.critic_loss(critic(real), critic(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
        wgan.clip_weights(critic, 0.1)
    with torch.no_grad():
        real, fake = torch.randn(20000, 2), torch.randn(20000, 2) + shift
        return (critic(real).mean() - critic(fake).mean()).item()


def test_toy_estimate_grows_with_the_distance_and_vanishes_at_zero():
    w = [_toy_estimate(d) for d in (0.0, 1.0, 2.0, 4.0)]
    assert w[1] < w[2] < w[3], w
    assert abs(w[0]) < 0.1 * w[3], w


def test_cli_runs_logs_the_estimate_and_resumes_exactly(tmp_path):
    flags = TINY + ["--critic-schedule", "constant"]  # 5 critic batches per step, 8 per epoch
    wgan.main(flags + ["--max-steps", "6", "--out", "straight"])
    rows = read_metrics(tmp_path / "straight")
    assert [r["step"] for r in rows] == [str(s) for s in range(1, 7)]
    assert all(r["W_estimate"] and r["loss_G"] for r in rows)
    assert rows[-1]["epoch"] == "3.75"  # 30 critic batches of 8 per epoch
    wgan.main(flags + ["--max-steps", "3", "--out", "split"])    # stops mid-epoch
    wgan.main(["--resume", "split", "--max-steps", "6"])
    resumed = read_metrics(tmp_path / "split")
    assert [r["step"] for r in resumed] == [r["step"] for r in rows]  # steps 4-6 were trained
    for a, b in zip(rows, resumed):
        assert (a["W_estimate"], a["loss_G"], a["epoch"]) == (b["W_estimate"], b["loss_G"], b["epoch"]), a["step"]


def test_official_schedule_and_epochs_from_the_command_line(tmp_path):
    # 256 images in batches of 32: 8 critic batches an epoch, so the first generator iteration
    # (100 critic iterations) spans 12.5 epochs and --epochs 2 ends after it.
    wgan.main(TINY + ["--epochs", "2", "--g-arch", "mlp", "--out", "run"])
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 1 and ckpt["batches_drawn"] == 100
    assert (tmp_path / "run" / "samples" / "final.png").exists()


def test_cli_runs_the_papers_generator_without_batch_norm(tmp_path):
    wgan.main(TINY + ["--g-arch", "nobn-constant", "--critic-schedule", "constant",
                      "--max-steps", "2", "--out", "run"])
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    G = ckpt["modules"]["G"]
    assert ckpt["step"] == 2 and ckpt["args"]["g_arch"] == "nobn-constant"
    assert not any("running_mean" in k for k in G)                      # no BatchNorm in G
    assert [w.shape[:2] for w in G.values()] == [(100, 8), (8, 8), (8, 3)]  # ngf = 8 throughout
    assert (tmp_path / "run" / "samples" / "final.png").exists()


def test_bad_image_size_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        wgan.parse_args(["--image-size", "24"])
    assert e.value.code == 2
    assert "error: --image-size must be a power of two, 16 or more (got 24)" in capsys.readouterr().err


def test_a_missing_mnist_folder_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(common.UserError, match=r"^mnist was not found in nowhere; pass --download to fetch it"):
        wgan.main(TINY + ["--dataset", "mnist", "--data-root", "nowhere"])
    assert sorted(p.name for p in tmp_path.iterdir()) == []          # no run folder left behind


def test_a_generator_step_raises_the_critics_score_of_new_samples():
    G, critic, opt_G, _ = _nets()
    for group in opt_G.param_groups:
        group["lr"] = 1e-3                     # one visible first-order step
    critic.eval()                              # a fixed function: BN on running statistics
    z = torch.randn(64, 10)
    torch.manual_seed(3)
    before = critic(G(z)).mean()
    wgan.generator_step(G, critic, opt_G, 64, 10, torch.device("cpu"))
    assert critic(G(z)).mean() > before


def test_rmsprop_keeps_torchs_smoothing_as_the_official_code():
    # The official code calls optim.RMSprop(params, lr=...): alpha 0.99, not centred, no
    # weight decay (not Keras/TF's rho = 0.9).
    _, _, opt_G, opt_C = _nets()
    for opt in (opt_G, opt_C):
        d = opt.defaults
        assert (d["alpha"], d["centered"], d["weight_decay"], d["eps"]) == (0.99, False, 0, 1e-8)


def test_a_critic_step_returns_the_estimate_and_then_raises_it():
    # G maps every z to (-1, -1); the real batch is all (1, 1); f(v) = 0.5 v_0 to start with.
    G, critic = nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 1, bias=False), nn.Flatten(0))
    with torch.no_grad():
        G.weight.zero_()
        G.bias.fill_(-1.0)
        critic[0].weight.copy_(torch.tensor([[0.5, 0.0]]))
    opt_C = torch.optim.RMSprop(critic.parameters(), lr=0.01)
    real = torch.ones(4, 2)
    W = wgan.critic_step(G, critic, opt_C, real, nz=2, clip=1.0)
    assert W.item() == pytest.approx(1.0)                 # E f(x) - E f(G(z)) = 0.5 - (-0.5)
    with torch.no_grad():
        after = (critic(real).mean() - critic(G(torch.zeros(4, 2))).mean()).item()
    assert after > 1.0                                    # the critic ascends the estimate


def _spy_on_training(monkeypatch):
    """Record the critic and generator steps (and the critic batches) that train() makes."""
    events, reals, Ws = [], [], []
    critic_step, generator_step = wgan.critic_step, wgan.generator_step

    def spy_critic(G, critic, opt_C, real, *a, **k):
        events.append("C")
        reals.append(real.clone())
        Ws.append(critic_step(G, critic, opt_C, real, *a, **k).item())
        return torch.tensor(Ws[-1])

    def spy_generator(*a, **k):
        events.append("G")
        return generator_step(*a, **k)

    monkeypatch.setattr(wgan, "critic_step", spy_critic)
    monkeypatch.setattr(wgan, "generator_step", spy_generator)
    return events, reals, Ws


def test_training_follows_alg1_order_with_a_fresh_batch_per_critic_step(tmp_path, monkeypatch):
    events, reals, Ws = _spy_on_training(monkeypatch)
    wgan.main(TINY + ["--critic-schedule", "constant", "--n-critic", "2", "--max-steps", "3",
                      "--g-arch", "mlp", "--out", "run"])
    assert "".join(events) == "CCG" * 3                   # n_critic critic steps, then one G step
    assert all(not torch.equal(a, b) for a, b in zip(reals, reals[1:]))
    rows = read_metrics(tmp_path / "run")
    for i, row in enumerate(rows):                        # W: the mean over the critic steps
        assert float(row["W_estimate"]) == pytest.approx(sum(Ws[2 * i:2 * i + 2]) / 2, rel=1e-5)


def test_the_official_schedule_is_asked_with_the_generator_iteration(tmp_path, monkeypatch):
    events, _, _ = _spy_on_training(monkeypatch)
    asked = []

    def critic_iters(gen_iteration, n_critic):
        asked.append((gen_iteration, n_critic))
        return 1 + gen_iteration % 3
    monkeypatch.setattr(wgan, "critic_iters", critic_iters)
    wgan.main(TINY + ["--n-critic", "2", "--max-steps", "3", "--g-arch", "mlp", "--out", "run"])
    assert asked == [(0, 2), (1, 2), (2, 2)]              # 0-based, as in the official code
    assert "".join(events) == "CG" + "CCG" + "CCCG"


def test_the_mlp_generator_has_no_output_tanh():
    # Official MLP_G ends on a Linear: its samples are not squashed into [-1, 1].
    G = wgan.Generator("mlp", nz=10, channels=1, image_size=16)
    last = [m for m in G.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(3.0)
    assert torch.equal(G(torch.randn(2, 10)), torch.full((2, 1, 16, 16), 3.0))


def test_critic_and_generator_layers_are_dcgans():
    # Critic: conv + LeakyReLU(0.2) first (no BN), then conv + BN + LeakyReLU(0.2) per stage;
    # DCGAN G: ReLU inside (BN before each), tanh out.
    critic = wgan.Critic(ndf=8, channels=3, image_size=32)
    kinds = [type(m).__name__ for m in critic.net]
    assert kinds == ["Conv2d", "LeakyReLU"] + ["Conv2d", "BatchNorm2d", "LeakyReLU"] * 2 + ["Conv2d"]
    assert all(m.negative_slope == 0.2 for m in critic.net if isinstance(m, nn.LeakyReLU))
    G = wgan.Generator("dcgan", nz=10, ngf=8, channels=3, image_size=32)
    kinds = [type(m).__name__ for m in G.net]
    assert kinds == ["ConvTranspose2d", "BatchNorm2d", "ReLU"] * 3 + ["ConvTranspose2d", "Tanh"]



def test_amp_steps_run_in_bf16_and_stay_close_to_fp32(one_thread):
    # two generator iterations of two critic iterations each, in fp32 and with --amp (bf16
    # autocast on the CPU): every layer of G and the critic computes in bf16, and the logged
    # values (of a clipped critic: small numbers, so compared relatively) stay within 2% of fp32
    runs = amp_and_fp32_runs(wgan.main, TINY + ["--critic-schedule", "constant", "--n-critic", "2",
                                                "--max-steps", "2"])
    assert_layers_ran_in_bf16_only_under_amp(runs, ("Conv2d", "ConvTranspose2d"))
    assert_close_to_fp32_but_not_equal(runs, ("W_estimate", "loss_G"), floor=1e-4)
