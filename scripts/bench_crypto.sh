#!/usr/bin/env bash
# Issue 6's figures (1 core, 4 KiB, queue depth 128): the crypto bdev (AES-128-XTS) over
# a null bdev, randread and randwrite, against the raw throughput of the same AES-XTS
# code on 4 KiB sectors (Criterion), with `openssl speed -evp aes-128-xts` beside it.
#   N=5 T=5 scripts/bench_crypto.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5}
T=${T:-5}
cargo build --release -q --bin bdevperf
BP=target/release/bdevperf
CFG=target/bench-crypto.json
cat > "$CFG" <<'JSON'
{"subsystems":[
 {"subsystem":"accel","config":[{"method":"accel_crypto_key_create","params":{"name":"k","cipher":"AES_XTS",
   "key":"00112233445566778899aabbccddeeff","key2":"ffeeddccbbaa99887766554433221100"}}]},
 {"subsystem":"bdev","config":[
  {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":4096}},
  {"method":"bdev_crypto_create","params":{"base_bdev_name":"Null0","name":"C0","key_name":"k"}}]}]}
JSON
iops() { grep -a 'Total' | tail -1 | awk -F: '{print $2}' | awk '{print $1}'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
declare -A runs
keys=(crypto_randread crypto_randwrite)
for i in $(seq "$N"); do
  for k in "${keys[@]}"; do
    w=${k#crypto_}
    v=$($BP -c "$CFG" -T C0 -q 128 -o 4096 -w "$w" -t "$T" -m 0x1 | iops)
    runs[$k]="${runs[$k]:-} $v"
    echo "run $i $k $v" >&2
  done
done
# Raw crate throughput, MiB/s (Criterion's middle estimate).
crit=$(cargo bench -q -p bdev-crypto --bench xts 2>/dev/null | grep -E "^aes_xts_4k|thrpt")
echo "$crit" >&2
# The first thrpt line after the benchmark's name: [low unit mid unit high unit].
mibs() { echo "$crit" | grep -A1 "$1" | grep thrpt | head -1 | tr -d '[]' | awk '{v=$4; if ($5=="GiB/s") v*=1024; printf "%.0f", v}'; }
enc=$(mibs ours_encrypt_aes128)
dec=$(mibs ours_decrypt_aes128)
xenc=$(mibs xts_mode_encrypt_aes128)
osl=$(openssl speed -evp aes-128-xts -bytes 4096 -seconds 3 2>/dev/null | grep -i '^aes-128-xts' | awk '{print $NF}')
for k in "${keys[@]}"; do
  med=$(echo "${runs[$k]}" | median)
  mib=$(awk -v i="$med" 'BEGIN{printf "%.0f", i*4096/1048576}')
  printf '| %s | %.0f IOPS = %s MiB/s | %s |\n' "$k" "$med" "$mib" "$(echo ${runs[$k]} | awk '{for(i=1;i<=NF;i++) printf "%.0fk ", $i/1e3}')"
done
echo "raw AES-128-XTS, 4 KiB sectors: ours encrypt $enc MiB/s, decrypt $dec MiB/s; xts-mode crate encrypt $xenc MiB/s"
echo "openssl speed -evp aes-128-xts, 4 KiB: ${osl} (kB/s, 1000s of bytes)"
r=$(echo "${runs[crypto_randread]}" | median); w=$(echo "${runs[crypto_randwrite]}" | median)
awk -v r="$r" -v w="$w" -v e="$enc" -v d="$dec" 'BEGIN{printf "randread / raw decrypt: %.2f\nrandwrite / raw encrypt: %.2f\n", r*4096/1048576/d, w*4096/1048576/e}'
