"""End-to-end inference cost, teacher against students, for the paper-size configs: store -> selected frames ->
network -> YouTube-8M metrics, and whole `vdistill test` processes.

Two measurements, side by side in one run (machines here are noisy; compare ratios, not absolute times):

1. Steady state, in this process, per model (``configs/{teacher,student}_<family>.yaml`` at paper size, untrained;
   the students at k = 30 and k = 6): batches of a store of random videos, as long as YouTube-8M's (``make_store``;
   MACs are counted at each model's frames, the teacher's at 300), go through every stage
   a `vdistill test` step runs, each timed on its own: reading the chosen frames from the store (sampler
   included), dequantisation and normalisation, encoder, head, metric update. After --warmup batches, --batches
   are timed. Prints videos/s, each stage's share, and student / teacher time.
2. Whole process (``--whole``): `vdistill test` of the paper-size H-RNN teacher and k=30 student on the first N
   videos, for each N in --whole-videos (default 450 and 3000), start-up included, each twice; prints the median
   wall time and the ratio.

    python benchmarks/inference.py --families hrnn netvlad nextvlad --whole
"""

from __future__ import annotations

import argparse
import contextvars
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lightning_distill.cli.allocator import keep_freed_memory
from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.loading import BatchRequest, VideoBatchDataset
from lightning_distill.data.video_record import VideoRecord
from lightning_distill.evaluation.flops import inference_macs_by_part
from lightning_distill.evaluation.metrics import YT8MMetrics

# The tests' store writer: benchmarks, like tests, build stores from in-memory records.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from store_writer import write_frame_store  # noqa: E402
from timing import wall_seconds  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGES = ("read", "prepare", "encoder", "head", "metrics")
NUM_CLASSES = 3862


def make_store(path: Path, videos: int, seed: int = 0) -> Path:
    """A store of ``videos`` random videos with YouTube-8M's lengths (120-500 s, uniform, the first 300 kept: 258
    frames on average) and 1-5 labels each (reused if present)."""
    if path.is_file() and len(FrameStore(path)) == videos:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def records():
        for i in range(videos):
            n = min(int(rng.integers(120, 501)), 300)
            yield VideoRecord(f"v{i:06d}", rng.choice(NUM_CLASSES, int(rng.integers(1, 6)), replace=False),
                              rng.integers(0, 256, (n, 1024), dtype=np.uint8), rng.integers(0, 256, (n, 128), dtype=np.uint8))

    write_frame_store(path, records(), level="frame", source_version="2018", num_classes=NUM_CLASSES)
    return path


def build(config: Path, store: Path, run_dir: Path, extra: list[str]):
    """The module and data module ``vdistill test --config config [extra]`` builds, on ``store``."""
    from lightning_distill.cli.model_commands import VDistillCLI

    args = [f"--config={config}", f"--data.test_files={store}", "--data.train_files=null", "--data.val_files=null",
            f"--data.num_classes={NUM_CLASSES}", "--trainer.logger=false", f"--run_dir={run_dir}", "--overwrite=true",
            *extra]
    cli = contextvars.copy_context().run(lambda: VDistillCLI(args=args, run=False))
    return cli.model.eval(), cli.datamodule


def steady_state(config: Path, store: Path, batch: int, warmup: int, batches: int, work: Path, extra: list[str]) -> dict:
    module, data = build(config, store, work / config.stem, extra)
    network = module.inference_network()
    dataset = VideoBatchDataset(FrameStore(store), np.arange(len(FrameStore(store))), {"v": network.sampler}, data.max_frames)
    metric = YT8MMetrics(NUM_CLASSES)
    seconds = dict.fromkeys(STAGES, 0.0)
    videos = 0
    with torch.no_grad():
        for number in range(warmup + batches):
            start = number * batch % len(dataset)
            clock = time.perf_counter()
            loaded = dataset[BatchRequest(list(range(start, min(start + batch, len(dataset)))), number)]
            times = [clock, time.perf_counter()]
            view = data.on_after_batch_transfer(loaded, 0).views["v"]
            times.append(time.perf_counter())
            representation = network.encoder(view.frames, view.mask).representation
            times.append(time.perf_counter())
            probabilities = network.head(representation)
            times.append(time.perf_counter())
            metric.update(probabilities, loaded.labels)
            times.append(time.perf_counter())
            if number >= warmup:
                for stage, begin, end in zip(STAGES, times, times[1:]):
                    seconds[stage] += end - begin
                videos += len(loaded)
    frames = network.frames_per_video(data.max_frames)
    macs = sum(inference_macs_by_part(network.encoder, network.head, frames))
    return {"videos": videos, "seconds": seconds, "frames": frames, "macs": macs}


def whole_process(config: Path, store: Path, videos: int, work: Path, repeats: int) -> float:
    """Median wall time of `vdistill test` of ``config`` (untrained) on the first ``videos`` videos."""
    subset = make_store(work / f"subset-{videos}.h5", videos)
    times = []
    for repeat in range(repeats):
        args = [sys.executable, "-m", "lightning_distill.cli.main", "test", f"--config={config}", f"--data.test_files={subset}",
                "--data.train_files=null", "--data.val_files=null", f"--data.num_classes={NUM_CLASSES}",
                "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--run_dir={work / 'runs' / f'{config.stem}-{videos}-{repeat}'}"]
        times.append(wall_seconds(args))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["hrnn", "netvlad", "nextvlad"])
    parser.add_argument("--videos", type=int, default=600, help="videos in the steady-state store")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per model")
    parser.add_argument("--whole", action="store_true", help="also time whole `vdistill test` processes (H-RNN)")
    parser.add_argument("--whole-videos", type=int, nargs="+", default=[450, 3000])
    parser.add_argument("--repeats", type=int, default=2, help="whole processes per (model, N); the median is shown")
    parser.add_argument("--work", default="/tmp/vdistill-bench/inference", help="stores and run directories")
    args = parser.parse_args(argv)
    keep_freed_memory()
    work = Path(args.work)
    store = make_store(work / "steady.h5", args.videos)
    print(f"torch threads {torch.get_num_threads()}, {args.batches} batches of {args.batch} per model after {args.warmup} warm-up\n")
    print("| model | frames | GMACs/video | videos/s | read | prepare | encoder | head | metrics | time vs teacher | MACs vs teacher |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    # k=6: the k=30 student config with 6 frames (H-RNN blocks of 3, as configs/tiny and the paper's students).
    k6 = {"hrnn": ["--model.init_args.sampler.init_args.k=6", "--model.init_args.encoder.init_args.student_block_length=3"]}
    for family in args.families:
        models = {
            "teacher": ("teacher", []),
            "student k=30": ("student", []),
            "student k=6": ("student", k6.get(family, ["--model.init_args.sampler.init_args.k=6"])),
        }
        results = {
            name: steady_state(CONFIGS / f"{role}_{family}.yaml", store, args.batch, args.warmup, args.batches, work, extra)
            for name, (role, extra) in models.items()
        }
        teacher = results["teacher"]
        for name, result in results.items():
            per_video = sum(result["seconds"].values()) / result["videos"]
            t_per_video = sum(teacher["seconds"].values()) / teacher["videos"]
            shares = " | ".join(f"{result['seconds'][s] / sum(result['seconds'].values()):.0%}" for s in STAGES)
            print(f"| {family} {name} | {result['frames']} | {result['macs'] / 1e9:.3f} | {1 / per_video:,.0f} | {shares} | "
                  f"{per_video / t_per_video:.3f} | {result['macs'] / teacher['macs']:.3f} |")
    if args.whole:
        print("\n| `vdistill test`, paper-size H-RNN | videos | teacher s | student k=30 s | student / teacher |")
        print("|---|---:|---:|---:|---:|")
        for videos in args.whole_videos:
            t = whole_process(CONFIGS / "teacher_hrnn.yaml", store, videos, work, args.repeats)
            s = whole_process(CONFIGS / "student_hrnn.yaml", store, videos, work, args.repeats)
            print(f"| whole process (median of {args.repeats}) | {videos:,} | {t:.1f} | {s:.1f} | {s / t:.3f} |")


if __name__ == "__main__":
    main()
