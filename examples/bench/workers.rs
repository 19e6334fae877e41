//! The bridge as its own process (`amqp-bridge run`, the release binary)
//! with 1 and with 2 tokio worker threads (`TOKIO_WORKER_THREADS`, which
//! tokio's default runtime reads), MQTT QoS 1 into Mosquitto: the emulator
//! stays in the bench process and pushes N messages as fast as credit
//! allows; the rate is N / (the bridge's start → the subscriber's N-th
//! arrival). The in-process rows showed the bridge paying more on two
//! workers than on one thread (its messages cross tasks, and idle workers
//! wake to steal them); this row says what that means for the binary
//! people run, with its CPU measured apart from the emulator's.

use std::path::Path;
use std::time::Instant;

use crate::bench_common::{emulator, process_cpu, source_yaml, write_ca};
use crate::memory::{log_tail, BridgeProcess};
use crate::mqtt::bridge_yaml;
use crate::subscriber::Subscriber;
use crate::{cpu, grouped, limit, Shortfalls};

/// One run of the bridge process.
pub struct WorkersRun {
    pub workers: u32,
    pub n: u64,
    pub delivered: u64,
    pub seconds: f64,
    /// CPU of the bridge process, and of the bench process (the emulator
    /// and the subscriber), in seconds.
    pub bridge_cpu: f64,
    pub bench_cpu: f64,
    /// The second watched process (Mosquitto in `scripts/bench.sh`).
    pub mosquitto_cpu: f64,
}

async fn run(bin: &Path, workers: u32, port: u16, n: u64, tag: &str, dir: &Path) -> WorkersRun {
    let emulator = emulator(n, 0).await;
    let ca = write_ca(&emulator, dir);
    let prefix = format!("bench/workers/{tag}");
    let text = bridge_yaml(
        &source_yaml(&emulator, &ca, &format!("bench-workers-{tag}")),
        port,
        &format!("bench-workers-bridge-{tag}"),
        &prefix,
        crate::mqtt::window() as usize,
    );
    let config = dir.join(format!("workers-{tag}.yaml"));
    std::fs::write(&config, text).expect("write the bridge's config");
    let subscriber = Subscriber::start(port, &prefix, n, false);
    let log = dir.join(format!("workers-{tag}.log"));
    let meter = cpu::Meter::start();
    let started = Instant::now();
    let mut child = BridgeProcess::spawn(
        bin,
        &config,
        &log,
        &[("TOKIO_WORKER_THREADS", workers.to_string())],
    );
    let pid = child.pid().to_string();
    // A bridge that exits (a bad config, a refused start) ends the wait.
    let nth = tokio::select! {
        nth = subscriber.wait(limit(n)) => nth,
        () = child.exited() => None,
    };
    let seconds = (nth.unwrap_or_else(Instant::now) - started).as_secs_f64();
    let delivered = if nth.is_some() { subscriber.count() } else { 0 };
    let bridge_cpu = process_cpu(&pid).as_secs_f64();
    let usage = meter.stop();
    if delivered < n {
        eprintln!(
            "bench: workers {workers}: the bridge's log ends:\n{}",
            log_tail(&log)
        );
    }
    child.stop().await;
    emulator.shutdown().await;
    WorkersRun {
        workers,
        n,
        delivered,
        seconds,
        bridge_cpu,
        bench_cpu: usage.cpu.first().map_or(0.0, |c| c.as_secs_f64()),
        mosquitto_cpu: usage.cpu.get(1).map_or(0.0, |c| c.as_secs_f64()),
    }
}

/// 1 and 2 workers, alternately, twice each, after a warm-up of N/10 each
/// (a fresh process every run: the warm-up warms Mosquitto and the page
/// cache, not the bridge).
pub async fn measure(
    bin: &Path,
    port: u16,
    n: u64,
    dir: &Path,
    short: &mut Shortfalls,
) -> Vec<WorkersRun> {
    let warm = (n / 10).max(1);
    let schedule = [(warm, 0), (n, 1), (n, 2)];
    let mut runs = Vec::new();
    for (size, round) in schedule {
        eprintln!("bench: bridge process by workers, {size}");
        for workers in [1, 2] {
            let tag = format!("w{workers}r{round}");
            let run = run(bin, workers, port, size, &tag, dir).await;
            short.expect(
                &format!("workers {workers}, round {round}"),
                run.delivered,
                size,
            );
            if round > 0 {
                runs.push(run);
            }
        }
    }
    runs
}

pub fn print_table(runs: &[WorkersRun]) {
    if runs.is_empty() {
        return;
    }
    println!();
    println!(
        "The bridge as its own process (release `amqp-bridge run`), MQTT QoS 1 → Mosquitto, \
         window {}, by tokio worker threads (TOKIO_WORKER_THREADS); the emulator and the \
         subscriber in the bench process:",
        crate::mqtt::window()
    );
    println!();
    println!(
        "| workers | N | rate | bridge process CPU | bridge µs/msg | bench process µs/msg | mosquitto µs/msg |"
    );
    println!("|---|---|---|---|---|---|---|");
    for run in runs {
        let per_message = |cpu: f64| cpu * 1e6 / run.n as f64;
        println!(
            "| {} | {} | {} msg/s | {:.0} % | {:.1} | {:.1} | {:.1} |",
            run.workers,
            grouped(run.n as f64),
            grouped(run.delivered as f64 / run.seconds),
            run.bridge_cpu / run.seconds * 100.0,
            per_message(run.bridge_cpu),
            per_message(run.bench_cpu),
            per_message(run.mosquitto_cpu),
        );
    }
}
