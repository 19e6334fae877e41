//! CPU time of the bench process and of the brokers during each run, summed
//! over each process's threads from /proc/PID/task/*/schedstat (ns, run
//! time on a CPU; as `bench_pipeline` measures), so the tables can say which
//! process was busy — what limits a row — and what a message cost.
//! A thread that ends within a run loses its share; the bench's threads
//! (tokio workers, the subscriber, librdkafka's) outlive each run.
//! schedstat's third field, how many times a thread was put on a CPU, is
//! counted too for the bench process: thread runs per message show how
//! often a side's work crossed threads (a wake-up each).

use std::time::Duration;

pub use crate::bench_common::process_cpu;

/// The processes watched: the bench process itself and the brokers named on
/// the command line (`--pid NAME=PID`).
#[derive(Clone, Debug, Default)]
pub struct Watched(pub Vec<(String, String)>);

impl Watched {
    fn with_self(mut self) -> Watched {
        self.0.insert(0, ("bench process".into(), "self".into()));
        self
    }

    fn sample(&self) -> Vec<Duration> {
        self.0.iter().map(|(_, pid)| process_cpu(pid)).collect()
    }
}

static WATCHED: std::sync::OnceLock<Watched> = std::sync::OnceLock::new();

/// Sets the processes every sample reads (the bench process first).
pub fn watch(brokers: Watched) {
    let _ = WATCHED.set(brokers.with_self());
}

/// Names of the watched processes, in the order of a sample's figures.
pub fn names() -> Vec<String> {
    WATCHED
        .get()
        .map(|w| w.0.iter().map(|(name, _)| name.clone()).collect())
        .unwrap_or_default()
}

/// CPU time of each watched process, and the bench process's thread runs.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub cpu: Vec<Duration>,
    /// Times a thread of the bench process was put on a CPU.
    pub runs: u64,
}

/// Each watched process's CPU time and the bench process's thread runs now.
pub fn sample() -> Usage {
    Usage {
        cpu: WATCHED.get().map(Watched::sample).unwrap_or_default(),
        runs: crate::bench_common::schedstat_sum("self", 2),
    }
}

/// What was used between two samples.
pub fn delta(before: &Usage, after: &Usage) -> Usage {
    Usage {
        cpu: before
            .cpu
            .iter()
            .zip(&after.cpu)
            .map(|(b, a)| a.saturating_sub(*b))
            .collect(),
        runs: after.runs.saturating_sub(before.runs),
    }
}

/// What the watched processes used from `start` to `stop`.
pub struct Meter(Usage);

impl Meter {
    pub fn start() -> Meter {
        Meter(sample())
    }

    pub fn stop(&self) -> Usage {
        delta(&self.0, &sample())
    }
}
