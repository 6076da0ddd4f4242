"""Training speed of each image script against a plain loop: images shown to D per second, peak GPU memory.

    python benchmarks/speed.py --script dcgan [--device auto] [--warmup 30] [--steps 150] [--chunk 25]
    python benchmarks/speed.py --all --out-dir $OUT              (the nine image scripts)
    python benchmarks/speed.py --script wgan --fast-flags=--fast --fast-flags="--fast --amp"
    python benchmarks/speed.py --table benchmarks/results/speed-*.json   (the table in benchmarks/README.md)

Three modes, all at the script's default (the paper's) batch size, on the built-in shapes:
  plain    the script's networks, init, losses and update order in a loop written the way most
           published examples train (benchmarks/plain_loops.py: PIL images through a DataLoader
           with ToTensor/Normalize, `.to(device)` per batch, `.item()` on every loss every step,
           fp32 with PyTorch's default backend flags, default Adam/RMSprop);
  default  the script's own main() with its default flags;
  fast     the script's main() with --fast-flags (default "--fast"; several sets may be given).
On a CPU the script modes run with the scripts' default --channels-last (the plain loop keeps
PyTorch's default format); `--fast-flags=--no-channels-last` measures the default format beside it.
Every mode runs --warmup steps (cudnn autotuning, compilation, graph capture, allocator growth;
for wgan.py the official schedule's first 25 generator iterations of 100 critic iterations
each), then --steps timed steps, a step being the script's own (wgan.py: one generator
iteration with its critic iterations). The timed steps are cut into chunks of --chunk steps;
at each chunk boundary the host waits for the device (torch.cuda.synchronize) and reads
time.perf_counter, and counts the images the loop drew so far (for the script modes, what its
images_per_s column counts: every real batch drawn, the critic's included). images/s is the
median over chunks (an epoch end's checkpoint or a DataLoader restart falls into one chunk);
the mean over the whole window and the spread are kept too. For the script modes the chunk
boundaries come from a wrapper around common.Run.loop, so the script runs unchanged.

progan.py is timed at its final resolution, stabilising (64 px, alpha 1, its batch of 16):
the script modes get --images-per-phase equal to the batch, so its growth takes the first 8
warm-up steps; the plain loop trains that phase only. cyclegan.py counts one image per step
(batch 1), as its own images_per_s does.

Writes <out-dir>/speed-<script>[-<tag>].json (never over an existing file unless --overwrite)
and prints one summary line per script.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import glob
import importlib
import io
import json
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import plain_loops  # noqa: E402

import common  # noqa: E402

SCRIPTS = plain_loops.SCRIPTS


class Timer:
    """Wall-clock points at chosen step numbers, the device drained before each."""

    def __init__(self, device: torch.device, warmup: int, steps: int, chunk: int):
        self.device = device
        self.marks = sorted({*range(warmup, warmup + steps, chunk), warmup + steps})
        self.points = []  # (step, seconds, images)

    def at(self, step: int, images: int) -> None:
        if step in self.marks:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.points.append((step, time.perf_counter(), images))

    def result(self) -> dict:
        if len(self.points) < len(self.marks):
            raise common.UserError(f"the run stopped at step {self.points[-1][0] if self.points else 0}, "
                                   f"before the timed window ended (step {self.marks[-1]}).")
        rates = [(i1 - i0) / (t1 - t0) for (_, t0, i0), (_, t1, i1) in zip(self.points, self.points[1:])]
        (s0, t0, i0), (s1, t1, i1) = self.points[0], self.points[-1]
        return {"images_per_s": round(statistics.median(rates), 1),
                "mean_images_per_s": round((i1 - i0) / (t1 - t0), 1),
                "spread": [round(min(rates), 1), round(max(rates), 1)],
                "steps_per_s": round((s1 - s0) / (t1 - t0), 2),
                "images_per_step": round((i1 - i0) / (s1 - s0), 2),
                "chunks": len(rates), "timed_seconds": round(t1 - t0, 2)}


def _memory_start(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _memory_peak(device):
    return round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None


def measure_plain(script: str, script_args: list, device, warmup: int, steps: int, chunk: int,
                  workers: int | None = None) -> dict:
    """The plain loop of `script` (benchmarks/plain_loops.py), timed."""
    plain_loops.default_backends()
    _memory_start(device)
    torch.manual_seed(0)
    t = time.perf_counter()
    loop = plain_loops.make(script, script_args, device, workers)
    batches = loop.batches()
    setup_s = time.perf_counter() - t
    _memory_start(device)  # (the dataset was rendered on the device, then moved to host memory)
    timer, images = Timer(device, warmup, steps, chunk), 0
    for step in range(warmup + steps + 1):
        timer.at(step, images)
        if step == warmup + steps:
            break
        images += loop.step(batches)
    result = {"mode": "plain", "flags": "", **timer.result(), "peak_gpu_memory_MiB": _memory_peak(device),
              "setup_seconds": round(setup_s, 1), "workers": loop.workers, "batch_size": loop.B,
              "last_losses": {k: round(v, 5) for k, v in loop.last.items()}}
    if script == "progan":  # the one phase the plain loop trains
        result["resolution"], result["alpha"] = loop.args.image_size, loop.alpha
    del loop, batches
    return result


def bench_flags(script: str, script_args: list) -> list:
    """Flags the script modes need so that the timed window is the phase the plain loop trains."""
    if script != "progan":
        return []
    import progan

    a = progan.parse_args([*script_args, "--device", "cpu"])
    sizes = progan.parse_batch_sizes(a.batch_sizes)
    biggest = max(sizes.get(4 * 2 ** d, a.batch_size) for d in range(progan.depth_of(a.image_size) + 1))
    return ["--images-per-phase", str(biggest)]  # one step per phase: the final phase from step 8


def measure_script(script: str, script_args: list, flags: list, device, warmup: int, steps: int,
                   chunk: int, mode: str) -> dict:
    """The script's own main() with `flags`, timed through a wrapper around common.Run.loop."""
    module = importlib.import_module(script)
    timer = Timer(device, warmup, steps, chunk)
    original = common.Run.loop

    def timed_loop(run):
        for step in original(run):
            timer.at(step, run._images)
            yield step

    extra = bench_flags(script, script_args)
    epochs = [] if script == "cyclegan" else ["--epochs", "100000"]  # cyclegan: its whole schedule
    argv = [*script_args, *extra, *epochs, "--max-steps", str(warmup + steps + 1), "--device", device.type, *flags]
    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):
            module.parse_args(argv)  # bad flags (e.g. --fast where the script has none): its message
    except SystemExit:
        message = (usage.getvalue().strip().splitlines() or ["bad flags"])[-1]
        raise common.UserError(message.split("error: ", 1)[-1]) from None
    _memory_start(device)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        common.Run.loop = timed_loop
        try:
            out = module.main([*argv, "--out", str(Path(tmp) / "run")])
        finally:
            common.Run.loop = original
        config = json.loads((Path(tmp) / "run" / "config.json").read_text())["args"]
    result = {"mode": mode, "flags": " ".join(flags), **timer.result(), "peak_gpu_memory_MiB": _memory_peak(device),
              **({"channels_last": config["channels_last"]} if "channels_last" in config else {}),
              "wall_seconds": round(time.perf_counter() - t, 1), "batch_size": config["batch_size"]}
    if script == "progan":  # the phase the timed steps trained
        result["resolution"], result["alpha"] = out.get("resolution"), out.get("alpha")
    return result


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def measure(script: str, args, device) -> dict:
    script_args = shlex.split(args.script_args)
    modes = []
    todo = [("plain", None)] if "plain" in args.modes else []
    todo += [("default", [])] if "default" in args.modes else []
    todo += [("fast", shlex.split(f)) for f in args.fast_flags] if "fast" in args.modes else []
    for mode, flags in todo:
        try:
            if mode == "plain":
                r = measure_plain(script, script_args, device, args.warmup, args.steps, args.chunk, args.workers)
            else:
                r = measure_script(script, script_args, flags, device, args.warmup, args.steps, args.chunk, mode)
        except (common.UserError, common.TrainingError) as e:
            r = {"mode": mode, "flags": " ".join(flags or []), "error": common._one_line(e)}
        except Exception as e:  # noqa: BLE001 (a mode that crashes, e.g. out of memory or a compiler
            # error, is recorded and the other modes and scripts still run; its traceback goes to stderr)
            traceback.print_exc()
            r = {"mode": mode, "flags": " ".join(flags or []), "error": f"{type(e).__name__}: {common._one_line(e)}"}
        modes.append(r)
        print(f"  {script:17s} {mode:8s} {r.get('flags', ''):16s} "
              + (f"{r['images_per_s']:10,.1f} images/s" if "error" not in r else f"error: {r['error']}"),
              file=sys.stderr, flush=True)
    plain = next((m for m in modes if m["mode"] == "plain" and "error" not in m), None)
    ratios = {}
    for m in modes:
        if plain and "error" not in m:
            m["vs_plain"] = round(m["images_per_s"] / plain["images_per_s"], 2)
            if m["mode"] != "plain":
                ratios[f"{m['mode']}{' [' + m['flags'] + ']' if m['mode'] == 'fast' else ''}/plain"] = m["vs_plain"]
    return {"script": script, "device": device_name(device), "torch": torch.__version__,
            "date": datetime.now().isoformat(timespec="seconds"),
            "batch_size": next((m["batch_size"] for m in modes if "batch_size" in m), None),
            "script_args": args.script_args, "bench_flags": " ".join(bench_flags(script, script_args)),
            "warmup_steps": args.warmup, "timed_steps": args.steps, "chunk": args.chunk,
            "protocol": "images shown to D per second: median over chunks of timed steps after warm-up, "
                        "device synchronised at each chunk boundary (benchmarks/speed.py)",
            "ratios": ratios, "modes": modes}


def summary(result: dict) -> str:
    parts = []
    for m in result["modes"]:
        label = m["mode"] + (f" [{m['flags']}]" if m["mode"] == "fast" else "")
        if "error" in m:
            parts.append(f"{label} error")
            continue
        mem = f", {m['peak_gpu_memory_MiB']} MiB" if m.get("peak_gpu_memory_MiB") is not None else ""
        ratio = f" ({m['vs_plain']:.2f}x)" if "vs_plain" in m and m["mode"] != "plain" else ""
        parts.append(f"{label} {m['images_per_s']:,.0f}/s{ratio}{mem}")
    return (f"SPEED {result['script']} batch {result['batch_size']} on {result['device']}: " + "; ".join(parts))


def table(paths: list) -> str:
    """A markdown table of speed JSONs: images/s per mode and the ratios to the plain loop."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    fast_sets = []
    for r in results:
        for m in r["modes"]:
            if m["mode"] == "fast" and m["flags"] not in fast_sets:
                fast_sets.append(m["flags"])
    head = ["script", "device", "batch", "plain images/s", "default images/s (x plain)"]
    gpu = any(m.get("peak_gpu_memory_MiB") is not None for r in results for m in r["modes"])
    head += [f"`{f}` images/s (x plain)" for f in fast_sets]
    head += ["peak GPU MiB (plain / default / fast)"] if gpu else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(m):
        if m is None:
            return "not measured"
        if "error" in m:
            return f"error: {m['error']}"
        ratio = f" ({m['vs_plain']:.2f}x)" if "vs_plain" in m and m["mode"] != "plain" else ""
        return f"{m['images_per_s']:,.0f}{ratio}"

    for r in sorted(results, key=lambda r: (SCRIPTS.index(r["script"]) if r["script"] in SCRIPTS else 99,
                                            r["device"])):
        by = {(m["mode"], m["flags"] if m["mode"] == "fast" else ""): m for m in r["modes"]}
        row = [f"`{r['script']}.py`", r["device"], str(r["batch_size"] or "-"), cell(by.get(("plain", ""))),
               cell(by.get(("default", "")))] + [cell(by.get(("fast", f))) for f in fast_sets]
        mems = [by.get(k, {}).get("peak_gpu_memory_MiB") for k in (("plain", ""), ("default", ""))]
        mems.append(by.get(("fast", fast_sets[0]), {}).get("peak_gpu_memory_MiB") if fast_sets else None)
        row += [" / ".join("-" if v is None else f"{v:,}" for v in mems)] if gpu else []
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--script", nargs="+", choices=SCRIPTS, default=None, help="script(s) to measure")
    p.add_argument("--all", action="store_true", help="all nine image scripts")
    p.add_argument("--modes", nargs="+", choices=("plain", "default", "fast"), default=["plain", "default", "fast"])
    p.add_argument("--fast-flags", action="append", default=None, metavar="FLAGS",
                   help="the flags of a fast mode, written with '=': --fast-flags=--fast (the default); "
                        "repeat for more fast modes: --fast-flags=--fast --fast-flags='--fast --amp'")
    p.add_argument("--script-args", default="",
                   help="flags for every mode of the script (plain loop included), e.g. smaller sizes; "
                        "write --script-args='--image-size 32'")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--warmup", type=common.non_negative_int, default=30, help="untimed steps first")
    p.add_argument("--steps", type=common.positive_int, default=150, help="timed steps")
    p.add_argument("--chunk", type=common.positive_int, default=25, help="steps between two timing points")
    p.add_argument("--workers", type=common.non_negative_int, default=None,
                   help="the plain loop's DataLoader workers (default: 4, or the CPU count if smaller)")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--tag", default="", help="file name suffix: speed-<script>-<tag>.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing result file")
    p.add_argument("--table", nargs="+", metavar="JSON", help="print the markdown table of these results and stop")
    args = p.parse_args(argv)
    args.fast_flags = args.fast_flags or ["--fast"]
    if args.table:
        paths = [q for pattern in args.table for q in sorted(glob.glob(pattern))]
        if not paths:
            p.error(f"no result files match {' '.join(args.table)}")
        print(table(paths))
        return 0
    scripts = list(SCRIPTS) if args.all else (args.script or [])
    if not scripts:
        p.error("name the scripts to measure (--script NAME ... or --all), or give --table FILES")
    if args.steps < args.chunk:
        p.error(f"--steps {args.steps} is shorter than one --chunk ({args.chunk})")
    device = common.select_device(args.device)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {s: out_dir / f"speed-{s}{'-' + args.tag if args.tag else ''}.json" for s in scripts}
    existing = [str(q) for q in paths.values() if q.exists()]
    if existing and not args.overwrite:
        p.error(f"{existing[0]} exists; pass --overwrite to replace it, or --tag / --out-dir for a new file")
    for s in scripts:
        result = measure(s, args, device)
        paths[s].write_text(json.dumps(result, indent=2) + "\n")
        print(summary(result) + f"  -> {paths[s]}", flush=True)
    return 0


if __name__ == "__main__":
    common.cli(main)
