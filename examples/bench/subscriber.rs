//! The independent counter of the MQTT rows: a rumqttc subscriber at QoS 1
//! on its own thread and current-thread runtime, so the bridge or producer
//! being measured does not schedule it. It records when the N-th message
//! arrived and, when asked, each message's latency from the time stamp in the
//! last level of its topic (ms since the epoch) to its arrival.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{oneshot, watch};

/// A running subscriber; stops (and disconnects) on drop.
pub struct Subscriber {
    count: watch::Receiver<u64>,
    nth: Arc<Mutex<Option<Instant>>>,
    latencies_us: Arc<Mutex<Vec<u64>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Microseconds since the epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Subscriber {
    /// Subscribes to everything under `prefix` on 127.0.0.1:`port` (clean
    /// session, a client id made from the prefix, which each run has its
    /// own of) and returns once the broker confirmed the subscription; `n`
    /// is the arrival whose time [`Subscriber::wait`] returns. With
    /// `latency`, every arrival's latency is kept.
    pub fn start(port: u16, prefix: &str, n: u64, latency: bool) -> Subscriber {
        let client_id = format!("sub-{}", prefix.replace('/', "-"));
        let filter = format!("{prefix}/#");
        let (count_tx, count) = watch::channel(0u64);
        let nth = Arc::new(Mutex::new(None));
        let latencies_us = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<Result<(), String>>();
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20);
        let task_nth = nth.clone();
        let task_latencies = latencies_us.clone();
        let thread = std::thread::Builder::new()
            .name("bench-subscriber".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("subscriber runtime");
                runtime.block_on(async move {
                    let (client, mut eventloop) = AsyncClient::new(options, 100);
                    if let Err(e) = client.subscribe(filter, QoS::AtLeastOnce).await {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                    let mut received = 0u64;
                    let mut subscribed = false;
                    loop {
                        let event = tokio::select! {
                            _ = &mut stopped => break,
                            event = eventloop.poll() => event,
                        };
                        match event {
                            Ok(Event::Incoming(Packet::SubAck(_))) => {
                                subscribed = true;
                                let _ = ready_tx.send(Ok(()));
                            }
                            Ok(Event::Incoming(Packet::Publish(publish))) => {
                                received += 1;
                                if received == n {
                                    *task_nth.lock().expect("nth") = Some(Instant::now());
                                }
                                if latency {
                                    let sent_ms = publish
                                        .topic
                                        .rsplit('/')
                                        .next()
                                        .and_then(|t| t.parse::<u64>().ok());
                                    if let Some(sent_ms) = sent_ms {
                                        let us = now_us().saturating_sub(sent_ms * 1000);
                                        task_latencies.lock().expect("latencies").push(us);
                                    }
                                }
                                count_tx.send_replace(received);
                            }
                            Ok(_) => {}
                            Err(e) if !subscribed => {
                                let _ = ready_tx.send(Err(e.to_string()));
                                return;
                            }
                            Err(e) => {
                                eprintln!("bench: subscriber: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    let _ = client.try_disconnect();
                    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
                });
            })
            .expect("subscriber thread");
        match ready.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("subscriber: {e}"),
            Err(_) => panic!("subscriber: no SUBACK within 10 s"),
        }
        Subscriber {
            count,
            nth,
            latencies_us,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// When the n-th message arrived, waiting up to `limit`; `None` if it
    /// did not.
    pub async fn wait(&self, limit: Duration) -> Option<Instant> {
        let mut count = self.count.clone();
        let target = {
            // The n given at start; `nth` is set exactly when it is reached.
            let nth = self.nth.clone();
            move || nth.lock().expect("nth").is_some()
        };
        let _ = tokio::time::timeout(limit, count.wait_for(|_| target())).await;
        *self.nth.lock().expect("nth")
    }

    /// Messages arrived so far.
    pub fn count(&self) -> u64 {
        *self.count.borrow()
    }

    /// Every latency recorded so far, in µs.
    pub fn latencies_us(&self) -> Vec<u64> {
        self.latencies_us.lock().expect("latencies").clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
