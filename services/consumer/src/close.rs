//! Dropping handled events and their statements' spans off the consume
//! loop.
//!
//! A span's data is built, its span record written to the log and the span
//! queued for export when it is dropped: most of the consumer's own work per
//! event. Done in the loop, that work waited for each write and the next
//! write waited for it. A handled batch (its offsets stored, its spans
//! ended, so their times are already fixed) goes instead to a thread of its
//! own, at most [`BACKLOG`] batches behind: a loop that outruns the thread
//! waits for it, so memory stays bounded. [`Close::finish`] waits until
//! every batch handed over is dropped, before the spans are flushed at
//! shutdown.

use tokio::sync::{mpsc, oneshot};
use tracing::Span;

use crate::message::Readable;

/// How many handled batches may wait for the thread.
const BACKLOG: usize = 2;

/// A handled batch: its events and its statements' spans.
type Handled = (Vec<Readable>, Vec<Span>);

pub struct Close(
    /// Where batches go, and the thread's word that it dropped the last;
    /// `None` when no thread could be started: batches are dropped in the
    /// loop, as before.
    Option<(mpsc::Sender<Handled>, oneshot::Receiver<()>)>,
);

impl Close {
    pub fn start() -> Self {
        let (batches, mut receiver) = mpsc::channel::<Handled>(BACKLOG);
        let (finished, done) = oneshot::channel();
        // A span closing closes its parent through the thread's default
        // subscriber: the thread takes the loop's (a process's one
        // subscriber, or in tests the service's own).
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let thread = std::thread::Builder::new()
            .name("consumer-close".into())
            .spawn(move || {
                let _default = tracing::dispatcher::set_default(&dispatch);
                while let Some(batch) = receiver.blocking_recv() {
                    drop(batch);
                }
                let _ = finished.send(());
            });
        match thread {
            Ok(_) => Self(Some((batches, done))),
            Err(error) => {
                tracing::warn!(error = %error, "no thread to end spans on; the consume loop ends them itself");
                Self(None)
            }
        }
    }

    /// Hands a handled batch over, once each event's processing time is
    /// recorded; waits while [`BACKLOG`] batches are still to be dropped.
    pub async fn close(&self, mut events: Vec<Readable>, spans: Vec<Span>) {
        for event in &mut events {
            event.consumed.record_processed();
        }
        if let Some((batches, _)) = &self.0 {
            // The thread only stops once the sender is dropped.
            let _ = batches.send((events, spans)).await;
        }
    }

    /// Waits until every batch handed over is dropped.
    pub async fn finish(self) {
        if let Some((batches, done)) = self.0 {
            drop(batches);
            let _ = done.await;
        }
    }
}
