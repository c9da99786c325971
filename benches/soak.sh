#!/usr/bin/env bash
# The recorder under a sustained load for a long time: ipc-lib channel
# traffic at a fixed rate (producer_consumer --rate, 64-byte messages; each
# message is a send and a receive event and a paired `messages` row),
# recorded with `ipcscope record --no-ebpf` into a fresh database. Samples
# the recorder's resident memory and the database's size every minute, then
# counts what was stored and dropped. Writes the table into BENCHMARKS.md
# between the soak markers, and prints it.
#
#   benches/soak.sh [SECONDS] [MESSAGES_PER_SECOND]     (defaults: 600 50000)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh
secs=${1:-600}
rate=${2:-50000}
build_release producer_consumer
producer=$example
db=$tmp/soak.db

# Fields $2... of process $1's status (VmRSS, RssAnon, VmHWM), in MiB.
status_mib() {
    local pid=$1
    shift
    for field in "$@"; do
        awk -v f="$field:" '$1 == f {printf "%.0f ", $2 / 1024}' "/proc/$pid/status"
    done
}
# Database and WAL in MiB.
db_size() { du -cm "$db"* 2>/dev/null | awk 'END {print $1}'; }

# The workload runs a little past the last minute sampled.
messages=$(((secs + 5) * rate))
q() { "$ipcscope" query --db "$db" --format csv "$1" | tail -n 1 | tr -d '\r\n'; }
# Events dropped so far, every source (a tiny table: cheap while recording).
dropped() { q "select coalesce(sum(count), 0) from drops" 2>/dev/null || echo "?"; }

"$ipcscope" record --no-ebpf --db "$db" -- \
    "$producer" --messages "$messages" --size 64 --rate "$rate" 2>"$tmp/err" &
recorder=$!
samples=$tmp/samples
: >"$samples" # a run shorter than a minute has no sample
start=$(date +%s)
minute=0
while kill -0 "$recorder" 2>/dev/null; do
    sleep 1
    now=$(($(date +%s) - start))
    if ((now >= (minute + 1) * 60 && now <= secs)) && kill -0 "$recorder" 2>/dev/null; then
        minute=$((minute + 1))
        echo "$minute $(status_mib "$recorder" VmRSS RssAnon VmHWM)$(db_size) $(dropped)" | tee -a "$samples"
    fi
done
wait "$recorder" || { cat "$tmp/err"; exit 1; }
elapsed=$(($(date +%s) - start))

events=$(q "select count(*) from events")
stored=$(q "select count(*) from events where kind in ('msg_send', 'msg_recv')")
paired=$(q "select count(*) from messages")
drops=$("$ipcscope" query --db "$db" --format csv \
    "select source || ' ' || sum(count) from drops group by source" | tail -n +2 | tr -d '\r' | paste -sd, -)
bytes=$(du -cb "$db"* | awk 'END {print $1}')
achieved=$(grep -o '[0-9]* msg/s' "$tmp/err" | head -n 1)

table=$tmp/table.md
{
    echo "Run $(date -u +%Y-%m-%d) (\`benches/soak.sh $secs $rate\`, release build): $messages messages of 64 bytes"
    echo "at $rate a second (the producer achieved $achieved), $elapsed s in all."
    echo
    echo "| minute | recorder RSS | of it anonymous | peak RSS so far | database + WAL | events dropped so far |"
    echo "| --- | --- | --- | --- | --- | --- |"
    while read -r m r a p d x; do
        echo "| $m | $r MiB | $a MiB | $p MiB | $d MiB | $x |"
    done <"$samples"
    echo
    echo "- sends and receives stored: $stored of $((2 * messages)) emitted (and $((events - stored)) process events);"
    echo "  messages paired: $paired of $messages;"
    echo "  events dropped, by source: ${drops:-none}."
    echo "- database at the end: $(awk -v b="$bytes" 'BEGIN {printf "%.0f", b / 1048576}') MiB,"
    echo "  $(awk -v b="$bytes" -v e="$events" 'BEGIN {printf "%.0f", b / e * 1e6 / 1048576}') MiB per million events: $(awk -v b="$bytes" -v e="$events" 'BEGIN {printf "%.0f", b / e}') bytes an event,"
    echo "  with its share of the paired \`messages\` rows and of the indexes."
} >"$table"
cat "$table"
write_section soak "$table"
