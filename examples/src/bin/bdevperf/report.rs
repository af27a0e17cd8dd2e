//! SPDK bdevperf's results table, character for character.

use crate::args::Params;
use crate::job::JobStats;

/// The column header, preceded by a blank line for the final report.
pub fn header(leading_blank: bool) -> String {
    let mut s = String::new();
    if leading_blank {
        s.push('\n');
    }
    s.push_str(&format!("{:>107}\n", "Latency(us)"));
    s.push_str(&format!(
        "\r {:<28}: {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10}\n",
        "Device Information",
        "runtime(s)",
        "IOPS",
        "MiB/s",
        "Fail/s",
        "TO/s",
        "Average",
        "min",
        "max"
    ));
    s
}

fn iops(j: &JobStats) -> f64 {
    if j.runtime_s > 0.0 {
        j.completed as f64 / j.runtime_s
    } else {
        0.0
    }
}

fn fails(j: &JobStats) -> f64 {
    if j.runtime_s > 0.0 {
        j.failed as f64 / j.runtime_s
    } else {
        0.0
    }
}

fn avg(sum_us: f64, n: u64) -> f64 {
    if n == 0 { 0.0 } else { sum_us / n as f64 }
}

/// A job's block: its description line, an error line if it failed, the verify range,
/// and its row.
pub fn job_block(j: &JobStats, p: &Params) -> String {
    let mut s = String::new();
    let mask = bdev_core::app::CpuMask::single(j.spec.core);
    if p.workload.is_mixed() {
        s.push_str(&format!(
            "Job: {} (Core Mask {mask}, workload: {}, percentage: {}, depth: {}, IO size: {})\n",
            j.spec.bdev,
            p.workload.name(),
            p.read_pct,
            j.spec.queue_depth,
            p.io_size
        ));
    } else {
        s.push_str(&format!(
            "Job: {} (Core Mask {mask}, workload: {}, depth: {}, IO size: {})\n",
            j.spec.bdev,
            p.workload.name(),
            j.spec.queue_depth,
            p.io_size
        ));
    }
    if j.ended_with_error {
        s.push_str(&format!(
            "Job: {} ended in about {:.2} seconds with error\n",
            j.spec.bdev, j.runtime_s
        ));
    }
    if p.workload.is_verify() {
        s.push_str(&format!(
            "\t Verification LBA range: start 0x{:x} length 0x{:x}\n",
            j.spec.ios_base, j.spec.size_in_ios
        ));
    }
    let iops = iops(j);
    s.push_str(&format!(
        "\t {:<20}: {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>8.2} {:>10.2} {:>10.2} {:>10.2}\n",
        j.spec.bdev,
        j.runtime_s,
        iops,
        iops * p.io_size as f64 / 1_048_576.0,
        fails(j),
        0.0,
        avg(j.lat_sum_us, j.completed + j.failed),
        j.lat_min_us,
        j.lat_max_us
    ));
    s
}

/// The separator and the `Total` row.
pub fn total(jobs: &[JobStats], p: &Params) -> String {
    let iops: f64 = jobs.iter().map(iops).sum();
    let fails: f64 = jobs.iter().map(fails).sum();
    let n: u64 = jobs.iter().map(|j| j.completed + j.failed).sum();
    let sum: f64 = jobs.iter().map(|j| j.lat_sum_us).sum();
    let with_io = || jobs.iter().filter(|j| j.completed + j.failed > 0);
    let min = with_io()
        .map(|j| j.lat_min_us)
        .fold(f64::INFINITY, f64::min);
    let max = with_io().map(|j| j.lat_max_us).fold(0.0, f64::max);
    let mut s = String::new();
    s.push_str(&format!("\r {}\n", "=".repeat(115)));
    s.push_str(&format!(
        "\r {:<28}: {:>10} {:>10.2} {:>10.2} {:>10.2} {:>8.2} {:>10.2} {:>10.2} {:>10.2}\n",
        "Total",
        "",
        iops,
        iops * p.io_size as f64 / 1_048_576.0,
        fails,
        0.0,
        avg(sum, n),
        if min.is_finite() { min } else { 0.0 },
        max
    ));
    s
}

/// The whole table.
pub fn table(jobs: &[JobStats], p: &Params, leading_blank: bool) -> String {
    let mut s = header(leading_blank);
    for j in jobs {
        s.push_str(&job_block(j, p));
    }
    s.push_str(&total(jobs, p));
    s
}
