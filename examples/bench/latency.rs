//! Latency at a fixed offered rate, MQTT QoS 1 into Mosquitto: from a
//! message's time stamp to its arrival at an independent subscriber.
//!
//! - bridge: the emulator offers R msg/s (`EmulatorConfig::rate`) and
//!   stamps each message's `generateTime` when it takes it for the link; the
//!   route puts that stamp into the MQTT topic (`…/{generateTime}`);
//! - direct: a rumqttc producer (window 100) paced the same way (a slot every
//!   1/R s, as the emulator paces) stamps the topic with the wall clock just
//!   before publishing.
//!
//! The subscriber reads the stamp from the topic's last level. Stamps are
//! whole milliseconds (as the platform's `generateTime`), so every latency
//! reads 0–1 ms high, on both sides alike. The bridge's own receive → settle
//! time comes from its `settle_seconds` histogram (bucket bounds only).

use std::path::Path;
use std::time::{Duration, Instant};

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
use amqp_bridge::emulator::{Generator, MessageSource};
use amqp_bridge::source::aliyun::now_ms;

use crate::bench_common::{emulator, source_yaml, write_ca};
use crate::mqtt::{bridge_yaml, window, Producer};
use crate::subscriber::Subscriber;
use crate::{grouped, limit, Run, Shortfalls};

/// One side at one rate.
pub struct Measured {
    pub run: Run,
    /// Sorted, in µs.
    pub latencies_us: Vec<u64>,
}

/// A rate's two sides.
pub struct LatencyRow {
    pub rate: u32,
    pub n: u64,
    pub direct: Measured,
    pub bridge: Measured,
    /// The bridge's receive → settle p50, p99, p99.9 as histogram bucket
    /// upper bounds, in seconds.
    pub settle: [Option<f64>; 3],
}

fn measured(subscriber: &Subscriber, run: Run) -> Measured {
    let mut latencies_us = subscriber.latencies_us();
    latencies_us.sort_unstable();
    Measured { run, latencies_us }
}

async fn direct(port: u16, rate: u32, n: u64, run: &str) -> Measured {
    let prefix = format!("bench/latency/direct/{run}");
    let subscriber = Subscriber::start(port, &prefix, n, true);
    let started = Instant::now();
    let interval = Duration::from_secs(1) / rate;
    let producer = Producer::connect(port, &format!("bench-latency-direct-{run}"), n);
    let mut generator = Generator::new(n);
    let mut next = tokio::time::Instant::now();
    while let Some(message) = generator.next_message() {
        // As the emulator paces (`Subscription::take`): the next slot, at
        // most 10 ms behind; no sleep for a slot already due (tokio's timer
        // wakes at whole milliseconds).
        let now = tokio::time::Instant::now();
        let slot = next.max(now.checked_sub(Duration::from_millis(10)).unwrap_or(now));
        next = slot + interval;
        if slot > now {
            tokio::time::sleep_until(slot).await;
        }
        let topic = format!("{prefix}/{}", now_ms());
        if !producer.publish(topic, message.body).await {
            break;
        }
    }
    let acked = producer.finish().await;
    if acked < n {
        eprintln!("bench: latency, direct producer: {acked} of {n} acknowledged");
    }
    let nth = subscriber.wait(limit(n)).await;
    let run = Run {
        delivered: subscriber.count(),
        elapsed: nth.unwrap_or_else(Instant::now) - started,
        cpu: Vec::new(),
        runs: 0,
    };
    measured(&subscriber, run)
}

async fn bridge(
    port: u16,
    rate: u32,
    n: u64,
    run: &str,
    dir: &Path,
) -> (Measured, [Option<f64>; 3]) {
    let prefix = format!("bench/latency/bridge/{run}");
    let emulator = emulator(n, rate).await;
    let ca = write_ca(&emulator, dir);
    let text = bridge_yaml(
        &source_yaml(&emulator, &ca, &format!("bench-latency-{run}")),
        port,
        &format!("bench-latency-bridge-{run}"),
        &format!("{prefix}/{{generateTime}}"),
        window() as usize,
    );
    // bridge_yaml appends `{topic}`; here the stamp is the whole last level.
    let text = text.replace("{generateTime}{topic}", "{generateTime}");
    let config = Config::parse(&text, Path::new("bench.yaml"), |_| None).expect("bench config");
    let subscriber = Subscriber::start(port, &prefix, n, true);
    let started = Instant::now();
    let bridge = Bridge::start(&config).await.expect("bridge starts");
    let nth = subscriber.wait(limit(n)).await;
    let elapsed = nth.unwrap_or_else(Instant::now) - started;
    let _ = tokio::time::timeout(limit(n), emulator.all_accepted()).await;
    let settle = settle_quantiles(&bridge.metrics().encode());
    bridge.shutdown().await;
    emulator.shutdown().await;
    let run = Run {
        delivered: subscriber.count(),
        elapsed,
        cpu: Vec::new(),
        runs: 0,
    };
    (measured(&subscriber, run), settle)
}

/// p50, p99, p99.9 of `amqp_bridge_settle_seconds` as the upper bound of
/// the bucket each falls in (`None`: beyond the last bucket, or no data).
fn settle_quantiles(metrics: &str) -> [Option<f64>; 3] {
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("amqp_bridge_settle_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            Some((le.parse().ok()?, count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    [0.5, 0.99, 0.999].map(|q| {
        buckets
            .iter()
            .find(|(le, count)| le.is_finite() && total > 0.0 && *count >= q * total)
            .map(|b| b.0)
    })
}

/// The value at quantile `q` of sorted `values` (nearest rank).
fn quantile(values: &[u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

/// A warm-up of a tenth, then `n` messages at `rate` on both sides.
pub async fn row(rate: u32, n: u64, port: u16, dir: &Path, short: &mut Shortfalls) -> LatencyRow {
    let warm = (n / 10).max(1);
    eprintln!("bench: latency at {rate} msg/s, warm-up {warm}");
    let w = direct(port, rate, warm, "w").await;
    short.check("latency warm-up, direct", &w.run, warm);
    let (w, _) = bridge(port, rate, warm, "w", dir).await;
    short.check("latency warm-up, bridge", &w.run, warm);
    eprintln!("bench: latency at {rate} msg/s, {n}");
    let direct = direct(port, rate, n, &format!("m{rate}")).await;
    short.check(&format!("latency at {rate}/s, direct"), &direct.run, n);
    let (bridge, settle) = bridge(port, rate, n, &format!("m{rate}"), dir).await;
    short.check(&format!("latency at {rate}/s, bridge"), &bridge.run, n);
    LatencyRow {
        rate,
        n,
        direct,
        bridge,
        settle,
    }
}

fn ms(us: Option<u64>) -> String {
    us.map(|us| format!("{:.2} ms", us as f64 / 1000.0))
        .unwrap_or_else(|| "–".into())
}

pub fn print_table(rows: &[LatencyRow]) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "Latency, MQTT QoS 1 → Mosquitto, window {}: stamp (generateTime, whole ms) → \
         arrival at the subscriber; bridge receive → settle from its histogram (bucket bound):",
        window()
    );
    println!();
    println!(
        "| offered | side | N | achieved | p50 | p99 | p99.9 | max | p99 added by the bridge |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let p99 = |m: &Measured| quantile(&m.latencies_us, 0.99);
        let added = match (p99(&row.bridge), p99(&row.direct)) {
            (Some(b), Some(d)) => format!("{:.2} ms", (b as f64 - d as f64) / 1000.0),
            _ => "–".into(),
        };
        for (side, m, added) in [
            ("direct", &row.direct, String::new()),
            ("bridge", &row.bridge, added),
        ] {
            println!(
                "| {} msg/s | {side} | {} | {} msg/s | {} | {} | {} | {} | {added} |",
                grouped(row.rate as f64),
                grouped(row.n as f64),
                grouped(m.run.rate()),
                ms(quantile(&m.latencies_us, 0.5)),
                ms(p99(m)),
                ms(quantile(&m.latencies_us, 0.999)),
                ms(m.latencies_us.last().copied()),
            );
        }
        let bound = |s: Option<f64>| {
            s.map(|s| format!("≤ {} ms", s * 1000.0))
                .unwrap_or_else(|| "–".into())
        };
        println!(
            "| {} msg/s | bridge receive → settle | | | {} | {} | {} | | |",
            grouped(row.rate as f64),
            bound(row.settle[0]),
            bound(row.settle[1]),
            bound(row.settle[2]),
        );
    }
}
