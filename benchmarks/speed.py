"""Training speed of a script's own loop: images shown to D per second, and peak GPU memory.

    python benchmarks/speed.py --script dcgan [--batch-sizes 64 128] [--steps 300] [--device auto]
                               [--extra "--amp"] [--out benchmarks/results/speed-dcgan-cpu.json]

Runs the script's main() on the built-in shapes data for --steps steps with --log-every
--interval; the loop writes images/s per interval (wall clock between two host syncs), the
first two intervals are dropped as warm-up (cudnn autotuning, allocator growth, compilation)
and the median of the rest is reported. The numbers therefore include everything the real
loop does per step (data drawn on the device, both updates, metric accumulation); the
built-in data has 60,000 images, so an epoch end (a grid and a checkpoint) falls into at most
a few intervals, which the median discounts. A step is the script's own: for wgan.py one
generator iteration with its critic iterations (images/s counts the real images drawn).
"""
import argparse
import csv
import importlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(script: str, batch_size: int, steps: int, interval: int, device: str, extra: list) -> dict:
    module = importlib.import_module(script)
    with tempfile.TemporaryDirectory() as tmp:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        module.main(["--batch-size", str(batch_size), "--max-steps", str(steps), "--log-every", str(interval),
                     "--epochs", "100000", "--device", device, "--out", str(Path(tmp) / "run"), *extra])
        with open(Path(tmp) / "run" / "metrics.csv", newline="") as f:
            rates = [float(r["images_per_s"]) for r in csv.DictReader(f)][2:]
    result = {"script": script, "batch_size": batch_size, "flags": " ".join(extra),
              "images_per_s": round(statistics.median(rates), 1),
              "intervals": len(rates), "spread": [round(min(rates), 1), round(max(rates), 1)]}
    if torch.cuda.is_available() and device != "cpu":
        result["peak_gpu_memory_MiB"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--script", default="dcgan")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--interval", type=int, default=25)
    p.add_argument("--device", default="auto")
    p.add_argument("--extra", default="", help="more flags for the script, e.g. '--amp'")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    on_gpu = torch.cuda.is_available() and args.device != "cpu"
    device_name = torch.cuda.get_device_name() if on_gpu else f"cpu ({torch.get_num_threads()} threads)"
    results = []
    for bs in args.batch_sizes:
        r = measure(args.script, bs, args.steps, args.interval, args.device, args.extra.split())
        r["device"] = device_name
        results.append(r)
        print(f"SPEED {args.script} batch {bs} [{args.extra}] on {device_name}: {r['images_per_s']:,.0f} images/s "
              f"(spread {r['spread']})", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"torch": torch.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
