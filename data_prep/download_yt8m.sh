#!/usr/bin/env bash
# Download YouTube-8M TFRecord shards with the official downloader, then convert them into frame stores.
#
# The official procedure (https://research.google.com/youtube8m/download.html) pipes data.yt8m.org's
# download.py into Python with the settings in the environment:
#   partition  what to fetch: 2/frame/{train,validate,test} (2018 frame level, ~1.53 TB per split),
#              2/video/{train,validate,test} (video level, 31 GB in all), 3/frame/{validate,test} (2019 segments)
#   mirror     us, eu or asia
#   shard      i,n: fetch only every n-th shard, offset i (1,100 = 1/100 of the split)
# The downloader works in the current directory and can be restarted: it skips shards already present.
# YouTube-8M is released under CC BY 4.0.
#
# Usage: data_prep/download_yt8m.sh [OUT_DIR] [SHARD]     e.g.  data_prep/download_yt8m.sh data/yt8m 1,100
# Environment: LEVEL=frame|video (default frame), MIRROR=us|eu|asia (default us), WORKERS (default: all cores).
set -euo pipefail

OUT_DIR=${1:-data/yt8m}
SHARD=${2:-1,100}
LEVEL=${LEVEL:-frame}
MIRROR=${MIRROR:-us}
WORKERS=${WORKERS:-$(nproc)}

mkdir -p "$OUT_DIR/$LEVEL" stores
for split in train validate test; do
  # A subshell, so each split's download runs in the folder it fills.
  (cd "$OUT_DIR/$LEVEL" && curl -fsS data.yt8m.org/download.py | shard="$SHARD" partition="2/$LEVEL/$split" mirror="$MIRROR" python3)
done

for split in train validate test; do
  # Quoted globs: vdistill expands them itself (a shell would overflow its argument list on 3,844 shards).
  vdistill convert --input "$OUT_DIR/$LEVEL/$split*.tfrecord" --output "stores/${split}_${LEVEL}.h5" --workers "$WORKERS"
done
