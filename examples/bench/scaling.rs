//! Cost per message from 1 000 to 1 000 000 messages, null-sink row: CPU
//! time of the bench process (every thread, /proc/self/task/*/schedstat)
//! over a baseline run and over a bridge run of the same N. Both runs hold
//! the emulator generating and pushing the same N messages over TLS + AMQP,
//! so their difference is the bridge's own cost: its routing, pipeline,
//! credit and settlement, less the bare receiver's one accept per message.

use std::path::Path;

use crate::{grouped, null_sink, Run, Shortfalls};

pub struct Point {
    pub n: u64,
    pub baseline: Run,
    pub bridge: Run,
}

fn us_per_message(run: &Run, n: u64) -> f64 {
    run.cpu.first().map(|c| c.as_secs_f64()).unwrap_or(0.0) * 1e6 / n as f64
}

/// One warm-up of 10 000 on both sides, then each N on both sides.
pub async fn measure(sizes: &[u64], dir: &Path, short: &mut Shortfalls) -> Vec<Point> {
    if sizes.is_empty() {
        return Vec::new();
    }
    let warm = 10_000;
    eprintln!("bench: scaling, warm-up {warm}");
    short.check(
        "scaling warm-up, baseline",
        &null_sink::baseline(warm, dir).await,
        warm,
    );
    short.check(
        "scaling warm-up, bridge",
        &null_sink::bridge(warm, dir).await,
        warm,
    );
    let mut points = Vec::new();
    for &n in sizes {
        eprintln!("bench: scaling, {n}");
        let baseline = null_sink::baseline(n, dir).await;
        short.check(&format!("scaling {n}, baseline"), &baseline, n);
        let bridge = null_sink::bridge(n, dir).await;
        short.check(&format!("scaling {n}, bridge"), &bridge, n);
        points.push(Point {
            n,
            baseline,
            bridge,
        });
    }
    points
}

fn cpu_seconds(run: &Run) -> f64 {
    run.cpu.first().map(|c| c.as_secs_f64()).unwrap_or(0.0)
}

pub fn print_table(points: &[Point]) {
    if points.is_empty() {
        return;
    }
    println!();
    println!(
        "Cost per message, null sink: CPU of the bench process (every thread) per message; \
         the bridge's own = bridge run − baseline run (same emulator, same N). The marginal \
         columns divide the CPU added since the previous N by the messages added, so the \
         fixed start-up (TLS handshake, login, attach) drops out:"
    );
    println!();
    println!(
        "| N | baseline msg/s | bridge msg/s | baseline CPU µs/msg | bridge CPU µs/msg | \
         bridge's own µs/msg | marginal baseline | marginal bridge | marginal bridge's own |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut previous: Option<&Point> = None;
    for p in points {
        let base = us_per_message(&p.baseline, p.n);
        let full = us_per_message(&p.bridge, p.n);
        let marginal = previous
            .filter(|q| p.n > q.n)
            .map(|q| {
                let added = (p.n - q.n) as f64;
                let b = (cpu_seconds(&p.baseline) - cpu_seconds(&q.baseline)) * 1e6 / added;
                let f = (cpu_seconds(&p.bridge) - cpu_seconds(&q.bridge)) * 1e6 / added;
                format!("{b:.1} | {f:.1} | {:.1}", f - b)
            })
            .unwrap_or_else(|| "– | – | –".into());
        println!(
            "| {} | {} | {} | {base:.1} | {full:.1} | {:.1} | {marginal} |",
            grouped(p.n as f64),
            grouped(p.baseline.rate()),
            grouped(p.bridge.rate()),
            full - base,
        );
        previous = Some(p);
    }
    let totals: Vec<f64> = points
        .iter()
        .map(|p| us_per_message(&p.bridge, p.n))
        .collect();
    let (min, max) = totals
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    println!();
    println!(
        "Bridge run CPU µs/msg from {min:.1} to {max:.1}: the largest is {:.0} % above the smallest.",
        (max / min - 1.0) * 100.0
    );
}
