"""Write a synthetic YouTube-8M data set (2018 frame-level TFRecords) for the demo, tests and CI.

    python data_prep/make_synthetic.py data/synthetic --train-videos 2000 --seed 0

See ``lightning_distill.data.synthetic`` for how labels are evidenced in time.
"""

from __future__ import annotations

import argparse
import sys

from lightning_distill.data.synthetic import generate
from lightning_distill.errors import VDistillError


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, generate, print one line per split; user errors print one line and return 2."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="directory for <split>NNNN.tfrecord files (created if missing)")
    parser.add_argument("--train-videos", type=int, default=2000)
    parser.add_argument("--validate-videos", type=int, default=500)
    parser.add_argument("--test-videos", type=int, default=500)
    parser.add_argument("--num-classes", type=int, default=16)
    parser.add_argument("--min-frames", type=int, default=30)
    parser.add_argument("--max-frames", type=int, default=300)
    parser.add_argument("--shards-per-split", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unlabelled-test", action="store_true", help="empty test labels, like the real test split")
    args = parser.parse_args(argv)
    try:
        written = generate(
            args.output_dir,
            train_videos=args.train_videos,
            validate_videos=args.validate_videos,
            test_videos=args.test_videos,
            num_classes=args.num_classes,
            min_frames=args.min_frames,
            max_frames=args.max_frames,
            shards_per_split=args.shards_per_split,
            seed=args.seed,
            unlabelled_test=args.unlabelled_test,
        )
    except VDistillError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for split, paths in written.items():
        print(f"{split}: {len(paths)} shard(s) in {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
