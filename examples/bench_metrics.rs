//! What the metrics add to one message: every counter, gauge and histogram
//! update the hot path makes for a message with one route and one target
//! (received, pipeline in/out, route matched, copy confirmed with its
//! confirm latency, settle latency, message age, settlement), with the clock
//! reads they need, against the same loop without them.
//!
//!   cargo run --release --example bench_metrics [N]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use amqp_bridge::config::{SinkConfig, StdoutSinkConfig};
use amqp_bridge::sink::Sink;
use amqp_bridge::telemetry::{Metrics, SourceOutcome};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000_000);
    let stdout = SinkConfig::Stdout(StdoutSinkConfig {
        kind: "stdout".into(),
    });
    let sink: Arc<dyn Sink> = amqp_bridge::sink::build("out", &stdout).expect("a stdout sink");
    let metrics = Metrics::new(1024, std::slice::from_ref(&sink), &["all".to_string()]);
    let sink_metrics = metrics.sink_metrics(sink.as_ref());
    let route = metrics.route_counters(&["all".to_string()]).remove(0);
    let connection = metrics.connection("bench");
    let generate_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();

    // Baseline: the loop and the work that exists without metrics.
    let started = Instant::now();
    for i in 0..n {
        black_box(i);
        black_box(generate_time.as_str());
    }
    let baseline = started.elapsed();

    let started = Instant::now();
    for i in 0..n {
        black_box(i);
        connection.received();
        let received_at = Instant::now();
        metrics.pipeline_entered();
        route.inc();
        let sink = &sink_metrics;
        let sent = Instant::now();
        sink.confirmed.inc();
        sink.confirm_seconds.observe(sent.elapsed().as_secs_f64());
        metrics
            .settle_seconds
            .observe(received_at.elapsed().as_secs_f64());
        let generated: u64 = black_box(generate_time.as_str()).parse().unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        metrics
            .message_age_seconds
            .observe(now.saturating_sub(u128::from(generated)) as f64 / 1000.0);
        metrics.pipeline_left();
        connection.settled(SourceOutcome::Accepted);
    }
    let with_metrics = started.elapsed();
    assert_eq!(metrics.accepted(), n);

    let per = |d: std::time::Duration| d.as_nanos() as f64 / n as f64;
    println!(
        "messages: {n}\nbaseline loop: {:.1} ns/msg\nwith metrics: {:.1} ns/msg\nmetrics cost: {:.1} ns/msg",
        per(baseline),
        per(with_metrics),
        per(with_metrics) - per(baseline)
    );
}
