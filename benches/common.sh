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

# The median of the numbers on stdin, one a line.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
