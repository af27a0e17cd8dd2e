//! `--plot FILE.svg`: the run's latency distribution as a picture, for people who would
//! rather look than read. Bars: share of I/Os per latency bin on a log axis; line: the
//! cumulative share; dashed: p50, p99 and p99.9. Plain SVG, no dependency.

use std::fmt::Write as _;
use std::path::Path;

use bdev_core::bdev::Histogram;

use crate::job::JobStats;

const W: f64 = 960.0;
const H: f64 = 540.0;
const L: f64 = 80.0;
const R: f64 = 70.0;
const T: f64 = 60.0;
const B: f64 = 70.0;
const BINS: usize = 60;

/// Writes the latency histogram of every job together into `path`.
pub fn write_svg(path: &Path, title: &str, jobs: &[JobStats]) -> std::io::Result<()> {
    std::fs::write(path, svg(title, jobs))
}

fn svg(title: &str, jobs: &[JobStats]) -> String {
    let mut all = Histogram::default();
    let mut hz = 0;
    for j in jobs {
        if let Some(h) = &j.hist {
            all.merge(h);
            hz = j.hz;
        }
    }
    let total = all.count();
    let us = |ticks: u64| ticks as f64 * 1e6 / hz.max(1) as f64;
    // Buckets as (start, end) in microseconds, with counts.
    let buckets: Vec<(f64, f64, u64)> = all.buckets().map(|(s, e, c)| (us(s), us(e), c)).collect();
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>
"#,
        W / 2.0,
        esc(title)
    );
    if total == 0 || buckets.is_empty() {
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">no I/O completed</text></svg>"#,
            W / 2.0,
            H / 2.0
        );
        return out;
    }
    // Log axis from a decade below the fastest to a decade above the slowest bucket.
    let lo = buckets[0].0.max(0.01).log10().floor();
    let hi = buckets[buckets.len() - 1]
        .1
        .max(0.02)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let pw = W - L - R;
    let ph = H - T - B;
    let x = |v: f64| L + (v.max(1e-3).log10() - lo) / (hi - lo) * pw;
    // Bin the buckets on the log axis (a bucket goes to the bin of its middle).
    let mut bins = [0u64; BINS];
    for &(s, e, c) in &buckets {
        let mid = ((s.max(1e-3)).log10() + e.log10()) / 2.0;
        let i = (((mid - lo) / (hi - lo)) * BINS as f64).floor() as isize;
        bins[i.clamp(0, BINS as isize - 1) as usize] += c;
    }
    let peak = bins.iter().copied().max().unwrap_or(1).max(1) as f64 / total as f64 * 100.0;
    let ymax = nice(peak);
    let y = |pct: f64| T + ph - pct / ymax * ph;
    // Grid and axes.
    let _ = writeln!(
        out,
        r##"<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
    );
    let mut d = lo;
    while d <= hi + 1e-9 {
        for m in [1.0, 2.0, 5.0] {
            let v = 10f64.powf(d) * m;
            if v.log10() > hi + 1e-9 {
                break;
            }
            let xv = x(v);
            let _ = writeln!(
                out,
                r##"<line x1="{xv:.1}" y1="{T}" x2="{xv:.1}" y2="{}" stroke="#eee"/><text x="{xv:.1}" y="{}" text-anchor="middle">{}</text>"##,
                T + ph,
                T + ph + 16.0,
                fmt_us(v)
            );
        }
        d += 1.0;
    }
    for k in 0..=4 {
        let pct = ymax * k as f64 / 4.0;
        let yv = y(pct);
        let _ = writeln!(
            out,
            r##"<line x1="{L}" y1="{yv:.1}" x2="{}" y2="{yv:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{pct:.1}%</text><text x="{}" y="{:.1}">{}%</text>"##,
            L + pw,
            L - 6.0,
            yv + 4.0,
            L + pw + 6.0,
            yv + 4.0,
            k * 25
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">latency (us, log scale)</text>
<text x="20" y="{}" transform="rotate(-90 20 {})" text-anchor="middle">share of I/Os per bin</text>
<text x="{}" y="{}" transform="rotate(90 {} {})" text-anchor="middle">cumulative</text>"#,
        L + pw / 2.0,
        H - 20.0,
        T + ph / 2.0,
        T + ph / 2.0,
        W - 15.0,
        T + ph / 2.0,
        W - 15.0,
        T + ph / 2.0
    );
    // Bars.
    for (i, &c) in bins.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let x0 = L + pw * i as f64 / BINS as f64;
        let bw = pw / BINS as f64;
        let pct = c as f64 / total as f64 * 100.0;
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#4a7ebb"><title>{c} I/Os</title></rect>"##,
            x0 + 0.5,
            y(pct),
            (bw - 1.0).max(0.5),
            T + ph - y(pct)
        );
    }
    // Cumulative line, on the right axis (0-100%).
    let mut seen = 0u64;
    let mut pts = format!("{:.1},{:.1}", x(buckets[0].0.max(1e-3)), T + ph);
    for &(_, e, c) in &buckets {
        seen += c;
        let _ = write!(
            pts,
            " {:.1},{:.1}",
            x(e),
            T + ph - seen as f64 / total as f64 * ph
        );
    }
    let _ = writeln!(
        out,
        r##"<polyline points="{pts}" fill="none" stroke="#d9534f" stroke-width="2"/>"##
    );
    // Percentiles.
    for (name, p) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
        let v = us(all.percentile(p));
        let xv = x(v);
        let _ = writeln!(
            out,
            r##"<line x1="{xv:.1}" y1="{T}" x2="{xv:.1}" y2="{}" stroke="#333" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" >{name} {}</text>"##,
            T + ph,
            xv + 3.0,
            T + 14.0
                + if name == "p99" {
                    14.0
                } else if name == "p99.9" {
                    28.0
                } else {
                    0.0
                },
            fmt_us(v)
        );
    }
    let _ = write!(
        out,
        r#"<text x="{L}" y="{}">{total} I/Os</text>
</svg>
"#,
        T - 8.0
    );
    out
}

/// A round upper bound for the y axis.
fn nice(v: f64) -> f64 {
    for step in [1.0, 2.0, 5.0, 10.0, 20.0, 25.0, 50.0, 100.0] {
        if v <= step {
            return step;
        }
    }
    100.0
}

fn fmt_us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}ms", trim(v / 1000.0))
    } else {
        format!("{}us", trim(v))
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
