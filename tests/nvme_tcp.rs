//! The NVMe/TCP initiator against a real, independent peer: the Linux kernel's NVMe-oF
//! target (nvmet-tcp) in a QEMU guest (`scripts/vm`). Skips with the reason where QEMU
//! cannot run.

use std::time::Duration;

use bdev_core::bdev::Desc;
use bdev_core::dma::DmaBuf;
use bdev_core::testing::Harness;
use bdev_nvme::ctrlr::{ConnectOpts, Controller, DISCOVERY_NQN, Error};
use bdev_nvme::spec::{self, get_str, nvm};
use bdev_nvme::tcp::pdu::Digests;
use bdev_nvme::tcp::{TcpConnector, TcpQpair};
use bdev_nvme::transport::Payload;
use bdev_tests::vm;

const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:5e1f0c1e-0000-4000-8000-00000000b0d1";

fn opts(addr: std::net::SocketAddr, subnqn: &str, digests: Digests) -> ConnectOpts {
    ConnectOpts {
        connector: std::sync::Arc::new(TcpConnector { addr, digests }),
        subnqn: subnqn.into(),
        hostnqn: HOSTNQN.into(),
        hostid: [0x5e; 16],
        kato_ms: 0,
        timeout: Duration::from_secs(20),
    }
}

fn pattern(len: usize, seed: u8) -> DmaBuf {
    let mut b = DmaBuf::new(len, 4096).unwrap();
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(29).wrapping_add(seed);
    }
    b
}

#[test]
fn attach_identify_discover_and_move_data_against_the_kernel_target() {
    if let Some(why) = vm::skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let target = vm::start_tcp_target().expect("nvmet-tcp guest");
    let (io, disc) = (target.io_addr(), target.discovery_addr());
    let h = Harness::new(2);
    for dg in [
        Digests::default(),
        Digests {
            header: true,
            data: true,
        },
    ] {
        let r: Result<(), Error> = h.block_on_real(0, Duration::from_secs(180), async move {
            let mut c = Controller::connect(opts(io, vm::SUBNQN, dg)).await?;
            assert_eq!(get_str(&c.id.mn), "Linux");
            assert_eq!(get_str(&c.id.subnqn), vm::SUBNQN);
            let tcp = c.admin.qpair().as_any().downcast_ref::<TcpQpair>();
            assert_eq!(tcp.map(|q| q.digests()), Some(dg));
            assert_eq!(c.active_namespaces().await?, vec![vm::NS1_ID, vm::NS2_ID]);
            for (nsid, blocks, bs) in [
                (vm::NS1_ID, vm::NS1_BLOCKS, vm::NS1_BLOCK_SIZE),
                (vm::NS2_ID, vm::NS2_BLOCKS, vm::NS2_BLOCK_SIZE),
            ] {
                let ns = c.identify_ns(nsid).await?;
                assert_eq!(
                    (ns.nsze.get(), ns.block_size()),
                    (blocks, Some(bs)),
                    "ns {nsid}"
                );
            }
            // The Write Zeroes Size Limit (Identify CNS 06h from NVMe 1.4): answered, or
            // refused and taken as none, never an error.
            let wzsl = c.write_zeroes_limit().await?;
            eprintln!("kernel target: VS {:#x}, WZSL {wzsl}", c.vs);
            assert!(c.set_num_queues(2).await? >= 1);
            let mut q = c.connect_io_queue(1, 32).await?;
            // A small write (in the capsule when the target allows), a large one (R2T),
            // then both read back.
            for (lba, len, seed) in [(10u64, 512usize, 1u8), (64, 256 << 10, 2)] {
                let nlb = (len / 4096).max(1) as u32;
                let len = nlb as usize * 4096;
                let w = pattern(len, seed);
                q.cmd(
                    "write",
                    spec::rw(0, nvm::WRITE, vm::NS2_ID, lba, nlb),
                    Payload::Out(w, len),
                )
                .await?;
                let r = DmaBuf::new(len, 4096)?;
                let c = q
                    .cmd(
                        "read",
                        spec::rw(0, nvm::READ, vm::NS2_ID, lba, nlb),
                        Payload::In(r, len),
                    )
                    .await?;
                let back = c.payload.into_buf().unwrap();
                assert!(back[..] == pattern(len, seed)[..], "data back at {lba}");
            }
            // Out of range: the target's status, not a hang.
            let r = DmaBuf::new(4096, 4096)?;
            let e = q
                .cmd(
                    "read",
                    spec::rw(0, nvm::READ, vm::NS2_ID, vm::NS2_BLOCKS, 1),
                    Payload::In(r, 4096),
                )
                .await
                .unwrap_err();
            assert!(matches!(e, Error::Command { .. }), "{e}");
            // The discovery controller lists the subsystem.
            let mut d = Controller::connect(opts(disc, DISCOVERY_NQN, Digests::default())).await?;
            let log = d.discovery_log().await?;
            assert!(
                log.iter().any(|e| get_str(&e.subnqn) == vm::SUBNQN),
                "{} entries",
                log.len()
            );
            // A wrong subsystem NQN is refused with a clear error.
            let e = Controller::connect(opts(io, "nqn.2024-01.io.vmlab:nope", dg))
                .await
                .unwrap_err();
            assert!(e.to_string().contains("refused the connection"), "{e}");
            Ok(())
        });
        if let Err(e) = r {
            panic!(
                "digests {dg:?}: {e}\n--- guest console ---\n{}",
                target.console_log()
            );
        }
    }
    // Through the bdev layer on the 512-byte namespace: a write_zeroes longer than one
    // command's 16-bit block count (65536) is split, not truncated (it was: 70000 blocks
    // became 4464). Data commands stay within what this target takes (it refuses 8 MiB
    // with Data SGL Length Invalid while reporting no MDTS).
    let port = io.port();
    let r: Result<(), String> = h.block_on_real(0, Duration::from_secs(180), async move {
        let o = bdev_nvme::bdev::AttachOpts {
            name: "Big".into(),
            trtype: "tcp".into(),
            traddr: "127.0.0.1".into(),
            trsvcid: Some(port.to_string()),
            subnqn: Some(vm::SUBNQN.into()),
            ..Default::default()
        };
        let names = bdev_nvme::bdev::attach(o)
            .await
            .map_err(|e| e.to_string())?;
        assert!(names.contains(&"Bign1".to_string()), "{names:?}");
        let d = Desc::open("Bign1", true, |_| {}).map_err(|e| e.to_string())?;
        let ch = d.get_io_channel().map_err(|e| e.to_string())?;
        let bs = vm::NS1_BLOCK_SIZE as usize;
        let (at, n) = (1000u64, 70_000u64);
        // 16 blocks across the 65536th block of the range, and 16 right after it.
        let edges = [at + 65_536 - 8, at + n];
        for (i, &lba) in edges.iter().enumerate() {
            d.write_blocks(&ch, pattern(16 * bs, 7 + i as u8), lba, 16)
                .await
                .map_err(|e| format!("write: {e}"))?;
        }
        d.write_zeroes_blocks(&ch, at, n)
            .await
            .map_err(|e| format!("write_zeroes: {e}"))?;
        for (i, &lba) in edges.iter().enumerate() {
            let back = d
                .read_blocks(&ch, DmaBuf::new(16 * bs, 4096).unwrap(), lba, 16)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if i == 0 && back.iter().any(|&b| b != 0) {
                return Err(format!("blocks {lba}.. not all zeroed"));
            }
            if i == 1 && back[..] != pattern(16 * bs, 8)[..] {
                return Err(format!("blocks {lba}.. past the range changed"));
            }
        }
        Ok(())
    });
    if let Err(e) = r {
        panic!(
            "large write_zeroes: {e}\n--- guest console ---\n{}",
            target.console_log()
        );
    }
    // Both namespaces against a model of their first blocks: random batches of reads and
    // writes over several buffers of any alignment, write_zeroes, unmap and flush, in
    // flight together from both threads (so on two I/O queue pairs).
    for (i, ns) in ["Bign1", "Bign2"].into_iter().enumerate() {
        bdev_tests::model::run_in(&h, ns, 0x51ed_2701 + i as u64, 80, false, 4096);
    }
    // And a virtual bdev over a namespace: I/O forwarded in place down to the NVMe
    // queue pairs, completions back up.
    let pt = bdev_vbdev::passthru::PassthruOpts {
        base_bdev_name: "Bign2".into(),
        name: "PTN".into(),
        uuid: None,
    };
    h.run_on(0, || bdev_vbdev::passthru::create(pt))
        .expect("passthru over Bign2");
    bdev_tests::model::run_in(&h, "PTN", 0x51ed_2703, 60, false, 4096);
    let r: Result<(), String> = h.block_on_real(0, Duration::from_secs(60), async {
        bdev_vbdev::passthru::delete("PTN")
            .await
            .map_err(|e| e.to_string())
    });
    r.unwrap_or_else(|e| panic!("passthru delete: {e}"));
    let r: Result<(), String> = h.block_on_real(0, Duration::from_secs(60), async {
        bdev_nvme::bdev::detach(&bdev_nvme::bdev::DetachParams::named("Big"))
            .await
            .map_err(|e| e.to_string())
    });
    r.unwrap_or_else(|e| panic!("detach: {e}"));
    // Nobody listening: a clear error, quickly.
    let e = h.block_on_real(0, Duration::from_secs(30), async {
        let mut o = opts(
            "127.0.0.1:1".parse().unwrap(),
            vm::SUBNQN,
            Digests::default(),
        );
        o.timeout = Duration::from_secs(2);
        Controller::connect(o).await.unwrap_err()
    });
    assert!(e.to_string().contains("connecting to 127.0.0.1:1"), "{e}");
}
