//! Device status ordering: the platform pushes online/offline messages in no
//! particular order, so a route with `order_by: time` remembers, per device,
//! the newest status time it let through and drops anything older.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::envelope::Envelope;

/// The newest status time seen per `productKey/deviceName`.
#[derive(Default)]
pub struct StatusOrder {
    newest: Mutex<HashMap<String, String>>,
}

impl StatusOrder {
    /// True when the message may go on: it is not older than the newest status
    /// already let through for its device (which it then becomes). Messages
    /// without a device or a time are let through.
    ///
    /// The time is the body's `utcTime` (ISO 8601) or else `time`
    /// (`yyyy-MM-dd HH:mm:ss.SSS`); both are fixed-width, so text order is time order.
    pub fn admit(&self, envelope: &Envelope) -> bool {
        let Some((pk, dn)) = envelope.device() else {
            return true;
        };
        let Some(time) = status_time(envelope) else {
            return true;
        };
        let key = format!("{pk}/{dn}");
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        match newest.get(&key) {
            Some(seen) if time.as_str() < seen.as_str() => false,
            _ => {
                newest.insert(key, time);
                true
            }
        }
    }
}

fn status_time(envelope: &Envelope) -> Option<String> {
    let body = envelope.json()?;
    body.get("utcTime")
        .or_else(|| body.get("time"))
        .and_then(|t| t.as_str())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(dn: &str, utc: &str) -> Envelope {
        Envelope::new(
            bytes::Bytes::from(format!(r#"{{"status":"online","utcTime":"{utc}"}}"#)),
            vec![(
                "topic".into(),
                format!("/pk/{dn}").replace("/pk/", "/as/mqtt/status/pk/"),
            )],
        )
    }

    #[test]
    fn older_status_of_the_same_device_is_dropped() {
        let order = StatusOrder::default();
        assert!(order.admit(&status("d1", "2026-01-01T00:00:02.000Z")));
        assert!(!order.admit(&status("d1", "2026-01-01T00:00:01.000Z")));
        assert!(
            order.admit(&status("d1", "2026-01-01T00:00:02.000Z")),
            "a redelivery of the newest passes"
        );
        assert!(
            order.admit(&status("d2", "2026-01-01T00:00:01.000Z")),
            "other devices are independent"
        );
        assert!(order.admit(&status("d1", "2026-01-01T00:00:03.000Z")));
    }
}
