#!/usr/bin/env bash
# ipc-lib's blocking runs of the iceoryx2 bench, placement by placement
# (issue 18: how a blocking receive should spin). Where the scheduler puts
# the two processes decides these figures before anything else does, and
# it chooses afresh for every run, so each placement is also made on
# purpose:
#
#   free       left to the scheduler
#   one-cpu    both processes pinned to CPU 0
#   two-cpus   driver on CPU 0, peer on CPU 1
#   peer-polls two CPUs, and the peer busy-polls (latency only): the
#              driver's blocking receive waits for a peer always awake
#
# This tree's build against IPCSCOPE_BEFORE (the bench built from an
# earlier commit) and against that build with `spins(0)`, alternated run by
# run, in reverse order every other round; medians of RUNS, then each run.
# Latency is one way (p50 round trip / 2) in ns, throughput messages a
# second.
#
#   IPCSCOPE_BEFORE=/path/to/old/bench-iceoryx2 benches/iceoryx2/spin.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")"
source ../common.sh
runs=${1:-5}
before=${IPCSCOPE_BEFORE:?set IPCSCOPE_BEFORE to an earlier build of bench-iceoryx2}
cargo build --release -q
after=${CARGO_TARGET_DIR:-target}/release/bench-iceoryx2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# label binary spins-or-empty
variants=("before $before -" "before-spins0 $before 0" "after $after -")

one_run() { # placement variant-binary spins case...
    local placement=$1 bin=$2 spins=$3
    shift 3
    local env=()
    case $placement in
        one-cpu) env+=(IPCSCOPE_BENCH_DRIVER_CPU=0 IPCSCOPE_BENCH_PEER_CPU=0) ;;
        two-cpus) env+=(IPCSCOPE_BENCH_DRIVER_CPU=0 IPCSCOPE_BENCH_PEER_CPU=1) ;;
        peer-polls) env+=(IPCSCOPE_BENCH_DRIVER_CPU=0 IPCSCOPE_BENCH_PEER_CPU=1
            IPCSCOPE_BENCH_PEER_POLLS=1) ;;
    esac
    if [[ $spins != - ]]; then env+=(IPCSCOPE_BENCH_SPINS="$spins"); fi
    env "${env[@]}" "$bin" --driver ipc-lib block "$@" "ipcscope-spin-$$-$RANDOM" |
        awk -v m="$1" '{ printf "%.0f\n", (m == "latency") ? $1 / 2 : $1 }'
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 0; r < runs; r++)); do
    order=("${variants[@]}")
    if ((r % 2 == 1)); then
        order=("${variants[2]}" "${variants[1]}" "${variants[0]}")
    fi
    for placement in free one-cpu two-cpus peer-polls; do
        for c in "latency 64 5000" "latency 65536 5000" \
            "throughput 64 200000" "throughput 65536 20000"; do
            # shellcheck disable=SC2086
            set -- $c
            if [[ $placement == peer-polls && $1 == throughput ]]; then continue; fi
            for v in "${order[@]}"; do
                # shellcheck disable=SC2086
                set -- $v
                one_run "$placement" "$2" "$3" $c >>"$out/$placement,$c,$1"
            done
        done
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

printf '%-11s %-22s %14s %14s %14s\n' placement case before before-spins0 after
for f in "$out"/*,before; do
    key=${f%,before}
    key=${key##*/}
    IFS=, read -r placement c <<<"$key"
    printf '%-11s %-22s' "$placement" "$c"
    for v in before before-spins0 after; do
        printf ' %14s' "$(median <"$out/$key,$v")"
    done
    echo
    for v in before before-spins0 after; do
        printf '%36s %-14s %s\n' "" "$v" "$(paste -sd' ' "$out/$key,$v")"
    done
done
