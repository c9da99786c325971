#!/usr/bin/env bash
# What the eBPF probes add to each read/write syscall, measured side by
# side: dd copying 1-byte blocks (2 syscalls each) with no recording, while
# a recording of another process runs (the untraced cost), and under
# `ipcscope record` itself (traced, but /dev/zero and /dev/null are not IPC,
# so the probes resolve the fd and drop it). Each run times dd alone, from
# inside (the recorder's start-up and exit are not counted). Alternating
# runs, medians.
#
#   benches/syscall-overhead.sh [BLOCKS] [RUNS]     (root; builds release first)
#
# With IPCSCOPE_BEFORE=/path/to/another/ipcscope, that binary (say, a build
# of an earlier commit) is measured too, alternating with this one in the
# same rounds, so a change is compared against what it replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
blocks=${1:-2000000}
runs=${2:-5}
cargo build --release -q -p cli
binaries=(target/release/ipcscope)
labels=(this)
if [[ -n "${IPCSCOPE_BEFORE:-}" ]]; then
    binaries+=("$IPCSCOPE_BEFORE")
    labels+=(before)
fi
db=$(mktemp -d)
bg=
trap 'if [[ -n "$bg" ]]; then kill "$bg" 2>/dev/null || true; fi; rm -rf "$db"' EXIT

# dd's own time in ns, printed by the shell that runs it.
dd_timed() { local s; s=$(date +%s%N); dd_run; echo $(( $(date +%s%N) - s )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
dd_run() { dd if=/dev/zero of=/dev/null bs=1 count="$blocks" status=none; }
export -f dd_run dd_timed; export blocks

declare -A untraced traced
base=()
for _ in $(seq "$runs"); do
    base+=("$(bash -c dd_timed)")
    for i in "${!binaries[@]}"; do
        bin=${binaries[$i]}
        "$bin" record --db "$db/bg.db" -- sleep 3600 >/dev/null 2>&1 & bg=$!
        sleep 1.5 # probes loaded and attached
        untraced[$i]+="$(bash -c dd_timed) "
        kill "$bg"; wait "$bg" 2>/dev/null || true; bg=
        traced[$i]+="$("$bin" record --db "$db/t.db" -- bash -c dd_timed 2>/dev/null | tail -n 1) "
    done
done
b=$(printf '%s\n' "${base[@]}" | median)
calls=$(( blocks * 2 ))
echo "syscalls per run: $calls; medians of $runs"
echo "no recording:                  $(( b / 1000000 )) ms"
for i in "${!binaries[@]}"; do
    u=$(tr ' ' '\n' <<<"${untraced[$i]}" | grep . | median)
    t=$(tr ' ' '\n' <<<"${traced[$i]}" | grep . | median)
    printf 'untraced, recording on (%s): %d ms  (+%d ns per syscall)\n' \
        "${labels[$i]}" $(( u / 1000000 )) $(( (u - b) / calls ))
    printf 'traced, record -- dd (%s):    %d ms  (+%d ns per syscall)\n' \
        "${labels[$i]}" $(( t / 1000000 )) $(( (t - b) / calls ))
done
