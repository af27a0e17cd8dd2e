#!/bin/bash
# mkinitramfs.sh - build a tiny initramfs (busybox + selected kernel modules +
# a few dynamically linked tools) for NVMe-oF / RDMA / VFIO test guests.
#
# One image serves every scenario: the guest's /init reads
# "vmlab.scenario=<tcp|rdma|vfio|shell>" from the kernel command line.
#
# Usage: ./mkinitramfs.sh [--kver VER | --kernel-pkg PKG] [--out FILE] [--minimal] [--noiommu] [--no-apt]
#   --kver VER   kernel version under /lib/modules (default: newest installed
#                Debian one, i.e. not the host's running kernel)
#   --out FILE   output (default $BDEV_VMLAB (default /tmp/bdev-vmlab)/initramfs-<kver>[-noiommu].cpio.gz)
#   --minimal    only busybox + modules (no nvme-cli, rdma, ibverbs tools)
#   --no-apt     do not run apt-get (assume packages present)
#   --kernel-pkg PKG  use a Debian kernel package WITHOUT installing it: it is
#                apt-get downloaded and unpacked to $BDEV_VMLAB (default /tmp/bdev-vmlab)/kernels/PKG
#                (e.g. linux-image-6.12.117+deb12-amd64-unsigned); boot it with
#                boot.sh --kernel-pkg PKG
#   --noiommu    rebuild vfio.ko from the Debian linux-source package with
#                CONFIG_VFIO_NOIOMMU=y (Debian kernels ship it disabled) and put
#                it in the image instead of the stock vfio.ko
# Idempotent: rebuilds the staging tree from scratch on each run.
set -euo pipefail

LAB=${BDEV_VMLAB:-/tmp/bdev-vmlab}   # work dir: images, kernels, run state
HERE=$(cd "$(dirname "$0")" && pwd)
KVER=""
OUT=""
MINIMAL=0
DO_APT=1
NOIOMMU=0
KPKG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --kver) KVER=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --minimal) MINIMAL=1; shift;;
    --no-apt) DO_APT=0; shift;;
    --noiommu) NOIOMMU=1; shift;;
    --kernel-pkg) KPKG=$2; shift 2;;
    -h|--help) awk 'NR>1 && /^#/ {print; next} NR>1 {exit}' "$0"; exit 0;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done

PKGS="qemu-system-x86 linux-image-amd64 busybox-static kmod cpio gzip xz-utils zstd
      nvme-cli rdma-core ibverbs-utils ibverbs-providers rdmacm-utils iproute2
      socat gcc libc6-dev librdmacm-dev libibverbs-dev python3"
if [ "$DO_APT" = 1 ]; then
  missing=""
  for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
  fi
fi


# ---- generated sources (guest /init, scenarios, C probes) -----------------
GEN=$LAB/gen
mkdir -p "$GEN"
cat > "$GEN/init.sh" <<'VMLAB_EOF'
#!/bin/sh
# /init for the vmlab guest. Scenario from kernel cmdline: vmlab.scenario=
#   tcp | rdma | vfio | shell (default)
# Other knobs: vmlab.poweroff=1 (power off after scenario), vmlab.io=<secs>,
#   vmlab.share=1 (mount 9p tag "host" at /mnt/host), vmlab.run=<script>
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo "VMLAB-INIT-START uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"

arg() { for x in $(cat /proc/cmdline); do case "$x" in "$1"=*) echo "${x#*=}";; esac; done; }
SCEN=$(arg vmlab.scenario); [ -n "$SCEN" ] || SCEN=shell

# network: QEMU user-mode (slirp) defaults, static config
modprobe virtio_pci 2>/dev/null; modprobe virtio_net 2>/dev/null
ip link set lo up
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  ip addr add 10.0.2.15/24 dev eth0
  ip route add default via 10.0.2.2
fi
modprobe configfs 2>/dev/null
mount -t configfs configfs /sys/kernel/config 2>/dev/null

if [ "$(arg vmlab.share)" = 1 ]; then   # boot.sh --share DIR
  modprobe 9pnet_virtio; modprobe 9p
  mkdir -p /mnt/host
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 host /mnt/host && echo "VMLAB-SHARE mounted at /mnt/host"
fi

. /etc/scenarios.sh
case "$SCEN" in
  tcp)  scen_tcp ;;
  rdma) scen_rdma ;;
  vfio) scen_vfio ;;
  shell) ;;
  *) echo "unknown scenario $SCEN" ;;
esac
echo "VMLAB-READY scenario=$SCEN uptime=$(cut -d' ' -f1 /proc/uptime)"
RUN=$(arg vmlab.run)      # e.g. vmlab.run=/mnt/host/run-tests.sh
if [ -n "$RUN" ]; then
  sh -c "$RUN"; echo "VMLAB-RUN-RC=$?"
fi
if [ "$(arg vmlab.poweroff)" = 1 ]; then poweroff -f; fi
# interactive root shell on the serial console, respawned forever
while true; do setsid cttyhack sh -l; sleep 1; done
VMLAB_EOF
cat > "$GEN/scenarios.sh" <<'VMLAB_EOF'
# sourced by /init; each scenario prints VMLAB-* marker lines for the host.
NQN=nqn.2024-01.io.vmlab:test
CFG=/sys/kernel/config/nvmet
run() { echo "+ $*"; "$@"; rc=$?; [ $rc = 0 ] || echo "VMLAB-CMD-FAILED rc=$rc: $*"; return $rc; }

# subsystem with ns1 = null_blk (memory backed, 1 GiB), ns2 = file on tmpfs
nvmet_subsys() {
  run modprobe crc32c_generic   # CRC32C for NVMe/TCP header/data digests
  modprobe crc32c-intel 2>/dev/null
  run modprobe null_blk nr_devices=1 gb=1 memory_backed=1 bs=512
  run modprobe nvmet
  S=$CFG/subsystems/$NQN
  mkdir -p $S
  echo 1 > $S/attr_allow_any_host
  echo VMLAB0000000001 > $S/attr_serial 2>/dev/null
  mkdir -p $S/namespaces/1
  echo /dev/nullb0 > $S/namespaces/1/device_path
  echo 1 > $S/namespaces/1/enable
  truncate -s 256M /tmp/ns2.img
  mkdir -p $S/namespaces/2
  echo /tmp/ns2.img > $S/namespaces/2/device_path
  echo 1 > $S/namespaces/2/buffered_io 2>/dev/null
  echo 1 > $S/namespaces/2/enable
}
# nvmet_port <id> <trtype> <traddr> <trsvcid>
nvmet_port() {
  P=$CFG/ports/$1
  mkdir -p $P
  echo ipv4 > $P/addr_adrfam; echo $2 > $P/addr_trtype
  echo $3 > $P/addr_traddr;   echo $4 > $P/addr_trsvcid
  ln -s $CFG/subsystems/$NQN $P/subsystems/$NQN
}
io_test() {  # io_test <dev> <secs>
  dev=$1; secs=$2
  [ -b "$dev" ] || { echo "VMLAB-IO no block device $dev"; return 1; }
  echo "VMLAB-IO start $dev ${secs}s"
  t0=$(cut -d' ' -f1 /proc/uptime); n=0
  end=$(( $(cut -d. -f1 /proc/uptime) + secs ))
  while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do
    dd if=/dev/urandom of=/tmp/pat bs=64k count=16 2>/dev/null
    dd if=/tmp/pat of=$dev bs=64k count=16 seek=$((n % 64 * 16)) oflag=direct 2>/dev/null || { echo "VMLAB-IO write error"; return 1; }
    dd if=$dev of=/tmp/back bs=64k count=16 skip=$((n % 64 * 16)) iflag=direct 2>/dev/null || { echo "VMLAB-IO read error"; return 1; }
    cmp -s /tmp/pat /tmp/back || { echo "VMLAB-IO MISMATCH"; return 1; }
    n=$((n+1))
  done
  t1=$(cut -d' ' -f1 /proc/uptime)
  echo "VMLAB-IO done $dev iterations=$n (1 MiB write+read+verify each) from $t0 to $t1"
}

scen_tcp() {
  nvmet_subsys
  run modprobe nvmet-tcp
  nvmet_port 1 tcp 0.0.0.0 4420
  nvmet_port 2 tcp 0.0.0.0 8009
  dmesg | grep -i nvmet | tail -5
  echo "VMLAB-TCP-TARGET-UP nqn=$NQN ports=4420,8009"
  IO=$(arg vmlab.io)
  if [ -n "$IO" ]; then   # in-guest loopback initiator sanity check
    run modprobe nvme-tcp
    run nvme discover -t tcp -a 127.0.0.1 -s 4420
    run nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $NQN
    sleep 1; run nvme list
    io_test /dev/nvme0n1 $IO
    run nvme disconnect -n $NQN
  fi
}

scen_rdma() {
  run modprobe crc32_generic    # rdma_rxe needs the "crc32" shash (ICRC)
  modprobe crc32-pclmul 2>/dev/null
  run modprobe rdma_rxe
  run modprobe ib_uverbs
  run modprobe rdma_ucm
  run rdma link add rxe0 type rxe netdev eth0
  run rdma link show
  run ibv_devices
  ibv_devinfo -d rxe0 | head -20
  # rxe has a 1024-entry GID table; only the first few are populated
  PA=/sys/class/infiniband/rxe0/ports/1
  GIDX=""
  for i in 0 1 2 3 4 5; do
    v=$(cat $PA/gids/$i 2>/dev/null); t=$(cat $PA/gid_attrs/types/$i 2>/dev/null)
    [ -n "$t" ] || continue
    echo "gid $i $v $t"
    case "$v" in 0000:0000:0000:0000:0000:ffff:*) [ -z "$GIDX" ] && [ "$t" = "RoCE v2" ] && GIDX=$i;; esac
  done
  nvmet_subsys
  run modprobe nvmet-rdma
  nvmet_port 1 rdma 10.0.2.15 4420
  dmesg | grep -iE 'nvmet|rxe' | tail -5
  echo "VMLAB-RDMA-TARGET-UP nqn=$NQN traddr=10.0.2.15:4420"
  # user-space verbs ping-pong over rxe loopback (RC QP, RoCEv2 GID)
  echo "using gid index $GIDX"
  ibv_rc_pingpong -d rxe0 -g $GIDX -n 1000 > /tmp/pp_srv.log 2>&1 &
  sleep 1
  run ibv_rc_pingpong -d rxe0 -g $GIDX -n 1000 127.0.0.1
  wait
  cat /tmp/pp_srv.log
  # user-space NVMe/RDMA initiator (librdmacm+libibverbs) -> kernel nvmet-rdma
  run nvme_rdma_probe 10.0.2.15 4420 $NQN 5
  IO=$(arg vmlab.io)
  if [ -n "$IO" ]; then
    run modprobe nvme-rdma
    run nvme discover -t rdma -a 10.0.2.15 -s 4420
    run nvme connect -t rdma -a 10.0.2.15 -s 4420 -n $NQN
    sleep 1; run nvme list
    io_test /dev/nvme0n1 $IO
    run nvme disconnect -n $NQN
  fi
}

scen_vfio() {
  NOIOMMU=$(arg vmlab.noiommu)
  if [ "$NOIOMMU" = 1 ]; then
    run modprobe vfio enable_unsafe_noiommu_mode=1
    cat /sys/module/vfio/parameters/enable_unsafe_noiommu_mode
  fi
  run modprobe vfio-pci
  run modprobe vfio_iommu_type1
  echo "iommu groups: $(ls /sys/kernel/iommu_groups 2>/dev/null | wc -l)"
  dmesg | grep -iE 'DMAR|IOMMU' | head -8
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat $d/class)" = 0x010802 ] || continue
    BDF=${d##*/}
    echo "nvme device $BDF vendor=$(cat $d/vendor) device=$(cat $d/device) iommu_group=$(readlink $d/iommu_group)"
    echo vfio-pci > $d/driver_override
    [ -e $d/driver ] && echo $BDF > $d/driver/unbind
    echo $BDF > /sys/bus/pci/drivers_probe
    echo "driver now: $(readlink $d/driver)"
    ls -l /dev/vfio/
    run vfio_probe $BDF
  done
}
VMLAB_EOF
cat > "$GEN/vfio_probe.c" <<'VMLAB_EOF'
/* vfio_probe.c - prove that a user-space NVMe driver can run over VFIO.
 * Usage: vfio_probe <pci-bdf>      e.g. vfio_probe 0000:00:04.0
 * Opens the VFIO container + group, attaches an IOMMU backend (type1 or
 * no-IOMMU), gets the device fd, maps BAR0, resets the NVMe controller,
 * builds an admin queue pair in DMA-able memory and issues IDENTIFY
 * CONTROLLER, then prints serial/model. Static build: gcc -O2 -static. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define DIE(...) do { fprintf(stderr, "vfio_probe: " __VA_ARGS__); fprintf(stderr, " (errno=%d %s)\n", errno, strerror(errno)); exit(1); } while (0)

static volatile uint8_t *bar;
static uint32_t rd32(uint32_t o) { return *(volatile uint32_t *)(bar + o); }
static uint64_t rd64(uint32_t o) { return (uint64_t)rd32(o) | ((uint64_t)rd32(o + 4) << 32); }
static void wr32(uint32_t o, uint32_t v) { *(volatile uint32_t *)(bar + o) = v; }
static void wr64(uint32_t o, uint64_t v) { wr32(o, (uint32_t)v); wr32(o + 4, (uint32_t)(v >> 32)); }

static uint64_t virt_to_phys(void *va) {
    int fd = open("/proc/self/pagemap", O_RDONLY);
    if (fd < 0) DIE("open pagemap");
    uint64_t ent, pg = (uintptr_t)va / 4096;
    if (pread(fd, &ent, 8, pg * 8) != 8) DIE("read pagemap");
    close(fd);
    if (!(ent & (1ULL << 63))) DIE("page not present");
    uint64_t pfn = ent & ((1ULL << 55) - 1);
    if (!pfn) DIE("pagemap returned PFN 0 (need CAP_SYS_ADMIN)");
    return pfn * 4096 + ((uintptr_t)va & 4095);
}

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s <bdf>\n", argv[0]); return 2; }
    const char *bdf = argv[1];
    char path[512], link[512];

    int container = open("/dev/vfio/vfio", O_RDWR);
    if (container < 0) DIE("open /dev/vfio/vfio");
    printf("container: fd=%d API version=%d type1=%d type1v2=%d noiommu=%d\n", container,
           ioctl(container, VFIO_GET_API_VERSION),
           ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU),
           ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU),
           ioctl(container, VFIO_CHECK_EXTENSION, VFIO_NOIOMMU_IOMMU));

    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/iommu_group", bdf);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0) DIE("readlink %s", path);
    link[n] = 0;
    const char *grp = basename(link);
    int noiommu = 0;
    snprintf(path, sizeof path, "/dev/vfio/%s", grp);
    int group = open(path, O_RDWR);
    if (group < 0) {
        snprintf(path, sizeof path, "/dev/vfio/noiommu-%s", grp);
        group = open(path, O_RDWR);
        noiommu = 1;
    }
    if (group < 0) DIE("open group %s", grp);
    struct vfio_group_status gs = { .argsz = sizeof gs };
    if (ioctl(group, VFIO_GROUP_GET_STATUS, &gs)) DIE("GROUP_GET_STATUS");
    printf("group: %s viable=%d\n", path, !!(gs.flags & VFIO_GROUP_FLAGS_VIABLE));
    if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)) DIE("GROUP_SET_CONTAINER");
    int type = noiommu ? VFIO_NOIOMMU_IOMMU : VFIO_TYPE1v2_IOMMU;
    if (ioctl(container, VFIO_SET_IOMMU, type)) DIE("SET_IOMMU %d", type);
    printf("container: SET_IOMMU(%s) ok\n", noiommu ? "NOIOMMU" : "TYPE1v2");

    int dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
    if (dev < 0) DIE("GROUP_GET_DEVICE_FD");
    struct vfio_device_info di = { .argsz = sizeof di };
    if (ioctl(dev, VFIO_DEVICE_GET_INFO, &di)) DIE("DEVICE_GET_INFO");
    printf("device: fd=%d regions=%u irqs=%u flags=%#x\n", dev, di.num_regions, di.num_irqs, di.flags);

    struct vfio_region_info ri = { .argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX };
    if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri)) DIE("GET_REGION_INFO bar0");
    bar = mmap(NULL, ri.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev, ri.offset);
    if (bar == MAP_FAILED) DIE("mmap bar0");
    printf("bar0: size=%#llx mmap ok\n", (unsigned long long)ri.size);

    /* enable bus mastering + memory space in PCI config space */
    struct vfio_region_info ci = { .argsz = sizeof ci, .index = VFIO_PCI_CONFIG_REGION_INDEX };
    if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ci)) DIE("GET_REGION_INFO config");
    uint16_t cmd;
    if (pread(dev, &cmd, 2, ci.offset + 4) != 2) DIE("read PCI_COMMAND");
    cmd |= 0x6;
    if (pwrite(dev, &cmd, 2, ci.offset + 4) != 2) DIE("write PCI_COMMAND");

    uint64_t cap = rd64(0);
    uint32_t vs = rd32(8);
    printf("nvme: CAP=%#" PRIx64 " VS=%u.%u.%u CSTS=%#x\n", cap, vs >> 16, (vs >> 8) & 0xff, vs & 0xff, rd32(0x1c));
    unsigned dstrd = (cap >> 32) & 0xf;
    double to = ((cap >> 24) & 0xff) * 0.5 + 1;

    /* reset */
    wr32(0x14, 0);
    double t0 = now();
    while (rd32(0x1c) & 1) if (now() - t0 > to) DIE("timeout waiting RDY=0");

    /* DMA memory: 3 separate 4 KiB pages (ASQ, ACQ, data) */
    uint8_t *mem = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED | MAP_POPULATE, -1, 0);
    if (mem == MAP_FAILED) DIE("mmap dma");
    memset(mem, 0, 3 * 4096);
    uint64_t iova[3];
    for (int i = 0; i < 3; i++) {
        if (noiommu) {
            iova[i] = virt_to_phys(mem + i * 4096);
        } else {
            iova[i] = 0x100000000ULL + i * 4096;
            struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m,
                .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                .vaddr = (uintptr_t)(mem + i * 4096), .iova = iova[i], .size = 4096 };
            if (ioctl(container, VFIO_IOMMU_MAP_DMA, &m)) DIE("IOMMU_MAP_DMA");
        }
    }
    printf("dma: asq=%#" PRIx64 " acq=%#" PRIx64 " buf=%#" PRIx64 " (%s)\n", iova[0], iova[1], iova[2],
           noiommu ? "physical addresses from /proc/self/pagemap" : "IOVAs via VFIO_IOMMU_MAP_DMA");

    wr32(0x24, (15 << 16) | 15);   /* AQA: 16 entries each */
    wr64(0x28, iova[0]);           /* ASQ */
    wr64(0x30, iova[1]);           /* ACQ */
    wr32(0x14, (4 << 20) | (6 << 16) | 1); /* CC: IOCQES=4 IOSQES=6 EN=1 */
    t0 = now();
    while (!(rd32(0x1c) & 1)) {
        if (rd32(0x1c) & 2) DIE("controller fatal status");
        if (now() - t0 > to) DIE("timeout waiting RDY=1");
    }
    printf("nvme: controller enabled in %.3f ms\n", (now() - t0) * 1e3);

    uint32_t *sqe = (uint32_t *)mem;
    sqe[0] = 0x06 | (0x1234u << 16);  /* IDENTIFY, CID 0x1234 */
    sqe[1] = 0;                       /* NSID */
    *(uint64_t *)&sqe[6] = iova[2];   /* PRP1 */
    sqe[10] = 1;                      /* CNS=1 controller */
    __sync_synchronize();
    wr32(0x1000, 1);                  /* SQ0 tail doorbell */
    volatile uint32_t *cqe = (volatile uint32_t *)(mem + 4096);
    t0 = now();
    while (!(cqe[3] & 0x10000)) if (now() - t0 > 5) DIE("timeout waiting identify completion");
    uint16_t status = (cqe[3] >> 17) & 0x7fff;
    wr32(0x1000 + (4u << dstrd), 1);  /* CQ0 head doorbell */
    printf("nvme: IDENTIFY completion cid=%#x status=%#x in %.3f ms\n", cqe[3] & 0xffff, status, (now() - t0) * 1e3);
    char sn[21] = {0}, mn[41] = {0}, fr[9] = {0};
    memcpy(sn, mem + 8192 + 4, 20); memcpy(mn, mem + 8192 + 24, 40); memcpy(fr, mem + 8192 + 64, 8);
    printf("nvme: identify: vid=%#x sn='%s' mn='%s' fr='%s'\n", *(uint16_t *)(mem + 8192), sn, mn, fr);
    wr32(0x14, 0);
    printf("VFIO_PROBE_OK mode=%s\n", noiommu ? "noiommu" : "iommu");
    return status ? 1 : 0;
}
VMLAB_EOF
cat > "$GEN/nvme_rdma_probe.c" <<'VMLAB_EOF'
/* nvme_rdma_probe.c - minimal user-space NVMe/RDMA initiator (librdmacm +
 * libibverbs) to prove a user-space program can drive the Linux nvmet-rdma
 * target over soft-RoCE (rdma_rxe).
 *   nvme_rdma_probe <traddr> <trsvcid> <subnqn> [io_seconds]
 * Admin queue: RDMA-CM connect (NVMe private data), Fabrics Connect, Property
 * Get VS/CAP, CC.EN=1, Identify Controller. I/O queue 1: Connect, then 4 KiB
 * Write/Read/compare on nsid 1 for io_seconds. All data via keyed SGLs
 * (target does RDMA READ for writes / RDMA WRITE for reads).
 * Build: gcc -O2 -o nvme_rdma_probe nvme_rdma_probe.c -lrdmacm -libverbs */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DIE(...) do { fprintf(stderr, "nvme_rdma_probe: " __VA_ARGS__); fprintf(stderr, " (errno=%d %s)\n", errno, strerror(errno)); exit(1); } while (0)
#define QD 32
#define MEMSZ (64 * 1024)
#define CMD_OFF 0        /* 16 x 64 B command slots */
#define RSP_OFF 4096     /* 32 x 16 B response slots */
#define DATA_OFF 16384   /* 2 x 16 KiB data buffers */

static const char *HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:0f0e0d0c-0b0a-0908-0706-050403020100";

struct cm_req { uint16_t recfmt, qid, hrqsize, hsqsize, cntlid; uint8_t rsvd[22]; } __attribute__((packed));
struct cm_rej { uint16_t recfmt, sts; } __attribute__((packed));

struct q {
    int qid;
    uint16_t cid;
    struct rdma_event_channel *ec;
    struct rdma_cm_id *id;
    struct ibv_pd *pd;
    struct ibv_cq *cq;
    struct ibv_mr *mr;
    uint8_t *mem;
};

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

static struct rdma_cm_event *wait_ev(struct q *q, enum rdma_cm_event_type want) {
    struct rdma_cm_event *ev;
    if (rdma_get_cm_event(q->ec, &ev)) DIE("rdma_get_cm_event");
    if (ev->event != want) {
        if (ev->event == RDMA_CM_EVENT_REJECTED && ev->param.conn.private_data_len >= 4) {
            const struct cm_rej *r = ev->param.conn.private_data;
            DIE("q%d: connection REJECTED, nvme rdma cm status %u", q->qid, r->sts);
        }
        DIE("q%d: got cm event %s (status %d), wanted %s", q->qid, rdma_event_str(ev->event), ev->status, rdma_event_str(want));
    }
    return ev;
}

static void post_recv(struct q *q, int slot) {
    struct ibv_sge sge = { .addr = (uintptr_t)(q->mem + RSP_OFF + 16 * slot), .length = 16, .lkey = q->mr->lkey };
    struct ibv_recv_wr wr = { .wr_id = 1000 + slot, .sg_list = &sge, .num_sge = 1 }, *bad;
    if (ibv_post_recv(q->id->qp, &wr, &bad)) DIE("ibv_post_recv");
}

static void qconnect(struct q *q, const char *addr, int port, int qid) {
    memset(q, 0, sizeof *q);
    q->qid = qid;
    double t0 = now();
    q->ec = rdma_create_event_channel();
    if (!q->ec) DIE("rdma_create_event_channel");
    if (rdma_create_id(q->ec, &q->id, NULL, RDMA_PS_TCP)) DIE("rdma_create_id");
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port) };
    inet_pton(AF_INET, addr, &sin.sin_addr);
    if (rdma_resolve_addr(q->id, NULL, (struct sockaddr *)&sin, 2000)) DIE("rdma_resolve_addr");
    rdma_ack_cm_event(wait_ev(q, RDMA_CM_EVENT_ADDR_RESOLVED));
    if (rdma_resolve_route(q->id, 2000)) DIE("rdma_resolve_route");
    rdma_ack_cm_event(wait_ev(q, RDMA_CM_EVENT_ROUTE_RESOLVED));
    q->pd = ibv_alloc_pd(q->id->verbs);
    q->cq = ibv_create_cq(q->id->verbs, 4 * QD, NULL, NULL, 0);
    if (!q->pd || !q->cq) DIE("pd/cq");
    struct ibv_qp_init_attr qa = { .send_cq = q->cq, .recv_cq = q->cq, .qp_type = IBV_QPT_RC,
        .cap = { .max_send_wr = QD, .max_recv_wr = QD, .max_send_sge = 1, .max_recv_sge = 1 } };
    if (rdma_create_qp(q->id, q->pd, &qa)) DIE("rdma_create_qp");
    if (posix_memalign((void **)&q->mem, 4096, MEMSZ)) DIE("alloc");
    memset(q->mem, 0, MEMSZ);
    q->mr = ibv_reg_mr(q->pd, q->mem, MEMSZ, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE);
    if (!q->mr) DIE("ibv_reg_mr");
    for (int i = 0; i < 16; i++) post_recv(q, i);
    struct ibv_device_attr da;
    ibv_query_device(q->id->verbs, &da);
    struct cm_req req = { .recfmt = 0, .qid = qid, .hrqsize = QD, .hsqsize = QD - 1, .cntlid = 0 };
    struct rdma_conn_param cp = { .private_data = &req, .private_data_len = sizeof req,
        .responder_resources = da.max_qp_rd_atom < 16 ? da.max_qp_rd_atom : 16,
        .initiator_depth = da.max_qp_init_rd_atom < 16 ? da.max_qp_init_rd_atom : 16,
        .flow_control = 1, .retry_count = 7, .rnr_retry_count = 7 };
    if (rdma_connect(q->id, &cp)) DIE("rdma_connect");
    rdma_ack_cm_event(wait_ev(q, RDMA_CM_EVENT_ESTABLISHED));
    printf("[q%d] RDMA-CM connected to %s:%d on %s (qp_num %u) in %.1f ms\n", qid, addr, port,
           ibv_get_device_name(q->id->verbs->device), q->id->qp->qp_num, (now() - t0) * 1e3);
}

/* Build SQE in slot 0 with a keyed SGL for [data_off, data_off+len) and run it. */
static uint16_t submit(struct q *q, uint8_t *sqe_in, uint32_t data_off, uint32_t len, uint32_t *dw0) {
    uint8_t *sqe = q->mem + CMD_OFF;
    memcpy(sqe, sqe_in, 64);
    uint16_t cid = ++q->cid;
    memcpy(sqe + 2, &cid, 2);
    sqe[1] = 0x40;                                       /* PSDT: SGL */
    uint64_t a = len ? (uintptr_t)(q->mem + data_off) : 0;
    uint32_t key = len ? q->mr->rkey : 0;
    memcpy(sqe + 24, &a, 8);
    sqe[32] = len & 0xff; sqe[33] = (len >> 8) & 0xff; sqe[34] = (len >> 16) & 0xff;
    memcpy(sqe + 35, &key, 4);
    sqe[39] = 0x40;                                      /* keyed data block, address */
    struct ibv_sge sge = { .addr = (uintptr_t)sqe, .length = 64, .lkey = q->mr->lkey };
    struct ibv_send_wr wr = { .wr_id = 1, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND,
                              .send_flags = IBV_SEND_SIGNALED }, *bad;
    if (ibv_post_send(q->id->qp, &wr, &bad)) DIE("ibv_post_send");
    int got_send = 0, got_recv = 0;
    uint16_t status = 0xffff;
    double t0 = now();
    while (!(got_send && got_recv)) {
        struct ibv_wc wc[4];
        int n = ibv_poll_cq(q->cq, 4, wc);
        if (n < 0) DIE("ibv_poll_cq");
        for (int i = 0; i < n; i++) {
            if (wc[i].status != IBV_WC_SUCCESS) DIE("wc error %s (wr_id %" PRIu64 ")", ibv_wc_status_str(wc[i].status), wc[i].wr_id);
            if (wc[i].opcode == IBV_WC_SEND) { got_send = 1; continue; }
            int slot = wc[i].wr_id - 1000;
            uint8_t *cqe = q->mem + RSP_OFF + 16 * slot;
            uint16_t rcid, st;
            memcpy(&rcid, cqe + 12, 2); memcpy(&st, cqe + 14, 2);
            if (dw0) memcpy(dw0, cqe, 4);
            if (rcid != cid) DIE("cid mismatch %u != %u", rcid, cid);
            status = st >> 1;
            got_recv = 1;
            post_recv(q, slot);
        }
        if (now() - t0 > 10) DIE("q%d: command timeout", q->qid);
    }
    return status;
}

static uint16_t fabrics_connect(struct q *q, const char *subnqn, uint16_t cntlid) {
    uint8_t sqe[64] = {0};
    sqe[0] = 0x7f; sqe[4] = 0x01;                      /* Fabrics Connect */
    uint16_t qid = q->qid, sqsize = QD - 1;
    memcpy(sqe + 42, &qid, 2); memcpy(sqe + 44, &sqsize, 2);
    uint8_t *d = q->mem + DATA_OFF;
    memset(d, 0, 1024);
    for (int i = 0; i < 16; i++) d[i] = i;             /* hostid */
    memcpy(d + 16, &cntlid, 2);
    strcpy((char *)d + 256, subnqn);
    strcpy((char *)d + 512, HOSTNQN);
    uint32_t dw0 = 0;
    uint16_t st = submit(q, sqe, DATA_OFF, 1024, &dw0);
    printf("[q%d] Fabrics Connect %s -> status %#x cntlid %u\n", q->qid, subnqn, st, dw0 & 0xffff);
    if (st) exit(1);
    return dw0 & 0xffff;
}

static uint64_t prop(struct q *q, int set, uint32_t off, uint64_t val, int size8) {
    uint8_t sqe[64] = {0};
    sqe[0] = 0x7f; sqe[4] = set ? 0x00 : 0x04;
    sqe[40] = size8;
    memcpy(sqe + 44, &off, 4);
    if (set) memcpy(sqe + 48, &val, 8);
    uint32_t dw0 = 0;
    if (submit(q, sqe, 0, 0, &dw0)) DIE("property %s %#x failed", set ? "set" : "get", off);
    return dw0;   /* low 32 bits are enough here */
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s traddr trsvcid subnqn [io_seconds]\n", argv[0]); return 2; }
    const char *addr = argv[1], *nqn = argv[3];
    int port = atoi(argv[2]);
    double secs = argc > 4 ? atof(argv[4]) : 3;

    struct q adm, io;
    qconnect(&adm, addr, port, 0);
    uint16_t cntlid = fabrics_connect(&adm, nqn, 0xffff);
    uint32_t vs = prop(&adm, 0, 0x08, 0, 0);
    printf("[q0] Property Get VS = %u.%u.%u\n", vs >> 16, (vs >> 8) & 0xff, vs & 0xff);
    prop(&adm, 1, 0x14, 0x00460001, 0);                /* CC.EN=1 */
    uint32_t csts = 0;
    for (int i = 0; i < 200 && !(csts & 1); i++) { csts = prop(&adm, 0, 0x1c, 0, 0); usleep(10000); }
    printf("[q0] CC.EN=1 -> CSTS=%#x\n", csts);
    uint8_t sqe[64] = {0};
    sqe[0] = 0x06; uint32_t cns = 1; memcpy(sqe + 40, &cns, 4);
    uint16_t st = submit(&adm, sqe, DATA_OFF, 4096, NULL);
    uint8_t *id = adm.mem + DATA_OFF;
    char sn[21] = {0}, mn[41] = {0}, fr[9] = {0};
    memcpy(sn, id + 4, 20); memcpy(mn, id + 24, 40); memcpy(fr, id + 64, 8);
    uint32_t ioccsz; memcpy(&ioccsz, id + 1792, 4);
    printf("[q0] Identify Controller status %#x sn='%s' mn='%.8s' fr='%s' ioccsz=%u\n", st, sn, mn, fr, ioccsz);

    qconnect(&io, addr, port, 1);
    fabrics_connect(&io, nqn, cntlid);
    srand(time(NULL));
    long n = 0;
    double t0 = now();
    uint8_t *wbuf = io.mem + DATA_OFF, *rbuf = io.mem + DATA_OFF + 16384;
    do {
        for (int i = 0; i < 4096; i++) wbuf[i] = rand();
        uint64_t slba = (n * 8) % 100000;
        uint8_t c[64] = {0};
        uint32_t nsid = 1, nlb = 7;   /* 8 x 512 B */
        memcpy(c + 4, &nsid, 4); memcpy(c + 40, &slba, 8); memcpy(c + 48, &nlb, 4);
        c[0] = 0x01;
        if ((st = submit(&io, c, DATA_OFF, 4096, NULL))) DIE("write status %#x", st);
        c[0] = 0x02;
        memset(rbuf, 0, 4096);
        if ((st = submit(&io, c, DATA_OFF + 16384, 4096, NULL))) DIE("read status %#x", st);
        if (memcmp(wbuf, rbuf, 4096)) DIE("data MISMATCH at lba %" PRIu64, slba);
        n++;
    } while (now() - t0 < secs);
    double dt = now() - t0;
    printf("[q1] Write+Read+verify 4 KiB x %ld on nsid 1 OK in %.2f s (%.0f round-trips/s, avg %.2f ms)\n",
           n, dt, n / dt, dt / n * 1e3);
    printf("NVME_RDMA_PROBE_OK\n");
    rdma_disconnect(io.id);
    rdma_disconnect(adm.id);
    return 0;
}
VMLAB_EOF

KROOT=""                      # "" = the installed kernel(s) in /boot + /lib/modules
if [ -n "$KPKG" ]; then
  KROOT=$LAB/kernels/$KPKG
  if [ ! -d "$KROOT/lib/modules" ]; then
    mkdir -p "$LAB/debs" "$KROOT"
    ls "$LAB/debs/${KPKG}_"*.deb >/dev/null 2>&1 || (cd "$LAB/debs" && apt-get download "$KPKG")
    dpkg-deb -x "$(ls "$LAB/debs/${KPKG}_"*.deb | tail -1)" "$KROOT"
  fi
  KVER=$(ls -1 "$KROOT/lib/modules" | sort -V | tail -1)
  [ -f "$KROOT/lib/modules/$KVER/modules.dep" ] || depmod -b "$KROOT" "$KVER"
fi
if [ -z "$KVER" ]; then
  KVER=$(ls -1 /lib/modules | sort -V | tail -1)
fi
[ -d "$KROOT/lib/modules/$KVER" ] || { echo "no $KROOT/lib/modules/$KVER" >&2; exit 1; }
if [ -z "$OUT" ]; then
  if [ "$NOIOMMU" = 1 ]; then OUT=$LAB/initramfs-$KVER-noiommu.cpio.gz; else OUT=$LAB/initramfs-$KVER.cpio.gz; fi
fi
mkdir -p "$LAB"
ROOT=$LAB/rootfs-$KVER
rm -rf "$ROOT"
mkdir -p "$ROOT"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,mnt,usr/bin,usr/sbin,lib,lib64,usr/lib,var/tmp}

# ---- busybox (static) ----------------------------------------------------
cp /bin/busybox "$ROOT/bin/busybox"
for a in $("$ROOT/bin/busybox" --list); do
  [ -e "$ROOT/bin/$a" ] || ln -s busybox "$ROOT/bin/$a"
done
# the kernel's module autoloader execs /sbin/modprobe (e.g. crc32c for digests)
for a in modprobe insmod rmmod lsmod; do ln -s ../bin/busybox "$ROOT/sbin/$a"; done

# ---- kernel modules ------------------------------------------------------
MODS="configfs null_blk
      nvmet nvmet-tcp nvmet-rdma
      nvme-core nvme nvme-fabrics nvme-tcp nvme-rdma
      virtio_pci virtio_net virtio_blk
      rdma_rxe ib_uverbs rdma_ucm ib_umad rdma_cm ib_cm iw_cm
      vfio vfio-pci vfio_iommu_type1
      9p 9pnet_virtio
      crc32c_generic crc32c-intel libcrc32c crc32_generic crc32-pclmul"
MODDIR=$KROOT/lib/modules/$KVER
: > "$LAB/.modlist"
for m in $MODS; do
  # modprobe -S resolves hard deps from the target kernel's modules.dep
  if ! modprobe ${KROOT:+-d "$KROOT"} -S "$KVER" --show-depends "$m" >> "$LAB/.modlist" 2>/dev/null; then
    echo "warning: module $m not available for $KVER (builtin or missing)" >&2
  fi
done
for f in $(awk '$1=="insmod"{print $2}' "$LAB/.modlist" | sed 's#^//*#/#' | sort -u); do
  rel=${f#"$MODDIR"/}
  dst="$ROOT/lib/modules/$KVER/$rel"
  mkdir -p "$(dirname "$dst")"
  case "$f" in          # busybox insmod/modprobe cannot read compressed modules
    *.ko.xz)  xz -dc "$f"   > "${dst%.xz}";;
    *.ko.zst) zstd -qdc "$f" > "${dst%.zst}";;
    *.ko.gz)  gzip -dc "$f" > "${dst%.gz}";;
    *)        cp "$f" "$dst";;
  esac
done
if [ "$NOIOMMU" = 1 ] && [ -n "$KROOT" ]; then
  echo "--noiommu is only implemented for installed kernels (needs linux-headers-\$KVER)" >&2; exit 2
fi
if [ "$NOIOMMU" = 1 ]; then
  # out-of-tree rebuild of vfio.ko (vfio_main.c container.c iova_bitmap.c)
  # with CONFIG_VFIO_NOIOMMU; exported symbol CRCs stay identical, so the stock
  # vfio-pci / vfio_iommu_type1 modules load against it.
  PKGVER=$(dpkg-query -W -f='${Version}' "linux-image-$KVER")
  SRCPKG=linux-source-$(echo "$KVER" | cut -d. -f1-2)
  B=$LAB/vfio-noiommu-$KVER
  if [ ! -f "$B/vfio.ko" ]; then
    [ -d /usr/src/linux-headers-$KVER ] || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "linux-headers-$KVER" make gcc libelf-dev
    mkdir -p "$LAB/debs" "$B"
    deb=$(ls "$LAB/debs/${SRCPKG}_${PKGVER}_all.deb" 2>/dev/null || true)
    [ -n "$deb" ] || (cd "$LAB/debs" && apt-get download "$SRCPKG=$PKGVER")
    deb=$(ls "$LAB/debs/${SRCPKG}_${PKGVER}_all.deb")
    dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/$SRCPKG.tar.xz" \
      | tar -xJ -C "$B" --strip-components=3 --wildcards "$SRCPKG/drivers/vfio/*.[ch]" "$SRCPKG/drivers/vfio/Makefile"
    printf 'obj-m := vfio.o\nvfio-y := vfio_main.o iova_bitmap.o container.o\nccflags-y := -DCONFIG_VFIO_NOIOMMU=1\n' > "$B/Makefile"
    make -C "/usr/src/linux-headers-$KVER" M="$B" modules
    strip --strip-debug "$B/vfio.ko"
  fi
  VFIOKO=$(find "$ROOT/lib/modules/$KVER" -name 'vfio.ko')
  cp "$B/vfio.ko" "$VFIOKO"; strip --strip-debug "$VFIOKO"
  echo "replaced $VFIOKO with no-IOMMU-capable rebuild"
fi
for f in modules.order modules.builtin modules.builtin.modinfo; do
  [ -f "$MODDIR/$f" ] && cp "$MODDIR/$f" "$ROOT/lib/modules/$KVER/"
done
# strip compression suffixes from modules.order so depmod matches our files
sed -i -e 's/\.ko\.\(xz\|zst\|gz\)$/.ko/' "$ROOT/lib/modules/$KVER/modules.order" 2>/dev/null || true
depmod -b "$ROOT" "$KVER"
NMODS=$(find "$ROOT/lib/modules" -name '*.ko' | wc -l)

# ---- dynamically linked helpers -----------------------------------------
copy_with_libs() {   # copy binaries/libraries plus everything ldd says they need
  for b in "$@"; do
    [ -e "$b" ] || { echo "warning: $b missing" >&2; continue; }
    local d="$ROOT$(dirname "$b")"
    mkdir -p "$d"; rm -f "$d/$(basename "$b")"; cp -L "$b" "$d/"
    ldd "$b" 2>/dev/null | awk '/=>/ {print $3} /^\t\/lib/ {print $1}' | while read -r l; do
      [ -n "$l" ] && [ -e "$l" ] || continue
      mkdir -p "$ROOT$(dirname "$l")"
      [ -e "$ROOT$l" ] || cp -L "$l" "$ROOT$l"
    done
  done
}
if [ "$MINIMAL" = 0 ]; then
  ML=/usr/lib/x86_64-linux-gnu
  copy_with_libs /usr/sbin/nvme /usr/bin/rdma \
    /usr/bin/ibv_devices /usr/bin/ibv_devinfo /usr/bin/ibv_rc_pingpong \
    /usr/bin/ibv_ud_pingpong /usr/bin/rping /usr/bin/ucmatose \
    $ML/libibverbs/librxe-rdmav*.so \
    /lib/x86_64-linux-gnu/libgcc_s.so.1 /lib/x86_64-linux-gnu/libm.so.6   # Rust std needs libgcc_s
  mkdir -p "$ROOT/etc/libibverbs.d"
  cp /etc/libibverbs.d/rxe.driver "$ROOT/etc/libibverbs.d/"
  mkdir -p "$ROOT/lib64"; cp -L /lib64/ld-linux-x86-64.so.2 "$ROOT/lib64/"
  # nvme-cli wants a hostnqn / hostid
  mkdir -p "$ROOT/etc/nvme"
  echo "nqn.2014-08.org.nvmexpress:uuid:6b1f5b4e-7a43-4c39-9d2e-2f3f6a0a1e01" > "$ROOT/etc/nvme/hostnqn"
  echo "6b1f5b4e-7a43-4c39-9d2e-2f3f6a0a1e01" > "$ROOT/etc/nvme/hostid"
  # probes: VFIO user-space NVMe (static) and user-space NVMe/RDMA initiator
  gcc -O2 -static -o "$GEN/vfio_probe" "$GEN/vfio_probe.c"
  gcc -O2 -o "$GEN/nvme_rdma_probe" "$GEN/nvme_rdma_probe.c" -lrdmacm -libverbs
  cp "$GEN/vfio_probe" "$GEN/nvme_rdma_probe" "$ROOT/usr/bin/"
fi
echo "root:x:0:0:root:/root:/bin/sh" > "$ROOT/etc/passwd"
echo "root:x:0:"                     > "$ROOT/etc/group"
printf '127.0.0.1 localhost\n10.0.2.15 guest\n' > "$ROOT/etc/hosts"

# ---- /init ---------------------------------------------------------------
cp "$GEN/init.sh" "$ROOT/init"
chmod +x "$ROOT/init"
cp "$GEN/scenarios.sh" "$ROOT/etc/scenarios.sh"

# ---- pack ----------------------------------------------------------------
( cd "$ROOT" && find . -print0 | cpio --null -o -H newc --quiet ) | gzip -6 > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "initramfs: $OUT ($(du -h "$OUT" | cut -f1) compressed, $(du -sh "$ROOT" | cut -f1) unpacked, $NMODS modules, kernel $KVER)"
