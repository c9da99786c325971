# Sourced by the bench scripts: what they share.
#
#   write_section NAME FILE: replaces what lies between the lines
#   `<!-- NAME:start -->` and `<!-- NAME:end -->` in BENCHMARKS.md with
#   FILE's lines, a blank line either side; the markers stay.
write_section() {
    local name=$1 body=$2 out
    grep -q "<!-- $name:start -->" BENCHMARKS.md || {
        echo "BENCHMARKS.md has no <!-- $name:start --> marker" >&2
        return 1
    }
    out=$(mktemp)
    awk -v body="$body" -v start="<!-- $name:start -->" -v end="<!-- $name:end -->" '
        $0 == start {
            print; print "";
            while ((getline line < body) > 0) print line;
            print ""; skip = 1; next
        }
        $0 == end { skip = 0 }
        !skip' BENCHMARKS.md >"$out"
    cp "$out" BENCHMARKS.md
    rm -f "$out"
}

# build_release EXAMPLE: release builds of ipcscope and of ipc-lib's
# EXAMPLE; sets $ipcscope and $example to their paths, and $tmp to a
# scratch directory removed on exit.
build_release() {
    cargo build --release -q -p cli
    cargo build --release -q -p ipc-lib --example "$1"
    ipcscope=$PWD/target/release/ipcscope
    example=$PWD/target/release/examples/$1
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
}

# The median of the numbers on stdin, one a line.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
