#!/usr/bin/env bash
# The benchmark command on a lent GPU machine (the `device` tool): its image has torch but no
# network and none of the workflow's other libraries, so they travel as wheels in .whl/ (kept
# out of git), within the 64 MiB a call carries.
#
#   here, once:  bash clipbench/bench/device.sh wheels
#   there:       run(command="bash clipbench/bench/device.sh run peaks models mechanisms",
#                    carry=[".whl"], timeout_s=420)
#                then the same with `run versus` (the workflow and CLIP_benchmark, at their
#                defaults): each call writes its table and log under $OUT as it goes.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=clipbench/bench

case "${1:-}" in
wheels)
    grep -qsx '/.whl/' .git/info/exclude || echo /.whl/ >>.git/info/exclude
    platforms=()
    for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    # The device's Python (KINDS.md: 3.12 on x86-64), whatever this machine runs.
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" --platform manylinux2014_x86_64 \
        -d .whl -r "$here/device-wheels.txt"
    # Published as source only (pure Python): built here.
    python3 -m pip wheel --quiet --no-deps -w .whl connection-pool==0.0.3
    du -sh .whl
    ;;
run)
    shift
    out=${OUT:-results/bench}
    mkdir -p "$out"
    python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
    nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
    sections=("$@")
    [ ${#sections[@]} -gt 0 ] || sections=(peaks models mechanisms)
    # The default precision only, and the versus at each tool's default: 15 device minutes.
    python3 -m clipbench.bench --device cuda --precision auto --versus default \
        --sections "${sections[@]}" --out "$out" 2>&1 | tee "$out/bench-${sections[0]}.log"
    ;;
*)
    echo "usage: $0 wheels | run [SECTION...]" >&2
    exit 2
    ;;
esac
