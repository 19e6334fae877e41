//! The side-by-side benchmark behind `scripts/bench.sh` (issue 17): each row
//! puts the whole bridge next to a baseline measured in the same run, on the
//! same brokers, with the same payloads, and prints one markdown table.
//!
//! - null sink: emulator → bridge → `kind: blackhole`, against a bare fe2o3
//!   receiver that accepts on arrival (`null_sink.rs`);
//! - MQTT QoS 1: emulator → bridge → Mosquitto, against a direct rumqttc
//!   producer with the sink's in-flight window and a hand-written
//!   forwarder (a bare receiver publishing through rumqttc, accepting on
//!   PUBACK), all counted by the same kind of independent subscriber
//!   (`mqtt.rs`);
//! - Kafka: emulator → bridge → tansu, against a direct rdkafka producer
//!   with the sink's own librdkafka settings and the same hand-written
//!   forwarder on that producer (`kafka.rs`);
//! - latency at 1 000 and 10 000 msg/s offered, MQTT, bridge against the
//!   direct producer (`latency.rs`);
//! - memory: the bridge as its own process, steady and with the sink
//!   stalled (`memory.rs`);
//! - workers: the bridge binary as its own process with 1 and 2 tokio
//!   worker threads, MQTT (`workers.rs`);
//! - scaling: CPU per message from 1 000 to 1 000 000 messages, null sink
//!   (`scaling.rs`, on request).
//!
//! The brokers are started by the script; rows whose broker is not given
//! are left out. Each row runs a warm-up of N/10 on both sides first. Exit
//! code 1 when any run delivered fewer messages than it should have.
//!
//!   cargo run --release --example bench --features blackhole-sink -- \
//!       [N] [--mqtt PORT] [--kafka HOST:PORT] [--latency-seconds S] \
//!       [--mqtt-window W] [--kafka-window W] [--kafka-sink 'linger: 20ms, ...'] \
//!       [--credit C] [--rows null,mqtt,kafka,latency,workers] \
//!       [--memory BRIDGE_BIN IN_FLIGHT] [--bridge BRIDGE_BIN] [--scaling N,N,...] \
//!       [--pid NAME=PID]... [--current-thread]

#[path = "../bench_common/mod.rs"]
mod bench_common;
mod cpu;
mod kafka;
mod latency;
mod memory;
mod mqtt;
mod null_sink;
mod scaling;
mod subscriber;
mod workers;

use std::path::Path;
use std::time::Duration;

use futures_util::future::BoxFuture;

/// One side of a row: how many messages arrived where they were counted,
/// and in what time.
#[derive(Clone, Debug)]
pub struct Run {
    pub delivered: u64,
    pub elapsed: Duration,
    /// CPU time of each watched process during the run ([`cpu::names`]).
    pub cpu: Vec<Duration>,
    /// Times a thread of the bench process was put on a CPU.
    pub runs: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }
}

/// A measured row.
pub struct Row {
    pub name: String,
    pub n: u64,
    pub baseline: Run,
    /// The hand-written forwarder (`bench_common::forwarder::forward`): the same
    /// source and broker, no bridge; rows with a broker have one.
    pub forwarder: Option<Run>,
    pub bridge: Run,
}

/// Everything a run fell short by, reported at the end (and the exit code).
#[derive(Default)]
pub struct Shortfalls(pub Vec<String>);

impl Shortfalls {
    /// Notes a run that delivered fewer than `n` messages.
    pub fn check(&mut self, what: &str, run: &Run, n: u64) {
        self.expect(what, run.delivered, n);
    }

    /// Notes `delivered` short of `n`.
    pub fn expect(&mut self, what: &str, delivered: u64, n: u64) {
        if delivered < n {
            let line = format!("{what}: {delivered} of {n} delivered");
            eprintln!("bench: SHORT {line}");
            self.0.push(line);
        }
    }
}

/// One side of a row: runs `n` messages; the `&str` names the run ("w"
/// for the warm-up, "m" for the measured one) in topics and client ids.
pub type Side<'a> = Box<dyn Fn(u64, &'static str) -> BoxFuture<'a, Run> + Send + Sync + 'a>;

/// Measures a row's sides in order, each after a warm-up of N/10, noting
/// every run that fell short; returns the measured runs in the same order.
pub async fn measure_sides(
    row: &str,
    n: u64,
    sides: &[(&str, Side<'_>)],
    short: &mut Shortfalls,
) -> Vec<Run> {
    let warm = (n / 10).max(1);
    eprintln!("bench: {row}, warm-up {warm}");
    for (side, run) in sides {
        short.check(
            &format!("{row} warm-up, {side}"),
            &run(warm, "w").await,
            warm,
        );
    }
    eprintln!("bench: {row}, {n}");
    let mut runs = Vec::new();
    for (side, run) in sides {
        let measured = run(n, "m").await;
        short.check(&format!("{row}, {side}"), &measured, n);
        runs.push(measured);
    }
    runs
}

/// Runs a bridge on `config` until `emulator` saw its `n` messages accepted
/// (or [`limit`] passed): how long that took, what the watched processes
/// used, and the emulator's final counts.
pub async fn bridge_until_accepted(
    config: &amqp_bridge::config::Config,
    emulator: amqp_bridge::emulator::Emulator,
    n: u64,
) -> (Duration, cpu::Usage, amqp_bridge::emulator::StatsSnapshot) {
    let meter = cpu::Meter::start();
    let started = std::time::Instant::now();
    let bridge = amqp_bridge::bridge::Bridge::start(config)
        .await
        .expect("bridge starts");
    let _ = tokio::time::timeout(limit(n), emulator.all_accepted()).await;
    let elapsed = started.elapsed();
    let usage = meter.stop();
    bridge.shutdown().await;
    (elapsed, usage, emulator.shutdown().await)
}

/// The offered rates of the latency rows, msg/s.
const LATENCY_RATES: [u32; 2] = [1_000, 10_000];

/// How long one run may take before it counts as stalled: a minute plus
/// 2 ms per message (500 msg/s).
pub fn limit(n: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(2 * n)
}

struct Args {
    n: u64,
    mqtt_port: Option<u16>,
    kafka: Option<String>,
    current_thread: bool,
    /// Processes whose CPU time the CPU table shows (`--pid NAME=PID`).
    watched: cpu::Watched,
    /// Seconds of traffic per offered rate in the latency rows (needs
    /// `--mqtt`; 0: no latency rows).
    latency_seconds: f64,
    /// The bridge binary for the memory figures (`--memory BIN IN_FLIGHT`,
    /// needs `--mqtt` and `--pid mosquitto=PID`).
    memory: Option<(std::path::PathBuf, u64)>,
    /// The bridge binary the workers row runs (`--bridge BIN`).
    bridge: Option<std::path::PathBuf>,
    /// N of the scaling table (`--scaling N,N,...`).
    scaling: Vec<u64>,
    /// Which of null, mqtt, kafka, latency, workers to run (`--rows`;
    /// default all; `workers` needs `--bridge BIN`).
    rows: Vec<String>,
    kafka_window: Option<usize>,
    kafka_sink: Option<String>,
}

fn args() -> Args {
    let mut args = Args {
        n: 50_000,
        mqtt_port: None,
        kafka: None,
        current_thread: false,
        watched: cpu::Watched::default(),
        latency_seconds: 0.0,
        memory: None,
        bridge: None,
        scaling: Vec::new(),
        rows: ["null", "mqtt", "kafka", "latency", "workers"]
            .map(String::from)
            .to_vec(),
        kafka_window: None,
        kafka_sink: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--mqtt" => {
                let port = it.next().and_then(|p| p.parse().ok());
                args.mqtt_port = Some(port.expect("--mqtt PORT"));
            }
            "--kafka" => args.kafka = Some(it.next().expect("--kafka HOST:PORT")),
            "--current-thread" => args.current_thread = true,
            "--mqtt-window" => {
                let window = it.next().and_then(|w| w.parse().ok());
                mqtt::set_window(window.expect("--mqtt-window 1..65535"));
            }
            "--latency-seconds" => {
                let seconds = it.next().and_then(|s| s.parse().ok());
                args.latency_seconds = seconds.expect("--latency-seconds SECONDS");
            }
            "--memory" => {
                let bin = it.next().expect("--memory BRIDGE_BINARY IN_FLIGHT");
                let in_flight = it.next().and_then(|n| n.parse().ok());
                args.memory = Some((bin.into(), in_flight.expect("--memory BIN IN_FLIGHT")));
            }
            "--bridge" => args.bridge = Some(it.next().expect("--bridge BINARY").into()),
            "--scaling" => {
                let sizes = it.next().expect("--scaling N,N,...");
                args.scaling = sizes
                    .split(',')
                    .map(|n| n.parse().expect("--scaling N,N,..."))
                    .collect();
            }
            "--kafka-window" => {
                let window = it.next().and_then(|w| w.parse().ok());
                args.kafka_window = Some(window.expect("--kafka-window N"));
            }
            "--kafka-sink" => {
                args.kafka_sink = Some(it.next().expect("--kafka-sink 'KEY: VALUE, ...'"))
            }
            "--credit" => {
                let credit = it.next().and_then(|c| c.parse().ok());
                let credit = credit.expect("--credit 1..10000");
                bench_common::CREDIT.store(credit, std::sync::atomic::Ordering::Relaxed);
            }
            "--rows" => {
                let rows = it.next().expect("--rows null,mqtt,kafka,latency,workers");
                args.rows = rows.split(',').map(str::to_string).collect();
            }
            "--pid" => {
                let spec = it.next().expect("--pid NAME=PID");
                let (name, pid) = spec.split_once('=').expect("--pid NAME=PID");
                args.watched.0.push((name.to_string(), pid.to_string()));
            }
            n => {
                args.n = n
                    .parse()
                    .expect("usage: bench [N] [--mqtt PORT] [--kafka HOST:PORT]")
            }
        }
    }
    args
}

/// `12345.6` → `12 346`.
pub fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn print_table(rows: &[Row], runtime: &str) {
    println!(
        "| row | N | baseline | hand-written forwarder | bridge | bridge/baseline | bridge/forwarder |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        let forwarder = row.forwarder.as_ref();
        println!(
            "| {} | {} | {} msg/s | {} | {} msg/s | {:.2}× | {} |",
            row.name,
            grouped(row.n as f64),
            grouped(row.baseline.rate()),
            forwarder
                .map(|f| format!("{} msg/s", grouped(f.rate())))
                .unwrap_or_else(|| "–".into()),
            grouped(row.bridge.rate()),
            row.bridge.rate() / row.baseline.rate(),
            forwarder
                .map(|f| format!("{:.2}×", row.bridge.rate() / f.rate()))
                .unwrap_or_else(|| "–".into()),
        );
    }
    println!();
    println!(
        "Runtime: {runtime}; source credit {} for the bridge and the bare receiver, \
         the forwarders' credit = their window (fe2o3 refills credit on settlement, so \
         credit bounds what they hold unsettled; the bridge's max_in_flight does that; \
         the larger of the two with --credit); \
         each side after a warm-up of N/10.",
        bench_common::CREDIT.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!();
    let names = cpu::names();
    println!(
        "CPU during the measured runs (every thread, /proc/PID/task/*/schedstat; \
         % of one core over the run's time; the bench process holds the emulator, \
         the bridge or baseline and the MQTT subscriber):"
    );
    println!();
    let header: Vec<String> = names.iter().map(|n| format!("{n} %")).collect();
    println!(
        "| row | side | time | {} | bench process µs/msg | less the emulator + AMQP µs/msg | bench thread runs/msg |",
        header.join(" | ")
    );
    println!("|---|---|---|{}---|---|---|", "---|".repeat(names.len()));
    let us_per_message =
        |run: &Run, n: u64| run.cpu.first().map(|c| c.as_secs_f64() * 1e6 / n as f64);
    // The null-sink baseline: the emulator, TLS + AMQP and a bare receiver.
    let amqp = rows
        .iter()
        .find(|row| row.name.starts_with("null sink"))
        .and_then(|row| us_per_message(&row.baseline, row.n));
    for row in rows {
        let sides = [
            Some(("baseline", &row.baseline)),
            row.forwarder.as_ref().map(|run| ("forwarder", run)),
            Some(("bridge", &row.bridge)),
        ];
        for (side, run) in sides.into_iter().flatten() {
            let seconds = run.elapsed.as_secs_f64();
            let shares: Vec<String> = run
                .cpu
                .iter()
                .map(|c| format!("{:.0}", c.as_secs_f64() / seconds * 100.0))
                .collect();
            let per_message = us_per_message(run, row.n);
            let beyond = match (side, per_message, amqp) {
                ("bridge" | "forwarder", Some(all), Some(amqp)) => format!("{:.1}", all - amqp),
                _ => String::new(),
            };
            println!(
                "| {} | {side} | {seconds:.2} s | {} | {} | {beyond} | {:.2} |",
                row.name.split(" (").next().unwrap_or(&row.name),
                shares.join(" | "),
                per_message.map(|us| format!("{us:.1}")).unwrap_or_default(),
                run.runs as f64 / row.n as f64,
            );
        }
    }
    println!();
    println!(
        "\"less the emulator + AMQP\": a bridge or forwarder side's µs/msg minus the null-sink \
         baseline's (emulator, TLS + AMQP, bare receiver), to set beside a direct producer's own. \
         \"thread runs\": times a thread of the bench process was put on a CPU \
         (schedstat), per message: how often the work crossed threads."
    );
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = args();
    cpu::watch(args.watched.clone());
    kafka::set(args.kafka_window, args.kafka_sink.clone());
    let (runtime, description) = if args.current_thread {
        (
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            "tokio current-thread (bench process's async work on one thread; \
             MQTT subscriber on its own thread)",
        )
    } else {
        (
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
            "tokio multi-thread, 2 workers (emulator, bridge or baseline producer \
             share them; MQTT subscriber on its own thread)",
        )
    };
    let runtime = runtime.expect("tokio runtime");
    // A RAM disk for the CA file and anything else written.
    let base_dir = Path::new("/dev/shm");
    let dir = if base_dir.is_dir() {
        tempfile::tempdir_in(base_dir)
    } else {
        tempfile::tempdir()
    }
    .expect("temporary directory");
    let n = args.n;
    let path = dir.path().to_path_buf();
    // Spawned, not run in `block_on`: every side then runs on the same
    // worker threads (a side driven by `block_on` would get the main
    // thread as a third one).
    let work = runtime.spawn(async move {
        let mut short = Shortfalls::default();
        let dir = path.as_path();
        let wanted = |row: &str| args.rows.iter().any(|r| r == row);
        let mut rows = Vec::new();
        if wanted("null") {
            rows.push(null_sink::row(n, dir, &mut short).await);
        }
        if let Some(port) = args.mqtt_port.filter(|_| wanted("mqtt")) {
            rows.push(mqtt::row(n, port, dir, &mut short).await);
        }
        if let Some(brokers) = args.kafka.as_ref().filter(|_| wanted("kafka")) {
            rows.push(kafka::row(n, brokers, dir, &mut short).await);
        }
        let mut latency_rows = Vec::new();
        let latency = args.latency_seconds > 0.0 && wanted("latency");
        if let Some(port) = args.mqtt_port.filter(|_| latency) {
            for rate in LATENCY_RATES {
                let n = ((rate as f64 * args.latency_seconds) as u64).max(10);
                latency_rows.push(latency::row(rate, n, port, dir, &mut short).await);
            }
        }
        let mosquitto = args
            .watched
            .0
            .iter()
            .find(|(name, _)| name == "mosquitto")
            .map(|(_, pid)| pid.clone());
        // `--memory BIN 0` leaves it out.
        let memory_run = args.memory.as_ref().filter(|(_, in_flight)| *in_flight > 0);
        let memory = match (memory_run, args.mqtt_port, mosquitto) {
            (Some((bin, in_flight)), Some(port), Some(pid)) => {
                Some(memory::measure(bin, port, &pid, *in_flight, dir, &mut short).await)
            }
            (Some(_), _, _) => panic!("--memory needs --mqtt PORT and --pid mosquitto=PID"),
            _ => None,
        };
        let workers = match (&args.bridge, args.mqtt_port) {
            (Some(bin), Some(port)) if wanted("workers") => {
                workers::measure(bin, port, n, dir, &mut short).await
            }
            _ => Vec::new(),
        };
        let scaling = scaling::measure(&args.scaling, dir, &mut short).await;
        (rows, latency_rows, memory, scaling, workers, short)
    });
    let (rows, latency_rows, memory, scaling, workers, short) =
        runtime.block_on(work).expect("the benchmark's task");
    runtime.shutdown_timeout(Duration::from_secs(5));
    print_table(&rows, description);
    latency::print_table(&latency_rows);
    if let Some(memory) = &memory {
        memory::print_table(memory);
    }
    workers::print_table(&workers);
    scaling::print_table(&scaling);
    if !short.0.is_empty() {
        println!();
        for line in &short.0 {
            println!("SHORT: {line}");
        }
        std::process::exit(1);
    }
}
