"""benchmarks/speed.py and its plain loops (benchmarks/plain_loops.py): each plain loop trains,
computes exactly the script's step, and the result file holds every field. No timing asserted.

Each plain loop trains on PIL batches and takes exactly the script's step from the same weights
and random draws; speed.py's JSON, table and refusals.
"""
import copy
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import common
import dcgan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import plain_loops  # noqa: E402
import speed  # noqa: E402

CPU = torch.device("cpu")
SMALL = ["--batch-size", "8", "--dataset-size", "32"]
TINY_ARGS = {
    "dcgan": ["--image-size", "16", "--ngf", "8", "--ndf", "8", *SMALL],
    "wgan": ["--image-size", "16", "--ngf", "8", "--ndf", "8", "--critic-schedule", "constant", "--n-critic", "2",
             *SMALL],
    "relativistic_gan": ["--image-size", "16", "--width", "8", *SMALL],
    "infogan": ["--image-size", "16", "--ngf", "8", "--ndf", "8", "--fc-units", "32", "--q-units", "16", *SMALL],
    "began": ["--image-size", "16", "--n-filters", "8", "--nz", "8", "--nh", "8", *SMALL],
    "vaegan": ["--image-size", "16", "--width", "4", *SMALL],
    "sagan": ["--image-size", "16", "--ch", "8", "--nz", "16", *SMALL],
    "progan": ["--final-size", "16", "--nz", "8", "--fmap-base", "64", "--fmap-max", "8", *SMALL],
    "cyclegan": ["--image-size", "24", "--ngf", "4", "--ndf", "4", "--n-blocks", "1", "--dataset-size", "4"],
}


@pytest.mark.parametrize("script", plain_loops.SCRIPTS)
def test_plain_loop_trains_on_pil_batches(script):
    torch.manual_seed(0)
    loop = plain_loops.make(script, TINY_ARGS[script], "cpu", workers=0)
    batches = loop.batches()
    before = {k: v.clone() for k, v in _nets(loop)[0].state_dict().items()}
    images = [loop.step(batches) for _ in range(2)]
    assert images == [loop.B * {"wgan": 2, "relativistic_gan": 2}.get(script, 1)] * 2  # the script's count
    assert loop.last and all(math.isfinite(v) for v in loop.last.values())
    after = _nets(loop)[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained


def test_shapes_pil_dataset_serves_what_the_script_trains_on():
    ds = plain_loops.ShapesPIL(6, 16, 3)
    x, label = ds[4]
    data = common.shapes_data(6, 16, 3, "cpu")
    assert x.shape == (3, 16, 16) and label == int(data.labels[4])
    torch.testing.assert_close(x, data.to_float(data.images[4:5])[0], atol=1e-6, rtol=0)  # ToTensor + Normalize


# ---------------------------------------------------------------------------------------------
# One plain step == one step of the script's own functions, from the same weights and batches
# ---------------------------------------------------------------------------------------------
def _nets(loop):
    """The networks of a plain loop, in the order the script's build returns them."""
    names = {"dcgan": ("G", "D"), "wgan": ("G", "critic"), "began": ("G", "D"), "vaegan": ("E", "Dec", "D"),
             "progan": ("G", "D", "G_ema"), "cyclegan": ("G_AB", "G_BA", "D_A", "D_B")}.get(loop.script, ("G", "D"))
    return [getattr(loop, n) for n in names]


def _script_step(script, m, args, nets, opts, batches):
    """The script's train() loop body for one step, through its own step functions."""
    dev = torch.device("cpu")
    if script == "dcgan":
        G, D = nets
        real = batches[0][0]
        fake = G(m.sample_z(real.size(0), args.nz, dev, args.z_dist))
        m.discriminator_step(D, opts[1], real, fake)
        m.generator_step(D, opts[0], fake)
    elif script == "wgan":
        G, critic = nets
        for real, _ in batches:
            m.critic_step(G, critic, opts[1], real, args.nz, args.clip)
        m.generator_step(G, critic, opts[0], args.batch_size, args.nz, dev)
    elif script == "relativistic_gan":
        G, D = nets
        m.discriminator_step(G, D, opts[1], batches[0][0], args)
        m.generator_step(G, D, opts[0], batches[1][0], args, args.batch_size, dev)
    elif script == "infogan":
        G, D = nets
        dims = (args.nz, args.n_cat, args.cat_dim, args.n_cont, dev)
        real = batches[0][0]
        m.discriminator_step(G, D, opts[1], real, m.sample_latent(real.size(0), *dims), args.info_weight)
        m.generator_step(G, D, opts[0], m.sample_latent(real.size(0), *dims), args.info_weight)
    elif script == "began":
        G, D = nets
        real = batches[0][0]
        with torch.no_grad():
            fake = G(m.sample_z(real.size(0), args.nz, dev))
        m.discriminator_step(D, opts[1], real, fake, torch.tensor(args.k0))
        m.generator_step(G, D, opts[0], real.size(0), args.nz, dev)
    elif script == "vaegan":
        E, Dec, D = nets
        out = m.forward(E, Dec, D, batches[0][0], args)
        m.set_gradients(out, E, Dec, D)
        for opt in opts:
            opt.step()
    elif script == "sagan":
        G, D = nets
        real, y = batches[0]
        fake = G(torch.randn(real.size(0), args.nz), y)
        m.discriminator_step(D, opts[1], real, fake, y)
        m.generator_step(D, opts[0], fake, y)
    elif script == "progan":
        G, D, G_ema = nets
        depth = m.depth_of(args.image_size)
        m.discriminator_step(G, D, opts[1], batches[0][0], depth, 1.0, args)
        m.generator_step(G, D, opts[0], args.batch_size, depth, 1.0, args, dev)
        m.update_ema(G_ema, G, args.ema)
    elif script == "cyclegan":
        G_AB, G_BA, D_A, D_B = nets
        pool_A, pool_B = m.ImagePool(args.pool_size), m.ImagePool(args.pool_size)
        real_A, real_B = batches[0]
        fake_A, fake_B, _ = m.generator_step(G_AB, G_BA, D_A, D_B, opts[0], real_A, real_B, args.lambda_cyc,
                                             args.lambda_idt, not args.no_cycle)
        m.discriminator_step(D_A, D_B, opts[1], real_A, real_B, pool_A.query(fake_A), pool_B.query(fake_B))


def _script_nets_and_opts(script, m, args):
    if script == "dcgan":
        G, D = m.build(args, args.channels, CPU)
        kw = {"lr": args.lr, "betas": (args.beta1, args.beta2)}
        return [G, D], [torch.optim.Adam(G.parameters(), **kw), torch.optim.Adam(D.parameters(), **kw)]
    if script == "vaegan":
        E, Dec, D, opts = m.build(args, args.channels, CPU)
        return [E, Dec, D], list(opts.values())
    if script == "progan":
        G, D, opt_G, opt_D = m.build(args, args.channels, CPU)
        return [G, D, copy.deepcopy(G).requires_grad_(False)], [opt_G, opt_D]
    if script == "cyclegan":
        *nets, opt_G, opt_D = m.build(args, args.channels, CPU)
        return nets, [opt_G, opt_D]
    G, D, opt_G, opt_D = m.build(args, args.channels, CPU)
    return [G, D], [opt_G, opt_D]


def _batches(script, loop, n):
    g = torch.Generator().manual_seed(1)
    shape = (loop.B, loop.C, loop.args.image_size, loop.args.image_size)
    if script == "cyclegan":
        return [(torch.rand(shape, generator=g) * 2 - 1, torch.rand(shape, generator=g) * 2 - 1)]
    return [(torch.rand(shape, generator=g) * 2 - 1, torch.randint(10, (loop.B,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("script", plain_loops.SCRIPTS)
def test_plain_step_is_the_scripts_step(script):
    torch.manual_seed(0)
    loop = plain_loops.make(script, TINY_ARGS[script], "cpu", workers=0)
    m, args = loop.m, copy.deepcopy(loop.args)
    nets, opts = _script_nets_and_opts(script, m, args)
    for mine, theirs in zip(_nets(loop), nets):
        theirs.load_state_dict(mine.state_dict())
    initial = [copy.deepcopy(n.state_dict()) for n in nets]
    batches = _batches(script, loop, {"wgan": 2, "relativistic_gan": 2}.get(script, 1))

    torch.manual_seed(7)  # the same draws (z, codes, penalty points, pool coins) in the same order
    loop.step(iter(copy.deepcopy(batches)))
    torch.manual_seed(7)
    _script_step(script, m, args, nets, opts, copy.deepcopy(batches))

    moved = False
    for mine, theirs, start in zip(_nets(loop), nets, initial):
        for key, value in theirs.state_dict().items():
            torch.testing.assert_close(mine.state_dict()[key], value, atol=2e-6, rtol=1e-4, msg=f"{script}: {key}")
            moved |= not torch.allclose(value.float(), start[key].float(), atol=1e-5)
    assert moved  # the step changed the weights, so the comparison means something


def test_dcgan_plain_step_takes_an_injected_latent():
    loop = plain_loops.make("dcgan", TINY_ARGS["dcgan"], "cpu", workers=0)
    args = copy.deepcopy(loop.args)
    (G, D), (opt_G, opt_D) = _script_nets_and_opts("dcgan", loop.m, args)
    G.load_state_dict(loop.G.state_dict())
    D.load_state_dict(loop.D.state_dict())
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    z = torch.randn(8, args.nz)  # normal, not the script's uniform: injected, so it need not match
    loop.noise = lambda n: z
    loop.step(iter([(real.clone(), None)]))
    fake = G(z)
    loop.m.discriminator_step(D, opt_D, real, fake)
    loop.m.generator_step(D, opt_G, fake)
    for mine, theirs in ((loop.G, G), (loop.D, D)):
        for (k, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4, msg=k)


# ---------------------------------------------------------------------------------------------
# speed.py: the result file and the table
# ---------------------------------------------------------------------------------------------
def test_speed_writes_every_field_and_the_table(tmp_path, capsys):
    argv = ["--script", "dcgan", "--device", "cpu", "--modes", "plain", "default", "fast",
            "--fast-flags=--no-such-flag", "--script-args=" + " ".join(TINY_ARGS["dcgan"]),
            "--warmup", "1", "--steps", "4", "--chunk", "2", "--workers", "1", "--out-dir", str(tmp_path)]
    assert speed.main(argv) == 0
    result = json.loads((tmp_path / "speed-dcgan.json").read_text())
    for key in ("script", "device", "torch", "date", "batch_size", "script_args", "warmup_steps", "timed_steps",
                "chunk", "protocol", "ratios", "modes"):
        assert key in result, key
    assert result["device"].startswith("cpu") and result["batch_size"] == 8
    plain, default, fast = result["modes"]
    for m in (plain, default):
        for key in ("images_per_s", "mean_images_per_s", "spread", "steps_per_s", "chunks", "peak_gpu_memory_MiB",
                    "vs_plain", "batch_size"):
            assert key in m, (m["mode"], key)
        assert m["images_per_s"] > 0 and m["chunks"] == 2 and m["images_per_step"] == 8
        assert m["spread"][0] <= m["images_per_s"] <= m["spread"][1]
    assert plain["vs_plain"] == 1.0 and default["vs_plain"] == round(default["images_per_s"] / plain["images_per_s"], 2)
    assert plain["workers"] == 1 and set(plain["last_losses"]) == {"loss_D", "loss_G", "D_x", "D_G_z"}
    assert result["ratios"] == {"default/plain": default["vs_plain"]}
    assert fast["flags"] == "--no-such-flag" and fast["error"].startswith("unrecognized arguments")  # recorded
    out = capsys.readouterr().out
    assert out.startswith("SPEED dcgan batch 8 on cpu") and "default" in out

    with pytest.raises(SystemExit):  # an earlier result is never replaced silently
        speed.main(argv)
    table = speed.table([tmp_path / "speed-dcgan.json"])
    header, rule, row = table.splitlines()
    assert "`--no-such-flag` images/s" in header and row.startswith("| `dcgan.py` | cpu")
    assert f"({default['vs_plain']:.2f}x)" in row and "error:" in row


def test_speed_measures_the_fast_path(tmp_path):
    argv = ["--script", "dcgan", "--device", "cpu", "--modes", "default", "fast", "--fast-flags=--fast",
            "--script-args=" + " ".join(TINY_ARGS["dcgan"]), "--warmup", "1", "--steps", "2", "--chunk", "1",
            "--out-dir", str(tmp_path)]
    assert speed.main(argv) == 0
    default, fast = json.loads((tmp_path / "speed-dcgan.json").read_text())["modes"]
    assert fast["flags"] == "--fast" and "error" not in fast and fast["images_per_s"] > 0
    assert fast["images_per_step"] == default["images_per_step"] == 8


def test_cpu_runs_the_scripts_in_channels_last_unless_switched_off(tmp_path, monkeypatch):
    seen = []
    original_step = dcgan.discriminator_step

    def spy(D, opt_D, real, fake):
        weight = next(p for p in D.parameters() if p.dim() == 4)
        seen.append(weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous())
        return original_step(D, opt_D, real, fake)

    monkeypatch.setattr(dcgan, "discriminator_step", spy)
    argv = ["--script", "dcgan", "--device", "cpu", "--modes", "default", "fast", "--fast-flags=--no-channels-last",
            "--script-args=" + " ".join(TINY_ARGS["dcgan"]), "--warmup", "1", "--steps", "2", "--chunk", "1",
            "--out-dir", str(tmp_path)]
    assert speed.main(argv) == 0
    default, contiguous = json.loads((tmp_path / "speed-dcgan.json").read_text())["modes"]
    assert default["channels_last"] is True and contiguous["channels_last"] is False
    assert contiguous["flags"] == "--no-channels-last" and contiguous["images_per_s"] > 0
    steps = len(seen) // 2  # the default mode's steps, then the others
    assert steps >= 3 and seen == [True] * steps + [False] * steps, seen


def test_timer_takes_the_median_over_chunks(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 4.0])  # chunks of 10 images: 10/s, 5/s, 10/s
    monkeypatch.setattr(speed.time, "perf_counter", lambda: next(clock))
    timer = speed.Timer(torch.device("cpu"), warmup=2, steps=6, chunk=2)
    assert timer.marks == [2, 4, 6, 8]
    for step in range(9):
        timer.at(step, 5 * step)
    r = timer.result()
    assert r["images_per_s"] == 10.0 and r["spread"] == [5.0, 10.0] and r["mean_images_per_s"] == 7.5
    short = speed.Timer(torch.device("cpu"), 2, 6, 2)
    short.points = [(2, 0.0, 0), (4, 1.0, 10)]  # the run ended at step 4 of 8
    with pytest.raises(common.UserError):  # a run that stopped early is an error, not a number
        short.result()


def test_progan_script_modes_reach_the_plain_loops_phase_during_warm_up():
    # one step per phase (a batch per phase): 4x4, then fade-in and stabilise of 8 and 16 px, i.e.
    # the final phase from step 4, where the plain loop trains (final size, alpha 1)
    assert speed.bench_flags("progan", TINY_ARGS["progan"]) == ["--images-per-phase", "8"]
    assert speed.bench_flags("progan", []) == ["--images-per-phase", "16"]  # 64 px, batch 16: from step 8
    assert speed.bench_flags("dcgan", TINY_ARGS["dcgan"]) == []
    loop = plain_loops.make("progan", TINY_ARGS["progan"], "cpu", workers=0)
    assert (loop.depth, loop.alpha, loop.B) == (2, 1.0, 8)
