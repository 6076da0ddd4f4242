"""began.py against its paper: the losses, the k_t controller, M_global, the autoencoder D,
step isolation, the lr-decay rule, exact resume of k_t, the command line.

The spec's update_k number, k_t in [0, 1] under extreme inputs, both controllers and M_global
against numbers worked by hand, M_global >= L(x) >= 0, the L1 loss, D an autoencoder with no
normalisation layer and ELU only, linearly growing filters, nearest upsampling, skip
connections, D's update independent of the fake batch when k = 0, each step updating only its
own network, G's gradient through both G(z) and D(G(z)) and a G step following it,
z ~ U(-1, 1), the affine FC and output layers, the skip's nearest-neighbour h0, D updated before
G with fresh latents and M_global of the step's own losses, the stall rule at exactly the
tolerance and the lr schedule, exact resume of k_t and the lr-decay state, the command line,
`--generate`, `losses.png`.
"""
import math

import pytest
import torch
import torch.nn as nn
from conftest import TINY_RUN, read_metrics

import began

TINY_B = TINY_RUN + ["--n-filters", "8", "--nz", "8", "--nh", "8"]


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _nets(skip=False, size=16, vanishing=False):
    torch.manual_seed(0)
    args = began.parse_args(["--image-size", str(size), "--n-filters", "8", "--nz", "8", "--nh", "8"]
                            + (["--skip"] if skip else [])
                            + ["--vanishing-residual" if vanishing else "--no-vanishing-residual"])
    return began.build(args, 3, torch.device("cpu"))


def test_paper_defaults():
    args = began.parse_args([])
    # γ = 0.7, the top of the paper's range: at its main setting 0.5, G collapses on simple data
    # (the docstring's evidence); λ_k and k_0 are the paper's.
    assert (args.gamma, args.lambda_k, args.k0) == (0.7, 0.001, 0.0)
    assert 0.3 <= args.gamma <= 0.7
    assert (args.n_filters, args.nz, args.nh, args.skip) == (128, 64, 64, False)
    assert (args.lr, args.beta1, args.beta2, args.batch_size, args.image_size) == (1e-4, 0.9, 0.999, 16, 64)
    assert args.lr_decay == "stall" and args.dataset == "shapes" and args.lr_floor == 2e-5
    _, _, opt_G, opt_D = _nets()
    for opt in (opt_G, opt_D):   # the port's AdamOptimizer(lr): TensorFlow's betas and epsilon
        assert type(opt) is torch.optim.Adam and opt.defaults["betas"] == (0.9, 0.999)
        assert opt.defaults["eps"] == 1e-8
    assert began.parse_args(["--beta1", "0.5"]).beta1 == 0.5      # the value the port declares


# --- the controller, the measure, the losses -------------------------------------------------
def test_update_k_gives_the_spec_number():
    k = began.update_k(0.5, 0.5, 0.2, 0.05, 0.001)   # 0.5 + 0.001 (0.5 * 0.2 - 0.05)
    assert type(k) is float and k == pytest.approx(0.50005, abs=1e-12)
    assert began.update_k(0.5, 0.5, 0.2, 0.2, 0.001) == pytest.approx(0.5 - 0.0001, abs=1e-12)  # G losing: k falls
    assert began.update_k(0.3, 0.5, 0.2, 0.1, 0.001) == pytest.approx(0.3, abs=1e-12)  # at equilibrium: k stays


@pytest.mark.parametrize("k, real, fake, lambda_k, expected", [
    (0.5, 1e30, 0.0, 0.001, 1.0), (0.5, 0.0, 1e30, 0.001, 0.0),        # huge losses
    (1.0, 10.0, 0.0, 1.0, 1.0), (0.0, 0.0, 10.0, 1.0, 0.0),            # already at the bounds
    (0.999, 1.0, 0.0, 0.5, 1.0), (0.001, 0.0, 1.0, 0.5, 0.0),           # one step over the edge
    (0.5, math.inf, 0.0, 0.001, 1.0), (0.5, 0.0, math.inf, 0.001, 0.0),  # infinite losses
])


def test_k_stays_in_the_unit_interval_under_extreme_inputs(k, real, fake, lambda_k, expected):
    assert began.update_k(k, 0.5, real, fake, lambda_k) == expected
    on_device = began.update_k(torch.tensor(k), 0.5, torch.tensor(real), torch.tensor(fake), lambda_k)
    assert on_device.item() == expected


@pytest.mark.parametrize("k, gamma, real, fake, lambda_k, k_next, m_global", [
    # γL(x) = 0.1, γL(x) - L(G(z)) = 0.05: k = 0.5 + 0.001 * 0.05; M = 0.2 + 0.05
    (0.5, 0.5, 0.2, 0.05, 0.001, 0.50005, 0.25),
    # γL(x) = 0.28, 0.28 - 0.1 = 0.18: k = 0.2 + 0.1 * 0.18 = 0.218; M = 0.4 + 0.18
    (0.2, 0.7, 0.4, 0.1, 0.1, 0.218, 0.58),
    # γL(x) = 0.075, 0.075 - 0.125 = -0.05: k = 0.05 - 0.01 * 0.05 = 0.0495; M = 0.25 + |-0.05|
    (0.05, 0.3, 0.25, 0.125, 0.01, 0.0495, 0.3),
    # γL(x) = 0.2, 0.2 - 0.6 = -0.4: k = 0.3 - 0.4 < 0, clipped to 0; M = 0.5 + |-0.4|
    (0.3, 0.4, 0.5, 0.6, 1.0, 0.0, 0.9),
    # γL(x) = 0.6, 0.6 - 0.2 = 0.4: k = 0.9 + 0.5 * 0.4 = 1.1, clipped to 1; M = 1.0 + 0.4
    (0.9, 0.6, 1.0, 0.2, 0.5, 1.0, 1.4),
    # at the equilibrium γL(x) = L(G(z)) = 0.15: k stays; M = L(x) alone
    (0.6, 0.5, 0.3, 0.15, 1.0, 0.6, 0.3),
])
def test_both_controllers_and_measures_give_the_worked_numbers(k, gamma, real, fake, lambda_k, k_next, m_global):
    # k_{t+1} = clip(k_t + λ_k (γ L(x) - L(G(z))), 0, 1) and M_global = L(x) + |γ L(x) - L(G(z))|,
    # worked by hand above; on Python numbers (a float) and on tensors (the training loop's case)
    host = began.update_k(k, gamma, real, fake, lambda_k)
    device = began.update_k(torch.tensor(k), gamma, torch.tensor(real), torch.tensor(fake), lambda_k)
    assert type(host) is float and host == pytest.approx(k_next, abs=1e-12)
    assert device.dtype == torch.float32 and device.item() == pytest.approx(k_next, abs=1e-6)
    m_host = began.convergence_measure(real, fake, gamma)
    assert type(m_host) is float and m_host == pytest.approx(m_global, abs=1e-12)
    m_device = began.convergence_measure(torch.tensor(real), torch.tensor(fake), gamma)
    assert m_device.item() == pytest.approx(m_global, abs=1e-6)


def test_convergence_measure_closed_form_and_bounds():
    assert began.convergence_measure(0.2, 0.05, 0.5) == pytest.approx(0.2 + 0.05)  # fake too good
    assert began.convergence_measure(0.2, 0.15, 0.5) == pytest.approx(0.2 + 0.05)  # fake too bad
    assert began.convergence_measure(0.2, 0.1, 0.5) == pytest.approx(0.2)          # at equilibrium
    assert type(began.convergence_measure(0.2, 0.1, 0.5)) is float
    g = torch.Generator().manual_seed(1)
    for real, fake in (torch.rand(100, 2, generator=g) * 3).tolist():
        assert began.convergence_measure(real, fake, 0.5) >= real >= 0


def test_ae_loss_is_the_mean_absolute_pixel_error():
    x = torch.randn(4, 3, 8, 8)
    recon = torch.randn(4, 3, 8, 8)
    loss = began.ae_loss(x, recon)
    assert loss.shape == () and torch.allclose(loss, (x - recon).abs().mean())
    assert began.ae_loss(x, x) == 0
    assert began.ae_loss(x, x + 2) == pytest.approx(2.0)                 # L1 (η = 1), not L2: 4
    assert began.ae_loss(x.bfloat16(), recon.bfloat16()).dtype == torch.float32


def test_d_loss_sign():
    real, fake = torch.tensor(0.3), torch.tensor(0.2)
    assert began.d_loss(real, fake, torch.tensor(0.0)) == real           # k = 0: reconstruction only
    assert began.d_loss(real, fake, torch.tensor(0.5)) == pytest.approx(0.3 - 0.5 * 0.2)


def test_stall_rule():
    assert not began.stalled(5.0, math.inf, 0.01)   # the first window has nothing to compare with
    assert not began.stalled(0.98, 1.0, 0.01)       # 2% lower: progress
    assert began.stalled(0.995, 1.0, 0.01)          # 0.5% lower: stalled
    assert began.stalled(1.2, 1.0, 0.01)            # higher: stalled
    assert not began.stalled(0.995, 1.0, 0.0)       # tol 0: any decrease is progress


def test_a_window_exactly_tol_below_the_previous_one_is_progress():
    # "not at least tol lower" stalls: exactly tol lower is at least tol lower (binary-exact numbers)
    assert not began.stalled(0.75, 1.0, 0.25) and began.stalled(0.75 + 2**-20, 1.0, 0.25)


def test_lr_factor_at_the_end_of_each_window():
    state = {"window_sum": torch.tensor(20.0), "previous_mean": math.inf}   # window 1: mean 2.0
    assert began.lr_factor(state, "stall", 10, 0.01) == 1.0                 # nothing to compare with
    assert state["previous_mean"] == 2.0 and state["window_sum"] == 0       # the next window starts
    state["window_sum"] += 19.0                                             # mean 1.9: 5% better
    assert began.lr_factor(state, "stall", 10, 0.01) == 1.0
    state["window_sum"] += 18.9                                             # mean 1.89: 0.5% better
    assert began.lr_factor(state, "stall", 10, 0.01) == 0.5 and state["previous_mean"] == pytest.approx(1.89)
    state["window_sum"] += 100.0
    assert began.lr_factor(state, "fixed", 10, 0.01) == 0.5 and state["window_sum"] == 0
    state["window_sum"] += 100.0                                            # M_global way up
    assert began.lr_factor(state, "none", 10, 0.01) == 1.0 and state["window_sum"] == 0


# --- the networks ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_d_is_an_autoencoder_and_g_its_decoder(size, channels):
    G = began.Generator(nh=8, n=8, channels=channels, image_size=size)
    D = began.Discriminator(nh=8, n=8, channels=channels, image_size=size)
    z = began.sample_z(5, 8, "cpu")
    assert z.min() >= -1 and z.max() <= 1
    x = G(z)
    assert x.shape == (5, channels, size, size) and D(x).shape == x.shape
    assert D.encoder(x).shape == (5, 8)
    # G has the decoder's architecture, but its own weights
    assert [p.shape for p in G.parameters()] == [p.shape for p in D.decoder.parameters()]
    assert not set(map(id, G.parameters())) & set(map(id, D.parameters()))


def test_z_is_uniform_on_minus_one_to_one():
    torch.manual_seed(0)
    z = began.sample_z(4000, 8, "cpu")
    assert z.min() < -0.99 and z.max() > 0.99 and abs(z.mean().item()) < 0.02
    assert z.std().item() == pytest.approx(2 / math.sqrt(12), rel=0.02)       # U(-1, 1), not N(0, 1)


def test_fc_layers_and_the_output_conv_have_no_nonlinearity():
    # FC to h, FC to h0 and the last conv are affine: with weight 0 and bias -3, -3 comes out
    # (an ELU would give about -0.95, a tanh about -0.995).
    torch.manual_seed(0)
    D = began.Discriminator(nh=8, n=8, image_size=16)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    seen = {}
    D.decoder.stages[0].register_forward_pre_hook(lambda module, inputs: seen.update(h0=inputs[0]))
    with torch.no_grad():
        for layer in (D.encoder.fc, D.decoder.fc, D.decoder.out):
            layer.weight.zero_()
            layer.bias.fill_(-3.0)
        assert torch.equal(D.encoder(x), torch.full((2, 8), -3.0))           # h
        assert torch.equal(D(x), torch.full_like(x, -3.0))                   # the image: no tanh
    assert torch.equal(seen["h0"], torch.full((2, 8, 8, 8), -3.0))          # the 8x8xn map h0


@pytest.mark.parametrize("vanishing", [False, True])
def test_no_normalisation_anywhere_and_elu_only(vanishing):
    for skip in (False, True):
        G, D, _, _ = _nets(skip, size=32, vanishing=vanishing)
        modules = list(G.modules()) + list(D.modules())
        assert not any("Norm" in type(m).__name__ for m in modules)   # batch, instance, group, layer norm
        acts = [m for m in modules if type(m).__module__ == "torch.nn.modules.activation"]
        assert acts and all(isinstance(m, nn.ELU) for m in acts)
        convs = sum(isinstance(m, nn.Conv2d) for m in modules)
        assert sum(isinstance(m, nn.ELU) for m in modules) == convs - 2  # all but the two output convs


def test_filters_grow_linearly_and_sampling_is_strided_down_nearest_up():
    D = began.Discriminator(nh=8, n=8, image_size=64)
    convs = [m for m in D.encoder.body.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [8, 8, 8, 8, 16, 16, 16, 24, 24, 24, 32, 32]
    assert [m.stride[0] for m in convs] == [1, 1, 1, 2, 1, 1, 2, 1, 1, 2, 1, 1]  # stride-2 sub-sampling
    assert all(m.kernel_size == (3, 3) for m in convs)
    assert D.encoder.fc.in_features == 32 * 8 * 8                                # 4n at 8x8
    assert all(m.out_channels == 8 for m in D.decoder.stages.modules() if isinstance(m, nn.Conv2d))
    assert D.decoder.up.mode == "nearest" and D.decoder.up.scale_factor == 2
    assert not any(isinstance(m, (nn.ConvTranspose2d, nn.MaxPool2d, nn.AvgPool2d)) for m in D.modules())


def test_skip_connections_concatenate_h0():
    G = began.Generator(nh=8, n=8, image_size=32, skip=True)
    assert [s[0].conv.in_channels for s in G.stages] == [8, 16, 16]   # h0 joins after each up-sampling
    assert G(torch.zeros(2, 8)).shape == (2, 3, 32, 32)
    assert [s[0].conv.in_channels for s in began.Generator(nh=8, n=8, image_size=32).stages] == [8, 8, 8]
    # h0 reaches the last stage directly: with the earlier stages zeroed, the output still
    # depends on h with skips, and does not without.
    h = torch.randn(2, 8)
    for skip in (True, False):
        torch.manual_seed(0)
        G = began.Generator(nh=8, n=8, image_size=32, skip=skip)
        with torch.no_grad():
            for p in list(G.stages[0].parameters()) + list(G.stages[1].parameters()):
                p.zero_()
        assert torch.allclose(G(h), G(torch.zeros(2, 8))) != skip


def test_skip_concatenates_h0_nearest_neighbour_upsampled():
    torch.manual_seed(0)
    G = began.Generator(nh=8, n=8, image_size=32, skip=True)
    seen = []
    for stage in G.stages[1:]:
        stage.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    h = torch.randn(2, 8)
    with torch.no_grad():
        G(h)
        h0 = G.fc(h).view(2, 8, 8, 8)
    for x, scale in zip(seen, (2, 4)):                                       # 16x16, then 32x32
        assert torch.equal(x[:, 8:], h0.repeat_interleave(scale, 2).repeat_interleave(scale, 3))


def test_carry_falls_linearly_from_one_to_zero_over_carry_steps():
    # "we start with carry = 1 and progressively decrease it to 0 over 16000 steps (one epoch)"
    assert began.parse_args([]).carry_steps == 16000
    steps = [0, 1, 4000, 8000, 12000, 15999, 16000, 16001, 10 ** 6]
    assert [began.carry_at(t, 16000) for t in steps] == pytest.approx(
        [1.0, 1 - 1 / 16000, 0.75, 0.5, 0.25, 1 / 16000, 0.0, 0.0, 0.0], abs=1e-12)
    assert [began.carry_at(t, 4) for t in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]


def test_vanishing_residual_block_blends_identity_and_conv_path():
    torch.manual_seed(0)
    block = began.ConvELU(4, 4, residual=True)
    plain = began.ConvELU(4, 4)                                      # the same block, no residual
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if k != "carry"})
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        path = torch.nn.functional.elu(block.conv(x))
        assert block.carry.item() == 1.0 and torch.equal(block(x), x)        # at initialisation: identity
        began.set_carry(block, 0.0)
        assert torch.equal(block(x), path) and torch.equal(plain(x), path)   # carry 0: the plain conv path
        began.set_carry(block, 0.25)
        assert torch.allclose(block(x), 0.25 * x + 0.75 * path, atol=1e-6)
    # only where the shape is kept: a conv that changes the channels or the side is never blended
    for other in (began.ConvELU(4, 8, residual=True), began.ConvELU(4, 4, stride=2, residual=True)):
        assert not other.residual and "carry" not in other.state_dict()
    assert "carry" in block.state_dict()               # saved: a loaded network has its last carry


def test_at_carry_one_the_vanishing_residual_networks_skip_their_same_shape_convs():
    torch.manual_seed(0)
    G = began.Generator(nh=8, n=8, channels=1, image_size=32, vanishing_residual=True)
    D = began.Discriminator(nh=8, n=8, channels=1, image_size=32, vanishing_residual=True)
    residual = [m.residual for m in D.encoder.body]                     # conv_pre, then per stage
    assert residual == [False, True, True, False, False, True, False, False, True]
    assert all(m.residual for s in G.stages for m in s)                 # n -> n everywhere (no skip)
    skip = began.Generator(nh=8, n=8, image_size=32, skip=True, vanishing_residual=True)
    assert [[m.residual for m in s] for s in skip.stages] == [[True, True], [False, True], [False, True]]
    h = torch.randn(3, 8)
    with torch.no_grad():
        h0 = G.fc(h).view(3, 8, 8, 8)
        # every stage is the identity at carry 1: G(z) = out(nearest-upsampled h0)
        assert torch.allclose(G(h), G.out(h0.repeat_interleave(4, 2).repeat_interleave(4, 3)), atol=1e-6)
        began.set_carry(G, 0.0)
        plain = began.Generator(nh=8, n=8, channels=1, image_size=32)
        plain.load_state_dict({k: v for k, v in G.state_dict().items() if not k.endswith("carry")})
        assert torch.equal(G(h), plain(h))                                  # carry 0: the plain network


def test_sizes_the_architecture_cannot_make_are_refused(capsys):
    for bad in (["--image-size", "48"], ["--image-size", "8"], ["--k0", "1.5"]):
        with pytest.raises(SystemExit) as e:
            began.parse_args(bad)
        assert e.value.code == 2
    assert "power of two" in capsys.readouterr().err


# --- the steps -------------------------------------------------------------------------------
def test_with_k_zero_the_d_gradient_does_not_depend_on_the_fake_batch():
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    fakes = (torch.rand(4, 3, 16, 16) * 2 - 1, torch.zeros(4, 3, 16, 16))

    def d_after_step(fake, k):
        _, D, _, opt_D = _nets()
        began.discriminator_step(D, opt_D, real, fake, torch.tensor(k))
        return _params(D), [p.grad.clone() for p in D.parameters()]

    (p1, g1), (p2, g2) = d_after_step(fakes[0], 0.0), d_after_step(fakes[1], 0.0)
    assert _same(g1, g2) and _same(p1, p2)
    (p1, g1), (p2, g2) = d_after_step(fakes[0], 0.5), d_after_step(fakes[1], 0.5)
    assert not _same(g1, g2)                                     # k > 0: the fake term acts


def test_d_step_touches_d_only_and_pushes_fake_reconstructions_away():
    G, D, _, opt_D = _nets()
    for group in opt_D.param_groups:
        group["lr"] = 1e-3
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    fake = G(began.sample_z(8, 8, "cpu"))                        # with a graph to G
    g0 = _params(G)
    real_before, fake_before = began.ae_loss(real, D(real)).item(), began.ae_loss(fake, D(fake)).item()
    loss, loss_real = began.discriminator_step(D, opt_D, real, fake, torch.tensor(1.0))
    assert _same(_params(G), g0) and all(p.grad is None for p in G.parameters())
    assert loss_real.item() == pytest.approx(real_before, rel=1e-5)
    assert loss.item() == pytest.approx(real_before - fake_before, rel=1e-5, abs=1e-6)  # L_D at k = 1
    assert began.ae_loss(fake, D(fake)).item() > fake_before     # k = 1: D learns to reconstruct G badly
    assert began.ae_loss(real, D(real)).item() < real_before     # and real images well


def test_g_step_touches_g_only_and_lowers_the_reconstruction_of_new_samples():
    G, D, opt_G, _ = _nets()
    for group in opt_G.param_groups:
        group["lr"] = 1e-3
    torch.manual_seed(5)
    z = began.sample_z(16, 8, "cpu")
    before = began.ae_loss(G(z), D(G(z))).item()
    d0, g0 = _params(D), _params(G)
    torch.manual_seed(5)                                         # generator_step draws this z
    loss = began.generator_step(G, D, opt_G, 16, 8, torch.device("cpu"))
    assert loss.item() == pytest.approx(before, rel=1e-5)        # L_G = L(G(z_G)) through D
    assert _same(_params(D), d0) and all(p.grad is None for p in D.parameters())
    assert all(p.requires_grad for p in D.parameters()) and not _same(_params(G), g0)
    assert began.ae_loss(G(z), D(G(z))).item() < before


def test_g_loss_flows_through_both_g_z_and_d_g_z():
    # L_G = mean |G(z) - D(G(z))|: detaching either side changes G's gradient.
    G, D, _, _ = _nets()
    z = began.sample_z(4, 8, "cpu")

    def grad(loss_fn):
        G.zero_grad()
        loss_fn(G(z)).backward()
        return torch.cat([p.grad.flatten() for p in G.parameters()])

    full = grad(lambda x: began.ae_loss(x, D(x)))
    assert not torch.allclose(full, grad(lambda x: began.ae_loss(x, D(x.detach()))))
    assert not torch.allclose(full, grad(lambda x: began.ae_loss(x.detach(), D(x))))


def test_g_step_follows_the_gradient_through_both_g_z_and_d_g_z():
    # With SGD at lr 1 the step is minus the gradient of L(G(z_G)) = mean |G(z) - D(G(z))|, both paths.
    G, D, _, _ = _nets()
    torch.manual_seed(5)
    z = began.sample_z(4, 8, "cpu")
    began.ae_loss(G(z), D(G(z))).backward()
    expected = [-p.grad.clone() for p in G.parameters()]
    before = _params(G)
    torch.manual_seed(5)                                                     # generator_step draws this z
    began.generator_step(G, D, torch.optim.SGD(G.parameters(), lr=1.0), 4, 8, torch.device("cpu"))
    for p, p0, want in zip(G.parameters(), before, expected):
        assert torch.allclose(p.detach() - p0, want, atol=1e-6)


# --- the command line --------------------------------------------------------------------------
def test_cli_logs_m_global_and_k_t_and_resumes_exactly(tmp_path):
    # k_0 = 0.3 and a large λ_k make k_t move; windows of 2 steps with a 90% tolerance make
    # almost every window a stall, so the lr is halved during the run; the split at step 3
    # falls inside a window.
    flags = TINY_B + ["--k0", "0.3", "--lambda-k", "0.05", "--lr-window", "2", "--stall-tol", "0.9"]
    began.main(flags + ["--max-steps", "6", "--out", "straight"])
    rows = read_metrics(tmp_path / "straight")
    assert [r["step"] for r in rows] == [str(s) for s in range(1, 7)]
    for col in ("loss_D", "loss_G", "L_x", "k_t", "M_global", "lr"):
        assert all(r[col] for r in rows), col
    k = [float(r["k_t"]) for r in rows]
    assert all(0 <= v <= 1 for v in k) and len(set(k)) == 6
    for r in rows:
        assert float(r["M_global"]) >= float(r["L_x"]) >= 0
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] < lrs[0]
    assert float(rows[0]["k_t"]) == pytest.approx(0.3)            # k_0, the value step 1 used
    last = {c: torch.tensor(float(rows[-1][c])) for c in ("k_t", "L_x", "loss_G")}
    k_next = began.update_k(last["k_t"], 0.7, last["L_x"], last["loss_G"], 0.05)
    ckpt = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["k_t"].item() == k_next.item()           # k_t is checkpointed after its update
    # step 6 ends a window, which stalls (tol 90%): the checkpoint holds the halved lr
    assert ckpt["modules"]["opt_D"]["param_groups"][0]["lr"] == pytest.approx(lrs[-1] / 2)

    began.main(flags + ["--max-steps", "3", "--out", "split"])   # stops inside a window
    state = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["state"]
    m = [float(r["M_global"]) for r in rows]
    assert state["window_sum"].item() == m[2]                    # the open window: step 3 alone
    assert state["previous_mean"] == pytest.approx((m[0] + m[1]) / 2, rel=1e-6)
    began.main(["--resume", "split", "--max-steps", "6"])
    split = read_metrics(tmp_path / "split")
    assert len(split) == 6
    for a, b in zip(rows, split):
        for col in ("loss_D", "loss_G", "L_x", "k_t", "M_global", "lr"):
            assert a[col] == b[col], (a["step"], col)


def test_each_step_updates_d_then_g_with_fresh_latents_and_logs_m_global_of_its_losses(tmp_path, monkeypatch):
    calls, zs = [], []
    d_step, g_step, sample_z = began.discriminator_step, began.generator_step, began.sample_z

    def d_spy(D, *args, **kwargs):
        out = d_step(D, *args, **kwargs)
        calls.append(("D", _params(D)))                                       # D after its update
        return out

    def g_spy(G, D, *args, **kwargs):
        calls.append(("G", _params(D)))                                       # the D that L(G(z_G)) goes through
        return g_step(G, D, *args, **kwargs)

    def z_spy(*args, **kwargs):
        zs.append(sample_z(*args, **kwargs))
        return zs[-1]

    monkeypatch.setattr(began, "discriminator_step", d_spy)
    monkeypatch.setattr(began, "generator_step", g_spy)
    monkeypatch.setattr(began, "sample_z", z_spy)
    began.main(TINY_B + ["--max-steps", "3", "--k0", "0.3", "--out", "run"])
    assert [name for name, _ in calls] == ["D", "G"] * 3
    assert all(_same(d, g) for (_, d), (_, g) in zip(calls[::2], calls[1::2]))   # G sees the D just updated
    assert len(zs) == 1 + 2 * 3                                              # the grid's z; z_D and z_G per step
    z = torch.cat(zs[1:])
    assert len(torch.unique(z, dim=0)) == len(z)                             # every latent fresh
    for r in read_metrics(tmp_path / "run"):                                 # M_global from L(x) and L(G(z_G))
        L_x, L_G = float(r["L_x"]), float(r["loss_G"])
        assert float(r["M_global"]) == pytest.approx(L_x + abs(0.7 * L_x - L_G), rel=1e-6)  # γ = 0.7


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_decayed_lr_stops_at_the_floor_and_never_raises_a_rate():
    assert began.decayed_lr(1e-4, 0.5, 2e-5) == 5e-5
    assert began.decayed_lr(3e-5, 0.5, 2e-5) == 2e-5                 # the port: max(lr / 2, 2e-5)
    assert began.decayed_lr(2e-5, 0.5, 2e-5) == 2e-5
    assert began.decayed_lr(1e-5, 0.5, 2e-5) == 1e-5                 # already below: left alone
    assert began.decayed_lr(1e-4, 1.0, 2e-5) == 1e-4                 # no stall: unchanged
    assert began.decayed_lr(1e-6, 0.5, 0.0) == 5e-7                  # --lr-floor 0: no end


@pytest.mark.parametrize("floor, expected", [(None, [1e-4, 5e-5, 2.5e-5, 2e-5, 2e-5, 2e-5]),
                                             ("0", [1e-4, 5e-5, 2.5e-5, 1.25e-5, 6.25e-6, 3.125e-6])])
def test_cli_halving_stops_at_the_lr_floor(tmp_path, floor, expected):
    flags = ["--lr-decay", "fixed", "--lr-window", "1", "--max-steps", "6", "--out", "run"]
    began.main(TINY_B + flags + (["--lr-floor", floor] if floor else []))
    lrs = [float(r["lr"]) for r in read_metrics(tmp_path / "run")]
    assert lrs == pytest.approx(expected, rel=1e-6)


def test_cli_carry_follows_the_step_and_resumes_exactly(tmp_path):
    flags = TINY_B + ["--vanishing-residual", "--carry-steps", "8"]
    began.main(flags + ["--max-steps", "6", "--out", "straight"])
    began.main(flags + ["--max-steps", "3", "--out", "split"])
    for run, last_step in (("straight", 5), ("split", 2)):   # the checkpoint holds the last step's carry
        G = torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)["modules"]["G"]
        carries = [v.item() for k, v in G.items() if k.endswith("carry")]
        assert carries and all(c == began.carry_at(last_step, 8) for c in carries)
    began.main(["--resume", "split", "--max-steps", "6"])
    straight, split = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split")
    assert len(split) == 6
    for a, b in zip(straight, split):
        for col in ("loss_D", "loss_G", "L_x", "k_t", "M_global"):
            assert a[col] == b[col], (a["step"], col)
    began.main(TINY_B + ["--no-vanishing-residual", "--max-steps", "6", "--out", "plain"])
    assert read_metrics(tmp_path / "plain")[1]["loss_G"] != straight[1]["loss_G"]   # the flag does something


def test_a_run_saved_before_the_flag_resumes_without_vanishing_residuals(tmp_path):
    began.main(TINY_B + ["--no-vanishing-residual", "--max-steps", "2", "--out", "old"])
    path = tmp_path / "old" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    for key in ("vanishing_residual", "carry_steps"):
        del ckpt["args"][key]
    torch.save(ckpt, path)
    assert began.parse_args(["--resume", "old"]).vanishing_residual is False
    began.main(["--resume", "old", "--max-steps", "3"])
    assert len(read_metrics(tmp_path / "old")) == 3


def test_cli_fixed_schedule_epochs_plot_and_generate(tmp_path):
    # Runs without matplotlib too (CI installs only requirements.txt): only losses.png needs it.
    began.main(TINY_B + ["--epochs", "1", "--lr-decay", "fixed", "--lr-window", "3", "--skip", "--out", "run"])
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 8 and rows[-1]["epoch"] == "1.0"         # 256 images / 32 = 8 steps
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == pytest.approx([1e-4] * 3 + [5e-5] * 3 + [2.5e-5] * 2)
    run = tmp_path / "run"
    for name in ("checkpoint.pt", "config.json", "samples/final.png", "samples/epoch-001.png"):
        assert (run / name).exists(), name
    assert (run / "losses.png").exists() == _have_matplotlib()   # the plot only with matplotlib
    began.main(["--generate", "5", "--resume", "run"])
    assert len(list(run.glob("generated-*/0000*.png"))) == 5
