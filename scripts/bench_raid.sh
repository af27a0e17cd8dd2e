#!/usr/bin/env bash
# Issue 5's figures (1 core, 4 KiB, queue depth 128): raid0 over two null bdevs against
# one null bdev (randread); raid1 over two malloc bdevs against one malloc bdev, reads
# (randread) and writes (randwrite); raid1 reads also with our raid1_read_affinity
# option. Interleaved N times; medians and ratios, and the ratios paired per round.
# A control: one malloc twice the size (the memory a raid1 over two touches), reads and
# writes, to tell the cost of touching twice the memory from the raid1 level's own.
#   N=5 T=5 scripts/bench_raid.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5}
T=${T:-5}
cargo build --release -q --bin bdevperf
BP=target/release/bdevperf
NULL=target/bench-raid-null.json
R0=target/bench-raid0.json
MAL=target/bench-raid-malloc.json
MAL2=target/bench-raid-malloc-x2.json
R1=target/bench-raid1.json
R1A=target/bench-raid1-affinity.json
null() { echo "{\"method\":\"bdev_null_create\",\"params\":{\"name\":\"$1\",\"num_blocks\":2097152,\"block_size\":4096}}"; }
mal() { echo "{\"method\":\"bdev_malloc_create\",\"params\":{\"name\":\"$1\",\"num_blocks\":${2:-65536},\"block_size\":4096}}"; }
cfg() { echo "{\"subsystems\":[{\"subsystem\":\"bdev\",\"config\":[$1]}]}"; }
cfg "$(null Null0)" > "$NULL"
cfg "$(null Null0),$(null Null1),{\"method\":\"bdev_raid_create\",\"params\":{\"name\":\"R0\",\"raid_level\":\"raid0\",\"strip_size_kb\":64,\"base_bdevs\":[\"Null0\",\"Null1\"]}}" > "$R0"
cfg "$(mal Malloc0)" > "$MAL"
cfg "$(mal Malloc0 131072)" > "$MAL2"
r1="$(mal Malloc0),$(mal Malloc1),{\"method\":\"bdev_raid_create\",\"params\":{\"name\":\"R1\",\"raid_level\":\"raid1\",\"base_bdevs\":[\"Malloc0\",\"Malloc1\"]}}"
cfg "$r1" > "$R1"
# The same with our raid1_read_affinity option (reads to a home member by LBA part).
cfg "{\"method\":\"bdev_raid_set_options\",\"params\":{\"raid1_read_affinity\":true}},$r1" > "$R1A"
iops() { grep -a 'Total' | tail -1 | awk -F: '{print $2}' | awk '{print $1}'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a/b}'; }
run() { $BP -c "$1" -T "$2" -q 128 -o 4096 -w "$3" -t "$T" -m 0x1 | iops; }
declare -A runs
keys=(null raid0_null malloc_read raid1_read raid1_read_affinity malloc_write raid1_write malloc_x2_read malloc_x2_write)
for i in $(seq "$N"); do
  for k in "${keys[@]}"; do
    case $k in
      null) v=$(run "$NULL" Null0 randread) ;;
      raid0_null) v=$(run "$R0" R0 randread) ;;
      malloc_read) v=$(run "$MAL" Malloc0 randread) ;;
      raid1_read) v=$(run "$R1" R1 randread) ;;
      raid1_read_affinity) v=$(run "$R1A" R1 randread) ;;
      malloc_write) v=$(run "$MAL" Malloc0 randwrite) ;;
      raid1_write) v=$(run "$R1" R1 randwrite) ;;
      malloc_x2_read) v=$(run "$MAL2" Malloc0 randread) ;;
      malloc_x2_write) v=$(run "$MAL2" Malloc0 randwrite) ;;
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
echo "raid0(2 x null) / null: $(ratio "${med[raid0_null]}" "${med[null]}")"
echo "raid1(2 x malloc) / malloc, reads: $(ratio "${med[raid1_read]}" "${med[malloc_read]}")"
echo "raid1(2 x malloc, raid1_read_affinity) / malloc, reads: $(ratio "${med[raid1_read_affinity]}" "${med[malloc_read]}")"
echo "raid1(2 x malloc) / malloc, writes: $(ratio "${med[raid1_write]}" "${med[malloc_write]}")"
# The same ratios paired per round (each round's figure over that round's base, then the
# median of those): the machine's drift between rounds cancels within a pair.
paired() {
  paste <(echo ${runs[$1]} | tr ' ' '\n') <(echo ${runs[$2]} | tr ' ' '\n') |
    awk '{printf "%.4f\n", $1/$2}' | sort -g |
    awk '{a[NR]=$1} END{printf "%.3f (%.3f to %.3f)", a[int((NR+1)/2)], a[1], a[NR]}'
}
echo "paired per round: raid0 / null $(paired raid0_null null); raid1 reads $(paired raid1_read malloc_read); with affinity $(paired raid1_read_affinity malloc_read); raid1 writes $(paired raid1_write malloc_write)"
echo "control, paired per round: malloc twice the size / malloc, reads $(paired malloc_x2_read malloc_read), writes $(paired malloc_x2_write malloc_write); raid1 / malloc twice the size (the level's own cost), reads $(paired raid1_read malloc_x2_read), writes $(paired raid1_write malloc_x2_write)"
