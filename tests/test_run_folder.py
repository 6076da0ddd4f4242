"""A run folder is never lost or mixed up: one writer at a time, every rewritten file replaced
whole, SIGTERM saves like Ctrl-C, --resume into a new folder, older checkpoints only on request,
and the machine's failures (a full disk, a read-only folder) as one sentence with nothing lost."""
import csv
import errno
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, read_metrics, tree_digest

import common
import dcgan

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(monkeypatch, capsys, argv):
    monkeypatch.setattr(sys, "argv", ["dcgan.py", *argv])
    try:
        common.cli(dcgan.main)
    except SystemExit as e:
        return e.code, capsys.readouterr().err
    return 0, capsys.readouterr().err


def start(*argv, **kw):
    """`python dcgan.py argv` in the background (its output in pipes)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(ROOT / "dcgan.py"), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def wait_for_rows(run, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.csv").exists() and len(read_metrics(run)) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {n} metrics rows: {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}")


LONG = [*TINY, "--dataset-size", "2048", "--max-steps", "100000"]  # 64 steps per epoch


def test_a_second_writer_is_refused_while_the_first_trains_and_its_rows_stay(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    dcgan.main([*TINY, "--max-steps", "8", "--out", str(run)])  # a checkpoint at step 8
    proc = start("--resume", str(run), "--max-steps", "100000")
    try:
        wait_for_rows(run, 20, proc)
        for argv in (["--resume", str(run), "--max-steps", "9"], ["--generate", "2", "--resume", str(run)],
                     ["--resume", str(run / "checkpoint.pt"), "--out", str(run)]):
            code, err = run_cli(monkeypatch, capsys, argv)
            assert code == 2 and f"in use by another process (PID {proc.pid})" in err, err
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    steps = [int(r["step"]) for r in read_metrics(run)]
    assert steps == list(range(1, len(steps) + 1))  # no row lost, none twice
    assert not list(run.glob("generated-*"))


def test_the_lock_dies_with_its_process(tmp_path):
    run = tmp_path / "run"
    proc = start(*LONG, "--out", str(run))
    wait_for_rows(run, 3, proc)
    proc.kill()  # SIGKILL: no handler runs, the kernel drops the lock
    proc.communicate(timeout=60)
    common.lock_folder(run)  # free again
    common.unlock_folder(run)


def test_sigterm_finishes_the_step_saves_and_exits_143(tmp_path):
    run = tmp_path / "run"
    proc = start(*LONG, "--out", str(run))
    wait_for_rows(run, 5, proc)
    proc.terminate()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and f"Resume with: python dcgan.py --resume {run}" in err
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert saved >= 5 and int(read_metrics(run)[-1]["step"]) == saved  # nothing since the save lost
    dcgan.main(["--resume", str(run), "--max-steps", str(saved + 1)])
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == saved + 1


def test_a_rewrite_cut_short_leaves_the_old_metrics_whole(tmp_path, monkeypatch):
    run = tmp_path / "run"
    dcgan.main([*TINY, "--max-steps", "8", "--out", str(run)])
    with open(run / "metrics.csv", "a") as f:
        f.write("9,1.1,0,1,1,1,1\n10,1.1,0")  # a row past the checkpoint, and one cut by a kill
    before = (run / "metrics.csv").read_bytes()

    def killed(self, rows):  # the process dies half way through rewriting the file
        self.writerow(rows[0])
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(csv.DictWriter, "writerows", killed)
        with pytest.raises(KeyboardInterrupt):
            dcgan.main(["--resume", str(run), "--max-steps", "12"])
    assert (run / "metrics.csv").read_bytes() == before and not list(run.glob(".*.tmp"))
    dcgan.main(["--resume", str(run), "--max-steps", "12"])  # the next resume drops both rows
    assert [int(r["step"]) for r in read_metrics(run)] == list(range(1, 13))


def test_resume_into_a_new_folder_continues_there_and_leaves_the_old_one(tmp_path, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    dcgan.main([*TINY, "--max-steps", "8", "--out", str(old)])
    before = tree_digest(old)
    dcgan.main(["--resume", str(old), "--out", str(new), "--max-steps", "12"])
    assert tree_digest(old) == before
    assert torch.load(new / "checkpoint.pt", weights_only=True)["step"] == 12
    assert [int(r["step"]) for r in read_metrics(new)] == list(range(1, 13))
    assert {"config.json", "config-resume-8.json", "samples"} <= {p.name for p in new.iterdir()}
    assert (new / "samples" / "epoch-001.png").is_file()
    with pytest.raises(common.UserError, match="already holds files"):  # never into a used folder
        dcgan.main(["--resume", str(old), "--out", str(new), "--max-steps", "12"])


def test_an_older_checkpoint_file_is_refused_unless_rewound(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    dcgan.main([*TINY, "--max-steps", "8", "--out", str(run)])
    (run / "backup.pt").write_bytes((run / "checkpoint.pt").read_bytes())
    dcgan.main(["--resume", str(run), "--max-steps", "16"])
    before = tree_digest(run)
    code, err = run_cli(monkeypatch, capsys, ["--resume", str(run / "backup.pt"), "--max-steps", "20"])
    assert code == 2 and "would drop steps 9-16" in err and "--rewind" in err, err
    assert tree_digest(run) == before
    dcgan.main(["--resume", str(run / "backup.pt"), "--rewind", "--max-steps", "10"])
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 10
    assert [int(r["step"]) for r in read_metrics(run)] == list(range(1, 11))


def test_a_refused_run_does_not_claim_its_folder(tmp_path, monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, [*TINY, "--dataset-size", "8", "--out", "X"])
    assert code == 2 and "larger than the dataset" in err
    assert not (tmp_path / "X").exists() and not (tmp_path / "runs").exists()
    code, err = run_cli(monkeypatch, capsys, [*TINY, "--dataset-size", "8", "--batch-size", "4", "--max-steps", "2",
                                              "--out", "X"])
    assert code == 0, err
    assert torch.load(tmp_path / "X" / "checkpoint.pt", weights_only=True)["step"] == 2


def _limited_file_size(limit):
    def setup():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return setup


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file-size limits")
def test_a_full_disk_is_one_sentence_and_the_last_checkpoint_stays(tmp_path):
    run = tmp_path / "run"
    dcgan.main([*TINY, "--max-steps", "8", "--out", str(run)])
    before = tree_digest(run)
    size = (run / "checkpoint.pt").stat().st_size
    proc = start("--resume", str(run), "--max-steps", "16", preexec_fn=_limited_file_size(size // 2))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "checkpoint.pt" in err and "was not saved" in err and "previous checkpoint.pt is kept" in err
    assert tree_digest(run)["checkpoint.pt"] == before["checkpoint.pt"]
    assert not list(run.glob(".*.tmp")) and not list(run.glob("*.tmp"))
    assert all(p.stat().st_size > 0 for p in run.glob("config*.json"))
    dcgan.main(["--resume", str(run), "--max-steps", "16"])  # with room again, it goes on from step 8
    assert [int(r["step"]) for r in read_metrics(run)] == list(range(1, 17))


@pytest.mark.parametrize("where", ["new run", "resume", "generate"])
def test_a_read_only_folder_is_one_sentence(where, tmp_path, monkeypatch, capsys):
    dcgan.main([*TINY, "--max-steps", "2", "--out", "run"])
    before = tree_digest(tmp_path / "run")
    real_open, real_mkdir = open, Path.mkdir

    def read_only(error):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), error)

    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: read_only(str(self)))
    monkeypatch.setattr("builtins.open", lambda f, mode="r", *a, **k: read_only(str(f)) if set(mode) & set("wa+x")
                        else real_open(f, mode, *a, **k))
    argv = {"new run": [*TINY, "--max-steps", "2", "--out", "other"],
            "resume": ["--resume", "run", "--max-steps", "4"],
            "generate": ["--generate", "2", "--resume", "run"]}[where]
    code, err = run_cli(monkeypatch, capsys, argv)
    monkeypatch.setattr(Path, "mkdir", real_mkdir)
    assert code == 2 and "Read-only file system" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert tree_digest(tmp_path / "run") == before


def test_the_nan_message_says_what_a_resume_can_do(tmp_path, monkeypatch, capsys):
    real = dcgan.d_loss
    monkeypatch.setattr(dcgan, "d_loss", lambda r, f: real(r, f) * float("nan"))
    code, err = run_cli(monkeypatch, capsys, [*TINY, "--max-steps", "4", "--out", "fresh"])
    assert code == 1 and "no checkpoint had been saved yet" in err and "--resume" not in err, err
    monkeypatch.setattr(dcgan, "d_loss", real)
    dcgan.main([*TINY, "--max-steps", "8", "--out", "run"])
    monkeypatch.setattr(dcgan, "d_loss", lambda r, f: real(r, f) * float("nan"))
    code, err = run_cli(monkeypatch, capsys, ["--resume", "run", "--max-steps", "12"])
    assert code == 1 and "checkpoint (step 8) is kept" in err and "lower learning rate" in err, err
    assert "with a lower learning rate" not in err.split("Start a new run")[0]


def test_every_temporary_name_is_unique_to_its_writer(tmp_path):
    seen = []

    def write(tmp):
        seen.append(Path(tmp).name)
        Path(tmp).write_text("x")

    common.replace_atomically(tmp_path / "f.txt", write)
    assert seen[0].startswith(".f.txt.") and str(os.getpid()) in seen[0]
    assert (tmp_path / "f.txt").read_text() == "x" and not list(tmp_path.glob(".*.tmp"))
