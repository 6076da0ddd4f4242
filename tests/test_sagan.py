"""sagan.py against its paper: attention, spectral norm, hinge loss, TTUR, conditioning.

Conditional BN as plain BN then the class's gain and bias, D's residual blocks in the official
form, D's step scoring real and fake halves with their labels in one forward (one power
iteration), G's tanh output, D updated before
G, γ = 0 makes the block the identity and the whole G attention-free, attention rows are
distributions and the block is the paper's formula written with einsum, non-locality, top
singular value ≈ 1 for every SN layer, u/v in the state dict and frozen during G's step, hinge
losses against the closed forms and margins (none for G), TTUR defaults, step isolation, labels change G's
samples and D's logit, the projection formula, attention placement per size, a conditional run
that resumes exactly and generates by class with `attention.png`, an unconditional run, an
unlabelled folder trained unconditionally, steps under `--amp` in bf16 and close to fp32.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import (
    TINY_RUN,
    amp_and_fp32_runs,
    assert_close_to_fp32_but_not_equal,
    assert_layers_ran_in_bf16_only_under_amp,
    read_metrics,
)
from PIL import Image

import common
import sagan

TINY_SAGAN = TINY_RUN + ["--ch", "8", "--nz", "16"]  # 16 px: attention on the 8x8 maps


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _nets(num_classes=10, attention=True, size=16):
    torch.manual_seed(0)
    args = sagan.parse_args(["--image-size", str(size), "--ch", "8", "--nz", "16"]
                            + ([] if attention else ["--no-attention"]))
    args.num_classes = num_classes
    return sagan.build(args, 3, torch.device("cpu"))


def test_paper_defaults_ttur_and_adam_betas():
    args = sagan.parse_args([])
    assert (args.lr_d, args.lr_g, args.beta1, args.beta2) == (4e-4, 1e-4, 0.0, 0.9)
    assert (args.nz, args.image_size, args.attention_res, args.batch_size) == (128, 64, 32, 64)
    assert not args.no_attention and not args.unconditional
    args.num_classes, args.ch = 10, 8
    _, _, opt_G, opt_D = sagan.build(args, 3, torch.device("cpu"))
    assert type(opt_D) is torch.optim.Adam and type(opt_G) is torch.optim.Adam
    assert opt_D.param_groups[0]["lr"] == 4e-4 and opt_G.param_groups[0]["lr"] == 1e-4
    assert opt_D.param_groups[0]["betas"] == opt_G.param_groups[0]["betas"] == (0.0, 0.9)


def test_attention_block_with_gamma_zero_is_the_identity():
    torch.manual_seed(0)
    block = sagan.SelfAttention(16)
    assert dict(block.named_parameters())["gamma"].item() == 0.0
    x = torch.randn(2, 16, 8, 8)
    for x_in in (x, x.contiguous(memory_format=torch.channels_last)):  # in either memory layout
        out = block(x_in)
        assert torch.equal(out, x_in) and out.stride() == x_in.stride()  # (a layout changes how a conv rounds)
    with torch.no_grad():
        block.gamma.fill_(0.5)
    assert not torch.allclose(block(x), x)
    # so a fresh G with attention computes exactly the function of the same G without it
    G_attn, G_plain = _nets()[0], _nets(attention=False)[0]
    missing, unexpected = G_attn.load_state_dict(G_plain.state_dict(), strict=False)
    assert all(k.startswith("attention.") for k in missing) and not unexpected
    z, y = torch.randn(4, 16), torch.tensor([0, 1, 2, 3])
    G_attn.eval(), G_plain.eval()
    assert torch.equal(G_attn(z, y), G_plain(z, y))
    G_attn.to(memory_format=torch.channels_last), G_plain.to(memory_format=torch.channels_last)
    assert torch.equal(G_attn(z, y), G_plain(z, y))  # and with channels-last weights (the CPU default)


def test_attention_rows_are_distributions_and_forward_is_the_papers_formula():
    torch.manual_seed(0)
    block = sagan.SelfAttention(16)
    with torch.no_grad():
        block.gamma.fill_(0.7)
    block.eval()  # fixed spectral-norm vectors: the weights below are the ones forward uses
    x = torch.randn(2, 16, 4, 8)
    beta = block.attention_weights(x)
    assert beta.shape == (2, 32, 32)
    assert (beta >= 0).all() and torch.allclose(beta.sum(-1), torch.ones(2, 32))
    # Sec. 3 written out with einsum: s_ij = f(x_i)ᵀ g(x_j), β_{j,i} = softmax_i, o_j = W_v Σ_i β_{j,i} h(x_i)
    f, g, h = (m(x).flatten(2) for m in (block.f, block.g, block.h))            # (B, C/8, N)
    s = torch.einsum("bci,bcj->bij", f, g)
    beta_ref = torch.softmax(s, dim=1).transpose(1, 2)                           # [b, j, i]
    assert torch.allclose(beta, beta_ref, atol=1e-6)
    o = torch.einsum("bji,bci->bcj", beta_ref, h).view(2, 2, 4, 8)
    assert torch.allclose(block(x), 0.7 * block.v(o) + x, atol=1e-5)
    # non-local: a change at one corner reaches the opposite corner (1x1 convs alone would not)
    x2 = x.clone()
    x2[:, :, 0, 0] += 3.0
    assert not torch.allclose(block(x2)[:, :, -1, -1], block(x)[:, :, -1, -1])
    with pytest.raises(ValueError):
        sagan.SelfAttention(4)  # C/8 would be 0


def test_every_conv_and_linear_has_top_singular_value_one():
    G, D, _, _ = _nets()
    layers = [m for net in (G, D) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    layers.append(D.embed)  # the projection embedding (official sn_embedding)
    assert len(layers) > 20
    for m in layers:
        assert type(m.parametrizations.weight[0]).__name__ == "_SpectralNorm", m
    # G's per-class BN gains and biases are plain parameters (official ConditionalBatchNorm)
    assert not any(hasattr(m, "parametrizations") for m in G.modules() if isinstance(m, nn.Embedding))
    for _ in range(5):  # a few training-mode forwards: one power iteration each
        y = torch.randint(10, (4,))
        D(G(torch.randn(4, 16), y), y)
    raw = []
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
        assert 0.999 < sigma < 1.05, (m, sigma)
        raw.append(torch.linalg.matrix_norm(m.parametrizations.weight.original.detach().flatten(1), ord=2).item())
    assert max(abs(r - 1) for r in raw) > 0.5  # without the normalisation they are far from 1


def test_power_iteration_vectors_are_saved_and_frozen_in_gs_step():
    G, D, opt_G, opt_D = _nets()
    keys = [k for k in D.state_dict() if k.endswith(("._u", "._v"))]
    assert len(keys) == 2 * sum(hasattr(m, "parametrizations") for m in D.modules())
    y = torch.arange(4)
    real, fake = torch.rand(4, 3, 16, 16) * 2 - 1, G(torch.randn(4, 16), y)
    u0 = D.blocks[0].conv1.parametrizations.weight[0]._u.clone()
    sagan.discriminator_step(D, opt_D, real, fake, y)
    u1 = D.blocks[0].conv1.parametrizations.weight[0]._u.clone()
    assert not torch.equal(u0, u1)                       # D's step runs a power iteration
    sagan.generator_step(D, opt_G, fake, y)
    assert torch.equal(D.blocks[0].conv1.parametrizations.weight[0]._u, u1)  # G's step does not
    assert D.training
    # a fresh D loaded from the state dict has the same u, v: the same function in training mode
    D2 = _nets()[1]
    D2.load_state_dict(D.state_dict())
    assert torch.equal(D(real, y), D2(real, y))


def test_hinge_losses_equal_their_closed_forms():
    r = torch.tensor([2.0, 0.5, -1.0, 1.0])
    f = torch.tensor([-3.0, 0.0, 1.5, -0.5])
    # L_D = -E[min(0, -1 + D(x))] - E[min(0, -1 - D(G(z)))],  L_G = -E[D(G(z))]
    expected = -torch.clamp(-1 + r, max=0).mean() - torch.clamp(-1 - f, max=0).mean()
    assert torch.allclose(sagan.d_hinge_loss(r, f), expected)
    assert torch.isclose(expected, torch.tensor((0 + 0.5 + 2 + 0) / 4 + (0 + 1 + 2.5 + 0.5) / 4))
    assert sagan.g_hinge_loss(f) == -f.mean() == 0.5
    assert sagan.d_hinge_loss(torch.zeros(5), torch.zeros(5)) == 2.0   # D that cannot tell
    # beyond the margins (D(x) >= 1, D(G(z)) <= -1) the loss and its gradient vanish
    r, f = torch.tensor([1.0, 3.0], requires_grad=True), torch.tensor([-1.0, -4.0], requires_grad=True)
    loss = sagan.d_hinge_loss(r, f)
    loss.backward()
    assert loss == 0 and not r.grad.any() and not f.grad.any()
    # the sign: G gains by raising D's score of its samples, without bound (no margin for G):
    # the gradient is -1/n for every score, far beyond D's margin of 1 included
    f = torch.tensor([-2.0, 0.5, 1.0, 50.0, 1e4], requires_grad=True)
    sagan.g_hinge_loss(f).backward()
    assert torch.equal(f.grad, torch.full((5,), -0.2))
    assert sagan.g_hinge_loss(torch.tensor([1e4])) < sagan.g_hinge_loss(torch.tensor([50.0])) < 0


def test_steps_change_only_their_own_network():
    G, D, opt_G, opt_D = _nets()
    y = torch.arange(4)
    real, fake = torch.rand(4, 3, 16, 16) * 2 - 1, G(torch.randn(4, 16), y)
    g0, d0 = _params(G), _params(D)
    calls = []
    hook = D.register_forward_hook(lambda m, inputs, out: calls.append((*inputs, out.detach())))
    loss, D_real, D_fake = sagan.discriminator_step(D, opt_D, real, fake, y)
    hook.remove()
    assert _same(_params(G), g0) and not _same(_params(D), d0)
    assert all(p.grad is None for p in G.parameters())
    d1 = _params(D)
    sagan.generator_step(D, opt_G, fake, y)
    assert _same(_params(D), d1) and not _same(_params(G), g0)
    assert all(p.requires_grad for p in D.parameters())
    # D's step saw real and fake as one batch (one forward, so one power iteration), each half
    # with its labels: D_real and D_fake are the means of its logits on each half
    ((x, labels, logits),) = calls
    assert torch.equal(x, torch.cat([real, fake])) and torch.equal(labels, torch.cat([y, y]))
    assert D_real.shape == D_fake.shape == ()
    assert torch.equal(D_real, logits[:4].mean()) and torch.equal(D_fake, logits[4:].mean())


def test_conditional_generation_uses_the_label():
    G, D, opt_G, opt_D = _nets()
    for _ in range(3):  # at init every class has BN gain 1 and bias 0; a few steps tell them apart
        y = torch.arange(8)
        fake = G(torch.randn(8, 16), y)
        sagan.discriminator_step(D, opt_D, torch.rand(8, 3, 16, 16) * 2 - 1, fake, y)
        sagan.generator_step(D, opt_G, fake, y)
    G.eval()
    z = torch.randn(1, 16).expand(2, -1)
    with torch.no_grad():
        x = G(z, torch.tensor([0, 1]))
        assert not torch.allclose(x[0], x[1])                        # same z, different class
        assert torch.equal(G(z, torch.tensor([1, 1]))[0], x[1])
        img = torch.rand(1, 3, 16, 16).expand(2, -1, -1, -1)
        assert D(img, torch.tensor([0, 1])).unique().numel() == 2    # the projection term
    assert sum(isinstance(m, nn.Embedding) for m in G.modules()) == 2 * 2 * 2  # 2 blocks x 2 CBN x (gain, bias)
    G_u, D_u, _, _ = _nets(num_classes=0)
    assert not any(isinstance(m, nn.Embedding) for m in list(G_u.modules()) + list(D_u.modules()))
    assert G_u(torch.randn(2, 16)).shape == (2, 3, 16, 16) and D_u(torch.rand(2, 3, 16, 16)).shape == (2,)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_attention_sits_at_32x32_or_half_the_image(size):
    G, D, _, _ = _nets(size=size)
    seen = []
    for block in (G.attention, D.attention):
        block.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[-2:])))
    y = torch.arange(2)
    x = G(torch.randn(2, 16), y)
    assert x.shape == (2, 3, size, size) and D(x, y).shape == (2,)
    r = min(32, size // 2)
    assert seen == [(r, r), (r, r)]  # each block runs once, on the r x r maps
    G_plain, D_plain, _, _ = _nets(attention=False, size=size)
    assert not any(isinstance(m, sagan.SelfAttention) for m in list(G_plain.modules()) + list(D_plain.modules()))


def test_bad_sizes_and_attention_placements_are_refused(capsys):
    for argv in (["--image-size", "48"], ["--image-size", "8"], ["--attention-res", "64"],
                 ["--attention-res", "4"], ["--attention-res", "12"], ["--class", "3"]):
        with pytest.raises(SystemExit) as e:
            sagan.parse_args(argv)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "power of two" in err and "--attention-res must be" in err and "--class K" in err
    assert sagan.parse_args(["--image-size", "128"]).attention_res == 32          # Table 1: feat32
    assert sagan.parse_args(["--image-size", "32"]).attention_res == 16
    assert sagan.parse_args(["--image-size", "128", "--attention-res", "64"]).attention_res == 64


def test_a_width_too_narrow_for_attention_is_refused_and_without_attention_trains(capsys):
    # at 64 px and feat32, D has ch channels at the attention map: --ch 4 would give C/8 = 0
    with pytest.raises(SystemExit) as e:
        sagan.parse_args(["--ch", "4"])
    assert e.value.code == 2 and "--ch 4 gives D 4 channels at the 32x32 attention map" in capsys.readouterr().err
    assert sagan.parse_args(["--ch", "4", "--no-attention"]).ch == 4
    assert sagan.parse_args(["--ch", "4", "--attention-res", "8"]).ch == 4   # 4 * 4 = 16 channels at 8x8
    sagan.Generator(ch=8, image_size=64, attention_res=32)                  # the narrowest accepted builds
    sagan.Discriminator(ch=8, image_size=64, attention_res=32)


def _png(path):
    return Image.open(path).tobytes()


def test_cli_conditional_run_generates_by_class_and_resumes_exactly(tmp_path, capsys):
    sagan.main(TINY_SAGAN + ["--max-steps", "4", "--out", "straight"])
    rows = read_metrics(tmp_path / "straight")
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert all(r[k] for r in rows for k in ("loss_D", "loss_G", "D_real", "D_fake", "gamma_G", "gamma_D"))
    assert (tmp_path / "straight" / "samples" / "final.png").exists()
    ckpt = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    assert ckpt["args"]["num_classes"] == 10 and ckpt["args"]["sample_class"] is None
    assert ckpt["state"]["fixed_y"].tolist() == [i // 10 for i in range(100)]
    # stop after 2 steps and resume: the same losses, weights and power-iteration vectors
    sagan.main(TINY_SAGAN + ["--max-steps", "2", "--out", "split"])
    sagan.main(["--resume", "split", "--max-steps", "4"])
    keys = ("step", "loss_D", "loss_G", "D_real", "D_fake", "gamma_G", "gamma_D")
    assert [[r[k] for k in keys] for r in read_metrics(tmp_path / "split")] == [[r[k] for k in keys] for r in rows]
    resumed = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    for name in ("G", "D"):
        a, b = ckpt["modules"][name], resumed["modules"][name]
        assert any(k.endswith("._u") for k in a) and a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # --generate --class K: every sample from class K (same seed, so the same z for each K)
    capsys.readouterr()
    for k in (0, 0, 1):
        sagan.main(["--generate", "3", "--class", str(k), "--resume", "straight"])
    folders = sorted((tmp_path / "straight").glob("generated-*"))
    assert len(folders) == 3 and all((f / "attention.png").exists() for f in folders)
    grids = [_png(f / "grid.png") for f in folders]
    assert grids[0] == grids[1] and grids[0] != grids[2]
    assert Image.open(folders[0] / "attention.png").size == (2 * 18 + 2, 3 * 18 + 2)  # 3 rows of pairs
    assert "attends in G's 8x8 attention block" in capsys.readouterr().out
    with pytest.raises(common.UserError, match="--class must be from 0 to 9"):
        sagan.main(["--generate", "2", "--class", "10", "--resume", "straight"])


def test_cli_unconditional_without_attention(tmp_path):
    sagan.main(TINY_SAGAN + ["--unconditional", "--no-attention", "--max-steps", "2", "--out", "run"])
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2 and "gamma_G" not in rows[0] and rows[-1]["loss_D"]
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["args"]["num_classes"] == 0 and ckpt["state"]["fixed_y"] is None
    assert not any("embed" in k or "gain" in k or "attention" in k for k in ckpt["modules"]["G"])
    assert not any("embed" in k or "attention" in k for k in ckpt["modules"]["D"])
    sagan.main(["--generate", "3", "--resume", "run"])
    (folder,) = (tmp_path / "run").glob("generated-*")
    assert (folder / "00002.png").exists() and not (folder / "attention.png").exists()
    with pytest.raises(common.UserError, match="--class needs a class-conditional model"):
        sagan.main(["--generate", "3", "--class", "0", "--resume", "run"])


def test_unlabelled_folder_trains_unconditionally(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    for i in range(8):
        Image.fromarray((torch.rand(20, 20, 3) * 255).byte().numpy()).save(tmp_path / "imgs" / f"{i}.png")
    sagan.main(["--dataset", "folder", "--data-root", "imgs", "--image-size", "16", "--batch-size", "4",
                "--ch", "8", "--nz", "16", "--device", "cpu", "--workers", "0", "--max-steps", "2", "--out", "run"])
    assert "folder has no class labels: training the unconditional variant" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["args"]["num_classes"] == 0 and "embed" not in str(list(ckpt["modules"]["D"]))


def test_projection_logit_is_psi_plus_inner_product_with_the_class_embedding():
    _, D, _, _ = _nets()
    x, y = torch.rand(3, 3, 16, 16), torch.tensor([2, 5, 9])
    D.eval()
    h = x
    for block in D.blocks:
        h = block(h)
        if h.shape[-1] == 8:
            h = D.attention(h)
    phi = F.relu(h).sum((2, 3))
    expected = D.linear(phi).squeeze(1) + (D.embed.weight[y] * phi).sum(1)
    assert torch.allclose(D(x, y), expected, atol=1e-5)


def test_conditional_bn_is_plain_bn_then_the_class_gain_and_bias():
    torch.manual_seed(0)
    cbn = sagan.CondBatchNorm2d(4, 3)
    assert torch.equal(cbn.gain.weight, torch.ones(3, 4)) and torch.equal(cbn.bias.weight, torch.zeros(3, 4))
    x, y = torch.randn(6, 4, 3, 3) * 3 + 1, torch.tensor([0, 1, 2, 2, 1, 0])
    normed = F.batch_norm(x, None, None, training=True)            # no affine of its own
    assert torch.allclose(cbn(x, y), normed, atol=1e-5)              # at init: plain BN for every class
    with torch.no_grad():
        cbn.gain.weight.copy_(torch.arange(12.0).view(3, 4))
        cbn.bias.weight.copy_(-torch.arange(12.0).view(3, 4) / 10)
    expected = normed * cbn.gain.weight[y][:, :, None, None] + cbn.bias.weight[y][:, :, None, None]
    assert torch.allclose(cbn(x, y), expected, atol=1e-5)


def test_discriminator_blocks_follow_the_official_residual_form():
    _, D, _, _ = _nets()
    D.eval()  # fixed spectral-norm vectors
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    first, second, last = D.blocks
    # the optimised first block: no ReLU on the image, pool before the shortcut conv
    h = F.avg_pool2d(first.conv2(F.relu(first.conv1(x))), 2) + first.skip(F.avg_pool2d(x, 2))
    assert torch.allclose(first(x), h, atol=1e-5)
    # later blocks: ReLU-conv3-ReLU-conv3-avgpool, shortcut conv1-avgpool
    h2 = F.avg_pool2d(second.conv2(F.relu(second.conv1(F.relu(h)))), 2) + F.avg_pool2d(second.skip(h), 2)
    assert torch.allclose(second(h), h2, atol=1e-5)
    # the last block keeps the 4x4 map (no downsampling) and has no shortcut conv
    assert last.skip is None and last(h2).shape == h2.shape == (2, 16, 4, 4)
    assert torch.allclose(last(h2), last.conv2(F.relu(last.conv1(F.relu(h2)))) + h2, atol=1e-5)


def test_discriminator_step_scores_real_and_fake_halves_with_their_labels():
    G, D, _, opt_D = _nets()
    y = torch.tensor([0, 3, 5, 9])
    real, fake = torch.rand(4, 3, 16, 16) * 2 - 1, G(torch.randn(4, 16), y).detach()
    # D in training mode, as in a run: the step's D is D after one power iteration of every SN
    # layer, the same function for both halves (a second forward for the fakes would score them
    # after a second iteration: logits about 3e-3 away)
    ref = copy.deepcopy(D)
    with torch.no_grad():
        ref(real[:1], y[:1])                           # one power iteration, in training mode
        ref.eval()                                     # then no more
        r, f = ref(real, y), ref(fake, y)
        f_other = ref(fake, y.roll(1))                 # the fakes scored with other labels
    loss, D_real, D_fake = sagan.discriminator_step(D, opt_D, real, fake, y)
    assert torch.allclose(D_real, r.mean(), atol=1e-5) and torch.allclose(D_fake, f.mean(), atol=1e-5)
    assert torch.allclose(loss, sagan.d_hinge_loss(r, f), atol=1e-5)
    assert not torch.allclose(D_fake, f_other.mean(), atol=1e-3)   # the labels count


def test_generator_output_is_tanh_of_the_last_conv():
    G = _nets()[0]
    seen = []
    G.conv.register_forward_hook(lambda m, inp, out: seen.append(out))
    with torch.no_grad():
        G.conv.bias.fill_(3.0)  # push the pre-activations far past 1
        x = G(torch.randn(4, 16), torch.arange(4))
    assert torch.equal(x, torch.tanh(seen[0])) and x.abs().max() <= 1 and seen[0].max() > 1


def test_each_training_step_updates_d_then_g(tmp_path, monkeypatch):
    calls = []
    for name in ("discriminator_step", "generator_step"):
        step = getattr(sagan, name)
        monkeypatch.setattr(sagan, name, lambda *a, _s=step, _n=name[0].upper(), **k: calls.append(_n) or _s(*a, **k))
    sagan.main(TINY_SAGAN + ["--max-steps", "2", "--out", "run"])
    assert calls == ["D", "G", "D", "G"]  # one D step, then one G step through the updated D


def test_amp_steps_run_in_bf16_and_stay_close_to_fp32(one_thread):
    # two steps from the same seed, in fp32 and with --amp (bf16 autocast on the CPU): the
    # spectrally normalised layers and the attention compute in bf16 in both networks' steps,
    # and the logged values stay within 2% of fp32
    runs = amp_and_fp32_runs(sagan.main, TINY_SAGAN + ["--max-steps", "2"])
    assert_layers_ran_in_bf16_only_under_amp(runs, ("ParametrizedConv2d", "ParametrizedLinear", "SelfAttention"))
    assert_close_to_fp32_but_not_equal(runs, ("loss_D", "loss_G", "D_real", "D_fake"))
