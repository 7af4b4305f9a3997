"""Benchmark: a CPU training step of a tiny H-RNN teacher with and without ``keep_freed_memory``.

glibc's default returns freed blocks above 128 KiB to the kernel, so every batch is page-faulted in again;
``vdistill`` turns that off at start-up. A process cannot undo the setting, so each mode runs in its own fresh
process, alternating, and the table reports the median step time and kernel (system) time per step.

    python benchmarks/allocator.py --rounds 3 --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def measure(keep: bool, steps: int, batch: int) -> dict[str, float]:
    """Time ``steps`` training steps in this process (after one warm-up step)."""
    if keep:
        from lightning_distill.cli.allocator import keep_freed_memory

        keep_freed_memory()
    import torch

    from lightning_distill.models.heads import MoEHead
    from lightning_distill.models.hrnn import HRNN

    torch.manual_seed(0)
    torch.set_num_threads(1)
    lengths = torch.randint(30, 301, (batch,))
    mask = torch.arange(int(lengths.max()))[None] < lengths[:, None]
    frames = torch.randn(*mask.shape, 1152) * mask[..., None]
    encoder = HRNN(hidden_size=32, block_length=20)
    head = MoEHead(encoder.output_dim, 32)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()])

    def step() -> None:
        # A new input tensor per step, as a data loader delivers.
        head(encoder(frames.clone(), mask).representation).sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    start, before = time.perf_counter(), os.times()
    for _ in range(steps):
        step()
    after = os.times()
    return {"step_s": (time.perf_counter() - start) / steps, "system_s": (after.system - before.system) / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per mode, alternating")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per process")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--child", choices=["default", "keep"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child == "keep", args.steps, args.batch)))
        return
    results: dict[str, list[dict[str, float]]] = {"default": [], "keep": []}
    for _ in range(args.rounds):
        for mode in results:
            command = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps), "--batch", str(args.batch)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[mode].append(json.loads(output.strip().splitlines()[-1]))
    print(f"tiny H-RNN teacher (hidden 32, blocks of 20), batch {args.batch} of 30-300 frames, 1 thread; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| allocator | step s (median) | kernel s per step | speed-up |")
    print("|---|---:|---:|---:|")
    base = statistics.median(r["step_s"] for r in results["default"])
    for mode, label in (("default", "glibc default"), ("keep", "keep_freed_memory()")):
        step = statistics.median(r["step_s"] for r in results[mode])
        system = statistics.median(r["system_s"] for r in results[mode])
        print(f"| {label} | {step:.3f} | {system:.3f} | {base / step:.2f}x |")


if __name__ == "__main__":
    main()
