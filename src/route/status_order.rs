//! Device status ordering: the platform pushes online/offline messages in no
//! particular order, so a route with `order_by: time` drops a status older
//! than one already *delivered* for the same device.
//!
//! The rule, exactly: per device, one status is in flight at a time (the next
//! waits for its outcome); a status is dropped (and accepted) only when a
//! newer one of that device was confirmed by every `order_by` target. A
//! status that was dead-lettered or released records nothing, so an older one
//! that arrived meanwhile is forwarded instead of silently dropped. Devices
//! are remembered in a bounded LRU (`hashlink`, already in the build) and
//! forgotten after `idle` without a status.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hashlink::LruCache;
use tokio::sync::watch;

use crate::envelope::Envelope;

/// How many devices are remembered (about 150 bytes each).
pub const DEFAULT_CAPACITY: usize = 200_000;
/// A device quiet this long is forgotten (the platform keeps messages a day).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(24 * 3600);

/// The newest delivered status time per `productKey/deviceName`, and the
/// status of each device in flight now.
pub struct StatusOrder {
    devices: Mutex<LruCache<String, Device>>,
    idle: Duration,
    /// Numbers tickets, so a ticket clears only its own busy mark (a busy
    /// device evicted and seen again gets a new entry and a new ticket).
    tickets: std::sync::atomic::AtomicU64,
}

struct Device {
    /// The newest status time confirmed by every target.
    delivered: Option<String>,
    /// Turns true when the status in flight for this device has its outcome.
    busy: Option<watch::Receiver<bool>>,
    /// The ticket that set `busy`.
    busy_ticket: u64,
    touched: Instant,
}

/// What to do with a message on an `order_by: time` route.
pub enum Admission {
    /// Not a status with a device and a time: forward as usual.
    Unordered,
    /// Older than a status already delivered: drop (and accept).
    Stale,
    /// Another status of the device is in flight: wait for it, then ask again.
    Wait(watch::Receiver<bool>),
    /// Forward it, then report how it went with [`StatusTicket::finish`].
    Go(StatusTicket),
}

/// The right to forward one device's status; dropping it unfinished counts
/// as "not delivered".
pub struct StatusTicket {
    order: Arc<StatusOrder>,
    key: String,
    time: String,
    id: u64,
    done: Option<watch::Sender<bool>>,
}

impl Default for StatusOrder {
    fn default() -> Self {
        StatusOrder::new(DEFAULT_CAPACITY, DEFAULT_IDLE)
    }
}

impl StatusOrder {
    /// Remembers at most `capacity` devices, each until `idle` without a status.
    pub fn new(capacity: usize, idle: Duration) -> Self {
        StatusOrder {
            devices: Mutex::new(LruCache::new(capacity.max(1))),
            idle,
            tickets: Default::default(),
        }
    }

    /// Decides for one message. The time is the body's `utcTime` (ISO 8601)
    /// or else `time` (`yyyy-MM-dd HH:mm:ss.SSS`); both are fixed-width, so
    /// text order is time order.
    pub fn admit(self: &Arc<Self>, envelope: &Envelope) -> Admission {
        let (Some((pk, dn)), Some(time)) = (envelope.device(), status_time(envelope)) else {
            return Admission::Unordered;
        };
        let key = format!("{pk}/{dn}");
        let now = Instant::now();
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let idle = self.idle;
        let known = devices.get(&key).is_some_and(|d| {
            d.busy.as_ref().is_some_and(|b| !*b.borrow()) || now.duration_since(d.touched) < idle
        });
        if !known {
            devices.insert(
                key.clone(),
                Device {
                    delivered: None,
                    busy: None,
                    busy_ticket: 0,
                    touched: now,
                },
            );
        }
        let Some(device) = devices.get_mut(&key) else {
            return Admission::Unordered;
        };
        device.touched = now;
        if let Some(busy) = device.busy.as_ref().filter(|b| !*b.borrow()) {
            return Admission::Wait(busy.clone());
        }
        if device
            .delivered
            .as_deref()
            .is_some_and(|delivered| time.as_str() < delivered)
        {
            return Admission::Stale;
        }
        let (done, busy) = watch::channel(false);
        let id = self
            .tickets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        device.busy = Some(busy);
        device.busy_ticket = id;
        Admission::Go(StatusTicket {
            order: Arc::clone(self),
            key,
            time,
            id,
            done: Some(done),
        })
    }

    /// Devices remembered now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.devices.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl StatusTicket {
    /// Reports the outcome: `delivered` when every `order_by` target confirmed
    /// the status (a dead letter is not a delivery).
    pub fn finish(mut self, delivered: bool) {
        self.end(delivered);
    }

    fn end(&mut self, delivered: bool) {
        let Some(done) = self.done.take() else {
            return;
        };
        let mut devices = self.order.devices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(device) = devices.get_mut(&self.key) {
            if delivered && device.delivered.as_deref() < Some(self.time.as_str()) {
                device.delivered = Some(std::mem::take(&mut self.time));
            }
            if device.busy_ticket == self.id {
                device.busy = None;
            }
        }
        drop(devices);
        done.send_replace(true);
    }
}

impl Drop for StatusTicket {
    fn drop(&mut self) {
        self.end(false);
    }
}

/// The status time, only in one of the platform's fixed-width formats
/// (`2026-11-22T00:00:03.000Z`, `2026-11-22 08:00:03.000`): anything else
/// would compare wrongly as text, and a garbage time recorded as delivered
/// would hide every real status of the device.
fn status_time(envelope: &Envelope) -> Option<String> {
    let body = envelope.json()?;
    let time = body
        .get("utcTime")
        .or_else(|| body.get("time"))
        .and_then(|t| t.as_str())?;
    let shape = time
        .bytes()
        .map(|b| if b.is_ascii_digit() { b'9' } else { b })
        .collect::<Vec<u8>>();
    matches!(
        shape.as_slice(),
        b"9999-99-99T99:99:99.999Z" | b"9999-99-99 99:99:99.999"
    )
    .then(|| time.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(dn: &str, utc: &str) -> Envelope {
        Envelope::new(
            bytes::Bytes::from(format!(r#"{{"status":"online","utcTime":"{utc}"}}"#)),
            vec![("topic".into(), format!("/as/mqtt/status/pk/{dn}"))],
        )
    }

    fn go(order: &Arc<StatusOrder>, e: &Envelope) -> StatusTicket {
        match order.admit(e) {
            Admission::Go(ticket) => ticket,
            _ => panic!("expected Go"),
        }
    }

    #[test]
    fn a_status_older_than_a_delivered_one_is_stale() {
        let order = Arc::new(StatusOrder::default());
        go(&order, &status("d1", "2026-01-01T00:00:02.000Z")).finish(true);
        assert!(matches!(
            order.admit(&status("d1", "2026-01-01T00:00:01.000Z")),
            Admission::Stale
        ));
        // Another device is independent; the same time again is not older.
        go(&order, &status("d2", "2026-01-01T00:00:01.000Z")).finish(true);
        go(&order, &status("d1", "2026-01-01T00:00:02.000Z")).finish(true);
    }

    #[test]
    fn an_undelivered_newer_status_does_not_hide_an_older_one() {
        let order = Arc::new(StatusOrder::default());
        let newer = go(&order, &status("d1", "2026-01-01T00:00:02.000Z"));
        // While it is in flight the older one waits ...
        let Admission::Wait(mut ended) = order.admit(&status("d1", "2026-01-01T00:00:01.000Z"))
        else {
            panic!("expected Wait");
        };
        // ... and the newer one is dead-lettered, not delivered.
        newer.finish(false);
        assert!(*ended.borrow_and_update());
        go(&order, &status("d1", "2026-01-01T00:00:01.000Z")).finish(true);
    }

    #[test]
    fn a_dropped_ticket_counts_as_not_delivered() {
        let order = Arc::new(StatusOrder::default());
        drop(go(&order, &status("d1", "2026-01-01T00:00:02.000Z")));
        go(&order, &status("d1", "2026-01-01T00:00:01.000Z")).finish(true);
    }

    #[test]
    fn a_malformed_time_is_not_ordered() {
        let order = Arc::new(StatusOrder::default());
        let garbage = Envelope::new(
            bytes::Bytes::from_static(br#"{"utcTime":"9999-garbage"}"#),
            vec![("topic".into(), "/as/mqtt/status/pk/d1".into())],
        );
        assert!(matches!(order.admit(&garbage), Admission::Unordered));
    }

    #[test]
    fn messages_without_device_or_time_are_unordered() {
        let order = Arc::new(StatusOrder::default());
        let no_time = Envelope::new(
            bytes::Bytes::from_static(b"{}"),
            vec![("topic".into(), "/as/mqtt/status/pk/d1".into())],
        );
        assert!(matches!(order.admit(&no_time), Admission::Unordered));
    }

    #[test]
    fn memory_is_bounded_by_capacity_and_idle_devices_are_forgotten() {
        let order = Arc::new(StatusOrder::new(1_000, Duration::from_secs(3600)));
        for i in 0..50_000 {
            go(
                &order,
                &status(&format!("d{i}"), "2026-01-01T00:00:02.000Z"),
            )
            .finish(true);
        }
        assert_eq!(order.len(), 1_000);
        // The most recent devices are still known.
        assert!(matches!(
            order.admit(&status("d49999", "2026-01-01T00:00:01.000Z")),
            Admission::Stale
        ));
        // With no idle allowance, a known device is treated as new.
        let forgetful = Arc::new(StatusOrder::new(10, Duration::ZERO));
        go(&forgetful, &status("d1", "2026-01-01T00:00:02.000Z")).finish(true);
        go(&forgetful, &status("d1", "2026-01-01T00:00:01.000Z")).finish(true);
    }
}
