"""Several processes through torchrun (DistributedDataParallel, gloo on the CPU, 2 processes).

One torchrun launch (tests/_ddp_child.py) runs several trainings in turn and dumps what each
process holds at the end; the tests compare the two processes, the run folders and the resumes:
- identical weights (parameters and BN buffers) on both processes after training, for all nine
  image scripts;
- BEGAN's k_t and window sum agreeing, and InfoGAN holding the global confusion counts;
- only rank 0 writing: the run folder's exact file list, one row per step in metrics.csv, and
  nothing else in the working directory;
- each process's slice of the global batches;
- an exact distributed resume, a distributed checkpoint resumed in one process, and a
  single-process checkpoint resumed under 2 processes;
- a Ctrl-C (or a SIGTERM) delivered to one process only, after which both stop and save at the
  same step;
- the sentences for an indivisible batch, seqgan, --generate and --sync-bn on the CPU;
- torchrun with one process.
A Ctrl-C sent to torchrun's whole process group, as a terminal does, is not automated: tried by
hand on the CPU, both processes stopped at the same step and the checkpoint was saved.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, TINY_RUN, read_metrics
from torch.nn.parallel import DistributedDataParallel

import began
import common
import dcgan
import seqgan

ROOT = Path(__file__).resolve().parents[1]
TINY_D = TINY + ["--dataset-size", "128"]  # dcgan.py, 4 steps an epoch
TINY_B = TINY_RUN + ["--n-filters", "8", "--nz", "8", "--nh", "8"]  # began.py's tiny networks


def torchrun(plan: list, folder: Path, timeout: int = 400) -> dict:
    """Run the plan under `torchrun --nproc_per_node 2` with cwd folder/work; {(name, rank): dump}."""
    work, dump = folder / "work", folder / "dump"
    work.mkdir(exist_ok=True)
    dump.mkdir(exist_ok=True)
    (folder / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "tests" / "_ddp_child.py"), str(folder / "plan.json"), str(dump)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return {(p.stem.rsplit("-rank", 1)[0], int(p.stem.rsplit("-rank", 1)[1])): torch.load(p, weights_only=True)
            for p in dump.glob("*.pt")}


def same_modules(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].keys() == b[k].keys() and all(torch.equal(a[k][n], b[k][n]) for n in a[k]) for k in a)


def files(folder: Path) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


OTHERS = {  # every other image script, tiny, 3 steps (or progan's whole 16 px schedule) under torchrun
    "wgan": TINY + ["--critic-schedule", "constant", "--max-steps", "3"],
    "relativistic_gan": TINY_RUN + ["--width", "8", "--gp", "--d-norm", "batch", "--max-steps", "3"],
    "infogan": TINY + ["--fc-units", "32", "--q-units", "16", "--max-steps", "3"],
    "vaegan": TINY_RUN + ["--width", "4", "--batch-size", "16", "--dataset-size", "64", "--gate", "--max-steps", "3"],
    "sagan": TINY_RUN + ["--ch", "8", "--nz", "16", "--max-steps", "3"],
    "progan": ["--final-size", "16", "--dataset-size", "32", "--batch-size", "8", "--device", "cpu", "--log-every",
               "1", "--nz", "8", "--fmap-base", "64", "--fmap-max", "8", "--images-per-phase", "16", "--epochs", "3"],
    "cyclegan": ["--dataset-size", "4", "--image-size", "32", "--batch-size", "2", "--device", "cpu", "--log-every",
                 "1", "--ngf", "8", "--ndf", "8", "--n-blocks", "1", "--max-steps", "3"],
}


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    """dcgan: 2 epochs straight, 1 epoch then a resume to 2, an indivisible batch, a Ctrl-C on
    rank 1 alone; began: 6 steps, and a single-process run of 4 steps resumed to 8 under torchrun;
    the seven other image scripts: a few steps each. All in one torchrun launch."""
    folder = tmp_path_factory.mktemp("ddp")
    (folder / "work").mkdir()
    cwd = os.getcwd()
    os.chdir(folder / "work")
    try:
        began.main(TINY_B + ["--max-steps", "4", "--out", "single"])  # one process
    finally:
        os.chdir(cwd)
    dumps = torchrun([
        ["full", "dcgan", TINY_D + ["--epochs", "2", "--out", "full"]],
        ["half", "dcgan", TINY_D + ["--epochs", "1", "--out", "split"]],
        ["rest", "dcgan", ["--resume", "split", "--epochs", "2"]],
        ["odd", "dcgan", TINY_D + ["--batch-size", "31", "--out", "odd"]],
        ["ctrl_c", "dcgan", TINY_D + ["--log-every", "3", "--out", "stopped"], [1, 4]],
        ["sigterm", "dcgan", TINY_D + ["--log-every", "3", "--out", "terminated"], [1, 4, "SIGTERM"]],
        ["began", "began", TINY_B + ["--max-steps", "6", "--out", "began"]],
        ["resumed", "began", ["--resume", "single", "--max-steps", "8"]],
        *([name, name, argv + ["--out", name]] for name, argv in OTHERS.items()),
    ], folder)
    return folder / "work", dumps


def test_the_processes_hold_identical_networks(core):
    _, dumps = core
    for name in ("full", "half", "rest", "began", "resumed"):
        assert dumps[name, 0]["step"] == dumps[name, 1]["step"]
        assert same_modules(dumps[name, 0]["modules"], dumps[name, 1]["modules"]), name
    assert dumps["full", 0]["step"] == 8 and dumps["began", 0]["step"] == 6


def test_begans_k_t_and_lr_rule_agree_across_processes(core):
    _, dumps = core
    for name in ("began", "resumed"):
        s0, s1 = dumps[name, 0]["state"], dumps[name, 1]["state"]
        assert s0["k_t"] != 0  # it moved from k_0 = 0 ...
        assert torch.equal(s0["k_t"], s1["k_t"])  # ... to the same value on both processes
        assert torch.equal(s0["window_sum"], s1["window_sum"])


def test_only_rank_0_writes_files(core):
    work, dumps = core
    made = {"full", "split", "began", "single", "stopped", "terminated", *OTHERS}
    assert {p.name for p in work.iterdir()} == made  # no "odd"
    plot = {"losses.png"} if importlib.util.find_spec("matplotlib") else set()  # (optional dependency)
    assert files(work / "full") == {".lock", "config.json", "metrics.csv", "checkpoint.pt", *plot,
                                    "samples/epoch-001.png", "samples/epoch-002.png", "samples/final.png"}
    assert [int(r["step"]) for r in read_metrics(work / "full")] == list(range(1, 9))  # one writer
    assert json.loads((work / "full" / "config.json").read_text())["processes"] == 2
    ckpt = torch.load(work / "full" / "checkpoint.pt", weights_only=True)
    assert len(ckpt["rng_ranks"]) == 2 and not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])
    nets = dumps["full", 0]["modules"]
    assert same_modules({k: ckpt["modules"][k] for k in nets}, nets)


def test_each_process_takes_its_share_of_every_global_batch():
    images = torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 1, 4, 4)
    data = common.ImageData("t", 8, 1, 4, torch.device("cpu"), images=images, labels=torch.arange(8))
    whole = [y for _, y in data.batches(4, 0, 0)]
    shares = [[y for _, y in data.batches(4, 0, 0, rank=r, world=2)] for r in (0, 1)]
    for k, batch in enumerate(whole):  # each global batch, split in two halves, one per process
        assert torch.equal(torch.cat([shares[0][k], shares[1][k]]), batch)


def test_a_distributed_resume_continues_exactly(core):
    _, dumps = core
    for r in (0, 1):  # 1 epoch, checkpoint, resume to 2 epochs == 2 epochs straight, on each process
        assert same_modules(dumps["rest", r]["modules"], dumps["full", r]["modules"])


def test_a_distributed_checkpoint_resumes_in_one_process(core, monkeypatch):
    work, dumps = core
    monkeypatch.chdir(work)
    assert "rng_ranks" in torch.load(work / "split" / "checkpoint.pt", weights_only=True)
    dcgan.main(["--resume", "split", "--epochs", "3"])  # (split: 2 epochs, the 2nd under torchrun)
    rows = read_metrics(work / "split")
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    ckpt = torch.load(work / "split" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 12 and "rng_ranks" not in ckpt


def test_a_single_process_checkpoint_resumes_under_torchrun(core):
    work, dumps = core
    assert dumps["resumed", 0]["step"] == dumps["resumed", 1]["step"] == 8
    assert [int(r["step"]) for r in read_metrics(work / "single")] == list(range(1, 9))
    assert len(torch.load(work / "single" / "checkpoint.pt", weights_only=True)["rng_ranks"]) == 2


def test_ctrl_c_on_one_process_stops_both_at_the_same_step(core):
    work, dumps = core
    # rank 1 alone got SIGINT in its 5th step; both stop at the next --log-every (3) step: 6
    for r in (0, 1):
        assert "interrupted at step 6" in dumps["ctrl_c", r]["error"]
    assert torch.load(work / "stopped" / "checkpoint.pt", weights_only=True)["step"] == 6


def test_sigterm_on_one_process_stops_both_as_ctrl_c_does(core):
    work, dumps = core
    for r in (0, 1):
        assert "interrupted at step 6" in dumps["sigterm", r]["error"]
    assert torch.load(work / "terminated" / "checkpoint.pt", weights_only=True)["step"] == 6


def test_an_indivisible_batch_size_is_refused(core, monkeypatch):
    _, dumps = core
    for r in (0, 1):
        assert "--batch-size 31 does not split evenly over 2 processes" in dumps["odd", r]["error"]
    monkeypatch.setenv("RANK", "0")  # (in this process: refused before joining any group)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(common.UserError, match="does not split evenly over 2"):
        dcgan.main(TINY_D + ["--batch-size", "33"])
    assert not Path("runs").exists()


def test_what_runs_in_one_process_says_so_under_torchrun(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(common.UserError, match="this script runs in one process"):
        seqgan.main(["--device", "cpu", "--max-steps", "1"])
    with pytest.raises(common.UserError, match="--generate runs in one process"):
        common.setup(argparse.Namespace(seed=0, generate=4, batch_size=32, device="cpu", sync_bn=False))
    with pytest.raises(common.UserError, match="--sync-bn needs CUDA"):
        dcgan.main(TINY_D + ["--sync-bn"])
    assert not Path("runs").exists()


def test_torchrun_with_one_process_runs_the_distributed_path(monkeypatch):
    # (what a one-GPU machine can check of the NCCL path: torchrun --nproc_per_node=1)
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(port)).items():
        monkeypatch.setenv(key, value)
    import scale
    wrapped, distribute = [], scale.distribute

    def spy(module, *args, **kw):
        wrapped.append(distribute(module, *args, **kw))
        return wrapped[-1]

    monkeypatch.setattr(scale, "distribute", spy)
    try:
        dcgan.main(TINY_D + ["--max-steps", "2", "--out", "one"])
        assert common.world_size() == 1 and common.is_main()
        assert len(wrapped) == 2 and all(isinstance(m, DistributedDataParallel) for m in wrapped)
    finally:
        common.shutdown()
    assert len(torch.load("one/checkpoint.pt", weights_only=True)["rng_ranks"]) == 1
    assert [int(r["step"]) for r in read_metrics("one")] == [1, 2]


def test_one_process_is_untouched_by_the_distributed_code(tmp_path):
    assert not common.launched() and common.world_size() == 1 and common.is_main()
    net, other = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    args = dcgan.parse_args(["--sync-bn", "--device", "cpu", "--out", str(tmp_path / "run")])
    run = common.Run("dcgan", args, {"net": net, "opt": torch.optim.Adam(net.parameters())})
    assert run.prepare(net) is net and run.prepare(net, None, other) == (net, None, other)
    t = torch.tensor([1.0, 3.0])
    assert common.all_reduce(t) is t and t.tolist() == [1.0, 3.0]


def test_every_other_image_script_trains_alike_on_both_processes(core):
    work, dumps = core
    for name in OTHERS:
        assert "error" not in dumps[name, 0], dumps[name, 0].get("error")
        assert dumps[name, 0]["step"] == dumps[name, 1]["step"] > 0
        assert same_modules(dumps[name, 0]["modules"], dumps[name, 1]["modules"]), name
        assert (work / name / "samples" / "final.png").exists() and (work / name / "checkpoint.pt").exists()
        steps = [int(r["step"]) for r in read_metrics(work / name)]
        assert steps == sorted(set(steps))  # one writer
    s0, s1 = dumps["infogan", 0]["state"], dumps["infogan", 1]["state"]
    assert torch.equal(s0["confusion"], s1["confusion"]) and s0["confusion"].sum() == 3 * 32  # global counts
    assert dumps["progan", 0]["state"]["phase"] == dumps["progan", 1]["state"]["phase"] > 0
