//! The null-sink row: what the bridge costs without any broker. Baseline:
//! the emulator into a bare fe2o3 receiver that accepts on arrival. Bridge:
//! the emulator into the whole bridge (signed login, credit tied to in-flight
//! slots, routing, pipeline, settlement) with one route to `kind: blackhole`.
//! Both end when the emulator saw all N accepted.

use std::path::Path;

use amqp_bridge::config::Config;

use crate::bench_common::{bare_receiver, emulator, source_yaml, write_ca};
use crate::{bridge_until_accepted, cpu, limit, measure_sides, Row, Run, Shortfalls, Side};

pub async fn baseline(n: u64, dir: &Path) -> Run {
    let mut samples = Vec::new();
    let done = bare_receiver(n, dir, limit(n), || samples.push(cpu::sample())).await;
    let usage = match samples.as_slice() {
        [before, after] => cpu::delta(before, after),
        _ => cpu::Usage::default(),
    };
    match done {
        Some(elapsed) => Run {
            delivered: n,
            elapsed,
            cpu: usage.cpu,
            runs: usage.runs,
        },
        None => Run {
            delivered: 0,
            elapsed: limit(n),
            cpu: usage.cpu,
            runs: usage.runs,
        },
    }
}

pub async fn bridge(n: u64, dir: &Path) -> Run {
    let emulator = emulator(n, 0).await;
    let ca = write_ca(&emulator, dir);
    let text = format!(
        "{source}sinks:\n  null: {{ kind: blackhole }}\n\
         routes:\n  - {{ match: {{ topic: '#' }}, to: [ {{ sink: null }} ] }}\n",
        source = source_yaml(&emulator, &ca, "bench-null"),
    );
    let config = Config::parse(&text, Path::new("bench.yaml"), |_| None).expect("bench config");
    let (elapsed, usage, stats) = bridge_until_accepted(&config, emulator, n).await;
    Run {
        delivered: stats.accepted,
        elapsed,
        cpu: usage.cpu,
        runs: usage.runs,
    }
}

/// Warm-up of N/10 on both sides, then N each.
pub async fn row(n: u64, dir: &Path, short: &mut Shortfalls) -> Row {
    let sides: [(&str, Side); 2] = [
        ("baseline", Box::new(move |n, _| Box::pin(baseline(n, dir)))),
        ("bridge", Box::new(move |n, _| Box::pin(bridge(n, dir)))),
    ];
    let [baseline, bridge] = measure_sides("null sink", n, &sides, short)
        .await
        .try_into()
        .unwrap_or_else(|_| unreachable!("two sides, two runs"));
    Row {
        name: "null sink (baseline: bare fe2o3 receiver)".into(),
        n,
        baseline,
        forwarder: None,
        bridge,
    }
}
