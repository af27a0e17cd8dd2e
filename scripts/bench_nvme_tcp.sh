#!/usr/bin/env bash
# bdevperf over NVMe/TCP against the null target example (bdev-nvme/examples/
# tcp_null_target.rs) on the other core: what the initiator costs per I/O at host speed.
# BASE=path/to/another/bdevperf interleaves that build's runs with this one's.
#   N=5 T=4 BASE=/tmp/old/target/release/bdevperf scripts/bench_nvme_tcp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5}
T=${T:-4}
PORT=${PORT:-14999}
cargo build --release -q --bin bdevperf
cargo build --release -q -p bdev-nvme --example tcp_null_target
taskset -c 1 target/release/examples/tcp_null_target "$PORT" 2>/dev/null &
TGT=$!
trap 'kill $TGT 2>/dev/null' EXIT
sleep 0.5
CFG=target/bench-nvme-tcp.json
cat > "$CFG" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_nvme_attach_controller","params":{"name":"T","trtype":"tcp","traddr":"127.0.0.1",
  "trsvcid":"$PORT","subnqn":"nqn.2016-06.io.spdk:cnode1"}}]}]}
JSON
bins=(target/release/bdevperf)
[[ -n "${BASE:-}" ]] && bins+=("$BASE")
for i in $(seq "$N"); do
  for b in "${bins[@]}"; do
    for w in randread randwrite; do
      v=$("$b" -c "$CFG" -q 128 -o 4096 -w "$w" -t "$T" -m 0x1 2>/dev/null | grep -a Total | awk -F: '{print $2}' | awk '{print $1}')
      echo "$b $w $v"
    done
  done
done
