"""Rendering speed of the built-in shapes data (images/s), on the CPU and, if present, a GPU.

    python benchmarks/shapes_speed.py [--n 20000] [--out benchmarks/results/shapes-speed-cpu.json]

Times data.render_shapes on n images (factors drawn beforehand), after one warm-up call,
best of three; on CUDA with synchronisation around the timed region.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402


def rate(n, size, channels, style, device):
    factors = data.shape_factors(n)
    data.render_shapes({k: v[:256] for k, v in factors.items()}, size, channels, style, device)
    best = float("inf")
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        data.render_shapes(factors, size, channels, style, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return n / best


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--out", default=None)
    args = p.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        for size in args.sizes:
            for channels, style in ((3, "filled"), (1, "filled"), (3, "outline")):
                n = args.n if device.type == "cuda" or size <= 64 else args.n // 4
                r = rate(n, size, channels, style, device)
                results.append({"device": name, "size": size, "channels": channels, "style": style,
                                "images_per_s": round(r)})
                print(f"{name:28s} {size:4d} px  {channels} ch  {style:8s} {r:12,.0f} images/s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"torch": torch.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
