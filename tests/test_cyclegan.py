"""cyclegan.py against its paper: networks, losses, image pool, lr schedule, step isolation,
augmentation, and the command line (shapes and a folder), resume included.

Paper defaults, the appendix's generator, PatchGAN map sizes and the 70x70 receptive field,
N(0, 0.02) init, the LSGAN, cycle and identity losses against their closed forms, the lr
schedule, the image pool storing each new image in the place of the one it returns, all four
networks initialised, LeakyReLU 0.2 in D, the generators updated before each D on its own
domain's fakes, paired errors as per-pixel means over the whole split, step isolation, which D
judges each domain and which G each cycle and identity term goes through, the generator loss as
Eq. 3 plus the identity term, no gradient through the round trip under `--no-cycle`, random crop
and flip, exact resume with the pools and the lr schedule, `--epochs` stopping inside the
schedule and a resume finishing it, folder data with augmentation and its test images
translated, bad flags and refused resumes, test images served once each in order.
"""
import pytest
import torch
import torch.nn as nn
from conftest import read_metrics

import common
import cyclegan

# 32 px (the PatchGAN needs 24), 4 images a domain at batch 1 (4 steps an epoch), tiny networks.
CYC = ["--dataset-size", "4", "--image-size", "32", "--batch-size", "1", "--device", "cpu", "--log-every", "1",
       "--ngf", "8", "--ndf", "8", "--n-blocks", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread is faster


def _params(*nets):
    return [p.detach().clone() for net in nets for p in net.parameters()]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _nets(**flags):
    torch.manual_seed(0)
    argv = ["--image-size", "32", "--ngf", "8", "--ndf", "8", "--n-blocks", "1"]
    for key, value in flags.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    return cyclegan.build(cyclegan.parse_args(argv), 3, torch.device("cpu"))


def _images(n=1, size=32, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_paper_defaults():
    args = cyclegan.parse_args([])
    assert (args.lr, args.beta1, args.beta2, args.batch_size) == (2e-4, 0.5, 0.999, 1)
    assert (args.lambda_cyc, args.lambda_idt, args.pool_size) == (10.0, 0.5, 50)
    assert (args.n_epochs, args.n_epochs_decay, args.epochs) == (100, 100, 200)
    assert (args.image_size, args.n_blocks, args.dataset_size, args.load_size) == (64, 6, 1000, 72)
    assert (args.ngf, args.ndf, args.no_cycle, args.augment) == (64, 64, False, "auto")
    assert cyclegan.parse_args(["--image-size", "128"]).n_blocks == 6   # App. 7.2: 6 blocks at 128 px
    big = cyclegan.parse_args(["--image-size", "256"])
    assert (big.n_blocks, big.load_size) == (9, 286)                    # 9 at 256; load 286, crop 256
    assert cyclegan.parse_args(["--dataset", "folder"]).dataset_size is None  # a folder: all its images
    G_AB, G_BA, D_A, D_B, opt_G, opt_D = cyclegan.build(args, 3, torch.device("cpu"))
    for opt, nets in ((opt_G, (G_AB, G_BA)), (opt_D, (D_A, D_B))):       # one Adam over each pair
        assert type(opt) is torch.optim.Adam and opt.defaults["betas"] == (0.5, 0.999)
        assert opt.defaults["lr"] == 2e-4
        assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for n in nets for p in n.parameters()}


def test_generator_keeps_the_shape_and_follows_the_appendix():
    G = cyclegan.Generator(3, ngf=8, n_blocks=2)
    for size in (24, 32, 64):
        x = _images(2, size)
        y = G(x)
        assert y.shape == x.shape and y.abs().max() <= 1
    norms = [m for m in G.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(not m.affine and not m.track_running_stats for m in norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in G.modules())
    assert sum(isinstance(m, cyclegan.ResidualBlock) for m in G.modules()) == 2
    pads = [m.padding for m in G.modules() if isinstance(m, nn.ReflectionPad2d)]
    assert pads.count((3, 3, 3, 3)) == 2 and pads.count((1, 1, 1, 1)) == 4   # c7s1 layers, 2 per block
    ups = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.kernel_size, m.stride, m.padding, m.output_padding, m.out_channels) for m in ups] == \
        [((3, 3), (2, 2), (1, 1), (1, 1), 16), ((3, 3), (2, 2), (1, 1), (1, 1), 8)]
    assert isinstance(G.net[-1], nn.Tanh) and isinstance(G.net[-2], nn.Conv2d)     # c7s1-3: no norm
    block = cyclegan.ResidualBlock(4)
    for conv in (m for m in block.modules() if isinstance(m, nn.Conv2d)):
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    x = torch.randn(1, 4, 8, 8)
    assert torch.equal(block(x), x)                                        # the skip connection


def _receptive_field(D):
    rf, jump = 1, 1
    for m in D.modules():
        if isinstance(m, nn.Conv2d):
            rf += (m.kernel_size[0] - 1) * jump
            jump *= m.stride[0]
    return rf


def test_patchgan_map_sizes_and_70x70_receptive_field():
    D = cyclegan.Discriminator(3, ndf=4)
    assert D(_images(1, 256)).shape == (1, 1, 30, 30)   # the paper's 30x30 map at 256 px
    assert D(_images(2, 64)).shape == (2, 1, 6, 6)
    assert D(_images(1, 24)).shape == (1, 1, 1, 1)      # the smallest size allowed
    assert _receptive_field(D) == 70
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert [m.stride[0] for m in convs] == [2, 2, 2, 1, 1] and convs[-1].out_channels == 1
    assert not isinstance(D.net[1], nn.InstanceNorm2d)  # no norm on C64
    assert not any(isinstance(m, (nn.Sigmoid, nn.Tanh)) for m in D.modules())
    acts = [m for m in D.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    assert len(acts) == 4 and all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in acts)
    # Measured: with the (global) instance norms taken out, the gradient of one output of the
    # map reaches exactly a 70x70 window of the input.
    for i, m in enumerate(D.net):
        if isinstance(m, nn.InstanceNorm2d):
            D.net[i] = nn.Identity()
    x = _images(1, 256).requires_grad_()
    D(x)[0, 0, 15, 15].backward()
    rows, cols = (x.grad[0].abs().sum(0) > 0).nonzero().unbind(1)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (70, 70)


def test_weights_init_is_normal_0_02():
    torch.manual_seed(0)
    G = cyclegan.Generator(3, ngf=64, n_blocks=1)
    G.apply(cyclegan.weights_init)
    w = G.net[4].weight                                  # d128: 128 x 64 x 3 x 3
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    assert all(m.bias.abs().max() == 0 for m in G.modules() if isinstance(m, nn.Conv2d))


def test_build_initialises_all_four_networks():
    for net in _nets()[:4]:                          # G_AB, G_BA, D_A, D_B; PyTorch's default differs
        convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        w = torch.cat([m.weight.flatten() for m in convs])
        assert abs(w.std().item() - 0.02) < 0.002
        assert all(m.bias.abs().max() == 0 for m in convs)


def test_lsgan_losses_match_their_closed_forms():
    r, f = torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 2.0]])
    # D: 0.5 * [mean (D(y) - 1)^2 + mean D(G(x))^2] = 0.5 * [(0 + 4)/2 + (0 + 4)/2] = 2
    assert cyclegan.lsgan_d_loss(r, f).item() == pytest.approx(2.0)
    assert cyclegan.lsgan_g_loss(f).item() == pytest.approx((1 + 1) / 2)      # mean (D(G(x)) - 1)^2
    ones, zeros = torch.ones(1, 1, 6, 6), torch.zeros(1, 1, 6, 6)
    assert cyclegan.lsgan_d_loss(ones, zeros) == 0 and cyclegan.lsgan_g_loss(ones) == 0  # the optimum
    assert cyclegan.lsgan_d_loss(zeros, ones) == 1        # halved: unhalved it would be 2
    assert cyclegan.lsgan_g_loss(zeros) == 1


def test_cycle_and_identity_losses_are_mean_absolute_errors():
    x = _images(2)
    for loss in (cyclegan.cycle_loss, cyclegan.identity_loss):
        assert loss(x, x) == 0
        assert loss(x + 0.25, x).item() == pytest.approx(0.25)
        assert loss(x, torch.zeros_like(x)).item() == pytest.approx(x.abs().mean().item())


def test_lr_factor_is_constant_then_decays_linearly_to_about_zero():
    factors = [cyclegan.lr_lambda(e, 100, 100) for e in range(200)]
    assert factors[:100] == [1.0] * 100
    assert factors[100] == pytest.approx(1 - 1 / 101) and factors[199] == pytest.approx(1 / 101)
    steps = [a - b for a, b in zip(factors[99:], factors[100:])]
    assert all(s == pytest.approx(1 / 101) for s in steps)  # linear
    assert cyclegan.lr_lambda(2, 3, 0) == 1.0               # no decay phase


def test_image_pool_holds_at_most_its_size_and_returns_old_images_half_the_time():
    torch.manual_seed(0)
    pool = cyclegan.ImagePool(10)
    images = torch.arange(2000.0).view(-1, 1, 1, 1)       # image i is the number i
    returned = []
    for i in range(0, 2000, 2):                            # batches of two
        out = pool.query(images[i:i + 2])
        assert out.shape == (2, 1, 1, 1) and len(pool.images) <= 10
        returned += out.flatten().tolist()
    assert returned[:10] == list(range(10))                # filling up: each new image comes back
    old = [r < i for i, r in enumerate(returned)]          # an image from an earlier query
    assert all(r <= i for i, r in enumerate(returned))
    assert 0.45 < sum(old[10:]) / len(old[10:]) < 0.55    # once full, about half are old
    assert len(pool.images) == 10 and len(set(returned)) < 2000
    state = pool.state_dict()
    again = cyclegan.ImagePool(10)
    again.load_state_dict(state)
    assert torch.equal(torch.stack(again.images), torch.stack(pool.images))
    x = _images(3)
    assert torch.equal(cyclegan.ImagePool(0).query(x), x)  # size 0: no history


def test_image_pool_stores_each_new_image_in_the_place_of_the_old_one_it_returns():
    torch.manual_seed(0)
    pool = cyclegan.ImagePool(4)
    pool.query(torch.arange(4.0).view(-1, 1, 1, 1))       # full: images 0..3
    for i in range(4, 400):
        before = [x.item() for x in pool.images]
        (out,) = pool.query(torch.tensor([[[[float(i)]]]])).flatten().tolist()
        now = [x.item() for x in pool.images]
        if out == i:                                        # the new image itself: the pool unchanged
            assert now == before
        else:                                               # an old one: swapped out for the new one
            assert out in before and out not in now and sorted(now) == sorted(b for b in before if b != out) + [i]
    assert min(x.item() for x in pool.images) >= 4         # every place was written again


def test_a_g_step_leaves_d_unchanged_and_a_d_step_leaves_g_unchanged():
    G_AB, G_BA, D_A, D_B, opt_G, opt_D = _nets()
    a, b = _images(1, seed=1), _images(1, seed=2)
    g0, d0 = _params(G_AB, G_BA), _params(D_A, D_B)
    fake_A, fake_B, terms = cyclegan.generator_step(G_AB, G_BA, D_A, D_B, opt_G, a, b)
    assert _same(_params(D_A, D_B), d0) and not _same(_params(G_AB), g0[:len(list(G_AB.parameters()))])
    assert all(p.grad is None and p.requires_grad for p in [*D_A.parameters(), *D_B.parameters()])
    assert not _same(_params(G_BA), g0[len(list(G_AB.parameters())):])
    assert not fake_A.requires_grad and fake_A.shape == a.shape
    g1, g1_grads = _params(G_AB, G_BA), [p.grad.clone() for p in [*G_AB.parameters(), *G_BA.parameters()]]
    cyclegan.discriminator_step(D_A, D_B, opt_D, a, b, fake_A, fake_B)
    assert _same(_params(G_AB, G_BA), g1) and not _same(_params(D_A, D_B), d0)
    assert _same([p.grad for p in [*G_AB.parameters(), *G_BA.parameters()]], g1_grads)  # no gradient either


@pytest.mark.parametrize("cycle, lambda_idt", [(True, 0.5), (False, 0.5), (True, 0.0), (False, 0.0)])
def test_the_generator_loss_is_eq_3_plus_the_identity_term(cycle, lambda_idt):
    G_AB, G_BA, D_A, D_B, opt_G, _ = _nets()
    _, _, t = cyclegan.generator_step(G_AB, G_BA, D_A, D_B, opt_G, _images(seed=1), _images(seed=2),
                                      lambda_cyc=10.0, lambda_idt=lambda_idt, cycle=cycle)
    expected = t["adv_AB"] + t["adv_BA"]
    if cycle:
        expected = expected + 10 * (t["cyc_A"] + t["cyc_B"])
    if lambda_idt:
        expected = expected + 5 * (t["idt_A"] + t["idt_B"])
    assert ("idt_A" in t) == (lambda_idt > 0) and t["cyc_A"] > 0   # the cycle error is always measured
    assert t["loss_G"].item() == pytest.approx(expected.item(), rel=1e-6)


class _Affine(nn.Module):
    """x -> scale * x + shift: stand-in networks whose outputs say which one ran."""

    def __init__(self, scale, shift):
        super().__init__()
        self.scale, self.shift = nn.Parameter(torch.tensor(scale)), nn.Parameter(torch.tensor(shift))

    def forward(self, x):
        return self.scale * x + self.shift


def test_each_term_goes_through_the_right_network():
    # G = G_AB: x -> x + 0.5; F = G_BA: x -> 2x; D_A (judges domain X = A) answers 0.25 and
    # D_B (judges Y = B) 0.75 whatever it sees. Swapping any two of them changes a term.
    G_AB, G_BA, D_A, D_B = _Affine(1.0, 0.5), _Affine(2.0, 0.0), _Affine(0.0, 0.25), _Affine(0.0, 0.75)
    opt_G = torch.optim.SGD([*G_AB.parameters(), *G_BA.parameters()], lr=0.0)
    a, b = torch.full((1, 3, 4, 4), 0.25), torch.full((1, 3, 4, 4), -0.25)
    fake_A, fake_B, t = cyclegan.generator_step(G_AB, G_BA, D_A, D_B, opt_G, a, b)
    assert torch.allclose(fake_B, a + 0.5) and torch.allclose(fake_A, 2 * b)  # G(x), F(y)
    expected = {"adv_AB": (0.75 - 1) ** 2,          # D_B judges G(x)
                "adv_BA": (0.25 - 1) ** 2,          # D_A judges F(y)
                "cyc_A": abs(2 * 0.75 - 0.25),      # ‖F(G(x)) - x‖₁, G(x) = 0.75
                "cyc_B": abs(-0.5 + 0.5 + 0.25),    # ‖G(F(y)) - y‖₁, F(y) = -0.5
                "idt_A": abs(2 * 0.25 - 0.25),      # ‖F(x) - x‖₁
                "idt_B": 0.5}                       # ‖G(y) - y‖₁
    assert {k: pytest.approx(t[k].item()) for k in expected} == expected

    # D_A and D_B now pass their input through: each must see its own domain's real and fakes.
    D_A, D_B = _Affine(1.0, 0.0), _Affine(1.0, 0.0)
    opt_D = torch.optim.SGD([*D_A.parameters(), *D_B.parameters()], lr=0.0)
    fake_A, fake_B = torch.full_like(a, 0.1), torch.full_like(b, 0.9)
    loss_A, loss_B = cyclegan.discriminator_step(D_A, D_B, opt_D, a, b, fake_A, fake_B)
    assert loss_A.item() == pytest.approx(0.5 * ((0.25 - 1) ** 2 + 0.1 ** 2))   # D_X: a against F(b)
    assert loss_B.item() == pytest.approx(0.5 * ((-0.25 - 1) ** 2 + 0.9 ** 2))  # D_Y: b against G(a)


def test_training_updates_the_generators_then_each_d_on_its_own_domains_fakes(monkeypatch):
    calls = []
    g_step, d_step = cyclegan.generator_step, cyclegan.discriminator_step

    def spy_g(G_AB, G_BA, D_A, D_B, opt_G, real_A, real_B, *a):
        fake_A, fake_B, terms = g_step(G_AB, G_BA, D_A, D_B, opt_G, real_A, real_B, *a)
        calls.append(("G", real_A, real_B, fake_A, fake_B))
        return fake_A, fake_B, terms

    def spy_d(D_A, D_B, opt_D, real_A, real_B, fake_A, fake_B, *a):
        calls.append(("D", real_A, real_B, fake_A, fake_B))
        return d_step(D_A, D_B, opt_D, real_A, real_B, fake_A, fake_B, *a)

    monkeypatch.setattr(cyclegan, "generator_step", spy_g)
    monkeypatch.setattr(cyclegan, "discriminator_step", spy_d)
    # --augment on: both domains are cropped from 36 px to 32; pools of 50 return each new fake
    cyclegan.main(CYC + ["--augment", "on", "--max-steps", "2", "--n-epochs", "1", "--n-epochs-decay", "1",
                         "--out", "run"])
    assert [c[0] for c in calls] == ["G", "D", "G", "D"]
    for g, d in (calls[:2], calls[2:]):
        assert all(x.shape == (1, 3, 32, 32) for x in g[1:] + d[1:])
        assert g[1] is d[1] and g[2] is d[2]                        # the same real a and b
        assert torch.equal(d[3], g[3]) and torch.equal(d[4], g[4])  # D_A gets F(b), D_B gets G(a)


def test_paired_errors_are_mean_absolute_errors_per_pixel_over_the_whole_split():
    A, B = common.load_unpaired("shapes", image_size=16, size=40, split="test")  # two batches: 32 + 8
    a, b = A.images.float() / 127.5 - 1, B.images.float() / 127.5 - 1
    blank = _Affine(0.0, 0.0)                                       # G_BA: every image 0
    err_AB, err_BA, err_id = cyclegan.paired_errors(nn.Identity(), blank, A, B).tolist()
    assert err_id == pytest.approx((a - b).abs().mean().item(), rel=1e-5)
    assert err_AB == pytest.approx(err_id, rel=1e-5)                # G_AB(a) = a against b
    assert err_BA == pytest.approx(a.abs().mean().item(), rel=1e-5)  # G_BA(b) = 0 against a


def test_no_cycle_means_no_gradient_through_the_round_trip():
    # With D blind (zero weights: a constant output) and no identity term, the adversarial loss
    # has no gradient, so G moves only if the cycle term is in the loss.
    for cycle in (True, False):
        G_AB, G_BA, D_A, D_B, opt_G, _ = _nets()
        for p in [*D_A.parameters(), *D_B.parameters()]:
            nn.init.zeros_(p)
        before = _params(G_AB, G_BA)
        cyclegan.generator_step(G_AB, G_BA, D_A, D_B, opt_G, _images(seed=1), _images(seed=2),
                                lambda_idt=0.0, cycle=cycle)
        assert _same(_params(G_AB, G_BA), before) == (not cycle)


def test_random_crop_flip_takes_crops_and_mirrors():
    torch.manual_seed(0)
    x = torch.arange(2 * 2 * 9 * 9, dtype=torch.float32).view(2, 2, 9, 9)
    seen = set()
    for _ in range(40):
        out = cyclegan.random_crop_flip(x, 6)
        assert out.shape == (2, 2, 6, 6)
        for i in range(2):
            matches = [(t, left, f) for t in range(4) for left in range(4) for f in (False, True)
                       if torch.equal(out[i], (lambda c: c.flip(-1) if f else c)(x[i, :, t:t + 6, left:left + 6]))]
            assert len(matches) == 1
            seen.add(matches[0])
    assert {f for _, _, f in seen} == {False, True} and len({s[:2] for s in seen}) > 8


def test_shapes_run_resumes_exactly_with_its_pools_and_lr_schedule(tmp_path, capsys):
    # 4 steps an epoch, 1 epoch at 2e-4 then 2 of decay; pools of 2 fill in the first steps.
    flags = CYC + ["--pool-size", "2", "--n-epochs", "1", "--n-epochs-decay", "2"]
    cyclegan.main(flags + ["--out", "straight"])
    rows = read_metrics(tmp_path / "straight")
    assert [r["step"] for r in rows] == [str(s) for s in range(1, 13)]
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == pytest.approx([2e-4] * 4 + [2e-4 * 2 / 3] * 4 + [2e-4 / 3] * 4)
    assert [bool(r["test_err_AB"]) for r in rows] == [s % 4 == 0 for s in range(1, 13)]  # after each epoch
    for name in ("config.json", "checkpoint.pt", "samples/final.png", "samples/epoch-003.png"):
        assert (tmp_path / "straight" / name).is_file(), name

    cyclegan.main(flags + ["--max-steps", "6", "--out", "split"])   # stops in the middle of epoch 2
    mid = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert mid["step"] == 6 and mid["modules"]["sched_G"]["last_epoch"] == 1
    assert mid["modules"]["pool_A"]["images"].shape == (2, 3, 32, 32)
    cyclegan.main(["--resume", "split", "--max-steps", "100"])
    resumed = read_metrics(tmp_path / "split")
    assert len(resumed) == len(rows)
    for a, b in zip(rows, resumed):
        assert a == {**b, "images_per_s": a["images_per_s"]}, a["step"]
    ends = [torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)["modules"] for run in ("straight", "split")]
    for name in ("G_AB", "G_BA", "D_A", "D_B", "pool_A", "pool_B"):
        assert all(torch.equal(ends[0][name][k], ends[1][name][k]) for k in ends[0][name]), name
    assert ends[0]["sched_D"]["last_epoch"] == ends[1]["sched_D"]["last_epoch"] == 3

    capsys.readouterr()
    result = cyclegan.main(["--generate", "5", "--resume", "straight"])
    out = capsys.readouterr().out
    assert "paired test error on 5 shapes" in out and "identity mapping" in out
    assert 0 < result["test_err_AB"] < 2 and 0 < result["test_err_identity"] < 2
    folder, = (tmp_path / "straight").glob("translated-*")
    assert sorted(p.name for p in (folder / "A2B").iterdir()) == [f"{i:05d}.png" for i in range(5)]
    assert (folder / "A2B-000.png").is_file() and (folder / "B2A-000.png").is_file()


def test_epochs_stops_inside_the_schedule_and_resume_finishes_it(tmp_path, capsys):
    flags = CYC + ["--dataset-size", "2", "--n-epochs", "1", "--n-epochs-decay", "1", "--no-cycle"]
    cyclegan.main(flags + ["--epochs", "1", "--out", "run"])
    assert "training to epoch 1 of the 2-epoch schedule" in capsys.readouterr().out
    cyclegan.main(["--resume", "run", "--epochs", "2"])
    rows = read_metrics(tmp_path / "run")
    assert [float(r["lr"]) for r in rows] == pytest.approx([2e-4, 2e-4, 1e-4, 1e-4])
    r = {k: float(v) for k, v in rows[-1].items() if v}
    assert r["loss_G"] == pytest.approx(r["adv_AB"] + r["adv_BA"] + 5 * (r["idt_A"] + r["idt_B"]), rel=1e-5)
    assert r["cyc_A"] > 0                                       # --no-cycle: measured, not trained


def _png_folder(root, counts, size=40):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = torch.randint(0, 256, (size, size + 8, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / name / f"{i}.png")


def test_folder_data_trains_with_augmentation_and_translates_its_test_images(tmp_path, capsys):
    _png_folder(tmp_path / "d", {"trainA": 5, "trainB": 3, "testA": 3, "testB": 2})
    flags = CYC[2:] + ["--dataset", "folder", "--workers", "0"]   # every image of the folder
    cyclegan.main(flags + ["--data-root", "d", "--max-steps", "6", "--out", "run"])
    config = (tmp_path / "run" / "config.json").read_text()
    assert '"load_size": 36' in config and '"dataset_size": null' in config
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 6 and rows[-1]["epoch"] == "1.2" and "test_err_AB" not in rows[0]  # 5 A images an epoch
    capsys.readouterr()
    cyclegan.main(["--generate", "10", "--resume", "run"])
    folder, = (tmp_path / "run").glob("translated-*")
    assert len(list((folder / "A2B").iterdir())) == 3 and len(list((folder / "B2A").iterdir())) == 2
    assert "paired" not in capsys.readouterr().out

    _png_folder(tmp_path / "bare", {"trainA": 2, "trainB": 2})   # no testA/, testB/
    cyclegan.main(flags + ["--data-root", "bare", "--max-steps", "1", "--out", "bare-run"])
    capsys.readouterr()
    cyclegan.main(["--generate", "2", "--resume", "bare-run"])
    assert "has no testA/ and testB/; using its first training images" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--dataset", "mnist"], ["--image-size", "20"], ["--image-size", "30"],
                                  ["--epochs", "201"], ["--load-size", "32"], ["--lambda-idt", "-1"]])
def test_bad_flags_are_refused(argv):
    with pytest.raises(SystemExit):
        cyclegan.parse_args(argv)


def test_missing_folder_and_resume_with_another_network_are_refused(tmp_path):
    with pytest.raises(common.UserError, match="does not exist"):
        cyclegan.main(CYC + ["--dataset", "folder", "--data-root", "nowhere", "--out", "x"])
    cyclegan.main(CYC + ["--max-steps", "1", "--out", "run"])
    with pytest.raises(common.UserError, match="--n-blocks was 1"):
        cyclegan.main(["--resume", "run", "--n-blocks", "2"])


def test_in_order_serves_every_test_image_once_in_order():
    A, B = common.load_unpaired("shapes", image_size=16, size=5, split="test")
    batches = [x for x, _ in A.in_order(2)]
    assert [len(x) for x in batches] == [2, 2, 1]
    assert torch.equal(torch.cat(batches), A.images.float() / 127.5 - 1)
    assert torch.equal(A.factors["class"], B.factors["class"])  # the paired split
