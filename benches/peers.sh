#!/usr/bin/env bash
# ipcscope against the tools a user would reach for instead, side by side
# in one run: the same workloads with nothing attached, under
# `ipcscope record`, under `strace -f`, under `perf trace` and under a
# bpftrace script doing the same capture (every IPC syscall of the workload
# and its children: pid, tid, syscall, result, duration). Rounds alternate
# the tools; medians. Writes the table into BENCHMARKS.md between the
# peers markers, and prints it.
#
#   benches/peers.sh [ROUNDS]          (root; installs stress-ng and bpftrace if missing)
#
# Workloads: stress-ng's pipe, sem-sysv, mq and futex stressors with fixed op
# counts (the time for those ops, as the stressor itself sees it and for
# the whole run, tool included; the POSIX --sem stressor of stress-ng 0.15
# never reaches its op count here), and a Unix SOCK_SEQPACKET ping-pong
# (socket_latency --only raw: its p50 round trip).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh
rounds=${1:-3}
for pkg in stress-ng bpftrace; do
    command -v "$pkg" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >/dev/null
done
build_release socket_latency
pingpong=$example

# The syscalls ipcscope's probes capture, for strace and perf trace.
calls=read,write,readv,writev,sendto,recvfrom,sendmsg,recvmsg,mq_timedsend,mq_timedreceive,msgsnd,msgrcv,semop,semtimedop,futex,mmap,munmap,shmat,shmdt
# The same set by x86-64 number, for bpftrace's raw_syscalls filter.
cat >"$tmp/capture.bt" <<'EOF'
tracepoint:sched:sched_process_fork /args->parent_pid == cpid || @t[args->parent_pid]/ {
    @t[args->child_pid] = 1;
}
tracepoint:raw_syscalls:sys_enter /(pid == cpid || @t[pid]) &&
    (args->id <= 1 || args->id == 9 || args->id == 11 || args->id == 19 || args->id == 20 ||
     args->id == 30 || (args->id >= 44 && args->id <= 47) || args->id == 65 || args->id == 67 ||
     args->id == 69 || args->id == 70 || args->id == 202 || args->id == 220 ||
     args->id == 242 || args->id == 243)/ {
    @start[tid] = nsecs;
    @nr[tid] = args->id;
}
tracepoint:raw_syscalls:sys_exit /@start[tid]/ {
    printf("%d %d %d %d %d\n", pid, tid, @nr[tid], args->ret, nsecs - @start[tid]);
    delete(@start[tid]);
    delete(@nr[tid]);
}
END { clear(@t); clear(@start); clear(@nr); }
EOF

workloads=(pipe sem mq futex pingpong)
declare -A label=(
    [pipe]="stress-ng --pipe 1 --pipe-ops 100000"
    [sem]="stress-ng --sem-sysv 1 --sem-sysv-ops 500000"
    [mq]="stress-ng --mq 1 --mq-ops 100000"
    [futex]="stress-ng --futex 1 --futex-ops 100000"
    [pingpong]="SOCK_SEQPACKET ping-pong, 20,000 round trips"
)
tools=(none ipcscope strace perf bpftrace)
# Full paths: bpftrace -c wants one.
sng=$(command -v stress-ng)
# The stressors run under `timed`, which notes their own start and end:
# the time a tool costs the traced program, apart from the tool's own
# start (bpftrace compiles its script, ipcscope loads probes) and finish
# (ipcscope stores what is still queued).
cat >"$tmp/timed" <<'EOF'
start=$EPOCHREALTIME
"$@"
status=$?
echo "$start $EPOCHREALTIME" >"$TIMED_OUT"
exit $status
EOF
# Run by bash by name: bpftrace -c execs only binaries.
timed="$BASH $tmp/timed"
export TIMED_OUT=$tmp/timed.out
declare -A cmd=(
    [pipe]="$timed $sng --pipe 1 --pipe-ops 100000 -q"
    [sem]="$timed $sng --sem-sysv 1 --sem-sysv-ops 500000 -q"
    [mq]="$timed $sng --mq 1 --mq-ops 100000 -q"
    [futex]="$timed $sng --futex 1 --futex-ops 100000 -q"
    [pingpong]="$pingpong --only raw --rounds 20000"
)

# Runs workload $1 under tool $2; prints "figure wall captured lost": the
# figure is the workload's own time in ns, or the ping-pong's p50 in ns;
# wall is the whole run's, tool included; captured is how many events
# (ipcscope) or lines (the others) the tool wrote; lost is what it says it
# lost (strace stops the traced process instead).
measure() {
    local w=$1 tool=$2 out=$tmp/out err=$tmp/err start end figure captured=0 lost=0
    rm -f "$tmp"/p.db* "$tmp/trace" "$TIMED_OUT"
    : >"$err"
    start=$(date +%s%N)
    # shellcheck disable=SC2086 # the workload's words
    case $tool in
        none) ${cmd[$w]} >"$out" ;;
        ipcscope) "$ipcscope" record --db "$tmp/p.db" -- ${cmd[$w]} >"$out" 2>"$err" ;;
        strace) strace -f -qq -o "$tmp/trace" -e trace="$calls" ${cmd[$w]} >"$out" ;;
        perf) perf trace -o "$tmp/trace" -e "$calls" -- ${cmd[$w]} >"$out" 2>"$err" ;;
        bpftrace) bpftrace -q -o "$tmp/trace" -c "${cmd[$w]}" "$tmp/capture.bt" >"$out" 2>"$err" ;;
    esac
    end=$(date +%s%N)
    if [[ $w == pingpong ]]; then
        figure=$(awk '/raw:/ {printf "%d", $3 * 1000}' "$out")
    else
        # %.0f: mawk's %d stops at 2^31 (2.1 s in ns).
        figure=$(awk '{printf "%.0f", ($2 - $1) * 1e9}' "$TIMED_OUT")
    fi
    case $tool in
        ipcscope)
            captured=$("$ipcscope" query --db "$tmp/p.db" --format csv \
                "select event_count from sessions" | tail -n 1 | tr -d '\r\n')
            lost=$("$ipcscope" query --db "$tmp/p.db" --format csv \
                "select coalesce(sum(count), 0) from drops" | tail -n 1 | tr -d '\r\n')
            ;;
        strace | perf | bpftrace)
            captured=$(wc -l <"$tmp/trace")
            # perf: "LOST 12 events!"; bpftrace: "Lost 12 events".
            lost=$(cat "$tmp/trace" "$err" | { grep -oiE 'lost [0-9]+ events' || true; } |
                awk '{n += $2} END {print n + 0}')
            ;;
    esac
    echo "$figure $((end - start)) $captured $lost"
}


declare -A figures walls captures losses
for _ in $(seq "$rounds"); do
    for w in "${workloads[@]}"; do
        for tool in "${tools[@]}"; do
            read -r figure wall captured lost < <(measure "$w" "$tool")
            figures[$w.$tool]+="$figure "
            walls[$w.$tool]+="$wall "
            captures[$w.$tool]=$captured
            losses[$w.$tool]=$((${losses[$w.$tool]:-0} + lost))
        done
    done
done

table=$tmp/table.md
{
    echo "Run $(date -u +%Y-%m-%d), medians of $rounds round(s) (\`benches/peers.sh $rounds\`). Each cell: the"
    echo "workload's own time against nothing attached, then the whole run's (the tool's start and"
    echo "finish included), what the tool captured in the last round, and what it lost in all rounds"
    echo "where it reported a loss. The ping-pong compares p50 round trips only."
    echo
    echo "| workload | nothing attached | ipcscope record | strace -f | perf trace | bpftrace |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for w in "${workloads[@]}"; do
        base=$(tr ' ' '\n' <<<"${figures[$w.none]}" | grep . | median)
        base_wall=$(tr ' ' '\n' <<<"${walls[$w.none]}" | grep . | median)
        unit="ms"
        [[ $w == pingpong ]] && unit="µs p50"
        row="| ${label[$w]} | $(awk -v b="$base" 'BEGIN {printf "%.1f", b / 1e6}') ms"
        [[ $w == pingpong ]] && row="| ${label[$w]} | $(awk -v b="$base" 'BEGIN {printf "%.1f", b / 1e3}') $unit"
        for tool in "${tools[@]:1}"; do
            m=$(tr ' ' '\n' <<<"${figures[$w.$tool]}" | grep . | median)
            row+=" | $(awk -v m="$m" -v b="$base" 'BEGIN {printf "%.2fx", m / b}')"
            if [[ $w != pingpong ]]; then
                m=$(tr ' ' '\n' <<<"${walls[$w.$tool]}" | grep . | median)
                row+=" ($(awk -v m="$m" -v b="$base_wall" 'BEGIN {printf "%.2fx", m / b}') whole run)"
            fi
            row+=", ${captures[$w.$tool]} captured"
            if ((${losses[$w.$tool]} > 0)); then
                row+=", ${losses[$w.$tool]} lost in all rounds"
            fi
        done
        echo "$row |"
    done
} >"$table"
cat "$table"

write_section peers "$table"
