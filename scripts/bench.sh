#!/usr/bin/env bash
# The bdevperf figures of docs/benchmarks.md: every configuration N times, interleaved so
# that the machine's noise hits them alike, then the median of each and the ratios.
#   N=5 T=5 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5}
T=${T:-5}
cargo build --release -q --bin bdevperf
cargo build --release -q -p bdev-malloc --example memcpy_limit
BP=target/release/bdevperf
NULL=target/bench-null.json
cat > "$NULL" <<'JSON'
{"subsystems":[{"subsystem":"bdev","config":[
  {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":4096}}]}]}
JSON
declare -A cmd=(
  [null_randread_qd128_1core]="$BP -c $NULL -q 128 -o 4096 -w randread -t $T -m 0x1"
  [null_randread_qd1_1core]="$BP -c $NULL -q 1 -o 4096 -w randread -t $T -m 0x1"
  [null_randread_qd128_2core]="$BP -c $NULL -q 128 -o 4096 -w randread -t $T -m 0x3"
  [null_randread_qd128_1core_async]="$BP -c $NULL -q 128 -o 4096 -w randread -t $T -m 0x1 --async"
  [null_randread_qd128_1core_async_set]="$BP -c $NULL -q 128 -o 4096 -w randread -t $T -m 0x1 --async-set"
  [malloc_randread_qd32_1core]="$BP -q 32 -o 4096 -w randread -t $T -m 0x1"
  [malloc_randwrite_qd32_1core]="$BP -q 32 -o 4096 -w randwrite -t $T -m 0x1"
  [memcpy_4k_random_read]="target/release/examples/memcpy_limit read $T"
  [memcpy_4k_random_write]="target/release/examples/memcpy_limit write $T"
)
order=(null_randread_qd128_1core null_randread_qd1_1core null_randread_qd128_2core
       null_randread_qd128_1core_async null_randread_qd128_1core_async_set malloc_randread_qd32_1core malloc_randwrite_qd32_1core
       memcpy_4k_random_read memcpy_4k_random_write)
declare -A runs
for i in $(seq "$N"); do
  for k in "${order[@]}"; do
    out=$(${cmd[$k]})
    if [[ $k == memcpy* ]]; then v=$(awk '{print $1}' <<<"$out"); else v=$(grep -a 'Total' <<<"$out" | tail -1 | awk -F: '{print $2}' | awk '{print $1}'); fi
    runs[$k]="${runs[$k]:-} $v"
    echo "run $i $k $v" >&2
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
declare -A med
echo "| configuration | median IOPS (or copies/s) | runs |"
echo "| --- | ---: | --- |"
for k in "${order[@]}"; do
  med[$k]=$(echo "${runs[$k]}" | median)
  printf '| %s | %.0f | %s |\n' "$k" "${med[$k]}" "$(echo ${runs[$k]} | awk '{for(i=1;i<=NF;i++) printf "%.2fM ", $i/1e6}')"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
echo
echo "two cores / one core (null qd128): $(ratio "${med[null_randread_qd128_2core]}" "${med[null_randread_qd128_1core]}")"
echo "async / callback (null qd128): $(ratio "${med[null_randread_qd128_1core_async]}" "${med[null_randread_qd128_1core]}")"
echo "async IoSet / callback (null qd128): $(ratio "${med[null_randread_qd128_1core_async_set]}" "${med[null_randread_qd128_1core]}")"
echo "malloc randread / memcpy read bound: $(ratio "${med[malloc_randread_qd32_1core]}" "${med[memcpy_4k_random_read]}")"
echo "malloc randwrite / memcpy write bound: $(ratio "${med[malloc_randwrite_qd32_1core]}" "${med[memcpy_4k_random_write]}")"
