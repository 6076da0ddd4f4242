"""vaegan.py against its paper: the losses, which network each loss trains, Dis_l, the
pixel-VAE baseline, gating, reconstruction grids, exact resume.

Paper defaults and RMSProp, the 64 px architecture, Dis_l the 4th conv's output, sizes made and
refused, the KL and the feature loss against their closed forms, the three-term L_GAN, Alg. 1's
encoder and decoder losses, no GAN path to the encoder, each network's gradient exactly that of
its own loss, `--no-recon-fakes`, the pixel VAE baseline, a step changing all three networks,
the gate rule and a gated-off network left unchanged, the reconstruction grid's layout,
reconstructions decoding the mean in eval mode, held-out images never trained on, metrics and
the gate reading the step's own logits, BN after every hidden dense layer, the CLI, exact resume
with the default flags and two variants.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import TINY_RUN, read_metrics

import common
import vaegan

TINY_VG = TINY_RUN + ["--width", "4", "--batch-size", "16", "--dataset-size", "64"]  # 4 steps an epoch


def _setup(*flags, size=16, seed=0):
    torch.manual_seed(seed)
    args = vaegan.parse_args(["--image-size", str(size), "--width", "4", "--nz", "8", *flags])
    E, Dec, D, opts = vaegan.build(args, 3, torch.device("cpu"))
    x = torch.rand(6, 3, size, size, generator=torch.Generator().manual_seed(seed + 1)) * 2 - 1
    return args, E, Dec, D, opts, x


def _reference(E, Dec, D, x, args, seed):
    """Alg. 1's losses written the naive way: one graph, z *attached* to the decoder, the same
    random draws as vaegan.forward. Gradients of these are what each network should receive."""
    torch.manual_seed(seed)
    mu, logvar = E(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape)
    z_p = torch.randn(mu.shape)
    B = len(x)
    x_dec = Dec(torch.cat([z, z_p]))
    logits, feats = D(torch.cat([x, x_dec]))
    r, t, p = logits.split(B)
    kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)).mean()
    llike = 0.5 * ((feats[B:2 * B] - feats[:B].detach()) ** 2).flatten(1).sum(1).mean()
    gan = -(F.logsigmoid(r).mean() + torch.log(1 - torch.sigmoid(p)).mean()
            + (0 if args.no_recon_fakes else torch.log(1 - torch.sigmoid(t)).mean()))
    return kl, llike, gan


def _grad(loss, net):
    return torch.autograd.grad(loss, list(net.parameters()), retain_graph=True, allow_unused=True)


def _close(a, b, tol=1e-5):
    return all(torch.allclose(x, y, atol=tol, rtol=1e-4) for x, y in zip(a, b))


def _step_grads(E, Dec, D, x, args, seed):
    torch.manual_seed(seed)
    vaegan.set_gradients(vaegan.forward(E, Dec, D, x, args), E, Dec, D)
    return [[p.grad.clone() for p in net.parameters()] for net in (E, Dec, D) if net is not None]


# --- defaults and networks ---------------------------------------------------------------------
def test_paper_defaults_and_rmsprop():
    args = vaegan.parse_args([])
    assert (args.lr, args.batch_size, args.nz, args.image_size, args.width) == (3e-4, 64, 128, 64, 32)
    assert args.recon == "dis" and args.gamma == 1e-6 and not args.no_recon_fakes and not args.gate
    assert (args.equilibrium, args.margin) == (0.68, 0.35)
    _, _, _, opts = vaegan.build(vaegan.parse_args(["--image-size", "16", "--width", "2"]), 3, torch.device("cpu"))
    assert set(opts) == {"Enc", "Dec", "Dis"}
    for opt in opts.values():
        assert type(opt) is torch.optim.RMSprop and opt.defaults["lr"] == 3e-4
        assert opt.defaults["alpha"] == 0.9 and opt.defaults["momentum"] == 0


def _convs(net, kind=(nn.Conv2d, nn.ConvTranspose2d)):
    return [m for m in net.modules() if isinstance(m, kind)]


def test_the_paper_architecture_at_64_px():
    E, Dec, D = vaegan.Encoder(), vaegan.Decoder(), vaegan.Discriminator()
    assert [m.out_channels for m in _convs(E)] == [64, 128, 256]
    assert [m.out_features for m in E.modules() if isinstance(m, nn.Linear)] == [2048, 128, 128]
    assert Dec.dense[0].out_features == 256 * 8 * 8
    assert [m.out_channels for m in _convs(Dec)] == [256, 128, 32, 3]
    assert isinstance(Dec.convs[-1], nn.Tanh)
    assert [m.out_channels for m in _convs(D)] == [32, 128, 256, 256]
    assert [m.out_features for m in D.modules() if isinstance(m, nn.Linear)] == [512, 1]
    for net in (E, Dec, D):
        assert all(m.kernel_size == (5, 5) for m in _convs(net))
    # BN after every conv but Dis's first and the decoder's output conv
    assert sum(isinstance(m, nn.BatchNorm2d) for m in E.modules()) == 3
    assert sum(isinstance(m, nn.BatchNorm2d) for m in Dec.modules()) == 3
    assert sum(isinstance(m, nn.BatchNorm2d) for m in D.modules()) == 3
    # and BN on every hidden dense layer: Enc's 2048, Dec's projection, Dis's 512
    for dense, bn in ((E.dense, 2048), (Dec.dense, 256 * 8 * 8), (D.head[3:], 512)):
        assert isinstance(dense[1], nn.BatchNorm1d) and dense[1].num_features == bn
    assert not any(isinstance(m, nn.Sigmoid) for m in D.modules())
    D.eval()
    logit, features = D(torch.zeros(2, 3, 64, 64))
    assert logit.shape == (2,) and features.shape == (2, 256, 8, 8)


def test_dis_l_is_the_output_of_the_fourth_conv():
    torch.manual_seed(0)
    D = vaegan.Discriminator(image_size=16, width=4)
    seen = []
    _convs(D, nn.Conv2d)[3].register_forward_hook(lambda m, i, o: seen.append(o))
    _, features = D(torch.randn(3, 3, 16, 16))
    assert torch.equal(features, seen[0]) and features.shape == (3, 32, 2, 2)


@pytest.mark.parametrize("size", [16, 24, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_for_every_supported_size(size, channels):
    E = vaegan.Encoder(8, channels, size, width=2)
    Dec = vaegan.Decoder(8, channels, size, width=2)
    D = vaegan.Discriminator(channels, size, width=2)
    mu, logvar = E(torch.randn(3, channels, size, size))
    assert mu.shape == logvar.shape == (3, 8)
    x = Dec(mu)
    assert x.shape == (3, channels, size, size) and x.abs().max() <= 1
    logit, features = D(x)
    assert logit.shape == (3,) and features.shape == (3, 16, size // 8, size // 8)


def test_sizes_the_architecture_cannot_make_are_refused(capsys):
    for bad in ("20", "8", "100"):
        with pytest.raises(SystemExit) as e:
            vaegan.parse_args(["--image-size", bad])
        assert e.value.code == 2
    assert "multiple of 8" in capsys.readouterr().err


def test_batch_size_one_is_refused_before_its_batchnorm_fails_and_two_trains(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        vaegan.main(TINY_VG + ["--batch-size", "1", "--out", "one"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and not (tmp_path / "one").exists()
    assert err.splitlines()[-1].endswith(
        "error: --batch-size must be at least 2 (got 1): the BatchNorm1d after the encoder's, the decoder's "
        "and Dis's dense layers normalises each unit over the batch, which takes two images or more")
    vaegan.main(TINY_VG + ["--batch-size", "2", "--max-steps", "1", "--out", "two"])
    assert (tmp_path / "two" / "checkpoint.pt").exists()


# --- the losses ----------------------------------------------------------------------------------
def test_kl_is_the_closed_form_mean_over_the_batch_and_zero_at_the_prior():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(5, 7), torch.ones(5, 7))
    expected = torch.distributions.kl_divergence(q, p).sum(1).mean()
    assert torch.allclose(vaegan.kl_loss(mu, logvar), expected, atol=1e-5)
    assert vaegan.kl_loss(mu, logvar) >= 0 and vaegan.kl_loss(3 * mu, -logvar) >= 0
    assert vaegan.kl_loss(torch.zeros(4, 7), torch.zeros(4, 7)) == 0
    # a mean over the batch, not a sum: two copies of the batch give the same value
    assert torch.allclose(vaegan.kl_loss(mu.repeat(2, 1), logvar.repeat(2, 1)), vaegan.kl_loss(mu, logvar))


def test_feature_loss_is_half_the_squared_distance_per_image_with_a_detached_target():
    torch.manual_seed(0)
    fake = torch.randn(4, 3, 2, 2, requires_grad=True)
    real = torch.randn(4, 3, 2, 2, requires_grad=True)
    loss = vaegan.feature_recon_loss(fake, real)
    assert torch.allclose(loss, 0.5 * ((fake - real) ** 2).sum() / 4)
    loss.backward()
    assert real.grad is None                                    # Dis_l(x) is a target, not moved
    assert torch.allclose(fake.grad, (fake - real).detach() / 4)
    assert vaegan.feature_recon_loss(real, real) == 0


def test_discriminator_loss_is_the_negated_three_term_l_gan():
    r, t, p = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0]), torch.tensor([-0.2, 1.0])
    s = torch.sigmoid
    expected = -(torch.log(s(r)).mean() + torch.log(1 - s(p)).mean() + torch.log(1 - s(t)).mean())
    assert torch.allclose(vaegan.discriminator_loss(r, t, p), expected)
    without = -(torch.log(s(r)).mean() + torch.log(1 - s(p)).mean())          # --no-recon-fakes
    assert torch.allclose(vaegan.discriminator_loss(r, None, p), without)
    # sign: a Dis that is right has a small loss, a fooled one a large loss; stable on logits
    assert vaegan.discriminator_loss(torch.full((3,), 20.0), torch.full((3,), -20.0), torch.full((3,), -20.0)) < 1e-6
    assert vaegan.discriminator_loss(torch.full((3,), -9.0), torch.full((3,), 9.0), torch.full((3,), 9.0)) > 25
    big = torch.tensor([500.0])
    assert torch.isfinite(vaegan.discriminator_loss(-big, big, big))


def test_encoder_and_decoder_losses_follow_algorithm_1():
    kl, llike, gan = torch.tensor(2.0), torch.tensor(300.0), torch.tensor(1.5)
    assert vaegan.encoder_loss(kl, llike) == 302.0
    assert torch.allclose(vaegan.decoder_loss(llike, gan, 1e-2), torch.tensor(3.0 - 1.5))


# --- which loss trains which network ---------------------------------------------------------------
def test_the_gan_term_has_no_path_to_the_encoder():
    args, E, Dec, D, _, x = _setup()
    out = vaegan.forward(E, Dec, D, x, args)
    out["L_GAN"].backward(retain_graph=True)       # the GAN term alone, however it is differentiated
    assert all(p.grad is None for p in E.parameters())
    assert all(p.grad is not None for p in Dec.parameters())     # it does train the decoder
    out["loss_Dec"].backward()
    assert all(p.grad is None for p in E.parameters())


def test_each_network_gets_exactly_its_own_loss_gradient():
    args, E, Dec, D, _, x = _setup("--gamma", "0.37")
    kl, llike, gan = _reference(E, Dec, D, x, args, seed=5)
    g_E, g_Dec, g_D = _step_grads(E, Dec, D, x, args, seed=5)
    # encoder: ∇(L_prior + L_llike), and the GAN gradient that naive backprop would add is absent
    assert _close(g_E, _grad(kl + llike, E))
    assert not _close(g_E, _grad(kl + llike + gan, E))
    # decoder: γ ∇L_llike - ∇L_GAN, the weighted sum of the two separately taken gradients
    expected = [0.37 * a - b for a, b in zip(_grad(llike, Dec), _grad(gan, Dec))]
    assert _close(g_Dec, expected)
    assert not _close(g_Dec, [-b for b in _grad(gan, Dec)])      # γ L_llike does reach the decoder
    # discriminator: ∇L_GAN only; the feature loss, which depends on Dis, gives it nothing
    assert _close(g_D, _grad(gan, D))
    assert not _close(g_D, _grad(gan + llike, D))


def test_the_encoder_gradient_ignores_everything_after_dis_l():
    args, E, Dec, D, _, x = _setup()
    before = _step_grads(E, Dec, D, x, args, seed=3)
    with torch.no_grad():                         # a different head: same Dis_l, different L_GAN
        for p in D.head.parameters():
            p.add_(torch.randn_like(p))
    after = _step_grads(E, Dec, D, x, args, seed=3)
    assert _close(before[0], after[0], tol=0)     # encoder: bitwise the same
    assert not _close(before[1], after[1])        # decoder and Dis see the new L_GAN
    assert not _close(before[2], after[2])


def test_no_recon_fakes_leaves_reconstructions_out_of_l_gan():
    args, E, Dec, D, _, x = _setup("--no-recon-fakes")
    kl, llike, gan = _reference(E, Dec, D, x, args, seed=2)
    torch.manual_seed(2)
    out = vaegan.forward(E, Dec, D, x, args)
    assert torch.allclose(out["L_GAN"], gan, atol=1e-6)
    real, _, prior = out["logits"]
    assert torch.allclose(out["L_GAN"], vaegan.discriminator_loss(real, None, prior))


def test_pixel_mode_is_a_plain_vae_of_the_same_networks():
    args, E, Dec, D, opts, x = _setup("--recon", "pixel")
    assert D is None and set(opts) == {"Enc", "Dec"}
    _, E2, Dec2, _, _, _ = _setup()
    assert [p.shape for p in E.parameters()] == [p.shape for p in E2.parameters()]
    assert [p.shape for p in Dec.parameters()] == [p.shape for p in Dec2.parameters()]
    torch.manual_seed(4)
    mu, logvar = E(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape)
    vae = vaegan.kl_loss(mu, logvar) + 0.5 * ((Dec(z) - x) ** 2).flatten(1).sum(1).mean()
    g_E, g_Dec = _step_grads(E, Dec, None, x, args, seed=4)
    assert _close(g_E, _grad(vae, E)) and _close(g_Dec, _grad(vae, Dec))


def test_a_step_changes_all_three_networks():
    args, E, Dec, D, opts, x = _setup()
    before = [[p.detach().clone() for p in n.parameters()] for n in (E, Dec, D)]
    vaegan.set_gradients(vaegan.forward(E, Dec, D, x, args), E, Dec, D)
    for opt in opts.values():
        opt.step()
    for net, old in zip((E, Dec, D), before):
        assert all(not torch.equal(a, b) for a, b in zip(net.parameters(), old))


def test_gate_follows_the_official_rule():
    eq, m = 0.68, 0.35
    balanced = torch.zeros(8)                                    # both costs ln 2
    assert vaegan.gate(balanced, balanced, eq, m) == (True, True)
    # Dis far ahead (costs near 0): Dis waits, the decoder trains
    assert vaegan.gate(torch.full((8,), 6.0), torch.full((8,), -6.0), eq, m) == (True, False)
    # Dis far behind (costs large): the decoder waits, Dis trains
    assert vaegan.gate(torch.full((8,), -2.0), torch.full((8,), 2.0), eq, m) == (False, True)
    # both rules fire (one cost near 0, the other large): both train
    assert vaegan.gate(torch.full((8,), 6.0), torch.full((8,), 2.0), eq, m) == (True, True)


@pytest.mark.parametrize("gate_flags, off", [
    (["--equilibrium", "100", "--margin", "1"], "Dis"),       # every cost < 99: Dis "far ahead"
    (["--equilibrium", "0.01", "--margin", "0.005"], "Dec"),  # every cost > 0.015: Dis "far behind"
])
def test_a_network_the_gate_switches_off_is_left_unchanged(gate_flags, off, monkeypatch, tmp_path):
    built = {}

    def build(*a, **k):                            # keep the networks and their initial weights
        E, Dec, D, opts = real_build(*a, **k)
        built.update(nets={"Enc": E, "Dec": Dec, "Dis": D}, opts=opts,
                      before={n: [p.detach().clone() for p in m.parameters()]
                              for n, m in (("Enc", E), ("Dec", Dec), ("Dis", D))})
        return E, Dec, D, opts

    real_build = vaegan.build
    monkeypatch.setattr(vaegan, "build", build)
    vaegan.main(TINY_VG + ["--gate", *gate_flags, "--max-steps", "2", "--out", "run"])
    rows = read_metrics(tmp_path / "run")
    assert [float(r[f"{off}_updated"]) for r in rows] == [0.0, 0.0]      # the gate did switch it off
    for name, net in built["nets"].items():
        same = all(torch.equal(a, b) for a, b in zip(net.parameters(), built["before"][name]))
        assert same == (name == off), name                               # the others did train
    assert not built["opts"][off].state                                  # its optimiser never stepped


# --- reconstructions ------------------------------------------------------------------------------
def test_reconstruction_grid_puts_inputs_above_their_reconstructions(monkeypatch):
    _, E, Dec, _, _, _ = _setup()
    x = torch.rand(10, 3, 16, 16) * 2 - 1
    saved = {}
    monkeypatch.setattr(common, "save_grid", lambda images, path, nrow=None: saved.update(images=images, nrow=nrow))
    mse = vaegan.save_reconstructions(E, Dec, x, "unused.png")
    rec = vaegan.reconstruct(E, Dec, x)
    assert torch.equal(rec, vaegan.reconstruct(E, Dec, x))      # z = μ, eval mode: deterministic
    assert E.training and Dec.training                          # modes restored
    images, nrow = saved["images"], saved["nrow"]
    assert nrow == 8 and images.shape == (32, 3, 16, 16)         # two row pairs of 8
    assert torch.equal(images[0:8], x[0:8]) and torch.equal(images[8:16], rec[0:8])
    assert torch.equal(images[16:18], x[8:10]) and torch.equal(images[24:26], rec[8:10])
    assert (images[18:24] == -1).all() and (images[26:32] == -1).all()
    assert torch.allclose(mse, ((rec - x) ** 2).mean())


def test_reconstructions_decode_the_mean_in_eval_mode():
    _, E, Dec, _, _, _ = _setup()
    x = torch.rand(10, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        E.logvar.bias.fill_(4.0)                                 # log σ² far from μ
    rec = vaegan.reconstruct(E, Dec, x)
    E.eval()
    Dec.eval()
    with torch.no_grad():
        mu, logvar = E(x)
        assert torch.allclose(rec, Dec(mu), atol=1e-6)            # z = μ, BN's running statistics
        assert not torch.allclose(rec, Dec(logvar), atol=1e-2)
        E.train()
        Dec.train()
        assert not torch.allclose(rec, Dec(E(x)[0]), atol=1e-2)  # not this batch's statistics


def test_held_out_images_are_never_trained_on():
    args = vaegan.parse_args(TINY_VG)
    args.channels = 3                                            # (train sets it from the data)
    held = vaegan.held_out(args, 16, "cpu")
    train = common.load_dataset("shapes", image_size=16, channels=3, size=args.dataset_size)
    (seen, _), = train.batches(len(train), 0, args.seed)
    assert held.shape == (16, 3, 16, 16)
    distance = (held.float()[:, None] - seen.float()[None]).abs().flatten(2).amax(2)  # (16, 64)
    assert distance.min() > 0


@pytest.mark.parametrize("extra", [[], ["--no-recon-fakes"]], ids=["both-fakes", "no-recon-fakes"])
def test_logged_metrics_and_the_gate_read_the_steps_own_logits(extra, monkeypatch, tmp_path):
    outs, gated = [], []
    real_forward, real_gate = vaegan.forward, vaegan.gate

    def forward(*a, **k):
        outs.append(real_forward(*a, **k))
        return outs[-1]

    def gate(real_logits, fake_logits, *a):
        gated.append((real_logits, fake_logits))
        return real_gate(real_logits, fake_logits, *a)

    monkeypatch.setattr(vaegan, "forward", forward)
    monkeypatch.setattr(vaegan, "gate", gate)
    vaegan.main(TINY_VG + ["--gate", *extra, "--max-steps", "1", "--out", "run"])
    (row,), (out,), ((g_real, g_fake),) = read_metrics(tmp_path / "run"), outs, gated
    real, recon, prior = (t.detach() for t in out["logits"])
    # the gate weighs the fakes that are in L_GAN: both kinds, or the prior samples alone
    assert torch.equal(g_real, real)
    assert torch.equal(g_fake, prior if extra else torch.cat([recon, prior]))
    expected = {"D_x": torch.sigmoid(real).mean(), "D_x_tilde": torch.sigmoid(recon).mean(),
                "D_x_p": torch.sigmoid(prior).mean(), "L_GAN": out["L_GAN"], "recon_mse": out["recon_mse"]}
    for key, value in expected.items():
        assert float(row[key]) == pytest.approx(value.item(), rel=1e-5), key


# --- the command line -----------------------------------------------------------------------------
def test_cli_trains_writes_reconstructions_and_generates(tmp_path):
    result = vaegan.main(TINY_VG + ["--max-steps", "3", "--out", "run"])
    run = tmp_path / "run"
    rows = read_metrics(run)
    assert len(rows) == 3
    for key in ("L_prior", "L_llike", "L_GAN", "loss_Dec", "recon_mse", "D_x", "D_x_tilde", "D_x_p"):
        assert all(r[key] for r in rows), key
    for name in ("samples/final.png", "samples/reconstructions.png", "checkpoint.pt"):
        assert (run / name).is_file(), name
    assert result["heldout_recon_mse"] > 0
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert set(ckpt["modules"]) == {"E", "Dec", "D", "opt_Enc", "opt_Dec", "opt_Dis"}
    vaegan.main(["--generate", "10", "--resume", "run"])
    (out,) = run.glob("generated-*")
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"{i:05d}.png" for i in range(10)] + ["grid.png", "reconstructions.png"]


def test_cli_pixel_vae_baseline(tmp_path):
    vaegan.main(TINY_VG + ["--recon", "pixel", "--max-steps", "3", "--out", "run"])
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 3 and all(r["L_prior"] and r["L_llike"] and r["recon_mse"] for r in rows)
    assert "L_GAN" not in rows[0] and "D_x" not in rows[0]
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert set(ckpt["modules"]) == {"E", "Dec", "opt_Enc", "opt_Dec"}
    assert (tmp_path / "run" / "samples" / "reconstructions.png").is_file()
    vaegan.main(["--generate", "4", "--resume", "run"])
    (out,) = (tmp_path / "run").glob("generated-*")
    assert (out / "reconstructions.png").is_file()


@pytest.mark.parametrize("extra", [[], ["--gate", "--no-recon-fakes"], ["--recon", "pixel"]],
                         ids=["alg1", "gate-no-recon-fakes", "pixel"])
def test_cli_resumes_exactly(extra, tmp_path):
    flags = TINY_VG + extra                        # 4 steps an epoch: the split is mid-epoch 1
    vaegan.main(flags + ["--max-steps", "6", "--out", "straight"])
    vaegan.main(flags + ["--max-steps", "3", "--out", "split"])
    vaegan.main(["--resume", "split", "--max-steps", "6"])
    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split")
    assert len(a) == len(b) == 6                   # a row per step
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "images_per_s"} == \
               {k: v for k, v in rb.items() if k != "images_per_s"}, ra["step"]
    if "--gate" in extra:                          # the fraction of steps each network was updated
        assert all(float(r["Dec_updated"]) in (0, 1) and float(r["Dis_updated"]) in (0, 1) for r in a)
