//! A real MQTT subscriber (rumqttc) that counts what arrived, per topic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;

/// Counts publishes per topic; survives broker restarts (persistent session).
pub struct Subscriber {
    counts: Arc<Mutex<HashMap<String, u32>>>,
    total: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Subscribes to `filter` at QoS 1 and returns once the broker confirmed it.
    pub async fn start(port: u16, client_id: &str, filter: &str) -> Subscriber {
        Subscriber::start_as(port, client_id, filter, None).await
    }

    /// Like `start`, logging in with a username and password.
    pub async fn start_as(
        port: u16,
        client_id: &str,
        filter: &str,
        login: Option<(&str, &str)>,
    ) -> Subscriber {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(32 << 20, 32 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let (total_tx, total) = watch::channel(0u64);
        let (subscribed_tx, mut subscribed) = watch::channel(false);
        let task_counts = counts.clone();
        let filter = filter.to_string();
        let task = tokio::spawn(async move {
            let mut first = true;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        // A broker that lost our session (killed before saving)
                        // no longer knows the subscription.
                        if !first && !ack.session_present {
                            let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                        }
                        first = false;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subscribed_tx.send_replace(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        *task_counts
                            .lock()
                            .unwrap()
                            .entry(p.topic.clone())
                            .or_insert(0) += 1;
                        total_tx.send_modify(|t| *t += 1);
                    }
                    Ok(_) => {}
                    // The broker is away (a test stopped it): try again shortly.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed.wait_for(|s| *s))
            .await
            .expect("SUBACK within 10 s")
            .unwrap();
        Subscriber {
            counts,
            total,
            task,
        }
    }

    /// Waits until `n` publishes in total arrived.
    pub async fn wait_for_total(&self, n: u64, secs: u64) {
        let mut total = self.total.clone();
        let reached =
            tokio::time::timeout(Duration::from_secs(secs), total.wait_for(|t| *t >= n)).await;
        assert!(
            reached.is_ok(),
            "only {} of {n} publishes arrived in {secs}s",
            *self.total.borrow()
        );
    }

    /// The running total, to wait on.
    pub fn total(&self) -> watch::Receiver<u64> {
        self.total.clone()
    }

    /// Publishes received so far, per topic.
    pub fn counts(&self) -> HashMap<String, u32> {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
