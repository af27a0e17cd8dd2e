#!/usr/bin/env bash
# Issue 3's figures: what the services cost when off (null bdev, this build against the
# foundation's, if FOUNDATION=path/to/its/bdevperf is given), passthru over null against
# null, and QoS accuracy over 10 s. Interleaved N times; medians and ratios.
#   N=5 T=5 FOUNDATION=/tmp/found-target/release/bdevperf scripts/bench_services.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5}
T=${T:-5}
cargo build --release -q --bin bdevperf
BP=target/release/bdevperf
NULL=target/bench-null.json
PT=target/bench-passthru.json
cat > "$NULL" <<'JSON'
{"subsystems":[{"subsystem":"bdev","config":[
  {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":4096}}]}]}
JSON
cat > "$PT" <<'JSON'
{"subsystems":[{"subsystem":"bdev","config":[
  {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":4096}},
  {"method":"bdev_passthru_create","params":{"base_bdev_name":"Null0","name":"PT0"}}]}]}
JSON
HIST=target/bench-null-hist.json
QOSHI=target/bench-null-qos.json
cat > "$HIST" <<'JSON'
{"subsystems":[{"subsystem":"bdev","config":[
  {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":4096}},
  {"method":"bdev_enable_histogram","params":{"name":"Null0","enable":true}}]}]}
JSON
cat > "$QOSHI" <<'JSON'
{"subsystems":[{"subsystem":"bdev","config":[
  {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":4096}},
  {"method":"bdev_set_qos_limit","params":{"name":"Null0","rw_ios_per_sec":1000000000}}]}]}
JSON
iops() { grep -a 'Total' | tail -1 | awk -F: '{print $2}' | awk '{print $1}'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a/b}'; }
declare -A runs
keys=(null passthru null_histogram null_qos_not_binding)
[[ -n "${FOUNDATION:-}" ]] && keys+=(null_foundation)
for i in $(seq "$N"); do
  for k in "${keys[@]}"; do
    case $k in
      null) v=$($BP -c "$NULL" -q 128 -o 4096 -w randread -t "$T" -m 0x1 | iops) ;;
      passthru) v=$($BP -c "$PT" -T PT0 -q 128 -o 4096 -w randread -t "$T" -m 0x1 | iops) ;;
      null_histogram) v=$($BP -c "$HIST" -q 128 -o 4096 -w randread -t "$T" -m 0x1 | iops) ;;
      null_qos_not_binding) v=$($BP -c "$QOSHI" -q 128 -o 4096 -w randread -t "$T" -m 0x1 | iops) ;;
      null_foundation) v=$("$FOUNDATION" -c "$NULL" -q 128 -o 4096 -w randread -t "$T" -m 0x1 | iops) ;;
    esac
    runs[$k]="${runs[$k]:-} $v"
    echo "run $i $k $v" >&2
  done
done
declare -A med
for k in "${keys[@]}"; do
  med[$k]=$(echo "${runs[$k]}" | median)
  printf '| %s | %.0f | %s |\n' "$k" "${med[$k]}" "$(echo ${runs[$k]} | awk '{for(i=1;i<=NF;i++) printf "%.2fM ", $i/1e6}')"
done
echo "passthru / null: $(ratio "${med[passthru]}" "${med[null]}")"
echo "histogram on / off: $(ratio "${med[null_histogram]}" "${med[null]}")"
echo "QoS on but not binding / off: $(ratio "${med[null_qos_not_binding]}" "${med[null]}")"
[[ -n "${FOUNDATION:-}" ]] && echo "null now / null at the foundation: $(ratio "${med[null]}" "${med[null_foundation]}")"

# QoS accuracy: 10 s runs against limits, on one core and on two.
qos() { # limit-params mask
  local cfg=target/bench-qos.json
  cat > "$cfg" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
  {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":4096}},
  {"method":"bdev_set_qos_limit","params":{"name":"Null0",$1}}]}]}
JSON
  $BP -c "$cfg" -q 128 -o 4096 -w randrw -M 50 -t 10 -m "$2" | grep -a Total | tail -1
}
for mask in 0x1 0x3; do
  out=$(qos '"rw_ios_per_sec":100000' $mask)
  got=$(awk -F: '{print $2}' <<<"$out" | awk '{print $1}')
  echo "QoS rw_ios_per_sec 100000, -m $mask: $got IOPS ($(ratio "$got" 100000) of the limit)"
  out=$(qos '"rw_mbytes_per_sec":200' $mask)
  got=$(awk -F: '{print $2}' <<<"$out" | awk '{print $2}')
  echo "QoS rw_mbytes_per_sec 200, -m $mask: $got MiB/s ($(ratio "$got" 200) of the limit)"
  out=$(qos '"r_mbytes_per_sec":100' $mask)
  got=$(awk -F: '{print $2}' <<<"$out" | awk '{print $2}')
  echo "QoS r_mbytes_per_sec 100 (randrw 50%), -m $mask: $got MiB/s in all (reads held to 100, writes follow the mix)"
done
