"""Plumbing shared by the ten GAN scripts: flags, device, seeding, data, run folder, checkpoints.

Nothing in here is a network, a loss or an idea from a paper: read a script first, and come here
to learn what `run.batches(data)` does. The data (the built-in shapes, torchvision's datasets,
image folders, batches) is in data.py and reached from here; several processes (torchrun), CUDA
graphs (--fast) and bf16 autocast (--amp) live in scale.py, imported only by a run that asks.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import errno
import io
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import sys
import threading
import time
import weakref
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

# Defined in data.py (read it there), re-exported: a script imports common alone (common.load_dataset)
from data import DATASETS, ImageData, ImageFiles, UserError, load_dataset, load_unpaired, seed_of, shapes_data  # noqa: F401


# --- Errors and the command line --------------------------------------------------------------
class TrainingError(Exception):
    """Training cannot go on (a NaN loss): printed as one sentence, exit status 1."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: a checkpoint was saved; the message says how to resume. Exit status 128 +
    the signal's number (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process it stopped."""


# What the machine failed at (a full disk), exit status 1; anything else the user can fix: 2.
_MACHINE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EIO, getattr(errno, "EDQUOT", errno.ENOSPC), errno.ENOMEM}


def _os_sentence(e: OSError) -> str:
    return f"{e.filename}: {e.strerror}" if e.filename and e.strerror else f"{e.strerror or e}"


def _one_line(error: BaseException) -> str:
    # An error raised in a DataLoader worker comes back with the worker's traceback inside its
    # message; the sentence we wrote is its last line.
    text = str(error).strip().splitlines() or [type(error).__name__]
    return text[-1].split("UserError: ")[-1]


def cli(main) -> None:
    """Run `main(sys.argv[1:])` as a command: the three errors above (and running out of GPU
    memory) become one sentence and an exit code; anything else is a bug and keeps its traceback."""
    prog, shared = Path(sys.argv[0]).name, False
    try:
        main(sys.argv[1:])
        return
    except UserError as e:  # (bad flags or data: the same on every process of a node)
        message, code, shared = f"error: {_one_line(e)}", 2, os.environ.get("LOCAL_RANK", "0") != "0"
    except TrainingError as e:
        message, code, shared = _one_line(e), 1, True
    except Interrupted as e:
        message, code, shared = str(e), 128 + _stop_signal, True
    except OSError as e:  # (a full disk, a read-only folder: the run's files are left as they were)
        message, code = f"error: {_os_sentence(e)}.", 1 if e.errno in _MACHINE_ERRORS else 2
    except torch.cuda.OutOfMemoryError:
        message, code = "error: out of GPU memory; try a smaller --batch-size or --image-size.", 1
    except KeyboardInterrupt:
        message, code, shared = "aborted (no checkpoint written since the last one).", 130, True
    finally:
        shutdown()  # (under torchrun: leave the process group however main ended)
    # Under torchrun a `shared` error happens on every process alike: rank 0 alone says it.
    if _env_rank() == 0:
        print(f"{prog}: {message}", file=sys.stderr)
    elif not shared:
        print(f"{prog} [rank {_env_rank()}]: {message}", file=sys.stderr)
    sys.exit(code)


# --- Flags ------------------------------------------------------------------------------------
def _checked(convert, ok, must: str):
    """An argparse type: convert(text), refused unless ok(value) ("must be <must>, got <text>")."""
    def parse(text: str):
        value = convert(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {must}, got {text}")
        return value
    parse.__name__ = convert.__name__  # (argparse: "invalid int value: 'x'")
    return parse


positive_int = _checked(int, lambda v: v > 0, "a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "0 or more")
seed_int = _checked(int, lambda v: 0 <= v < 2**63, "from 0 to 2**63 - 1")
positive_float = _checked(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
non_negative_float = _checked(float, lambda v: v >= 0 and math.isfinite(v), "0 or more")
unit_interval = _checked(float, lambda v: 0 <= v < 1, "in [0, 1)")


def add_run_args(parser: argparse.ArgumentParser, help: dict | None = None, hide=(), presets: dict | None = None,
                 **defaults) -> None:
    """The flags every script shares. `defaults` overrides ours, `help` rewrites a flag's help for
    one script, `hide` keeps flags that do not apply out of --help (seqgan.py's image flags),
    `presets` names configurations of the script's flags ({"laptop": "--image-size 32 ..."})."""
    g = parser.add_argument_group("run (shared by all scripts)")
    if presets:
        parser.presets = presets
        g.add_argument("--preset", choices=tuple(presets), default=None,
                       help="start from a named configuration of this script's flags (flags given too "
                            "override it): " + "; ".join(f"{k} = {v}" for k, v in presets.items()).replace("%", "%%"))
    g.add_argument("--dataset", choices=DATASETS, default="shapes", help="training data; 'shapes' is built in")
    g.add_argument("--data-root", default="./data", help="folder holding the real datasets")
    g.add_argument("--download", action="store_true", help="download the dataset if missing")
    g.add_argument("--image-size", type=positive_int, default=64, help="image side in pixels")
    g.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="1 (grayscale) or 3 (RGB); default: the dataset's own (shapes: 3)")
    g.add_argument("--dataset-size", type=positive_int, default=None,
                   help="number of images (shapes: how many to render, default 60000; "
                        "other datasets: use the first N, default all)")
    g.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    g.add_argument("--epochs", type=positive_int, default=5, help="passes over the data")
    g.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop after this many training steps in all (for quick runs)")
    g.add_argument("--seed", type=seed_int, default=0, help="seed for weights, latents and data order")
    g.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto", help="auto: cuda, mps, cpu")
    g.add_argument("--out", default=None,
                   help="run folder (default runs/<script>-<dataset>-<time>); must be new or empty. With "
                        "--resume: continue the run in this new folder (a copy), leaving the old one as it was")
    g.add_argument("--resume", default=None, metavar="RUN_OR_CHECKPOINT",
                   help="continue a run (its folder or its checkpoint.pt); with --generate, the model to sample from")
    g.add_argument("--rewind", action="store_true",
                   help="with --resume FILE older than its folder's checkpoint.pt: go back to FILE in that "
                        "folder, dropping the newer checkpoint and metrics (without it: refused)")
    g.add_argument("--generate", type=positive_int, default=None, metavar="N",
                   help="write N samples from the --resume checkpoint instead of training")
    g.add_argument("--sample-every", type=non_negative_int, default=0,
                   help="also save a sample grid every N steps (0: only at the end of each epoch)")
    g.add_argument("--log-every", type=positive_int, default=50, help="write mean losses to metrics.csv every N steps")
    g.add_argument("--workers", type=non_negative_int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader worker processes for datasets read from disk")
    on_off = argparse.BooleanOptionalAction
    g.add_argument("--amp", action=on_off, default=False, help="bf16 autocast (CUDA; faster, less exact)")
    g.add_argument("--compile", action=on_off, default=False, help="torch.compile the networks")
    g.add_argument("--channels-last", action=on_off, default=None,
                   help="the networks' weights in channels-last memory format (default: on for a CPU, where "
                        "these networks train faster that way, benchmarks/README.md; off elsewhere)")
    g.add_argument("--fast", action=on_off, default=False,
                   help="run each training step as one captured CUDA graph (CUDA only: the same "
                        "step with a fraction of the kernel-launch overhead; docs/fast.md)")
    g.add_argument("--sync-bn", action=on_off, default=False,
                   help="under torchrun: BatchNorm statistics over the whole global batch "
                        "(SyncBatchNorm, CUDA only; one collective per BN layer per forward)")
    parser.set_defaults(**defaults)
    for action in g._group_actions:
        if action.dest in hide:
            action.help = argparse.SUPPRESS
        elif help and action.dest in help:
            action.help = help[action.dest]


# Flags that describe this invocation rather than the run; never taken from a checkpoint.
_PER_INVOCATION = {"resume", "rewind", "generate", "out", "workers", "download", "channels_last"}
# Flags a resumed run may change; any other flag is the run's own (its network, optimiser, data).
_MAY_CHANGE_ON_RESUME = _PER_INVOCATION | {"epochs", "max_steps", "log_every", "sample_every",
                                           "device", "data_root", "amp", "compile", "fast", "sync_bn"}


def _typed(parser: argparse.ArgumentParser, argv) -> set:
    """The flags (dests) that argv gives explicitly."""
    typed = copy.deepcopy(parser)  # the same parser with no defaults: what was typed
    typed._defaults.clear()
    for action in typed._actions:
        action.default = argparse.SUPPRESS
    return set(vars(typed.parse_args(argv)))


def parse_args(parser: argparse.ArgumentParser, argv, script: str, per_invocation=()) -> argparse.Namespace:
    """Parse argv. --preset NAME fills in its flags where argv does not give them; with --resume,
    the run's saved flags fill in every flag not given again; `per_invocation`: a script's flags
    never taken from the checkpoint (sagan.py's --class)."""
    args = parser.parse_args(argv)
    if getattr(args, "preset", None):
        if args.resume is not None:
            parser.error("--preset configures a new run; --resume goes on with the run's own flags")
        preset = shlex.split(parser.presets[args.preset])
        values, explicit = vars(parser.parse_args(preset)), _typed(parser, argv)
        for key in _typed(parser, preset) - explicit:
            setattr(args, key, values[key])
    if args.resume is None:
        if args.generate is not None:
            parser.error("--generate needs --resume RUN_OR_CHECKPOINT (the model to sample from)")
        return args
    explicit = _typed(parser, argv)
    for key, value in read_checkpoint(args.resume, script)["args"].items():
        if not hasattr(args, key) or key in _PER_INVOCATION or key in per_invocation:
            continue
        if key not in explicit:
            setattr(args, key, value)
        elif key not in _MAY_CHANGE_ON_RESUME and getattr(args, key) != value:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} was {value} for this run and cannot change on resume; "
                            f"start a new run to train with {flag} {getattr(args, key)}.")
    return args


# --- Device and seeding -----------------------------------------------------------------------
def select_device(name: str = "auto") -> torch.device:
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU here.")
    if name == "mps" and not mps:
        raise UserError("--device mps was asked for, but this PyTorch has no MPS device.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too


def setup(args, single_process: bool = False) -> torch.device:
    """Seed, pick the device, switch on the fast paths that do not change the method; under
    torchrun, join the process group (scale.py) unless `single_process`."""
    seed_everything(args.seed)  # the same on every process: the networks start identical
    device = select_device(args.device)
    if launched():
        per_rank(args.batch_size)
        alone = "this script" if single_process else "--generate" if getattr(args, "generate", None) else None
        try:
            device = _scale().join(device, alone, getattr(args, "sync_bn", False))
        except ValueError as e:  # (a launch these flags cannot run in)
            raise UserError(str(e)) from None
    if getattr(args, "channels_last", False) is None:  # (the flag's default: on for a CPU)
        args.channels_last = device.type == "cpu"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True        # pick the fastest conv algorithms once
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls/convs on Ampere and later
        torch.backends.cudnn.allow_tf32 = True
    return device


# --- The doors to scale.py: several processes (torchrun), CUDA graphs (--fast), bf16 (--amp) -----
# scale.py is imported by setup() under torchrun, by Run.prepare() with --amp and by Run.fast_step()
# with --fast. Until then each door gives what one process needs (rank 0 of 1), and it is not loaded.
def _scale():
    import scale
    return scale


def launched() -> bool:
    """True when torchrun started this process, even as the only one (--nproc_per_node=1)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_rank() -> int: return int(os.environ.get("RANK", "0")) if launched() else 0
def _in_group() -> bool: return launched() and _scale().active()  # (setup joined the process group)
def rank() -> int: return _scale().rank() if _in_group() else 0
def world_size() -> int: return _scale().world_size() if _in_group() else 1
def is_main() -> bool: return rank() == 0  # the process that writes files and prints
def shutdown() -> None: return _scale().shutdown() if _in_group() else None
def _on_main(fn): return _scale().on_main(fn, UserError) if _in_group() else fn()  # (its UserError too)


def all_reduce(tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
    """Under torchrun the mean (or "sum") of `tensor` over the processes, in place (BEGAN's k_t)."""
    return _scale().all_reduce(tensor, op) if _in_group() else tensor


def per_rank(batch_size: int, flag: str | None = None) -> int:
    """This process's share of a global batch of `batch_size` (given as `flag`)."""
    n = int(os.environ["WORLD_SIZE"]) if launched() else 1
    if batch_size % n:
        raise UserError(f"{flag or f'--batch-size {batch_size}'} does not split evenly over {n} "
                        f"processes: it is the global batch, shared by all of them; pass a multiple of {n}.")
    return batch_size // n


# --- Files: one writer per run folder, every rewrite atomic -------------------------------------
LOCK_NAME = ".lock"  # in every run folder: held (flock) by the one process that writes there
_locks: dict = {}    # folder -> [open lock file, holders in this process]


def lock_folder(folder) -> None:
    """Make this process the folder's only writer until unlock_folder() or its exit (the kernel
    drops the lock of a process that dies, however it dies). Another process holding it: UserError
    naming it. Re-entrant within one process (a script's main() called again on the same run)."""
    key = Path(folder).resolve()
    if key in _locks:
        _locks[key][1] += 1
        return
    try:
        f = open(key / LOCK_NAME, "a+")
    except OSError as e:
        raise UserError(f"cannot write in {folder}: {e.strerror}; a run folder must be writable.") from None
    try:
        if os.name == "nt":  # (byte 0 locked; Windows hides a locked byte from other readers)
            import msvcrt
            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = ""
        with contextlib.suppress(OSError):
            f.seek(0)
            holder = f.read().strip()
        f.close()
        raise UserError(f"{folder} is in use by another process ({f'PID {holder}' if holder else 'its PID unknown'}): "
                        f"one process at a time writes to a run folder; wait for it to end, or stop it "
                        f"(Ctrl-C saves a checkpoint), then try again.") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _locks[key] = [f, 1]


def unlock_folder(folder) -> None:
    key = Path(folder).resolve()
    if key in _locks:
        _locks[key][1] -= 1
        if _locks[key][1] == 0:
            _locks.pop(key)[0].close()  # (closing the file releases the lock)


def replace_atomically(path, write) -> None:
    """Write a file through write(temporary path), fsync, then rename it over `path`: a reader,
    a crash or a full disk sees the old file or the new one, never a part. The temporary name is
    unique to the process and thread; it is removed if writing fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- The run: folder, metrics, samples, checkpoints and resume, the loop ------------------------
CHECKPOINT_KEYS = ("script", "args", "step", "batches_drawn", "state", "rng", "modules")


def read_checkpoint(path, script: str, map_location="cpu") -> dict:
    """Load a checkpoint written by `script`, or say clearly why it cannot be used."""
    path = Path(path) / "checkpoint.pt" if Path(path).is_dir() else Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:
        raise UserError(f"{path} is damaged or is not a checkpoint of these scripts "
                        f"(torch.load could not read it).") from None
    if not isinstance(ckpt, dict) or "script" not in ckpt or "args" not in ckpt:
        raise UserError(f"{path} is not a checkpoint written by these scripts.")
    if ckpt["script"] != script:
        raise UserError(f"{path} was written by {ckpt['script']}.py; resume it with "
                        f"{ckpt['script']}.py, not {script}.py.")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path} is not a complete checkpoint of {script}.py (it has no {missing[0]!r}).")
    return ckpt


def save_grid(images: torch.Tensor, path, nrow: int | None = None) -> None:
    """Save images in [-1, 1] as one PNG grid (replaced atomically)."""
    import torchvision.utils as vutils
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
    images = images.detach().float().cpu().add(1).div(2).clamp(0, 1)
    replace_atomically(path, lambda tmp: vutils.save_image(images, tmp, nrow=nrow, padding=2, format="png"))


_stop_signal = signal.SIGINT  # the signal that asked the last run to stop (its exit status)


class _StopFlag:
    """The first Ctrl-C (or SIGTERM: a scheduler's stop, `docker stop`, a shutdown) asks the loop to
    stop at the end of the step; a second Ctrl-C aborts at once (a second SIGTERM changes nothing)."""

    def __enter__(self):
        self.requested, self._old = False, {}
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        global _stop_signal
        if self.requested:
            if signum == signal.SIGTERM or launched() and time.monotonic() - self._first < 2:
                return  # a stop asked for twice (a scheduler, a dying parent), or torchrun passing on a Ctrl-C
            raise KeyboardInterrupt
        self.requested, self._first, _stop_signal = True, time.monotonic(), signum
        if _env_rank() == 0:
            when = "at the next --log-every step or epoch end" if launched() else "after this step"
            what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"\n{what}: stopping {when} to save a checkpoint (Ctrl-C again to abort)",
                  file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, old in self._old.items():
            if old is not None:
                signal.signal(s, old)


class Run:
    """One training run: its folder, metrics, samples and checkpoints. `modules` (everything with a
    state_dict) and `state` (method state: the fixed latent, BEGAN's k_t, ...) are saved in every
    checkpoint with the RNG states, so a resumed run continues exactly. `sample_fn()` returns
    images in [-1, 1] for the grids. Under torchrun rank 0 alone writes files."""

    def __init__(self, script: str, args, modules: dict, state: dict | None = None, sample_fn=None, device=None):
        self.script, self.args, self.modules = script, args, modules
        cuda = torch.device(device or "cpu").type == "cuda"  # Adam's fused kernel there (set before a resume)
        for group in (g for m in modules.values() if cuda and isinstance(m, torch.optim.Adam) for g in m.param_groups):
            group["fused"] = True
        self.state, self.sample_fn, self.device = {} if state is None else state, sample_fn, device
        self.step = self.batches_drawn = 0  # steps taken; batches drawn (images, with sampler())
        self._sums, self._counts, self._header, self.last_metrics = {}, {}, None, {}
        self._images, self._steps_per_epoch, self._saved_step = 0, 1, None
        self._last_log = (time.perf_counter(), 0)
        self._dir = self._locked = self._branch_from = self._made = None
        self._opened = False
        if rank() > 0:  # after the networks were built alike: other latents, crops, pool coins
            seed_everything(seed_of(args.seed, rank()))
        if args.generate is not None and args.out:
            raise UserError("--out does not apply to --generate: the samples go to a new folder "
                            "generated-<time> inside the run folder of --resume.")
        if args.resume:
            source = Path(args.resume) if Path(args.resume).is_dir() else Path(args.resume).parent
            self._branch_from = source if args.out and Path(args.out).resolve() != source.resolve() else None
            if self._branch_from is None:  # this folder goes on: its one writer from now on
                self._dir = source
                _on_main(lambda: self._lock(source))
            ckpt = read_checkpoint(args.resume, script)
            if self._branch_from is None and args.generate is None:
                _on_main(lambda: self._refuse_rewind(ckpt))
            self._restore(ckpt)
        if args.out and args.generate is None and self._dir is None and _env_rank() == 0:
            self._check_out(Path(args.out))  # (refused now; the folder is made when training starts)

    # -- folder ---------------------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        """The run folder. A new run makes it on first use (the loop's start), after everything
        that can refuse the run has been checked: a refused run leaves nothing behind."""
        if not self._opened:
            self.open()
        return self._dir

    def open(self) -> None:
        """Claim the folder (a new one, or the copy of --resume R --out NEW), take its lock, write the
        config and drop metrics rows written after the checkpoint. Under torchrun every process
        calls it (loop() does); rank 0 writes, the others learn the path."""
        if self._opened or self.args.generate is not None:
            return
        self._opened = True
        if self._dir is None:
            self._dir = _on_main(self._claim)
        _on_main(lambda: (self._write_config(), self._trim_metrics()))

    def _lock(self, folder: Path) -> None:
        lock_folder(folder)
        self._locked = weakref.finalize(self, unlock_folder, folder)  # (released by close() or with the Run)
        for stale in folder.glob(".*.tmp"):  # a temporary file of a writer killed while writing
            stale.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the folder's lock (the process's exit does too)."""
        if self._locked is not None:
            self._locked()  # (a finalizer runs once)

    def _discard(self) -> None:
        """A new run refused after its folder was made (a damaged image in its first batch) leaves
        nothing: what it wrote there goes, and the folders it made."""
        if self._made is None or not is_main():
            return
        self.close()
        for p in self._dir.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        for folder in self._made:  # (innermost first; each only if empty: another run may be there)
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._made = None

    def _claim(self) -> Path:
        """Make the run folder (or take --out if it is empty) and lock it before looking into it."""
        stem = f"{self.script}-{self.args.dataset}-{datetime.now():%Y%m%d-%H%M%S}"
        names = [Path(self.args.out)] if self.args.out else \
            [Path("runs") / (stem + (f"-{k}" if k > 1 else "")) for k in range(1, 10_000)]
        for path in names:
            made = [p.resolve() for p in [path, *path.parents] if not p.exists()]  # (innermost first)
            if self.args.out:
                self._check_out(path)
            try:
                path.mkdir(parents=True, exist_ok=bool(self.args.out))  # (runs/: two runs never share one)
            except FileExistsError:
                continue
            except OSError as e:
                raise UserError(f"cannot make the run folder {path}: {e.strerror}.") from None
            self._lock(path)
            if self.args.out:
                self._check_out(path, self.close)  # (filled between the check and the lock?)
            self._made = made
            break
        else:
            raise UserError(f"runs/ holds too many folders named {stem}*.")
        if self._branch_from is not None:  # --resume R --out NEW: NEW starts as a copy of R
            self._copy_run(self._branch_from, path)
        (path / "samples").mkdir(exist_ok=True)
        return path

    def _check_out(self, path: Path, before_refusing=lambda: None) -> None:
        for p in [path, *path.parents]:
            if p.exists() and not p.is_dir():
                raise UserError(f"--out {path} is a file; name a new folder." if p == path else
                                f"--out {path}: {p} is a file, not a folder.")
        if path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir()):
            before_refusing()
            raise UserError(f"{path} already holds files; choose a new --out, or --resume {path}.")

    def _copy_run(self, source: Path, path: Path) -> None:
        """The run so far, copied from `source`: its configs, samples, metrics and the checkpoint
        resumed from (as checkpoint.pt). `source` is only read."""
        for f in source.iterdir():
            if f.is_file() and f.name.startswith("config") and f.suffix == ".json" or f.name in ("metrics.csv",):
                shutil.copy2(f, path / f.name)
        if (source / "samples").is_dir():
            shutil.copytree(source / "samples", path / "samples")
        ckpt = Path(self.args.resume) / "checkpoint.pt" if Path(self.args.resume).is_dir() else Path(self.args.resume)
        replace_atomically(path / "checkpoint.pt", lambda tmp: shutil.copyfile(ckpt, tmp))

    def _refuse_rewind(self, ckpt: dict) -> None:
        """Resuming a file older than its folder's checkpoint.pt would drop the newer steps there."""
        given = Path(self.args.resume)
        newest = self._dir / "checkpoint.pt"
        if given.is_dir() or given.resolve() == newest.resolve() or not newest.is_file() or self.args.rewind:
            return
        newer = read_checkpoint(newest, self.script)["step"]
        if newer > ckpt["step"]:
            raise UserError(f"{given} is at step {ckpt['step']} but {newest} is at step {newer}: resuming "
                            f"it here would drop steps {ckpt['step'] + 1}-{newer}. Resume {self._dir} to go "
                            f"on from step {newer}; or add --out NEW to continue {given.name} in a new "
                            f"folder; or add --rewind to go back to step {ckpt['step']} in this one.")

    def _write_config(self) -> None:
        import torchvision
        versions = {"python": platform.python_version(), "torch": torch.__version__,
                    "torchvision": torchvision.__version__, "numpy": np.__version__}
        if self.device is not None and torch.device(self.device).type == "cuda":
            versions["gpu"] = torch.cuda.get_device_name()
        config = {"script": f"{self.script}.py", "args": vars(self.args), "argv": sys.argv,
                  "device": str(self.device), "processes": world_size(),
                  "started": datetime.now().isoformat(timespec="seconds"),
                  "resumed_from_step": self.step or None, "versions": versions}
        name, k = "config.json" if not self.args.resume else f"config-resume-{self.step}.json", 2
        while self.args.resume and (self.dir / name).exists():  # resumed twice from one checkpoint
            name, k = f"config-resume-{self.step}-{k}.json", k + 1
        text = json.dumps(config, indent=2, default=str)
        replace_atomically(self.dir / name, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    # -- metrics --------------------------------------------------------------------------------
    def log(self, **metrics) -> None:
        """Accumulate metrics on the device (no host sync): each is averaged over the times it was
        logged until the next flush (once a step, or once per inner iteration: WGAN's critic)."""
        for key, value in metrics.items():
            value = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
            # a copy: it may share memory with a parameter or state that changes in place (SAGAN's γ)
            self._sums[key] = self._sums[key] + value if key in self._sums else value.clone()
            self._counts[key] = self._counts.get(key, 0) + 1

    def flush(self) -> dict:
        """Average the metrics since the last flush, check them, write a row of metrics.csv."""
        if not self._sums:
            return self.last_metrics
        keys = list(self._sums)
        device = self.device if _in_group() else self._sums[keys[0]].device
        values = torch.stack([self._sums[k].to(device) / self._counts[k] for k in keys])
        values = all_reduce(values).tolist()  # 1 sync; under torchrun the mean over processes
        self._sums, self._counts = {}, {}
        bad = [k for k, v in zip(keys, values) if not math.isfinite(v)]
        if bad:
            ckpt = self.dir / "checkpoint.pt"
            kept = (f"its last good checkpoint (step {read_checkpoint(ckpt, self.script)['step']}) is kept in "
                    f"{self.dir}, but a resume repeats the same steps with the same flags" if ckpt.is_file()
                    else "no checkpoint had been saved yet")
            raise TrainingError(f"{bad[0]} became {values[keys.index(bad[0])]} by step {self.step}; stopping: "
                                f"{kept}. Start a new run with a lower learning rate or another --seed.")
        now, (then, images) = time.perf_counter(), self._last_log
        self._last_log = (now, self._images)
        row = {"step": self.step, "epoch": round(self.batches_drawn / self._steps_per_epoch, 3),
               "images_per_s": round((self._images - images) / max(now - then, 1e-9), 1), **dict(zip(keys, values))}
        self.last_metrics, path = row, self.dir / "metrics.csv"
        if not is_main():
            return row
        grows = self._header is None or not set(row) <= set(self._header)  # the first row or a new metric
        self._header = list(dict.fromkeys([*(self._header or []), *row]))
        if grows:  # (rewritten whole, under the wider header)
            self._rewrite_metrics([*(_read_csv(path) if path.exists() else []), row])
        else:
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, self._header).writerow(row)
        return row

    def _rewrite_metrics(self, rows: list) -> None:
        def write(tmp):
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, self._header)
                writer.writeheader()
                writer.writerows(rows)
        replace_atomically(self.dir / "metrics.csv", write)

    def _trim_metrics(self) -> None:
        # On resume, drop rows written after the checkpoint (those steps are trained again) and a
        # last row cut short by a kill during its write.
        path = self.dir / "metrics.csv"
        if path.exists():
            with open(path, newline="") as f:
                header, *rows = list(csv.reader(f)) or [None]
            self._header = header
            if header:
                keep = [dict(zip(header, r)) for r in rows if len(r) == len(header) and r[0].isdigit()
                        and int(r[0]) <= self.step]
                self._rewrite_metrics(keep)

    # -- samples --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _eval(self):
        nets = {m: m.training for m in self.modules.values() if isinstance(m, torch.nn.Module)}
        try:
            for m in nets:
                m.eval()
            with torch.no_grad():
                yield
        finally:
            for m, mode in nets.items():
                m.train(mode)

    def save_samples(self, name: str) -> Path | None:
        if self.sample_fn is None or not is_main():  # (plain modules: no collective on rank 0 alone)
            return None
        with self._eval():
            images = self.sample_fn()
        (self.dir / "samples").mkdir(exist_ok=True)
        save_grid(images, self.dir / "samples" / f"{name}.png")
        return self.dir / "samples" / f"{name}.png"

    def generate(self, fn, n: int) -> Path:
        """--generate N: write N samples of fn(k) (a grid and one PNG each) to a new folder."""
        import torchvision.utils as vutils
        out, k = self.dir / f"generated-{datetime.now():%Y%m%d-%H%M%S}", 2
        while out.exists():
            out, k = out.with_name(out.name.split("_")[0] + f"_{k}"), k + 1
        out.mkdir(parents=True)
        with self._eval():
            bs = self.args.batch_size
            images = torch.cat([fn(min(bs, n - start)).float().cpu() for start in range(0, n, bs)])
        save_grid(images, out / "grid.png")
        for i, img in enumerate(images):
            vutils.save_image(img.add(1).div(2).clamp(0, 1), out / f"{i:05d}.png")
        print(f"wrote {n} samples to {out}/ (grid.png and {n} PNGs)")
        return out

    # -- checkpoints and resume -----------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write checkpoint.pt atomically (under torchrun rank 0 writes, the others wait)."""
        self.flush()  # never save a state whose losses we have not checked
        path = self.dir / "checkpoint.pt"
        ckpt = {"script": self.script, "format": 1, "args": vars(self.args), "step": self.step,
                "batches_drawn": self.batches_drawn, "state": self.state, "rng": _rng_state()}
        if _in_group():  # every process goes on from rank 0's BN statistics, as saved, and
            _scale().broadcast_buffers(self.modules.values())  # each process's RNG is saved
            ckpt["rng_ranks"] = _scale().gather(ckpt["rng"])
        if is_main():
            ckpt["modules"] = {k: m.state_dict() for k, m in self.modules.items()}
            def write(tmp):  # (serialised first: torch.save's own writer turns a full disk into a RuntimeError)
                buffer = io.BytesIO()
                torch.save(ckpt, buffer)
                Path(tmp).write_bytes(buffer.getbuffer())
            try:  # atomic: a crash or a full disk leaves the last one whole
                replace_atomically(path, write)
            except OSError as e:
                kept = "the previous checkpoint.pt is kept" if path.is_file() else "none was saved before"
                raise OSError(e.errno, f"{e.strerror} (the checkpoint of step {self.step} was not saved; {kept})",
                              str(path)) from None
        if _in_group():
            _scale().barrier()  # no process runs on (or stops) before the file is whole
        self._saved_step = self.step
        self._made = None  # (a run with a checkpoint is never discarded)
        return path

    def _restore(self, ckpt: dict) -> None:
        try:
            for name, module in self.modules.items():
                saved = ckpt["modules"][name]
                # an optimiser keeps this device's fused/foreach/capturable choices, not the saved ones
                for group, ours in zip(saved.get("param_groups", ()), getattr(module, "param_groups", ())):
                    group.update({k: ours[k] for k in ("fused", "foreach", "capturable") if k in ours})
                module.load_state_dict(saved)
        except (KeyError, RuntimeError, ValueError) as e:
            lines = str(e).strip().splitlines() or [type(e).__name__]
            raise UserError(f"the checkpoint in {self.args.resume} does not fit this model "
                            f"(were flags such as the image size changed?): {lines[-1].strip()}") from None
        for key, value in ckpt["state"].items():
            self.state[key] = value.to(self.device) if torch.is_tensor(value) else value
        self.step, self.batches_drawn = ckpt["step"], ckpt["batches_drawn"]
        if self.args.generate is None:
            ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]  # one per process of the saved run
            if len(ranks) == world_size() or rank() == 0:  # (other numbers of processes: rank 0
                _set_rng_state(ranks[rank()])               # goes on as the saved rank 0)
            else:
                seed_everything(seed_of(self.args.seed, rank(), self.step))

    # -- scale: the networks and the step as the flags ask --------------------------------------
    def prepare(self, *nets, compile=None, amp=None, ddp: bool = True, find_unused: bool = False):
        """`nets` set up for this run's flags and returned, to train through (one process: the nets
        themselves; state_dict keys never change). --channels-last: every network of the run; --amp:
        each of `amp` (default: nets) in bf16 (scale.bf16); --compile: each of `compile` (default:
        nets), in place; under torchrun each net in DDP (scale.distribute; find_unused: parameters
        without a gradient in some steps), or with ddp=False each optimiser averages the gradients
        (set from torch.autograd.grad, which DDP never sees) before it steps. None passes through."""
        args, given = self.args, [n for n in nets if n is not None]
        for m in self.modules.values() if args.channels_last else ():
            if isinstance(m, torch.nn.Module):  # (the same values; a faster path for oneDNN on a CPU)
                m.to(memory_format=torch.channels_last)
        for net in (given if amp is None else amp) if args.amp else ():
            _scale().bf16(net, torch.device(self.device or "cpu").type)
        for net in (given if compile is None else compile) if args.compile else ():
            net.compile()
        if _in_group() and ddp:
            nets = [n if n is None else _scale().distribute(n, args.sync_bn, find_unused) for n in nets]
        for opt in self.modules.values() if _in_group() and not ddp else ():
            if isinstance(opt, torch.optim.Optimizer):
                _scale().average_before_step(opt)
        return nets[0] if len(nets) == 1 else tuple(nets)

    def fast_step(self, fn, capture: bool = True):
        """The training step `fn` (tensors in, tensors out) as the loop calls it: fn itself, or with
        --fast one CUDA graph replayed per call (scale.Graphed, captured anew when an optimiser's
        learning rate changes; not on CUDA, fn runs eagerly through its buffers). capture=False:
        a step that decides on the host (vaegan.py's --gate) stays fn."""
        if not self.args.fast or not capture:
            return fn
        # CUDA graphs on a CUDA device, not under torchrun (DDP's all-reduce is not captured)
        captured = torch.device(self.device or "cpu").type == "cuda" and not launched()
        if not captured and is_main():
            print("--fast: CUDA graphs are not used under torchrun; each step runs eagerly." if launched() else
                  f"--fast: CUDA graphs need a CUDA device; on {self.device} each step runs eagerly.")
        optimizers = [m for m in self.modules.values() if isinstance(m, torch.optim.Optimizer)]
        return _scale().Graphed(fn, captured, error=TrainingError, optimizers=optimizers)

    # -- the loop -------------------------------------------------------------------------------
    def stream(self, data: ImageData, batch_size: int | None = None):
        """Endless (images, labels) batches, epoch after epoch; its position is saved in every
        checkpoint, so a resumed run draws exactly the batches the uninterrupted run would have."""
        batch_size = batch_size or self.args.batch_size
        self._steps_per_epoch = data.steps_per_epoch(batch_size)
        per_rank(batch_size)  # under torchrun each process yields its share of each batch
        def endless():
            while True:
                epoch, start = divmod(self.batches_drawn, self._steps_per_epoch)
                try:
                    for batch in data.batches(batch_size, epoch, self.args.seed, start, rank(), world_size()):
                        self.batches_drawn += 1
                        self._images += batch_size
                        yield batch
                except UserError:  # (an unreadable image: a run refused before its first checkpoint
                    self._discard()  # leaves no folder)
                    raise

        return endless()

    def sampler(self, data: ImageData):
        """For loops whose batch size changes (progan.py): draw(batch_size) gives a uniformly drawn
        global batch (each process its share); the run counts images, and an epoch is len(data)."""
        self._steps_per_epoch = len(data)
        def draw(batch_size: int):
            self.batches_drawn += batch_size
            self._images += batch_size
            return data.sample(per_rank(batch_size))

        return draw

    def count(self, n: int, epochs: int = 0) -> None:
        """For a loop that draws its data itself (seqgan.py): n more items shown to D (the
        images_per_s column), and `epochs` more epochs done (the epoch column)."""
        self._images += n
        self.batches_drawn += epochs * self._steps_per_epoch

    @property
    def epochs_done(self) -> int:
        return self.batches_drawn // self._steps_per_epoch

    def loop(self, until: int | None = None, after_step=None):
        """Yield step numbers until --epochs or --max-steps (a step is what the script makes it: dcgan
        one batch, wgan one generator iteration). Between steps: metrics, sample grids, a checkpoint
        after each epoch, and on Ctrl-C a checkpoint and Interrupted. A loop with a schedule of its
        own (seqgan.py's phases) gives `until`, its last step, and has no epoch ends (no grids,
        checkpoints or bar); after_step() runs when a step is counted, before its metrics row."""
        from tqdm import tqdm
        self.open()  # (a new run's folder is made here, once the run was not refused)
        args, started = self.args, time.perf_counter()
        self._last_log, images0, epoch = (started, self._images), self._images, self.epochs_done
        last = min(math.inf if until is None else until, args.max_steps or math.inf)
        def new_bar():
            return tqdm(total=self._steps_per_epoch, initial=self.batches_drawn % self._steps_per_epoch,
                        desc=f"epoch {self.epochs_done + 1}/{args.epochs}", leave=False,
                        disable=None if is_main() and until is None else True, dynamic_ncols=True)

        bar, drawn = new_bar(), self.batches_drawn
        try:
            with _StopFlag() as stop:
                while self.step < last and (until is not None or self.epochs_done < args.epochs):
                    yield self.step
                    self.step += 1
                    if after_step is not None:
                        after_step()
                    bar.update(self.batches_drawn - drawn)
                    drawn = self.batches_drawn
                    epoch_ended = until is None and self.epochs_done > epoch  # (during this step)
                    synced = self.step % args.log_every == 0 or epoch_ended
                    if self.step % args.log_every == 0:
                        bar.set_postfix(_short(self.flush()), refresh=False)
                    if args.sample_every and self.step % args.sample_every == 0:
                        self.save_samples(f"step-{self.step:07d}")
                    if epoch_ended:
                        epoch = self.epochs_done
                        bar.close()
                        row, elapsed = self.flush(), time.perf_counter() - started
                        print(f"epoch {epoch}/{args.epochs}  step {self.step}  "
                              + "  ".join(f"{k} {v:.4g}" for k, v in _short(row).items())
                              + f"  {(self._images - images0) / elapsed:.0f} img/s  {elapsed:.0f} s", flush=True)
                        self.save_samples(f"epoch-{epoch:03d}")
                        self.save_checkpoint()
                        bar = new_bar()
                    # Under torchrun the processes agree to stop at the next --log-every step or epoch end.
                    if (synced and _scale().anyone(stop.requested, self.device)) if _in_group() else stop.requested:
                        bar.close()
                        path = self.save_checkpoint()
                        raise Interrupted(f"interrupted at step {self.step}; checkpoint saved to {path}. Resume with: "
                                          f"python {self.script}.py --resume {self.dir}"
                                          + (" (or the same under torchrun)" if _in_group() else ""))
        except (Exception, KeyboardInterrupt):  # (Interrupted, a NaN: this process writes no more)
            self.close()
            raise
        bar.close()

    def batches(self, data: ImageData, batch_size: int | None = None):
        """The simplest loop: one batch per step (`for real, labels in run.batches(data):`)."""
        stream = self.stream(data, batch_size)
        for _ in self.loop():
            yield next(stream)

    def finish(self) -> dict:
        """After the loop: final checkpoint and samples, the loss plot; returns the last metrics."""
        self.flush()
        if self._saved_step != self.step:
            self.save_checkpoint()
        final = self.save_samples("final")
        if is_main():
            plot_metrics(self.dir / "metrics.csv", self.dir / "losses.png")
        print(f"done: {self.step} steps. Run folder: {self.dir}" + (f"  (samples: {final})" if final else ""))
        self.close()
        return dict(self.last_metrics)


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _short(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("step", "epoch", "images_per_s")}


def plot_metrics(csv_path, png_path) -> None:
    """losses.png: one panel per logged metric against the step (only if matplotlib is there)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = _read_csv(csv_path) if Path(csv_path).exists() else []
    keys = list(_short(rows[0])) if rows else []
    if not keys:
        return
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 1.8 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        ax.plot([int(r["step"]) for r in rows], [float(r[key]) if r[key] else math.nan for r in rows], lw=1)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    replace_atomically(png_path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def _rng_state() -> dict:
    """python's, numpy's, torch's (and CUDA's) RNG states, in a form torch.load(weights_only) reads."""
    kind, keys, *rest = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), *rest]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    def as_tuple(x):
        return tuple(as_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x
    torch.set_rng_state(state["torch"])
    random.setstate(as_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
