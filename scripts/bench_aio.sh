#!/usr/bin/env bash
# Issue 4's figures: 4 KiB randread, qd 32, one job, O_DIRECT, our uring and aio bdevs
# (bdevperf, one core) against fio's io_uring and libaio engines on the same target, N
# interleaved runs of T seconds each, medians and ratios. Targets: a 1 GiB file on the
# root file system, and (as root) a loop device over a 1 GiB file in tmpfs (/dev/shm).
#   N=3 T=10 scripts/bench_aio.sh
# Installs fio from Debian's packages if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-3}
T=${T:-10}
command -v fio >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null; }
cargo build --release -q --bin bdevperf
BP=$PWD/target/release/bdevperf
mkdir -p target/aio
FILE=$PWD/target/aio/bench-1g.img
if [[ ! -s $FILE ]]; then
  fio --name=fill --filename="$FILE" --rw=write --bs=1M --size=1G --direct=1 --ioengine=psync >/dev/null
fi
targets=("$FILE")
LOOPDEV=
if [[ $(id -u) == 0 ]]; then
  SHM=/dev/shm/bdev-bench-1g.img
  [[ -s $SHM ]] || dd if=/dev/urandom of=$SHM bs=1M count=1024 status=none
  LOOPDEV=$(losetup --find --show "$SHM")
  targets+=("$LOOPDEV")
  trap 'losetup -d $LOOPDEV; rm -f $SHM' EXIT
fi
fio_run() { # engine target [fio options] -> "iops cpu%"
  fio ${3:-} --name=r --filename="$2" --ioengine="$1" --direct=1 --rw=randread --bs=4k --iodepth=32 \
      --numjobs=1 --time_based --runtime="$T" --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(j["read"]["iops"], j["usr_cpu"]+j["sys_cpu"])'
}
bp_run() { # method target [extra params] [bdevperf flags] -> "iops cpus" (cpus: - without perf)
  local cfg=target/aio/bench.json
  echo "{\"subsystems\":[{\"subsystem\":\"bdev\",\"config\":[{\"method\":\"$1\",\"params\":{\"name\":\"B0\",\"filename\":\"$2\"${3:-}}}]}]}" > $cfg
  local -a cmd=($BP -c $cfg -q 32 -o 4096 -w randread -t "$T" -m 0x1 ${4:-})
  local iops cpus=-
  if command -v perf >/dev/null && perf stat -e task-clock true >/dev/null 2>&1; then
    # CPUs used by the whole bdevperf process (task-clock / elapsed).
    iops=$(perf stat -e task-clock -x, -o target/aio/perf.txt "${cmd[@]}" | grep -a Total | tail -1 | awk -F: '{print $2}' | awk '{print $1}')
    cpus=$(grep task-clock target/aio/perf.txt | awk -F, '{print $6}')
  else
    iops=$("${cmd[@]}" | grep -a Total | tail -1 | awk -F: '{print $2}' | awk '{print $1}')
  fi
  echo "$iops $cpus"
}
keys=(fio_io_uring fio_libaio fio_io_uring_core0 fio_libaio_core0 bdev_uring bdev_uring_plain bdev_uring_regbuf bdev_uring_intr bdev_aio bdev_aio_all bdev_aio_intr)
# KEYS="fio_io_uring bdev_uring ..." runs only those (more rounds of the four that the
# targets compare, in the same time).
if [[ -n ${KEYS:-} ]]; then read -r -a keys <<< "$KEYS"; fi
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
for tgt in "${targets[@]}"; do
  declare -A runs=() cpu=()
  for i in $(seq "$N"); do
    for k in "${keys[@]}"; do
      case $k in
        fio_io_uring) read -r v c < <(fio_run io_uring "$tgt"); cpu[$k]="${cpu[$k]:-} $c" ;;
        fio_libaio) read -r v c < <(fio_run libaio "$tgt"); cpu[$k]="${cpu[$k]:-} $c" ;;
        # On core 0 alone, as bdevperf -m 0x1 runs: one core, one job.
        fio_io_uring_core0) read -r v c < <(fio_run io_uring "$tgt" --cpus_allowed=0); cpu[$k]="${cpu[$k]:-} $c" ;;
        fio_libaio_core0) read -r v c < <(fio_run libaio "$tgt" --cpus_allowed=0); cpu[$k]="${cpu[$k]:-} $c" ;;
        bdev_uring) read -r v c < <(bp_run bdev_uring_create "$tgt"); cpu[$k]="${cpu[$k]:-} $c" ;;
        # A plain ring, the whole poll's batch in one enter (the default before DEFER_TASKRUN
        # with two SQEs per enter).
        bdev_uring_plain) read -r v c < <(bp_run bdev_uring_create "$tgt" ',"defer_taskrun":false'); cpu[$k]="${cpu[$k]:-} $c" ;;
        bdev_uring_regbuf) read -r v c < <(bp_run bdev_uring_create "$tgt" ',"registered_buffers":64'); cpu[$k]="${cpu[$k]:-} $c" ;;
        bdev_uring_intr) read -r v c < <(bp_run bdev_uring_create "$tgt" "" --interrupt-mode); cpu[$k]="${cpu[$k]:-} $c" ;;
        bdev_aio) read -r v c < <(bp_run bdev_aio_create "$tgt"); cpu[$k]="${cpu[$k]:-} $c" ;;
        # The whole poll's batch in one io_submit (submit_batch 0; the default is 2).
        bdev_aio_all) read -r v c < <(bp_run bdev_aio_create "$tgt" ',"submit_batch":0'); cpu[$k]="${cpu[$k]:-} $c" ;;
        bdev_aio_intr) read -r v c < <(bp_run bdev_aio_create "$tgt" "" --interrupt-mode); cpu[$k]="${cpu[$k]:-} $c" ;;
      esac
      runs[$k]="${runs[$k]:-} $v"
      echo "run $i $tgt $k $v" >&2
    done
  done
  echo "### $tgt"
  declare -A med=()
  for k in "${keys[@]}"; do
    med[$k]=$(echo "${runs[$k]}" | median)
    extra=""
    if [[ -n ${cpu[$k]:-} && ${cpu[$k]} != *-* ]]; then
      c=$(echo "${cpu[$k]}" | median)
      case $k in
        fio*) extra=" (fio CPU ${c}% of a core: $(awk -v a="${med[$k]}" -v c="$c" 'BEGIN{printf "%.0f", a/(c/100)}') IOPS per core)" ;;
        *) extra=" (bdevperf used ${c} CPUs: $(awk -v a="${med[$k]}" -v c="$c" 'BEGIN{printf "%.0f", a/c}') IOPS per core)" ;;
      esac
    else
      extra=" (one reactor core: ${med[$k]} IOPS per core)"
    fi
    printf '| %s | %.0f | %s |%s\n' "$k" "${med[$k]}" "$(echo ${runs[$k]} | awk '{for(i=1;i<=NF;i++) printf "%.1fk ", $i/1e3}')" "$extra"
  done
  # Ratio of medians, and the median of the rounds' own ratios (each bdev run beside the
  # fio run of its round: a slow drift of the host cancels out).
  ratio() { # label bdev-key fio-key
    [[ -n ${med[$2]:-} && -n ${med[$3]:-} ]] || return 0
    local per
    per=$(paste <(echo ${runs[$2]} | tr ' ' '\n') <(echo ${runs[$3]} | tr ' ' '\n') |
      awk '$2 > 0 {printf "%.3f ", $1 / $2}')
    echo "$1: $(awk -v a="${med[$2]}" -v b="${med[$3]}" 'BEGIN{printf "%.3f", a/b}')" \
      "(rounds: ${per}; median $(echo "$per" | median))"
  }
  ratio "bdev_uring / fio io_uring" bdev_uring fio_io_uring
  ratio "bdev_uring (plain ring, one enter per poll) / fio io_uring" bdev_uring_plain fio_io_uring
  ratio "bdev_uring (interrupt mode) / fio io_uring" bdev_uring_intr fio_io_uring
  ratio "bdev_uring (registered buffers) / fio io_uring" bdev_uring_regbuf fio_io_uring
  ratio "bdev_aio (interrupt mode) / fio libaio" bdev_aio_intr fio_libaio
  ratio "bdev_aio / fio libaio" bdev_aio fio_libaio
  ratio "bdev_aio (one io_submit per poll) / fio libaio" bdev_aio_all fio_libaio
  ratio "bdev_uring / fio io_uring on core 0" bdev_uring fio_io_uring_core0
  ratio "bdev_aio / fio libaio on core 0" bdev_aio fio_libaio_core0
done
