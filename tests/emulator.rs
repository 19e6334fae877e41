//! The IoT Platform emulator's rules, each exercised over a real TCP + TLS
//! connection with an fe2o3-amqp client.

mod common;

use std::time::Duration;

use amqp_bridge::source::aliyun::{now_ms, SignMethod};
use amqp_bridge::source::connect::{open, ConnectError};
use common::*;
use fe2o3_amqp::link::delivery::Delivery;
use fe2o3_amqp::types::messaging::{Body, Modified};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::{Receiver, Sender, Session};

type Msg = Delivery<Body<Value>>;

fn prop(delivery: &Msg, name: &str) -> Option<SimpleValue> {
    delivery
        .message()
        .application_properties
        .as_ref()
        .and_then(|p| p.get(name).cloned())
}

fn message_id(delivery: &Msg) -> String {
    match prop(delivery, "messageId") {
        Some(SimpleValue::String(s)) => s,
        other => panic!("messageId missing or not a string: {other:?}"),
    }
}

async fn receiver(session: &mut fe2o3_amqp::session::SessionHandle<()>, name: &str) -> Receiver {
    Receiver::attach(session, name, "subscription")
        .await
        .expect("receiver attaches")
}

#[tokio::test]
async fn good_login_receives_messages_with_the_platform_properties() {
    let emulator = emulator(|c| c.count = 5).await;
    let mut connection = within(10, "open", open(&options(&emulator, "client-a")))
        .await
        .unwrap();
    let mut session = Session::begin(&mut connection).await.unwrap();
    let mut receiver = receiver(&mut session, "r1").await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..5 {
        let delivery: Msg = within(10, "delivery", receiver.recv()).await.unwrap();
        let Some(SimpleValue::String(topic)) = prop(&delivery, "topic") else {
            panic!("topic property missing")
        };
        assert!(topic.starts_with('/'), "{topic}");
        assert!(matches!(prop(&delivery, "generateTime"), Some(SimpleValue::Long(t)) if t > 0));
        match delivery.body() {
            Body::Data(batch) => assert!(!batch.iter().next().unwrap().0.is_empty()),
            other => panic!("body is not binary data: {other:?}"),
        }
        ids.insert(message_id(&delivery));
        receiver.accept(&delivery).await.unwrap();
    }
    assert_eq!(ids.len(), 5);
    within(10, "all accepted", emulator.all_accepted()).await;
    let stats = emulator.stats().snapshot();
    assert_eq!(
        (
            stats.pushed,
            stats.accepted,
            stats.outstanding,
            stats.redelivered
        ),
        (5, 5, 0, 0)
    );
    // fe2o3 reports the answer to its own link close as RemoteClosed; only
    // the connection close is checked.
    let _ = receiver.close().await;
    let _ = session.end().await;
    connection.close().await.unwrap();
}

#[tokio::test]
async fn every_sign_method_and_sts_mode_is_accepted() {
    let emulator = emulator(|_| {}).await;
    for (method, token) in [
        (SignMethod::HmacMd5, None),
        (SignMethod::HmacSha1, None),
        (SignMethod::HmacSha256, None),
        (SignMethod::HmacSha1, Some("sts-token")),
        (SignMethod::HmacSha256, Some("sts-token")),
    ] {
        let opts = options_signed(&emulator, "client-m", SK, method, token, now_ms());
        let mut connection = within(10, "open", open(&opts))
            .await
            .unwrap_or_else(|e| panic!("{method:?} {token:?}: {e}"));
        connection.close().await.unwrap();
    }
    assert_eq!(emulator.stats().snapshot().logins_ok, 5);
}

#[tokio::test]
async fn wrong_secret_is_refused_with_a_reason() {
    let emulator = emulator(|_| {}).await;
    let opts = options_signed(
        &emulator,
        "client-x",
        "wrong",
        SignMethod::HmacSha1,
        None,
        now_ms(),
    );
    match within(10, "refusal", open(&opts)).await {
        Err(ConnectError::LoginRefused { reason, .. }) => {
            assert!(reason.contains("signature"), "{reason}")
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a wrong secret was accepted"),
    }
    let stats = emulator.stats().snapshot();
    assert_eq!((stats.logins_refused, stats.logins_ok), (1, 0));
}

#[tokio::test]
async fn stale_timestamp_is_refused() {
    let emulator = emulator(|c| c.max_skew = Duration::from_secs(60)).await;
    let stale = now_ms() - 10 * 60 * 1000;
    let opts = options_signed(&emulator, "client-s", SK, SignMethod::HmacSha1, None, stale);
    match within(10, "refusal", open(&opts)).await {
        Err(ConnectError::LoginRefused { reason, .. }) => {
            assert!(reason.contains("timestamp"), "{reason}")
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a stale timestamp was accepted"),
    }
    assert_eq!(emulator.stats().snapshot().logins_refused, 1);
}

#[tokio::test]
async fn idle_timeout_outside_the_platform_range_is_refused() {
    let emulator = emulator(|_| {}).await;
    for idle in [
        Some(Duration::from_secs(10)),
        Some(Duration::from_secs(400)),
        None,
    ] {
        let mut opts = options(&emulator, "client-i");
        opts.idle_timeout = idle;
        let mut connection = within(10, "open", open(&opts)).await.unwrap();
        let closed = within(10, "close by server", connection.on_close()).await;
        let text = format!("{closed:?}");
        assert!(
            closed.is_err() && text.contains("idle-time-out"),
            "{idle:?}: {text}"
        );
    }
    assert_eq!(emulator.stats().snapshot().connections_refused, 3);
}

#[tokio::test]
async fn connection_without_a_receiver_in_time_is_closed() {
    let emulator = emulator(|c| c.receiver_deadline = Duration::from_millis(300)).await;
    let mut connection = within(10, "open", open(&options(&emulator, "client-d")))
        .await
        .unwrap();
    let _session = Session::begin(&mut connection).await.unwrap();
    let closed = within(10, "close by server", connection.on_close()).await;
    let text = format!("{closed:?}");
    assert!(
        closed.is_err() && text.contains("no receiver link"),
        "{text}"
    );
    assert_eq!(emulator.stats().snapshot().connections_refused, 1);
}

#[tokio::test]
async fn second_receiver_and_sender_links_are_refused() {
    let emulator = emulator(|c| c.count = 1).await;
    let mut connection = within(10, "open", open(&options(&emulator, "client-l")))
        .await
        .unwrap();
    let mut session = Session::begin(&mut connection).await.unwrap();
    let mut first = receiver(&mut session, "first").await;

    let second = Receiver::attach(&mut session, "second", "subscription").await;
    if let Ok(mut second) = second {
        let refused = within(
            10,
            "detach of the second receiver",
            second.recv::<Body<Value>>(),
        )
        .await;
        assert!(refused.is_err(), "second receiver got a message");
    }
    let sender = Sender::attach(&mut session, "upstream", "anything").await;
    if let Ok(mut sender) = sender {
        let refused = within(10, "detach of the sender", sender.send("hello")).await;
        assert!(refused.is_err(), "sender link could send");
    }
    assert_eq!(emulator.stats().snapshot().links_refused, 2);

    // The first receiver is unaffected.
    let delivery: Msg = within(10, "delivery", first.recv()).await.unwrap();
    first.accept(&delivery).await.unwrap();
    within(10, "all accepted", emulator.all_accepted()).await;
}

#[tokio::test]
async fn released_and_modified_messages_come_back_with_the_same_id() {
    let emulator = emulator(|c| {
        c.count = 1;
        c.redeliver_after = Duration::from_millis(200);
    })
    .await;
    let mut connection = within(10, "open", open(&options(&emulator, "client-r")))
        .await
        .unwrap();
    let mut session = Session::begin(&mut connection).await.unwrap();
    let mut receiver = receiver(&mut session, "r").await;

    let first: Msg = within(10, "first delivery", receiver.recv()).await.unwrap();
    let id = message_id(&first);
    receiver.release(&first).await.unwrap();
    let started = std::time::Instant::now();
    let second: Msg = within(10, "redelivery", receiver.recv()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "redelivered before the delay"
    );
    assert_eq!(message_id(&second), id);
    receiver
        .modify(
            &second,
            Modified {
                delivery_failed: Some(true),
                undeliverable_here: None,
                message_annotations: None,
            },
        )
        .await
        .unwrap();
    let third: Msg = within(10, "second redelivery", receiver.recv())
        .await
        .unwrap();
    assert_eq!(message_id(&third), id);
    receiver.accept(&third).await.unwrap();
    within(10, "all accepted", emulator.all_accepted()).await;
    let stats = emulator.stats().snapshot();
    assert_eq!(
        (
            stats.pushed,
            stats.released,
            stats.modified,
            stats.redelivered,
            stats.accepted,
            stats.outstanding
        ),
        (3, 1, 1, 2, 1, 0)
    );
}

#[tokio::test]
async fn unsettled_messages_are_redelivered_after_a_disconnect() {
    let emulator = emulator(|c| {
        c.count = 3;
        c.redeliver_after = Duration::from_millis(100);
    })
    .await;
    let mut ids = Vec::new();
    {
        let mut connection = within(10, "open", open(&options(&emulator, "client-u")))
            .await
            .unwrap();
        let mut session = Session::begin(&mut connection).await.unwrap();
        let mut receiver = receiver(&mut session, "r").await;
        for _ in 0..3 {
            let d: Msg = within(10, "delivery", receiver.recv()).await.unwrap();
            ids.push(message_id(&d));
        }
        // Leave without settling anything.
        connection.close().await.unwrap();
    }
    let mut connection = within(10, "open", open(&options(&emulator, "client-u")))
        .await
        .unwrap();
    let mut session = Session::begin(&mut connection).await.unwrap();
    let mut receiver = receiver(&mut session, "r").await;
    let mut again = Vec::new();
    for _ in 0..3 {
        let d: Msg = within(10, "redelivery", receiver.recv()).await.unwrap();
        again.push(message_id(&d));
        receiver.accept(&d).await.unwrap();
    }
    ids.sort();
    again.sort();
    assert_eq!(ids, again);
    within(10, "all accepted", emulator.all_accepted()).await;
    let stats = emulator.stats().snapshot();
    assert_eq!(
        (
            stats.unsettled_at_disconnect,
            stats.redelivered,
            stats.outstanding
        ),
        (3, 3, 0)
    );
}

#[tokio::test]
async fn at_most_64_clients_per_consumer_group() {
    let emulator = emulator(|_| {}).await;
    let mut connections = Vec::new();
    for i in 0..64 {
        let mut c = within(
            10,
            "open",
            open(&options(&emulator, &format!("client-{i}"))),
        )
        .await
        .unwrap();
        let session = Session::begin(&mut c).await.unwrap();
        connections.push((c, session));
    }
    let mut extra = within(10, "open", open(&options(&emulator, "client-64")))
        .await
        .unwrap();
    let closed = within(10, "close by server", extra.on_close()).await;
    assert!(format!("{closed:?}").contains("clients"), "{closed:?}");
    // A further connection of a known client is fine.
    let mut again = within(10, "open", open(&options(&emulator, "client-0")))
        .await
        .unwrap();
    let _s = Session::begin(&mut again).await.unwrap();
    assert_eq!(emulator.stats().snapshot().connections_refused, 1);
}
