#!/usr/bin/env bash
# Instructions per I/O of a bdevperf build under callgrind, free of start-up and
# shutdown: (instructions of a 4 s run - those of a 2 s run) / (I/Os of one - the other).
#   W=randwrite scripts/instr_per_io.sh target/release/bdevperf cfg.json [-T bdev]
# bdevperf runs with -q 128 -o 4096 -m 0x1 and -w $W (randread by default).
set -euo pipefail
bin=$1
cfg=$2
shift 2
declare -a ir ios
for t in 2 4; do
  out=$(valgrind --tool=callgrind --callgrind-out-file="/tmp/instr_per_io.$t" \
    "$bin" -c "$cfg" -q 128 -o 4096 -w "${W:-randread}" -m 0x1 "$@" -t "$t" 2>/dev/null)
  iops=$(grep -a Total <<<"$out" | tail -1 | awk -F: '{print $2}' | awk '{print $1}')
  rt=$(grep -a -E '^\s+\S+\s+:\s+[0-9.]+' <<<"$out" | head -1 | awk -F: '{print $2}' | awk '{print $1}')
  ios[$t]=$(awk -v a="$iops" -v b="$rt" 'BEGIN{printf "%d", a*b}')
  ir[$t]=$(callgrind_annotate "/tmp/instr_per_io.$t" 2>/dev/null | grep "PROGRAM TOTALS" | awk '{gsub(",","",$1); print $1}')
done
echo "$(basename "$bin") $cfg $*: $(( (ir[4] - ir[2]) / (ios[4] - ios[2]) )) instructions per I/O"
