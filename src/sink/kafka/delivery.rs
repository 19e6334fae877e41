//! Delivery reports, from librdkafka's polling thread back to the sends
//! waiting for them. Each report goes over one channel to one task on the
//! runtime, which resolves the waiting send there: a batch of reports wakes
//! the runtime once, not once per record from a foreign thread (which is
//! what rdkafka's `FutureProducer` does). On a current-thread runtime that
//! more than halved the Kafka path's CPU per message; on two workers the
//! difference was within the noise (BENCHMARKS.md, "The Kafka sink's
//! delivery reports").

use rdkafka::error::KafkaError;
use tokio::sync::{mpsc, oneshot};

/// A record's delivery report: confirmed, or why not.
pub(super) type Outcome = Result<(), KafkaError>;

/// Where a record's report goes (its librdkafka opaque).
pub(super) type Waiter = Box<oneshot::Sender<Outcome>>;

/// The polling thread's end of the channel.
#[derive(Clone)]
pub(super) struct Reports(mpsc::UnboundedSender<(Waiter, Outcome)>);

/// The runtime's end: [`dispatch`] drains it.
pub(super) type Receiver = mpsc::UnboundedReceiver<(Waiter, Outcome)>;

impl Reports {
    pub(super) fn channel() -> (Reports, Receiver) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Reports(sender), receiver)
    }

    /// Hands a report to the dispatcher; with none left (the runtime is
    /// gone) the waiter is resolved here.
    pub(super) fn report(&self, waiter: Waiter, outcome: Outcome) {
        if let Err(mpsc::error::SendError((waiter, outcome))) = self.0.send((waiter, outcome)) {
            let _ = waiter.send(outcome);
        }
    }
}

/// Resolves each report's waiter, until every clone of the sink's context
/// (the sink's own, its producers') and with them the senders are gone.
pub(super) async fn dispatch(mut reports: Receiver) {
    while let Some((waiter, outcome)) = reports.recv().await {
        let _ = waiter.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    #[tokio::test]
    async fn every_report_reaches_its_waiter() {
        let (reports, receiver) = Reports::channel();
        let dispatcher = tokio::spawn(dispatch(receiver));
        let (ok_tx, ok_rx) = oneshot::channel();
        let (failed_tx, failed_rx) = oneshot::channel();
        reports.report(Box::new(ok_tx), Ok(()));
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        reports.report(Box::new(failed_tx), Err(timed_out.clone()));
        assert_eq!(ok_rx.await.unwrap(), Ok(()));
        assert_eq!(failed_rx.await.unwrap(), Err(timed_out));
        drop(reports);
        dispatcher.await.unwrap();
    }

    #[test]
    fn without_a_dispatcher_the_waiter_is_resolved_at_once() {
        let (reports, receiver) = Reports::channel();
        drop(receiver);
        let (tx, mut rx) = oneshot::channel();
        reports.report(Box::new(tx), Ok(()));
        assert_eq!(rx.try_recv().unwrap(), Ok(()));
    }
}
