//! The export queue between finished request spans and the OTLP exporter: bounded, and
//! never waited on. A span that finds it full is dropped and counted
//! (`airlock_telemetry_spans_dropped_total{reason="queue_full"}`), so a slow or dead
//! collector costs a request nothing. One task drains it into batches of at most `batch`
//! spans, sent when full or every `interval`, each export within `timeout`.

use std::sync::Mutex;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The span processor: the sending end of the queue.
#[derive(Debug)]
pub(super) struct Queue {
    /// `None` once shut down (the exporting task then sends what is left and ends).
    tx: Mutex<Option<mpsc::Sender<SpanData>>>,
}

/// How the exporting task batches.
#[derive(Debug, Clone, Copy)]
pub(super) struct Batching {
    pub queue: usize,
    pub batch: usize,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Queue {
    /// The queue and its exporting task (on the current runtime).
    pub(super) fn start<E>(exporter: E, batching: Batching) -> (Queue, JoinHandle<()>)
    where
        E: SpanExporter + 'static,
    {
        let (tx, rx) = mpsc::channel(batching.queue.max(1));
        let task = tokio::spawn(drain(rx, exporter, batching));
        (
            Queue {
                tx: Mutex::new(Some(tx)),
            },
            task,
        )
    }

    fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let sent = match self.tx.lock() {
            Ok(tx) => tx.as_ref().is_some_and(|tx| tx.try_send(span).is_ok()),
            Err(_) => false,
        };
        if !sent {
            crate::metrics::global().telemetry_dropped("queue_full", 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.close();
        Ok(())
    }
}

/// Batches the queue into exports until it is closed and empty.
async fn drain<E: SpanExporter>(mut rx: mpsc::Receiver<SpanData>, exporter: E, b: Batching) {
    let mut tick = tokio::time::interval(b.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf: Vec<SpanData> = Vec::with_capacity(b.batch);
    let mut failing = false;
    loop {
        let mut due = false;
        let mut closed = false;
        let room = b.batch.saturating_sub(buf.len());
        tokio::select! {
            n = rx.recv_many(&mut buf, room), if room > 0 => closed = n == 0,
            _ = tick.tick() => due = true,
        }
        if buf.len() >= b.batch || ((due || closed) && !buf.is_empty()) {
            let spans = std::mem::replace(&mut buf, Vec::with_capacity(b.batch));
            let count = spans.len() as u64;
            let error = match tokio::time::timeout(b.timeout, exporter.export(spans)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {:?}", b.timeout)),
            };
            let metrics = crate::metrics::global();
            match error {
                None => {
                    metrics.telemetry_exported(count);
                    if failing {
                        failing = false;
                        tracing::info!("telemetry: exporting spans again");
                    }
                }
                Some(error) => {
                    metrics.telemetry_dropped("export_failed", count);
                    if !failing {
                        failing = true;
                        tracing::warn!(%error, spans = count, "telemetry: span export failed; spans are dropped until the collector answers (requests are not affected)");
                    }
                }
            }
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
    use tokio::sync::Semaphore;

    use super::{Batching, Queue};

    /// A collector that takes each export only when the test lets it.
    #[derive(Debug, Clone)]
    struct Gated {
        exported: Arc<AtomicUsize>,
        open: Arc<Semaphore>,
    }

    impl SpanExporter for Gated {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if let Ok(permit) = self.open.acquire().await {
                permit.forget();
            }
            self.exported.fetch_add(batch.len(), Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_stuck_collector_drops_spans_and_never_blocks() {
        let exported = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(Semaphore::new(0));
        let exporter = Gated {
            exported: Arc::clone(&exported),
            open: Arc::clone(&open),
        };
        let (queue, task) = Queue::start(
            exporter,
            Batching {
                queue: 4,
                batch: 2,
                interval: Duration::from_millis(10),
                timeout: Duration::from_secs(3600),
            },
        );
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue)
            .build();
        let tracer = provider.tracer("test");
        let started = Instant::now();
        for i in 0..1000 {
            let mut span = tracer.start(format!("request {i}"));
            span.end();
            if i == 0 {
                // Let the task take the first span into an export that hangs.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "ending spans waited for the collector: {:?}",
            started.elapsed()
        );
        // The collector answers again: what was queued goes, the rest was dropped.
        open.add_permits(1000);
        provider.shutdown().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the task ends once the queue is closed and sent")
            .unwrap();
        let sent = exported.load(Ordering::SeqCst);
        assert!(
            (1..=1 + 4 + 2).contains(&sent),
            "one batch in flight, the queue and one batch gathering at most: {sent}"
        );
    }
}
