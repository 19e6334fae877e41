//! What the router decides for one message, complete before anything is
//! sent: every copy with its rendered destination, which copies wait for
//! status ordering, or what the unrouted policy says. The pipeline only
//! sends, retries, dead-letters and settles what a plan holds.

use crate::route::TemplateError;
use crate::sink::Destination;

/// One copy to send.
#[derive(Debug)]
pub struct PlannedCopy<'r> {
    /// The route that asked for it (`unrouted` for the unrouted sink): the
    /// dead-letter topic and the logs name it.
    pub route: &'r str,
    /// Index into the plan's sinks.
    pub sink: usize,
    /// Where it goes; an error when the message cannot fill a template, so
    /// the copy fails for good.
    pub destination: Result<Destination, TemplateError>,
    /// From an `order_by: time` route: sent only if the message is not older
    /// than a status already delivered for its device.
    pub ordered: bool,
}

/// The fate of one message as the routing table decides it.
#[derive(Debug)]
pub enum MessagePlan<'r> {
    /// No route matched: accepted without forwarding.
    Accept,
    /// No route matched: released, so the source redelivers.
    Release,
    /// No route matched: forwarded as is to the unrouted sink.
    Unrouted(PlannedCopy<'r>),
    /// One or more routes matched.
    Routed {
        /// Indexes of the matching routes (their `route_matched` metrics).
        routes: Vec<usize>,
        /// Every copy of every matching route, in table order.
        copies: Vec<PlannedCopy<'r>>,
    },
}

impl MessagePlan<'_> {
    /// True when some copy waits for the device's status order.
    pub fn is_status_ordered(&self) -> bool {
        match self {
            MessagePlan::Routed { copies, .. } => copies.iter().any(|copy| copy.ordered),
            _ => false,
        }
    }
}
