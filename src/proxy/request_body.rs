//! The client's request body on its way up: size-limited, counted, dumped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::proxy::decode::Kept;
use crate::proxy::dump::DumpSink;
use crate::proxy::previous::PreviousCheck;
use crate::upstream::BoxError;

#[derive(Debug, thiserror::Error)]
#[error("request body is larger than {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// What went wrong with the client's body, noted by the body before its error reaches the
/// upstream connection, so the failed send is blamed on the right side.
#[derive(Debug, Default)]
pub struct BodyFault(AtomicU8, parking_lot::Mutex<Option<String>>);

impl BodyFault {
    const TOO_LARGE: u8 = 1;
    const CLIENT: u8 = 2;
    const FOREIGN: u8 = 3;

    /// The body names a previous response its client did not create: this one.
    pub fn foreign_previous(&self) -> Option<String> {
        if self.0.load(Ordering::Relaxed) != Self::FOREIGN {
            return None;
        }
        self.1.lock().clone()
    }

    fn set(&self, fault: u8) {
        self.0.store(fault, Ordering::Relaxed);
    }

    /// The body grew past `--max-body`.
    pub fn too_large(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::TOO_LARGE
    }

    /// The client's body could not be read: a malformed chunk, or a hang-up mid-body.
    pub fn client_failed(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::CLIENT
    }
}

pin_project! {
    /// The client's request body, streamed upstream as it arrives.
    pub struct RequestBody {
        #[pin]
        inner: Incoming,
        limit: u64,
        seen: u64,
        fault: Arc<BodyFault>,
        bytes_in: Arc<AtomicU64>,
        dump: Option<DumpSink>,
        kept: Option<Kept>,
        previous: Option<PreviousCheck>,
    }
}

impl RequestBody {
    pub fn new(
        inner: Incoming,
        limit: u64,
        fault: Arc<BodyFault>,
        bytes_in: Arc<AtomicU64>,
        dump: Option<DumpSink>,
        kept: Option<Kept>,
        previous: Option<PreviousCheck>,
    ) -> Self {
        Self {
            inner,
            limit,
            seen: 0,
            fault,
            bytes_in,
            dump,
            kept,
            previous,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match ready!(this.inner.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *this.seen += data.len() as u64;
                    if *this.seen > *this.limit {
                        this.fault.set(BodyFault::TOO_LARGE);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*this.limit)))));
                    }
                    this.bytes_in
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    if let Some(previous) = this.previous.as_mut()
                        && let Err(id) = previous.feed(data)
                    {
                        *this.fault.1.lock() = Some(id);
                        this.fault.set(BodyFault::FOREIGN);
                        return Poll::Ready(Some(Err("a foreign previous_response_id".into())));
                    }
                    if let Some(kept) = this.kept.as_ref() {
                        kept.keep(data);
                    }
                    if let Some(dump) = this.dump.as_mut() {
                        dump.append(data);
                        // A sized body is not polled again once its last byte is in.
                        if this.inner.is_end_stream() {
                            dump.set_end("completed");
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => {
                // The client's own failure (a bad chunk, a hang-up mid-body), not the upstream's.
                this.fault.set(BodyFault::CLIENT);
                Poll::Ready(Some(Err(Box::new(err))))
            }

            None => {
                if let Some(dump) = this.dump.as_mut() {
                    dump.set_end("completed");
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
