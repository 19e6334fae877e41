//! The committed fuzz corpus (fuzz/corpus/<target>) replayed through the
//! same entry points the cargo-fuzz targets call, in the test build: every
//! input once found interesting, including past crashes, keeps passing
//! without libFuzzer. Needs cargo feature `fuzzing` (the test script turns
//! every feature on).
#![cfg(feature = "fuzzing")]

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        eprintln!("{}", path.display());
        run(&data);
        inputs += 1;
    }
    assert!(inputs > 0, "{}: empty corpus", dir.display());
}

#[test]
fn config_corpus() {
    replay("config", amqp_bridge::fuzzing::config);
}

#[test]
fn template_corpus() {
    replay("template", amqp_bridge::fuzzing::template);
}

#[test]
fn topic_filters_corpus() {
    replay("topic_filters", amqp_bridge::fuzzing::topic_filters);
}

#[test]
fn platform_login_corpus() {
    replay("platform_login", amqp_bridge::fuzzing::platform_login);
}

#[cfg(feature = "rocketmq")]
#[test]
fn rocketmq_frames_corpus() {
    replay("rocketmq_frames", amqp_bridge::fuzzing::rocketmq_frames);
}

/// Includes `map8-size-zero.bin`, which panics inside serde_amqp 0.18.0
/// wherever overflow checks are on (see Cargo.toml's profile override).
#[test]
fn amqp_message_corpus() {
    replay("amqp_message", amqp_bridge::fuzzing::amqp_message);
}
