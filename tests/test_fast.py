"""--fast (scale.Graphed, common.Run.fast_step, scale.make_capturable): the fast path must not change
what a training step computes. On the CPU the step runs eagerly through Graphed's static buffers
(the plumbing a CUDA graph replays from), so a --fast run must end with exactly the weights
and losses of a default run.

On the CPU: every image script ends with exactly the weights and losses of a default run; the
static buffers and returned copies of scale.Graphed; optimisers switched to and from
`capturable`, a 0-dim parameter included; a GPU --fast checkpoint resumed on the CPU with this
device's optimiser choices; --no-fast on resume; --compile --fast (inductor) giving the eager
weights and a checkpoint that resumes uncompiled; seqgan refusing --fast. On a GPU only
(skipped elsewhere): a captured step against eager steps, fresh random draws at every replay, a
step that cannot be captured ending in one sentence, and every script trained (graphs replayed)
and resumed with --fast.
"""
import argparse
import importlib
import shutil

import pytest
import torch
import torch.nn as nn
from conftest import TINY, TINY_RUN, read_metrics

import common
import scale

# script -> tiny flags (each script's own test file uses the same sizes)
SCRIPTS = {
    "dcgan": TINY,
    "wgan": TINY + ["--critic-schedule", "constant"],
    "relativistic_gan": TINY_RUN + ["--width", "8"],
    "infogan": TINY + ["--fc-units", "32", "--q-units", "16"],
    "began": TINY_RUN + ["--n-filters", "8", "--nz", "8", "--nh", "8", "--lr-window", "2",
                         "--lr-decay", "fixed"],  # the learning rate halves every 2 steps: reset()
    "vaegan": TINY_RUN + ["--width", "4", "--batch-size", "16", "--dataset-size", "64"],
    "sagan": TINY_RUN + ["--ch", "8", "--nz", "16"],
    "progan": ["--final-size", "16", "--dataset-size", "32", "--batch-size", "8", "--device", "cpu",
               "--log-every", "1", "--nz", "8", "--fmap-base", "64", "--fmap-max", "8",
               "--images-per-phase", "16"],  # fade-in and stabilise phases, 4x4 to 16x16
    "cyclegan": ["--dataset-size", "4", "--image-size", "32", "--batch-size", "1", "--device", "cpu",
                 "--log-every", "1", "--ngf", "8", "--ndf", "8", "--n-blocks", "1",
                 "--n-epochs", "1", "--n-epochs-decay", "2"],  # the lr changes each epoch: reset()
}
STEPS = {"progan": 10, "cyclegan": 8}
# on CUDA, longer phases and lr windows than the 3 warm-up steps: every script replays a graph
CUDA_FLAGS = {"progan": ["--images-per-phase", "64"], "began": ["--lr-window", "8"]}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread is faster


def _weights(run_dir):
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    return {(name, k): v for name, sd in ckpt["modules"].items() if "opt" not in name and "sched" not in name
            and "pool" not in name for k, v in sd.items() if torch.is_tensor(v)}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_fast_path_on_cpu_changes_nothing_a_step_computes(script, tmp_path, capsys):
    module = importlib.import_module(script)
    flags = SCRIPTS[script] + ["--max-steps", str(STEPS.get(script, 6))]
    module.main(flags + ["--out", str(tmp_path / "plain")])
    module.main(flags + ["--fast", "--out", str(tmp_path / "fast")])
    assert "--fast: CUDA graphs need a CUDA device" in capsys.readouterr().out
    plain, fast = _weights(tmp_path / "plain"), _weights(tmp_path / "fast")
    assert plain.keys() == fast.keys() and plain
    for key in plain:
        assert torch.equal(plain[key], fast[key]), key
    rows_plain, rows_fast = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "fast")
    assert len(rows_plain) == len(rows_fast) > 0
    for a, b in zip(rows_plain, rows_fast):
        a.pop("images_per_s"), b.pop("images_per_s")
        assert a == b


def test_fast_step_without_fast_is_the_step_itself(tmp_path):
    p = argparse.ArgumentParser()
    common.add_run_args(p)
    run = common.Run("dcgan", p.parse_args(["--out", str(tmp_path / "run")]), {})
    fn = lambda x: x
    assert run.fast_step(fn) is fn
    fast = common.Run("dcgan", p.parse_args(["--fast", "--out", str(tmp_path / "fast")]), {})
    assert fast.fast_step(fn, capture=False) is fn  # (a step that decides on the host: vaegan.py's --gate)
    assert isinstance(fast.fast_step(fn), scale.Graphed)


def test_a_graphed_step_starts_anew_when_a_learning_rate_changes():
    # a captured graph holds the optimisers' hyperparameters: a change (BEGAN's halving, CycleGAN's
    # decay) or a cleared state (ProGAN's new phase) must reset it; on the CPU nothing is captured,
    # so the check is made against a graph that stands in for one
    w = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    step = scale.Graphed(lambda x: x, capture=False, optimizers=[opt])
    step(torch.ones(1))
    step.graph, step.captured_key, step.calls = "captured", step.key(), 5
    step(torch.ones(1))
    assert step.graph == "captured" and step.calls == 6          # nothing changed: replayed
    opt.param_groups[0]["lr"] = 0.05
    step(torch.ones(1))
    assert step.graph is None and step.calls == 1                # a new learning rate: warm-up again
    step.graph, step.captured_key = "captured", step.key()
    opt.state[w]["momentum_buffer"] = torch.zeros(2)
    step(torch.ones(1))
    assert step.graph is None                                    # a state that changed size


def test_graphed_steps_run_on_static_buffers_and_return_copies():
    calls = []

    def fn(x, scale, extra=None):
        calls.append(x)
        return {"same": x, "scaled": x * scale}  # "same" is the static buffer itself

    step = scale.Graphed(fn, capture=False)
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    out_a = step(a, 2.0)
    out_b = step(b, 2.0)
    assert calls[0] is calls[1] and calls[0] is not a       # one static buffer, refilled
    assert torch.equal(out_a["same"], a) and torch.equal(out_b["same"], b)  # copies: not overwritten
    assert torch.equal(out_b["scaled"], 2 * b)
    step(torch.zeros(3), 2.0)                                # a new shape: new buffers
    assert calls[2] is not calls[0] and calls[2].shape == (3,)
    assert step.calls == 1                                   # ... and warm-up starts again
    step(torch.zeros(3), 2.0, torch.ones(1))                 # another number of inputs: new buffers
    assert calls[3] is not calls[2] and step.calls == 1


def test_make_capturable_switches_flag_and_keeps_step_counts_as_float_tensors():
    # a 0-dim parameter too (SAGAN's γ): its state holds no tensor with a dimension
    w, gamma = nn.Parameter(torch.ones(3)), nn.Parameter(torch.zeros(()))
    for opt in (torch.optim.RMSprop([w, gamma], lr=0.1), torch.optim.Adam([w, gamma], lr=0.1)):
        w.grad, gamma.grad = torch.ones(3), torch.ones(())
        opt.step()
        for state in opt.state.values():
            state["step"] = state["step"].double()  # as a non-capturable step count may be
        scale.make_capturable(opt, True)
        assert opt.param_groups[0]["capturable"]
        assert all(s["step"].dtype == torch.float32 for s in opt.state.values())
        scale.make_capturable(opt, False)
        assert not opt.param_groups[0]["capturable"]


def test_a_checkpoint_of_a_gpu_fast_run_resumes_on_the_cpu(tmp_path):
    """A --fast run on a GPU saves optimisers with capturable=True; resumed on a CPU (where a
    capturable optimiser cannot step) the run switches them back instead of failing."""
    dcgan = importlib.import_module("dcgan")
    dcgan.main(TINY + ["--max-steps", "2", "--out", str(tmp_path / "run")])
    path = tmp_path / "run" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    for name in ("opt_G", "opt_D"):
        for group in ckpt["modules"][name]["param_groups"]:
            group["capturable"] = group["fused"] = True  # as saved on a GPU with --fast
    torch.save(ckpt, path)
    result = dcgan.main(["--resume", str(tmp_path / "run"), "--max-steps", "4"])
    assert result["step"] == 4
    for name in ("opt_G", "opt_D"):  # this device's choices, not the GPU's
        group = torch.load(path, weights_only=True)["modules"][name]["param_groups"][0]
        assert not group["capturable"] and not group["fused"]


def test_fast_amp_and_compile_can_be_switched_off_on_resume(tmp_path):
    import json

    dcgan = importlib.import_module("dcgan")
    run = tmp_path / "run"
    dcgan.main(TINY + ["--max-steps", "2", "--fast", "--out", str(run)])
    dcgan.main(["--resume", str(run), "--max-steps", "3"])              # kept: the run's flag
    dcgan.main(["--resume", str(run), "--max-steps", "4", "--no-fast"])  # switched off
    steps = {json.loads(f.read_text())["resumed_from_step"]: json.loads(f.read_text())["args"]["fast"]
             for f in run.glob("config-resume-*.json")}
    assert steps == {2: True, 3: False}


@pytest.mark.skipif(not shutil.which("g++") and not shutil.which("c++"), reason="torch.compile needs a C++ compiler")
def test_compile_with_fast_trains_as_eager_and_its_checkpoint_resumes_uncompiled(tmp_path):
    # --compile compiles the networks in place (torch.compile; on the CPU inductor's C++ code),
    # so a step computes what the eager step computes (up to the fused kernels' rounding), the
    # checkpoint has the plain networks' keys, and it resumes without --compile
    dcgan = importlib.import_module("dcgan")
    flags = TINY + ["--max-steps", "3"]
    dcgan.main(flags + ["--out", str(tmp_path / "eager")])
    from torch._dynamo.utils import counters
    counters.clear()
    dcgan.main(flags + ["--compile", "--fast", "--out", str(tmp_path / "compiled")])
    assert counters["stats"]["unique_graphs"] > 0               # something was compiled
    eager, compiled = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    assert eager.keys() == compiled.keys()                      # no "_orig_mod." prefixes
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-3, atol=1e-4)
    result = dcgan.main(["--resume", str(tmp_path / "compiled"), "--max-steps", "4", "--no-compile", "--no-fast"])
    assert result["step"] == 4


def test_seqgan_refuses_fast(capsys):
    seqgan = importlib.import_module("seqgan")
    with pytest.raises(SystemExit):
        seqgan.main(["--fast", "--device", "cpu"])
    assert "--fast" in capsys.readouterr().err


# -- on a GPU: the capture itself ----------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_captured_step_matches_eager_steps_on_cuda():
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1)).cuda()
            for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [torch.optim.Adam(n.parameters(), lr=1e-2, fused=True) for n in nets]
    scale.make_capturable(opts[1], True)

    def step(net, opt, x):
        loss = net(x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    graphed = scale.Graphed(lambda x: step(nets[1], opts[1], x), capture=True, warmup=2)
    for _ in range(8):  # 2 warm-up calls, a capture, 5 replays
        x = torch.randn(32, 8, device="cuda")
        eager, replayed = step(nets[0], opts[0], x), graphed(x)
        torch.testing.assert_close(replayed, eager, rtol=1e-4, atol=1e-5)
    assert graphed.graph is not None
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-5)


@cuda
def test_random_draws_inside_a_captured_step_are_fresh_at_every_replay():
    step = scale.Graphed(lambda x: x + torch.randn(4, device="cuda"), capture=True, warmup=1)
    outs = [step(torch.zeros(4, device="cuda")) for _ in range(4)]  # 1 warm-up, a capture, 2 replays
    assert step.replays == 3 and len({tuple(o.tolist()) for o in outs}) == 4


@cuda
def test_a_step_that_cannot_be_captured_ends_with_one_sentence():
    step = scale.Graphed(lambda x: x * x.sum().item(), capture=True, warmup=1, error=common.TrainingError)
    step(torch.ones(4, device="cuda"))
    with pytest.raises(common.TrainingError) as e:
        step(torch.ones(4, device="cuda"))
    message = str(e.value)
    assert "\n" not in message and "CUDA_LAUNCH_BLOCKING" not in message and "without --fast" in message
    torch.cuda.synchronize()  # the device is still usable


@cuda
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_every_script_trains_with_fast_on_cuda(script, tmp_path, monkeypatch):
    steps = []

    class Spy(scale.Graphed):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            steps.append(self)

    monkeypatch.setattr(scale, "Graphed", Spy)
    module = importlib.import_module(script)
    flags = [f if f != "cpu" else "cuda" for f in SCRIPTS[script]] + CUDA_FLAGS.get(script, [])
    result = module.main(flags + ["--max-steps", "12", "--fast", "--out", str(tmp_path / "run")])
    losses = {k: v for k, v in result.items() if k.startswith("loss")}
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert steps and all(s.capture for s in steps) and sum(s.replays for s in steps) > 0  # graphs ran
    module.main(["--resume", str(tmp_path / "run"), "--max-steps", "14", "--fast"])  # resumes a graphed run
