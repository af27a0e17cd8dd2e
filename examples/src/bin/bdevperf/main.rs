//! bdevperf: SPDK's bdev benchmark, for this stack. Same flags, same workloads, same
//! table.
//!
//! The app thread loads the stack (an SPDK JSON config, or one 128 MiB malloc bdev), makes
//! a job per core of `-m` per bdev, each on its own lightweight thread pinned to its core
//! and working its own slice of the bdev, waits for them, and prints the report.

mod args;
mod job;
mod pattern;
mod plot;
mod report;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bdev_core::app::{self, CpuMask};
use bdev_core::bdev::{Bdev, IoType, get_by_name, list};
use bdev_core::config::{ConfigFile, Methods};
use bdev_core::oneshot;
use bdev_core::thread::{self, ThreadHandle};
use bdev_malloc::malloc::{self, MallocOpts};

use args::{Params, Parsed, Workload};
use job::{Job, JobSlot, JobSpec, JobStats};

fn main() {
    bdev_examples::init_tracing();
    let p = match args::parse() {
        Ok(Parsed::Run(p)) => p,
        Ok(Parsed::Info(text)) => {
            print!("{text}");
            std::process::exit(0);
        }
        Err(e) => fail(&e),
    };
    let (config, bdev_opts) = bdev_examples::load_config("bdevperf", p.config.as_deref());
    let signal = bdev_examples::stop_flag("bdevperf");
    let cores = p.cores.clone();
    let interrupt = p.interrupt_mode;
    bdev_examples::run_app("bdevperf", cores, interrupt, bdev_opts, move || {
        run(Arc::new(p), config, signal)
    })
}

fn fail(msg: &str) -> ! {
    bdev_examples::fail("bdevperf", msg)
}

/// The I/O type a workload needs from every bdev.
fn needed(w: Workload) -> &'static [IoType] {
    match w {
        Workload::Read | Workload::RandRead => &[IoType::Read],
        Workload::Write | Workload::RandWrite => &[IoType::Write],
        Workload::Rw | Workload::RandRw | Workload::Verify => &[IoType::Read, IoType::Write],
        Workload::Reset => &[IoType::Read, IoType::Write, IoType::Reset],
        Workload::Unmap => &[IoType::Unmap],
        Workload::Flush => &[IoType::Flush],
        Workload::WriteZeroes => &[IoType::WriteZeroes],
    }
}

async fn run(
    p: Arc<Params>,
    config: Option<ConfigFile>,
    signal: Arc<AtomicBool>,
) -> Result<i32, String> {
    let mut methods = Methods::new();
    bdev_examples::register_modules(&mut methods)?;
    match config {
        Some(c) => {
            let r = c.load(&methods).await.map_err(|e| e.to_string());
            // Its key material need not outlive the loading.
            c.wipe();
            r?
        }
        None => {
            malloc::create(MallocOpts::new("Malloc0", 32768, 4096)).map_err(|e| e.to_string())?;
        }
    }
    if p.wait_for_rpc {
        return serve(p, methods, signal).await;
    }
    run_tests(&p, signal).await.map(|(rc, _)| rc)
}

/// `-z`: serve JSON-RPC (the stack's methods and `perform_tests`, as SPDK's bdevperf.py
/// calls it) until SIGINT/SIGTERM; each `perform_tests` runs the test and answers with its
/// results.
async fn serve(
    p: Arc<Params>,
    mut methods: Methods,
    signal: Arc<AtomicBool>,
) -> Result<i32, String> {
    let running = Rc::new(Cell::new(false));
    let (p2, sig) = (p.clone(), signal.clone());
    methods.register("perform_tests", move |params| {
        let (p, sig, running) = (p2.clone(), sig.clone(), running.clone());
        Box::pin(async move {
            let p = Arc::new(
                p.with_rpc_params(params.as_ref())
                    .map_err(|e| bdev_core::Error::invalid("params of perform_tests", e))?,
            );
            if running.replace(true) {
                return Err(bdev_core::Error::BdevBusy {
                    name: "bdevperf".into(),
                    op: "perform_tests (a test is running)",
                    open: 1,
                });
            }
            let r = run_tests(&p, sig).await;
            running.set(false);
            match r {
                Ok((0, results)) => Ok(results_json(&p, &results)),
                Ok((rc, _)) => Err(bdev_core::Error::invalid(
                    "perform_tests",
                    format!("test failed (rc {rc})"),
                )),
                Err(e) => Err(bdev_core::Error::invalid("perform_tests", e)),
            }
        })
    });
    // What SPDK's app framework serves too: its test scripts wait for rpc_get_methods
    // before they send perform_tests.
    bdev_examples::app_rpc::register_app_methods(&mut methods, signal.clone());
    bdev_examples::app_rpc::register_rpc_get_methods(&mut methods);
    let _server =
        bdev_rpc::RpcServer::listen(&p.rpc_socket, Rc::new(methods)).map_err(|e| e.to_string())?;
    while !signal.load(Ordering::Relaxed) {
        let _ = thread::sleep_us(20_000).await;
    }
    Ok(0)
}

/// The results of a run as the perform_tests RPC returns them (SPDK's field names).
fn results_json(p: &Params, results: &[JobStats]) -> serde_json::Value {
    let jobs: Vec<serde_json::Value> = results
        .iter()
        .map(|j| {
            let iops = if j.runtime_s > 0.0 {
                j.completed as f64 / j.runtime_s
            } else {
                0.0
            };
            let n = j.completed + j.failed;
            let mut v = serde_json::json!({
                "job": j.spec.bdev,
                "core_mask": CpuMask::single(j.spec.core).to_string(),
                "workload": p.workload.name(),
                "status": if j.ended_with_error { "failed" } else { "finished" },
                "queue_depth": j.spec.queue_depth,
                "io_size": p.io_size,
                "runtime": j.runtime_s,
                "iops": iops,
                "mibps": iops * p.io_size as f64 / 1_048_576.0,
                "io_failed": j.failed,
                "io_timeout": 0,
                "avg_latency_us": if n == 0 { 0.0 } else { j.lat_sum_us / n as f64 },
                "min_latency_us": j.lat_min_us,
                "max_latency_us": j.lat_max_us,
            });
            // As SPDK's: the read percentage of a mixed workload, the verified range (in
            // I/Os, as the table prints it).
            if p.workload.is_mixed() {
                v["percentage"] = p.read_pct.into();
            }
            if p.workload.is_verify() {
                v["verify_range"] =
                    serde_json::json!({"start": j.spec.ios_base, "length": j.spec.size_in_ios});
            }
            v
        })
        .collect();
    serde_json::json!({"results": jobs, "core_count": app::cores().map(|c| c.len()).unwrap_or(0)})
}

/// One test: a job per core per bdev, run to the end, the report printed.
async fn run_tests(
    p: &Arc<Params>,
    signal: Arc<AtomicBool>,
) -> Result<(i32, Vec<JobStats>), String> {
    let bdevs: Vec<Bdev> = match &p.target {
        Some(t) => vec![get_by_name(t).ok_or_else(|| format!("Unable to find bdev '{t}'"))?],
        None => list()
            .into_iter()
            .filter(|b| b.claimed_by().is_none())
            .collect(),
    };
    if bdevs.is_empty() {
        return Err("no bdevs to test".into());
    }
    let cores = app::cores().ok_or("no reactors")?;
    let mut specs = Vec::new();
    for b in &bdevs {
        let bl = b.block_len() as u64;
        if p.io_size % bl != 0 {
            return Err(format!(
                "IO size ({}) is not multiples of data block size of bdev {} ({bl})",
                p.io_size,
                b.name()
            ));
        }
        if let Some(t) = needed(p.workload)
            .iter()
            .find(|t| !b.io_type_supported(**t))
        {
            eprintln!("Skipping {} because it does not support {t}", b.name());
            continue;
        }
        let io_blocks = p.io_size / bl;
        let per_job = b.num_blocks() / cores.len() as u64;
        let size_in_ios = per_job / io_blocks;
        if size_in_ios == 0 {
            return Err(format!(
                "bdev {}: {} blocks per core is less than one I/O of {} bytes",
                b.name(),
                per_job,
                p.io_size
            ));
        }
        for (i, &core) in cores.cores().iter().enumerate() {
            let mut qd = p.queue_depth;
            if p.workload.is_verify() && qd as u64 > size_in_ios {
                eprintln!(
                    "Due to constraints of verify job, queue depth (-q, {qd}) can't exceed the number of IO requests which can be submitted to the bdev {} simultaneously ({size_in_ios}). Queue depth is limited to {size_in_ios}",
                    b.name()
                );
                qd = size_in_ios as u32;
            }
            specs.push(JobSpec {
                index: specs.len(),
                bdev: b.name().to_string(),
                core,
                ios_base: i as u64 * per_job / io_blocks,
                size_in_ios,
                io_blocks,
                block_len: b.block_len(),
                queue_depth: qd,
            });
        }
    }
    if specs.is_empty() {
        return Err(format!(
            "no bdev supports the {} workload",
            p.workload.name()
        ));
    }

    println!("Running I/O for {} seconds...", p.time_s);
    let mut receivers = Vec::new();
    let mut threads: Vec<ThreadHandle> = Vec::new();
    for spec in specs {
        let (tx, rx) = oneshot::channel();
        let (p2, name, core) = (
            p.clone(),
            format!("{}_core{}", spec.bdev, spec.core),
            spec.core,
        );
        let t = thread::spawn_thread(name, Some(&CpuMask::single(core)), move || {
            if let Err(msg) = Job::start(spec.clone(), p2, tx) {
                eprintln!("bdevperf: {msg}");
                if let Some(me) = thread::current() {
                    me.handle().request_exit();
                }
            }
        })
        .map_err(|e| e.to_string())?;
        threads.push(t);
        receivers.push(rx);
    }

    let finished = Rc::new(Cell::new(false));
    let started = std::time::Instant::now();
    if let Some(period) = p.show_period_s {
        print!("{}", report::header(false));
        let (f, th, p2) = (finished.clone(), threads.clone(), p.clone());
        thread::spawn_local(async move {
            loop {
                let _ = thread::sleep_us(period * 1_000_000).await;
                if f.get() {
                    break;
                }
                let stats = snapshot(&th).await;
                if f.get() {
                    break;
                }
                let mut s = String::new();
                for j in &stats {
                    s.push_str(&report::job_block(j, &p2));
                }
                s.push_str(&report::total(&stats, &p2));
                println!("{s}");
            }
        })
        .map_err(|e| e.to_string())?;
    }
    let interrupted = Rc::new(Cell::new(None::<f64>));
    {
        let (f, th, i) = (finished.clone(), threads.clone(), interrupted.clone());
        thread::spawn_local(async move {
            while !f.get() {
                let _ = thread::sleep_us(50_000).await;
                if signal.load(Ordering::Relaxed) {
                    i.set(Some(started.elapsed().as_secs_f64()));
                    for t in &th {
                        let _ = t.send_msg(|| {
                            if let Some(me) = thread::current() {
                                for j in me
                                    .local::<JobSlot>()
                                    .0
                                    .borrow()
                                    .iter()
                                    .filter_map(|w| w.upgrade())
                                {
                                    j.drain();
                                }
                            }
                        });
                    }
                    break;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    }

    let mut results: Vec<JobStats> = Vec::new();
    for rx in receivers {
        if let Some(s) = rx.await {
            results.push(s);
        }
    }
    finished.set(true);
    let failed_to_start = threads.len() - results.len();

    if let Some(t) = interrupted.get() {
        println!("Received shutdown signal, test time was about {t:.6} seconds");
    }
    for j in &results {
        for e in &j.errors {
            println!("{e}");
        }
    }
    print!("{}", report::table(&results, p, true));
    if let Some(path) = &p.plot {
        let title = format!(
            "bdevperf {} -q {} -o {}: {} job(s)",
            p.workload.name(),
            p.queue_depth,
            p.io_size,
            results.len()
        );
        match plot::write_svg(path, &title, &results) {
            Ok(()) => println!("Latency histogram written to {}", path.display()),
            Err(e) => eprintln!("bdevperf: writing {}: {e}", path.display()),
        }
    }
    let errors = results.iter().any(|j| j.ended_with_error);
    Ok((
        if errors || failed_to_start > 0 {
            255
        } else {
            0
        },
        results,
    ))
}

/// Figures of every running job, in job order.
async fn snapshot(threads: &[ThreadHandle]) -> Vec<JobStats> {
    let mut rxs = Vec::new();
    for t in threads {
        let (tx, rx) = oneshot::channel::<Vec<JobStats>>();
        let sent = t.send_msg(move || {
            let v = thread::current()
                .map(|me| {
                    me.local::<JobSlot>()
                        .0
                        .borrow()
                        .iter()
                        .filter_map(|w| w.upgrade())
                        .map(|j| j.snapshot())
                        .collect()
                })
                .unwrap_or_default();
            tx.send(v);
        });
        if sent.is_ok() {
            rxs.push(rx);
        }
    }
    let mut out = Vec::new();
    for rx in rxs {
        out.extend(rx.await.unwrap_or_default());
    }
    out
}
