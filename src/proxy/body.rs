//! The upstream's response on its way down (relayed frame by frame, watched for silence,
//! counted), the body types keyward answers with, and what goes up ([`OutgoingBody`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::proxy::context::Context as RequestContext;
use crate::proxy::dump::DumpSink;
use crate::proxy::request_body::RequestBody;
use crate::telemetry::record::End;
use crate::upstream::BoxError;

#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?}")]
pub struct IdleTimeout(pub Duration);

/// What goes upstream: the client's body as it arrives (`Left`), or one keyward built (`Right`:
/// the request adapted for the ChatGPT backend).
pub type OutgoingBody = Either<RequestBody, Full<Bytes>>;

/// A worker's upstream connections, carrying keyward's request bodies.
pub type UpstreamPool = crate::upstream::Pool<OutgoingBody>;

/// A response body from the upstream, on a connection carrying keyward's request bodies.
pub type UpstreamBody = crate::upstream::UpstreamBody<OutgoingBody>;

pin_project! {
    /// The upstream's response body, relayed to the client as it arrives.
    ///
    /// A stream that stays silent past the idle limit, or that breaks, ends with an SSE `error`
    /// event when the response is an event stream (an abort otherwise), never with a clean end
    /// that would look like success.
    #[project = RelayBodyProj]
    pub struct RelayBody {
        #[pin]
        inner: UpstreamBody,
        #[pin]
        idle: Sleep,
        idle_limit: Duration,
        last_frame: Instant,
        sse: bool,
        // The last two bytes relayed, to tell whether the stream stopped between two events.
        tail: [u8; 2],
        done: bool,
        // A frame to send after the data gathered before it: trailers, or the stream's cut.
        held: Option<Result<Frame<Bytes>, BoxError>>,
        // The request's context: the relay phase ends in its account phase.
        ctx: RequestContext,
        dump: Option<DumpSink>,
    }
}

/// At most this much already-received data is gathered into one frame.
const GATHER_LIMIT: usize = 64 * 1024;

/// Data frames gathered into one: the first kept as it is, copied only when a second comes.
#[derive(Default)]
enum Gathered {
    #[default]
    Nothing,
    One(Bytes),
    Many(BytesMut),
}

impl Gathered {
    fn push(&mut self, data: Bytes) {
        *self = match std::mem::take(self) {
            Gathered::Nothing => Gathered::One(data),
            Gathered::One(first) => {
                let mut many = BytesMut::with_capacity((first.len() + data.len()).max(4096));
                many.extend_from_slice(&first);
                many.extend_from_slice(&data);
                Gathered::Many(many)
            }
            Gathered::Many(mut many) => {
                many.extend_from_slice(&data);
                Gathered::Many(many)
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Gathered::Nothing => 0,
            Gathered::One(data) => data.len(),
            Gathered::Many(data) => data.len(),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Gathered::Nothing)
    }

    fn into_bytes(self) -> Option<Bytes> {
        match self {
            Gathered::Nothing => None,
            Gathered::One(data) => Some(data),
            Gathered::Many(data) => Some(data.freeze()),
        }
    }
}

impl RelayBody {
    pub fn new(
        inner: UpstreamBody,
        idle_limit: Duration,
        sse: bool,
        ctx: RequestContext,
        dump: Option<DumpSink>,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner,
            idle: tokio::time::sleep_until(now + idle_limit),
            idle_limit,
            last_frame: now,
            sse,
            tail: *b"\n\n",
            done: false,
            held: None,
            ctx,
            dump,
        }
    }
}

/// The upstream finished the body: the request is accounted for.
fn complete(this: &mut RelayBodyProj<'_>) {
    *this.done = true;
    if let Some(dump) = this.dump.as_mut() {
        dump.set_end(End::Completed.as_str());
    }
    this.ctx.finish(End::Completed);
}

/// Ends the stream early: an SSE `error` event for event streams, an abort for anything else.
fn cut(
    this: &mut RelayBodyProj<'_>,
    end: End,
    error: BoxError,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    *this.done = true;
    if let Some(dump) = this.dump.as_mut() {
        dump.set_end(end.as_str());
    }
    tracing::warn!(error = %error, end = end.as_str(), "response stream cut");
    let cut = if *this.sse {
        let mut event = sse_error_event(end.as_str(), &end.client_message(*this.idle_limit));
        if this.tail != b"\n\n" && this.tail != b"\r\n" {
            // The upstream stopped inside an event: close it so the error is an event of its own.
            event = [&b"\n\n"[..], &event].concat().into();
        }
        this.ctx.add_bytes_out(event.len());
        Poll::Ready(Some(Ok(Frame::data(event))))
    } else {
        Poll::Ready(Some(Err(error)))
    };
    this.ctx.finish(end);
    cut
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(held) = this.held.take() {
            return Poll::Ready(Some(held));
        }
        if *this.done {
            return Poll::Ready(None);
        }
        // Everything the upstream has already sent goes out as one frame: events that arrived
        // together cost the client one chunk and one write, not one each. Nothing is waited for.
        let mut gathered = Gathered::default();
        loop {
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) if gathered.is_empty() => {
                            return Poll::Ready(Some(Ok(trailers)));
                        }
                        Err(trailers) => {
                            *this.held = Some(Ok(trailers));
                            break;
                        }
                    };
                    match data.len() {
                        0 => {}
                        1 => *this.tail = [this.tail[1], data[0]],
                        n => *this.tail = [data[n - 2], data[n - 1]],
                    }
                    this.ctx.relayed(&data);
                    if let Some(dump) = this.dump.as_mut() {
                        dump.append(&data);
                    }
                    gathered.push(data);
                    // A sized body is not polled again once its last byte is out.
                    if this.inner.is_end_stream() {
                        complete(&mut this);
                        break;
                    }
                    if gathered.len() >= GATHER_LIMIT {
                        break;
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    let end = cut(&mut this, End::UpstreamError, Box::new(err));
                    if gathered.is_empty() {
                        return end;
                    }
                    // What came before the break goes first.
                    if let Poll::Ready(Some(end)) = end {
                        *this.held = Some(end);
                    }
                    break;
                }
                Poll::Ready(None) => {
                    complete(&mut this);
                    break;
                }
                Poll::Pending if !gathered.is_empty() => break,
                Poll::Pending => {
                    // The timer is moved only when it fires, not on every frame.
                    while this.idle.as_mut().poll(cx).is_ready() {
                        let deadline = *this.last_frame + *this.idle_limit;
                        if Instant::now() >= deadline {
                            let error = Box::new(IdleTimeout(*this.idle_limit));
                            return cut(&mut this, End::IdleTimeout, error);
                        }
                        this.idle.as_mut().reset(deadline);
                    }
                    return Poll::Pending;
                }
            }
        }
        let data = gathered.into_bytes();
        if data.is_some() {
            // Once per frame sent, not per frame received: reading the clock shows in profiles.
            *this.last_frame = Instant::now();
        }
        Poll::Ready(data.map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        // A frame held behind the last data (a cut stream's error event) is still to come.
        self.done && self.held.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.sse {
            // An error event may be added at the end.
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

pin_project! {
    /// What keyward sends to its clients: a relayed upstream body or a small body of its own.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        Full { data: Option<Bytes> },
        Relay { #[pin] body: RelayBody },
    }
}

impl ProxyBody {
    pub fn full(data: Bytes) -> Self {
        ProxyBody::Full { data: Some(data) }
    }

    /// No body (a 101's).
    pub fn empty() -> Self {
        ProxyBody::Full { data: None }
    }

    pub fn relay(body: RelayBody) -> Self {
        ProxyBody::Relay { body }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBodyProj::Relay { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full { data } => data.is_none(),
            ProxyBody::Relay { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ProxyBody::Relay { body } => body.size_hint(),
        }
    }
}

/// The SSE event that ends a stream keyward had to cut, so clients see an error instead of a
/// stream that just stops.
pub fn sse_error_event(code: &str, message: &str) -> Bytes {
    let data = serde_json::json!({
        "type": "error",
        "code": code,
        "message": message,
        "param": null,
        "error": { "type": "keyward_stream_error", "code": code, "message": message, "param": null },
    });
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}
