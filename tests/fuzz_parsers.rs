//! Randomised input for the parsers that take user and network input: the
//! config file, destination templates, topic filters and JSON bodies. None
//! may panic; each answers Ok or an error.
//! Seeded, so a failure repeats: `AMQP_BRIDGE_FUZZ_SEED=N`, and
//! `AMQP_BRIDGE_FUZZ_ROUNDS=N` for a longer run.

use std::path::Path;

use amqp_bridge::config::Config;
use amqp_bridge::envelope::Envelope;
use amqp_bridge::route::{Template, TopicFilter};

fn rng() -> fastrand::Rng {
    let seed = std::env::var("AMQP_BRIDGE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00b1_d9e5);
    eprintln!("seed {seed}");
    fastrand::Rng::with_seed(seed)
}

fn rounds(default: usize) -> usize {
    std::env::var("AMQP_BRIDGE_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A string of `len` characters drawn from `alphabet`.
fn draw(rng: &mut fastrand::Rng, alphabet: &[char], len: usize) -> String {
    (0..len)
        .map(|_| alphabet[rng.usize(..alphabet.len())])
        .collect()
}

/// `text` with a few random edits: a byte flipped, a span cut out, a
/// fragment of itself pasted elsewhere, the end cut off.
fn mutate(rng: &mut fastrand::Rng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..rng.usize(1..4) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.usize(..bytes.len());
        match rng.u8(..4) {
            0 => bytes[at] = rng.u8(..),
            1 => {
                let end = (at + rng.usize(..32)).min(bytes.len());
                bytes.drain(at..end);
            }
            2 => {
                let from = rng.usize(..bytes.len());
                let end = (from + rng.usize(..64)).min(bytes.len());
                let piece = bytes[from..end].to_vec();
                bytes.splice(at..at, piece);
            }
            _ => bytes.truncate(at),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn mutated_config_files_parse_or_fail_with_a_position() {
    let example = include_str!("../bridge.yaml.example");
    let mut rng = rng();
    let mut errors = 0;
    for _ in 0..rounds(3_000) {
        let text = mutate(&mut rng, example);
        // Environment references resolve to nothing: the parser must still
        // answer, not panic.
        if Config::parse(&text, Path::new("fuzz.yaml"), |_| None).is_err() {
            errors += 1;
        }
    }
    assert!(
        errors > 0,
        "no mutation was refused: the test does not mutate"
    );
}

#[test]
fn random_templates_parse_and_render_without_panic() {
    let alphabet: Vec<char> = "{}[]./#+ab0123456789-_é\u{0}"
        .chars()
        .chain("topic messageId prop. json. amqp. annotation.".chars())
        .collect();
    let mut rng = rng();
    let envelopes = [
        Envelope::new(
            bytes::Bytes::from_static(b"{\"a\":[1,{\"b\":null}]}"),
            vec![],
        ),
        Envelope::new(
            bytes::Bytes::from_static(b"\xff\xfe"),
            vec![
                ("topic".into(), "/pk/dn/a/b".into()),
                ("messageId".into(), "1".into()),
                ("a".into(), "".into()),
            ],
        ),
    ];
    for _ in 0..rounds(20_000) {
        let len = rng.usize(..24);
        let text = draw(&mut rng, &alphabet, len);
        if let Ok(template) = Template::parse(&text) {
            for envelope in &envelopes {
                let _ = template.render(envelope);
            }
        }
    }
}

#[test]
fn random_topic_filters_match_without_panic() {
    let alphabet: Vec<char> = "/+#a\u{0}é".chars().collect();
    let mut rng = rng();
    for _ in 0..rounds(20_000) {
        let (flen, tlen) = (rng.usize(..12), rng.usize(..12));
        let filter = TopicFilter::new(&draw(&mut rng, &alphabet, flen));
        let _ = filter.matches(&draw(&mut rng, &alphabet, tlen));
    }
}

#[test]
fn random_bodies_read_as_json_without_panic() {
    let alphabet: Vec<char> = "{}[]\":,0123456789.eE-truefalsn \\u".chars().collect();
    let mut rng = rng();
    let field = Template::parse("{json.a.0.b}").expect("a valid template");
    for _ in 0..rounds(20_000) {
        let len = rng.usize(..40);
        let body = draw(&mut rng, &alphabet, len);
        let envelope = Envelope::new(bytes::Bytes::from(body), vec![]);
        let _ = field.render(&envelope);
    }
}
