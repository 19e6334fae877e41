//! Memory of the bridge, run as its own process (`amqp-bridge run --config
//! FILE`, the release binary) so its resident set is its own and not the
//! emulator's: the emulator (in the bench process) offers 10 000 msg/s
//! into an MQTT sink on Mosquitto. First a steady phase (3 × the in-flight
//! limit in messages), then Mosquitto is frozen (SIGSTOP) until the bridge
//! holds `max_in_flight` messages unsettled, then thawed (SIGCONT) and
//! drained. VmRSS and VmHWM come from /proc/PID/status.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use amqp_bridge::emulator::Emulator;

use crate::bench_common::{emulator, source_yaml, write_ca};
use crate::mqtt::bridge_yaml;
use crate::{grouped, limit, Shortfalls};

/// The offered rate, msg/s.
const RATE: u32 = 10_000;

/// What was measured.
pub struct Memory {
    pub in_flight_limit: u64,
    /// VmHWM at the end of the steady phase, KiB.
    pub steady_peak_kib: Option<u64>,
    /// Unsettled messages when the stalled figures were read.
    pub in_flight: i64,
    /// VmRSS and VmHWM with `in_flight` messages held, KiB.
    pub stalled_rss_kib: Option<u64>,
    pub stalled_peak_kib: Option<u64>,
}

/// A field of /proc/PID/status in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn signal(pid: &str, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid)
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("bench: kill -{signal} {pid} failed");
    }
}

/// Polls the emulator's counters until `done` says so or `limit` passed.
async fn until(emulator: &Emulator, limit: Duration, done: impl Fn(u64, i64) -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let stats = emulator.stats().snapshot();
        if done(stats.accepted, stats.outstanding) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A bridge running as a child process; killed if dropped still running
/// (a panic or an early return must not leave it reconnecting).
pub struct BridgeProcess(Option<Child>);

impl BridgeProcess {
    /// Starts `bin run --config CONFIG` with `env`, its stderr into `log`.
    pub fn spawn(bin: &Path, config: &Path, log: &Path, env: &[(&str, String)]) -> BridgeProcess {
        let log = std::fs::File::create(log).expect("bridge log");
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        BridgeProcess(Some(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Resolves when the process has ended (polled every 100 ms).
    pub async fn exited(&mut self) {
        loop {
            match self.0.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => return,
            }
        }
    }

    /// Stops it with SIGTERM (the bridge drains), killing it after 30 s.
    pub async fn stop(mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        signal(&child.id().to_string(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("bench: the bridge did not stop within 30 s; killed");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last lines of a bridge's log, for a run that fell short.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

pub async fn measure(
    bridge_bin: &Path,
    port: u16,
    mosquitto_pid: &str,
    in_flight_limit: u64,
    dir: &Path,
    short: &mut Shortfalls,
) -> Memory {
    let steady = 3 * in_flight_limit;
    // Room for what arrives between the steady count and the SIGSTOP (at
    // the offered rate, more than half the limit in a smoke run's 200):
    // with too few left the stall could never fill.
    let total = steady + 4 * in_flight_limit;
    let emulator = emulator(total, RATE).await;
    let ca = write_ca(&emulator, dir);
    let text = format!(
        "max_in_flight: {in_flight_limit}\n{}",
        bridge_yaml(
            &source_yaml(&emulator, &ca, "bench-memory"),
            port,
            "bench-memory-bridge",
            "bench/memory",
            crate::mqtt::window() as usize,
        )
    );
    let config = dir.join("memory.yaml");
    std::fs::write(&config, text).expect("write the bridge's config");
    let child = BridgeProcess::spawn(bridge_bin, &config, &dir.join("memory-bridge.log"), &[]);
    let pid = child.pid();
    eprintln!("bench: memory, steady {steady} at {RATE} msg/s");
    let mut result = Memory {
        in_flight_limit,
        steady_peak_kib: None,
        in_flight: 0,
        stalled_rss_kib: None,
        stalled_peak_kib: None,
    };
    if !until(&emulator, limit(steady), |accepted, _| accepted >= steady).await {
        short.0.push(format!(
            "memory: fewer than {steady} accepted in the steady phase"
        ));
    }
    result.steady_peak_kib = status_kib(pid, "VmHWM");
    eprintln!("bench: memory, Mosquitto stopped until {in_flight_limit} are in flight");
    signal(mosquitto_pid, "STOP");
    let target = in_flight_limit as i64;
    let full = until(&emulator, Duration::from_secs(30), |_, out| out >= target).await;
    // Let whatever was on its way settle in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    result.in_flight = emulator.stats().snapshot().outstanding;
    result.stalled_rss_kib = status_kib(pid, "VmRSS");
    result.stalled_peak_kib = status_kib(pid, "VmHWM");
    signal(mosquitto_pid, "CONT");
    if !full {
        short.0.push(format!(
            "memory: only {} of {in_flight_limit} in flight with Mosquitto stopped",
            result.in_flight
        ));
    }
    if !until(&emulator, limit(total), |accepted, _| accepted >= total).await {
        short.0.push(format!(
            "memory: fewer than {total} accepted after the stall"
        ));
    }
    child.stop().await;
    emulator.shutdown().await;
    result
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "–".into())
}

pub fn print_table(memory: &Memory) {
    println!();
    println!(
        "Memory of the bridge as its own process (release `amqp-bridge run`; /proc/PID/status), \
         MQTT sink on Mosquitto, {} msg/s offered, max_in_flight {}:",
        grouped(RATE as f64),
        grouped(memory.in_flight_limit as f64),
    );
    println!();
    println!("| phase | messages in flight | VmRSS | VmHWM (peak so far) |");
    println!("|---|---|---|---|");
    println!(
        "| steady ({} msg/s) | – | – | {} |",
        grouped(RATE as f64),
        mib(memory.steady_peak_kib)
    );
    println!(
        "| Mosquitto stopped (SIGSTOP) | {} | {} | {} |",
        grouped(memory.in_flight as f64),
        mib(memory.stalled_rss_kib),
        mib(memory.stalled_peak_kib)
    );
}
