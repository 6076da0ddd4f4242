"""The command line as a user meets it: a run's files, --generate, Ctrl-C, and bad input.

The run folder and its files, an empty --out folder accepted, one config file per resume,
--generate, Ctrl-C, and every kind of bad input through the real command line.

Bad input must give one sentence on stderr, a non-zero exit, no traceback, and leave every
earlier run as it was. Most cases go through common.cli in-process (fast); a few run the real
command in a subprocess."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, fake_mnist, read_metrics, tree_digest

import common
import dcgan

ROOT = Path(__file__).resolve().parents[1]


def run_cli(monkeypatch, capsys, argv):
    """Run `python dcgan.py argv` in-process; returns (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["dcgan.py", *argv])
    code = 0
    try:
        common.cli(dcgan.main)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_a_run_writes_what_the_readme_promises(tmp_path):
    dcgan.main(TINY + ["--max-steps", "10", "--sample-every", "5", "--out", "run"])
    run = tmp_path / "run"
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "samples/final.png",
                 "samples/epoch-001.png", "samples/step-0000005.png", "samples/step-0000010.png"):
        assert (run / name).is_file(), name
    rows = read_metrics(run)
    assert len(rows) == 10 and set(rows[0]) >= {"step", "epoch", "images_per_s", "loss_D", "loss_G",
                                                "D_x", "D_G_z"}
    assert not list(run.glob("*.tmp"))


def test_default_run_folder_names(tmp_path):
    dcgan.main(TINY + ["--max-steps", "1"])
    dcgan.main(TINY + ["--max-steps", "1"])
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(name.startswith("dcgan-shapes-") for name in runs)


def test_an_empty_out_folder_is_used_and_each_resume_keeps_its_own_config(tmp_path):
    (tmp_path / "made").mkdir()
    dcgan.main(TINY + ["--max-steps", "1", "--out", "made"])
    assert (tmp_path / "made" / "config.json").is_file()
    dcgan.main(["--resume", "made", "--max-steps", "2"])
    (tmp_path / "made" / "checkpoint.pt").write_bytes((tmp_path / "made" / "checkpoint.pt").read_bytes())
    for _ in range(2):  # resumed twice from the same checkpoint (the first resume crashed, say)
        dcgan.main(["--resume", "made/checkpoint.pt", "--max-steps", "2"])
    assert sorted(p.name for p in (tmp_path / "made").glob("config-resume-*")) == [
        "config-resume-1.json", "config-resume-2-2.json", "config-resume-2.json"]


def test_generate_writes_a_grid_and_one_png_per_sample(tmp_path):
    dcgan.main(TINY + ["--max-steps", "2", "--out", "run"])
    before = tree_digest(tmp_path / "run")
    dcgan.main(["--generate", "10", "--resume", "run"])
    dcgan.main(["--generate", "3", "--resume", "run/checkpoint.pt"])
    folders = sorted((tmp_path / "run").glob("generated-*"))
    assert len(folders) == 2
    assert sorted(p.name for p in folders[0].iterdir()) == [f"{i:05d}.png" for i in range(10)] + ["grid.png"]
    assert len(list(folders[1].iterdir())) == 4
    after = tree_digest(tmp_path / "run")
    assert {k: v for k, v in after.items() if not k.startswith("generated-")} == before


def test_generate_without_a_checkpoint_is_refused(monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, ["--generate", "4"])
    assert code == 2 and "--generate needs --resume" in err


BAD_INPUT = {
    "unknown dataset": (["--dataset", "imagenet-42"], "invalid choice"),
    "mnist missing": (["--dataset", "mnist", "--data-root", "nothing-here"], "--download"),
    "size the architecture cannot make": (["--image-size", "48"], "power of two"),
    "batch size 0": (["--batch-size", "0"], "positive integer"),
    "negative batch size": (["--batch-size", "-4"], "positive integer"),
    "batch larger than the data": (["--batch-size", "300"], "larger than the dataset"),
    "learning rate not a number": (["--lr", "nan"], "positive number"),
    "empty image folder": (["--dataset", "folder", "--data-root", "empty"], "no images found"),
    "damaged image": (["--dataset", "folder", "--data-root", "broken", "--workers", "2", "--batch-size", "1"],
                      "cannot read image"),
    "damaged checkpoint": (["--resume", "junk.pt"], "damaged"),
    "checkpoint from another script": (["--resume", "wgan.pt"], "written by wgan.py"),
    "checkpoint that does not exist": (["--resume", "nowhere"], "no checkpoint at"),
    "out folder already used": (["--out", "earlier"], "already holds files"),
    "out is a file": (["--out", "junk.pt"], "is a file"),
    "negative seed": (["--seed", "-1"], "must be from 0 to 2**63 - 1"),
    "seed too large": (["--seed", "99999999999999999999"], "must be from 0 to 2**63 - 1"),
    "out inside a file": (["--out", "junk.pt/sub"], "junk.pt is a file"),
    "checkpoint without its state": (["--resume", "partial.pt"], "has no 'batches_drawn'"),
    "generate into another folder": (["--generate", "2", "--resume", "earlier", "--out", "x"],
                                     "--out does not apply to --generate"),
    "resume with another architecture": (["--resume", "earlier", "--ngf", "16"], "--ngf was 8 for this run"),
    "resume with another learning rate": (["--resume", "earlier", "--lr", "1e-3"], "cannot change on resume"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_sentence_and_leaves_earlier_runs(case, tmp_path, monkeypatch, capsys):
    dcgan.main(TINY + ["--max-steps", "2", "--out", "earlier"])
    before = tree_digest(tmp_path / "earlier")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"\x89PNG not an image")
    (tmp_path / "junk.pt").write_bytes(os.urandom(2000))
    torch.save({"script": "wgan", "args": {}}, tmp_path / "wgan.pt")
    full = torch.load(tmp_path / "earlier" / "checkpoint.pt", weights_only=True)
    torch.save({k: full[k] for k in ("script", "args", "step")}, tmp_path / "partial.pt")
    capsys.readouterr()
    listing = sorted(os.listdir(tmp_path))
    argv, expected = BAD_INPUT[case]
    code, err = run_cli(monkeypatch, capsys, argv if argv[0] in ("--resume", "--generate") else TINY + argv)
    assert code == 2, err
    assert expected in err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("usage:")
             and not line.startswith(" ")]
    assert len(lines) == 1, err
    assert tree_digest(tmp_path / "earlier") == before
    assert sorted(os.listdir(tmp_path)) == listing  # a refused run leaves nothing behind (no runs/...)


def test_nan_loss_stops_with_one_sentence_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    dcgan.main(TINY + ["--max-steps", "8", "--out", "run"])  # a whole epoch: checkpoint at step 8
    saved = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    calls = {"n": 0}
    real_d_loss = dcgan.d_loss

    def poisoned(real_logits, fake_logits):
        calls["n"] += 1
        loss = real_d_loss(real_logits, fake_logits)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(dcgan, "d_loss", poisoned)
    code, err = run_cli(monkeypatch, capsys, ["--resume", "run", "--max-steps", "16"])
    assert code == 1 and "loss_D became nan" in err and "Traceback" not in err
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == saved


def _python(*argv, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    return subprocess.Popen([sys.executable, str(ROOT / "dcgan.py"), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def test_the_real_command_trains_and_reports_bad_input_cleanly(tmp_path):
    proc = _python(*TINY, "--max-steps", "3", "--out", str(tmp_path / "run"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "done: 3 steps" in out and (tmp_path / "run" / "samples" / "final.png").exists()
    proc = _python("--resume", str(tmp_path / "run" / "config.json"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err and "damaged" in err


def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(tmp_path):
    run = tmp_path / "run"
    proc = _python(*TINY, "--max-steps", "100000", "--dataset-size", "20000", "--out", str(run),
                   "--log-every", "5")
    deadline = time.time() + 120
    while not (run / "metrics.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"--resume {run}" in err
    step = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert step >= 5
    # and the run goes on from there
    dcgan.main(["--resume", str(run), "--max-steps", str(step + 2)])
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == step + 2


def test_grayscale_data_trains_and_generates_with_one_channel(tmp_path):
    fake_mnist(tmp_path / "data")
    dcgan.main(TINY + ["--dataset", "mnist", "--data-root", "data", "--max-steps", "1", "--batch-size", "8",
                       "--out", "run"])
    dcgan.main(["--generate", "2", "--resume", "run"])  # builds a 1-channel G from the saved flags
    from PIL import Image
    image = next((tmp_path / "run").glob("generated-*/00000.png"))
    assert Image.open(image).size == (16, 16)
    G = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["modules"]["G"]
    last_conv = [v for k, v in G.items() if k.startswith("body") and k.endswith("weight")][-1]
    assert last_conv.shape[1] == 1  # (in, out, k, k) of G's output layer


def test_preset_laptop_fills_in_its_flags_and_each_flag_given_overrides_it(tmp_path, monkeypatch, capsys):
    args = dcgan.parse_args(["--preset", "laptop", "--ngf", "16"])
    assert (args.image_size, args.channels, args.ndf, args.kernel_size, args.batch_size, args.epochs) == \
        (32, 1, 32, 4, 64, 12)
    assert args.ngf == 16  # given: the preset's 32 does not apply
    assert dcgan.parse_args([]).image_size == 64  # without it, the paper's defaults
    dcgan.main(["--preset", "laptop", "--dataset-size", "128", "--max-steps", "1", "--device", "cpu",
                "--out", "run"])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["args"]["preset"] == "laptop" and config["args"]["image_size"] == 32
    code, err = run_cli(monkeypatch, capsys, ["--resume", "run", "--preset", "laptop"])
    assert code == 2 and "--preset configures a new run" in err
    monkeypatch.setattr(sys, "argv", ["dcgan.py", "--help"])
    with pytest.raises(SystemExit):
        dcgan.parse_args()
    listed = " ".join(re.sub(r"-\n\s+", "-", capsys.readouterr().out).split())  # (argparse wraps at hyphens)
    assert "laptop = --image-size 32 --channels 1" in listed


@pytest.mark.parametrize("script", ["dcgan", "wgan", "relativistic_gan", "infogan", "began", "vaegan", "sagan",
                                    "progan", "cyclegan", "seqgan"])
def test_every_script_has_a_laptop_preset_its_parser_accepts(script):
    module = __import__(script)
    preset = module.PRESETS["laptop"].split()
    assert vars(module.parse_args(["--preset", "laptop"])) == {**vars(module.parse_args(preset)), "preset": "laptop"}
