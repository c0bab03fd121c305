#!/usr/bin/env bash
# The GPU check on a GPU machine that has Python 3.12 with torch and torchvision but no Java and
# no network. Wheels come from benchmarks/device/fetch_wheels.sh (run on a machine with network
# first), in three groups of at most 64 MiB, each copied over and installed in turn:
#   1, with build/device-wheels/java:        bash benchmarks/device/check.sh install java
#   2, with build/device-wheels/torchserve:  bash benchmarks/device/check.sh install torchserve
#   3, with build/device-wheels/bench:       bash benchmarks/device/check.sh install bench run
# `run` is `python -m benchmarks.run` on the GPU (ours vs stock vs raw, in-process and served);
# `workers` (optional) serves ours with 1, 2 and 4 workers on the GPU.
# $OUT gets the console logs, the last report and plot, and results.tgz with every report, locust
# CSV and server log of this call; no archives.
set -euo pipefail

SITE="${SITE:-/root/site}"  # /root survives between calls on a warm machine
GROUPS_=(java torchserve bench)
export PYTHONPATH="$(IFS=:; echo "${GROUPS_[*]/#/$SITE/}"):$PWD"
export PYTHONUNBUFFERED=1  # a run cut off by its timeout still leaves every line it printed
SECONDS_PER_STEP="${SECONDS_PER_STEP:-15}"
BATCH_SIZE="${BATCH_SIZE:-32}"

install() {
    python3 -m pip install --quiet --no-index --no-deps --target "$SITE/$1" "build/device-wheels/$1"/*.whl
    echo "installed $1: $(ls "build/device-wheels/$1" | wc -l) wheels"
}

prepare() {
    for group in "${GROUPS_[@]}"; do
        [ -d "$SITE/$group" ] || { echo "error: $SITE/$group is missing: the machine was handed back between calls" \
            "(30 s idle). Run the three install calls again, one right after the other." >&2; exit 1; }
    done
    python3 -c "import torch, torchvision, ts; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'torchserve', ts.__version__, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())"
    python3 -m scripts.client.grpc_stubs
    nvidia-smi > "$OUT/nvidia-smi.txt" || true
}

STARTED="$(mktemp)"
keep_results() {  # this call's reports, CSVs and logs
    [ -d results ] || return 0
    local latest
    latest="$(find results -mindepth 1 -maxdepth 1 -type d -newer "$STARTED" | sort | tail -1)"
    [ -n "$latest" ] || return 0
    cp "$latest"/report.md "$latest"/plot.png "$OUT"/ 2>/dev/null || true
    find results -newer "$STARTED" -type f \( -name '*.md' -o -name '*.png' -o -name '*.csv' -o -name '*.log' \) -print0 \
        | tar --null -czf "$OUT/results.tgz" -T -
}
trap keep_results EXIT

while (($#)); do
    case "$1" in
        install) install "$2"; shift 2 ;;
        run)
            prepare
            timeout 420 python3 -m benchmarks.run --seconds "$SECONDS_PER_STEP" --batch-size "$BATCH_SIZE" 2>&1 \
                | tee "$OUT/bench.log"
            shift ;;
        workers)
            prepare
            for workers in 1 2 4; do
                WORKERS=$workers timeout 150 python3 -m benchmarks.run --seconds 10 --batch-size "$BATCH_SIZE" \
                    --concurrency 256 --skip-stock 2>&1 | tee "$OUT/workers-$workers.log"
            done
            shift ;;
        *) echo "usage: $0 install java|torchserve|bench | run | workers" >&2; exit 2 ;;
    esac
done
