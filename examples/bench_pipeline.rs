//! The bridge's own cost per message: the IoT Platform emulator pushing N
//! messages, received (a) by a bare fe2o3 receiver that accepts at once — the
//! baseline: AMQP and the emulator alone — and (b) by the whole bridge
//! (routing, pipeline, settlement) into a file sink. Both run on one core
//! (a current-thread runtime) in the same process, one after the other.
//!
//! Besides wall time it reports CPU time per message (every thread of the
//! process, from /proc/self/task/*/schedstat), which other load on the
//! machine does not inflate the way it does wall time.
//!
//!   cargo run --release --example bench_pipeline [N]
//!
//! `bench_pipeline N baseline` or `bench_pipeline N bridge` runs one side
//! only, without warm-up, for an instruction count under
//! `valgrind --tool=callgrind` (the bridge's instructions per message are
//! the difference of the two counts over N).
//!
//! `BENCH_SINK=blackhole` (build with `--features blackhole-sink`) replaces
//! the file sink with the null sink: the bridge's own cost without a sink's.

use std::path::Path;
use std::time::{Duration, Instant};

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;

#[path = "bench_common/mod.rs"]
mod bench_common;
use bench_common::{bare_receiver, emulator, process_cpu, source_yaml, write_ca};

/// CPU time of every live thread of this process so far.
fn cpu_time() -> Duration {
    process_cpu("self")
}

/// Wall and CPU time of one run.
struct Run {
    wall: Duration,
    cpu: Duration,
}

async fn baseline(n: u64, dir: &Path) -> Run {
    let mut marks = Vec::with_capacity(2);
    let wall = bare_receiver(n, dir, Duration::from_secs(3600), || marks.push(cpu_time()))
        .await
        .expect("the bare receiver finished");
    Run {
        wall,
        cpu: marks[1] - marks[0],
    }
}

async fn bridge(n: u64, dir: &Path) -> Run {
    let emulator = emulator(n, 0).await;
    let ca = write_ca(&emulator, dir);
    let out = dir.join("out.jsonl");
    let text = format!(
        "{source}sinks:\n  out: {sink}\n\
         routes:\n  - {{ match: {{ topic: '#' }}, to: [ {{ sink: out }} ] }}\n",
        source = source_yaml(&emulator, &ca, "bench-bridge"),
        sink = match std::env::var("BENCH_SINK").as_deref() {
            // The null sink needs cargo feature `blackhole-sink`.
            Ok("blackhole") => "{ kind: blackhole }".to_string(),
            _ => format!("{{ kind: file, path: '{}' }}", out.display()),
        },
    );
    let config = Config::parse(&text, Path::new("bench.yaml"), |_| None).unwrap();
    let started = Instant::now();
    let cpu = cpu_time();
    let bridge = Bridge::start(&config).await.unwrap();
    emulator.all_accepted().await;
    let run = Run {
        wall: started.elapsed(),
        cpu: cpu_time() - cpu,
    };
    bridge.shutdown().await;
    emulator.shutdown().await;
    run
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50_000);
    // A RAM disk keeps fsync from measuring the disk instead of the bridge.
    let base_dir = Path::new("/dev/shm");
    let dir = if base_dir.is_dir() {
        tempfile::tempdir_in(base_dir).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::args().nth(2);
    if let Some(side) = only {
        runtime.block_on(async {
            let run = match side.as_str() {
                "baseline" => baseline(n, dir.path()).await,
                "bridge" => bridge(n, dir.path()).await,
                other => panic!("unknown side `{other}`: baseline or bridge"),
            };
            println!(
                "{side}: {n} msgs, CPU {:.1} µs/msg",
                run.cpu.as_secs_f64() / n as f64 * 1e6
            );
        });
        return;
    }
    runtime.block_on(async {
        // Warm up both paths once.
        baseline(n / 10, dir.path()).await;
        bridge(n / 10, dir.path()).await;
        let base = baseline(n, dir.path()).await;
        let full = bridge(n, dir.path()).await;
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        let us = |d: Duration| d.as_secs_f64() / n as f64 * 1e6;
        println!("baseline (bare receiver, accept at once): {n} msgs in {:.2}s = {:>7.0} msg/s, CPU {:.1} µs/msg", base.wall.as_secs_f64(), rate(base.wall), us(base.cpu));
        println!("bridge (route + pipeline + file sink):    {n} msgs in {:.2}s = {:>7.0} msg/s, CPU {:.1} µs/msg", full.wall.as_secs_f64(), rate(full.wall), us(full.cpu));
        let per_msg_us = (full.wall.as_secs_f64() - base.wall.as_secs_f64()) / n as f64 * 1e6;
        println!("bridge / baseline time: {:.2}x; the bridge's own cost ≈ {per_msg_us:.1} µs per message on one core", full.wall.as_secs_f64() / base.wall.as_secs_f64());
        println!("the bridge's own CPU ≈ {:.1} µs per message", us(full.cpu.saturating_sub(base.cpu)));
    });
}
