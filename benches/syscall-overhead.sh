#!/usr/bin/env bash
# What the eBPF probes add to each read/write syscall, measured side by
# side: dd copying 1-byte blocks (2 syscalls each) with no recording, while
# a recording of another process runs (the untraced cost), and under
# `ipcscope record` itself (traced, but /dev/zero and /dev/null are not IPC,
# so the probes resolve the fd and drop it). Alternating runs, medians.
#
#   benches/syscall-overhead.sh [BLOCKS] [RUNS]     (root; builds release first)
set -euo pipefail
cd "$(dirname "$0")/.."
blocks=${1:-2000000}
runs=${2:-5}
cargo build --release -q -p cli
ipcscope=target/release/ipcscope
db=$(mktemp -d)
trap 'kill "$bg" 2>/dev/null || true; rm -rf "$db"' EXIT

secs() { local s; s=$(date +%s%N); "$@" >/dev/null 2>&1; echo $(( $(date +%s%N) - s )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
dd_run() { dd if=/dev/zero of=/dev/null bs=1 count="$blocks" status=none; }
export -f dd_run; export blocks

base=(); untraced=(); traced=()
for _ in $(seq "$runs"); do
    base+=("$(secs bash -c dd_run)")
    "$ipcscope" record --db "$db/bg.db" -- sleep 3600 >/dev/null 2>&1 & bg=$!
    sleep 1.5 # probes loaded and attached
    untraced+=("$(secs bash -c dd_run)")
    kill "$bg"; wait "$bg" 2>/dev/null || true
    traced+=("$(secs "$ipcscope" record --db "$db/t.db" -- bash -c dd_run)")
done
b=$(printf '%s\n' "${base[@]}" | median)
u=$(printf '%s\n' "${untraced[@]}" | median)
t=$(printf '%s\n' "${traced[@]}" | median)
calls=$(( blocks * 2 ))
echo "syscalls per run: $calls; medians of $runs"
echo "no recording:            $(( b / 1000000 )) ms"
echo "untraced, recording on:  $(( u / 1000000 )) ms  (+$(( (u - b) / calls )) ns per syscall)"
echo "traced (record -- dd):   $(( t / 1000000 )) ms  (+$(( (t - b) / calls )) ns per syscall, including record's start-up and exit)"
