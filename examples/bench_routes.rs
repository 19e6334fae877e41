//! Route matching cost: one message against 1 000 compiled routes, side by side
//! with a 1-route table as the baseline, in one run.
//!
//!   cargo run --release --example bench_routes
//!
//! Prints nanoseconds per message for both tables and their ratio.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use amqp_bridge::config::Config;
use amqp_bridge::envelope::Envelope;
use amqp_bridge::route::Router;

fn router(routes: usize) -> Router {
    let mut text = String::from(
        "source: { kind: aliyun, url: 'amqps://h:5671', access_key_id: a, access_key_secret: b, \
         consumer_group_id: c, client_id: d }\nsinks:\n  s: { kind: stdout }\nroutes:\n",
    );
    // Realistic shapes: per-product property routes, event routes, a status
    // route with a property predicate; the catch-all last.
    for i in 0..routes.saturating_sub(1) {
        let filter = match i % 3 {
            0 => format!("/a1Prod{i:05}/+/thing/event/property/post"),
            1 => format!("/a1Prod{i:05}/+/thing/event/+/post"),
            _ => "/as/mqtt/status/#".to_string(),
        };
        let extra = if i % 3 == 2 {
            format!(", properties: {{ tenant: t{i} }}")
        } else {
            String::new()
        };
        text.push_str(&format!(
            "  - {{ name: r{i}, match: {{ topic: '{filter}'{extra} }}, to: [ {{ sink: s }} ] }}\n"
        ));
    }
    text.push_str("  - { name: all, match: { topic: '#' }, to: [ { sink: s } ] }\n");
    let config = Config::parse(&text, Path::new("bench.yaml"), |_| None).expect("bench config");
    let index = HashMap::from([("s".to_string(), 0)]);
    Router::new(
        &config.routes,
        &config.unrouted,
        &index,
        &config.sinks.kinds(),
    )
    .expect("routes compile")
}

fn per_message_ns(router: &Router, messages: &[Envelope], rounds: usize) -> f64 {
    let start = Instant::now();
    let mut matched = 0usize;
    for _ in 0..rounds {
        for m in messages {
            matched += black_box(router.matching(black_box(m))).len();
        }
    }
    black_box(matched);
    start.elapsed().as_nanos() as f64 / (rounds * messages.len()) as f64
}

fn main() {
    let messages: Vec<Envelope> = (0..1_000)
        .map(|i| {
            Envelope::new(
                bytes::Bytes::from_static(b"{}"),
                vec![
                    (
                        "topic".into(),
                        if i % 5 == 0 {
                            format!("/as/mqtt/status/a1Prod{:05}/dev{i}", i % 700)
                        } else {
                            format!("/a1Prod{:05}/dev{i}/thing/event/property/post", i % 700)
                        },
                    ),
                    ("messageId".into(), format!("{i}")),
                    ("tenant".into(), "t5".into()),
                ],
            )
        })
        .collect();
    let one = router(1);
    let thousand = router(1_000);
    // Warm up, then measure both in the same run.
    per_message_ns(&one, &messages, 20);
    per_message_ns(&thousand, &messages, 2);
    let base = per_message_ns(&one, &messages, 200);
    let big = per_message_ns(&thousand, &messages, 20);
    println!("1 route:      {base:>10.0} ns/message");
    println!(
        "1000 routes:  {big:>10.0} ns/message ({:.0}x the 1-route table)",
        big / base
    );
}
