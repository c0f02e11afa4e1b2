//! The pipeline's requests whose body keyward reads whole before sending: the ChatGPT backend's
//! create (adapted to its rules; a response assembled for a client that asked for no stream),
//! its compaction, and its model list (answered in the OpenAI shape). Boxed where the pipeline
//! calls them, so that their futures do not make every request's larger.

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Response, Uri};

use crate::proxy::assemble::{assemble, read_answer};
use crate::proxy::backend::models_answer;
use crate::proxy::context::Context;
use crate::proxy::decode;
use crate::proxy::error::{ProxyError, json_response};
use crate::proxy::pipeline::{ClientBody, Outgoing, Pipeline, Reply, finish_dump, relay};

impl Pipeline<'_> {
    /// The body read whole and sent as it came (the backend's compaction).
    pub(super) async fn whole(
        &self,
        parts: http::request::Parts,
        body: ClientBody,
        uri: Uri,
        ctx: &mut Context,
    ) -> Result<Reply, ProxyError> {
        let body = body
            .whole(&parts.headers, self.forwarder.limits().max_body, ctx)
            .await?;
        let dump = self.dump_whole(&parts, &body);
        let response = self
            .send(&parts, uri, Outgoing::Whole(body), ctx, |headers| {
                headers.remove(CONTENT_LENGTH);
            })
            .await?;
        Ok(relay(response, dump, false))
    }

    /// The backend's model list (or one model of it), answered in the OpenAI shape.
    pub(super) async fn models(
        &self,
        mut parts: http::request::Parts,
        uri: Uri,
        id: Option<String>,
        ctx: &mut Context,
    ) -> Result<Reply, ProxyError> {
        parts.method = Method::GET;
        let response = self
            .send(&parts, uri, Outgoing::Whole(Bytes::new()), ctx, |headers| {
                headers.remove(CONTENT_LENGTH);
                headers.remove(CONTENT_TYPE);
                headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
            })
            .await?;
        let status = response.status();
        let body = read_answer(response.into_body(), self.forwarder.limits()).await?;
        let (status, json) = models_answer(status, &body, id.as_deref());
        Ok(Reply::Local(Box::new(json_response(status, &json))))
    }

    /// The ChatGPT backend's create: the body read plain, adapted to its rules, a stream always
    /// asked for; a client that asked for none gets the response assembled from it.
    pub(super) async fn adapted(
        &self,
        parts: http::request::Parts,
        body: ClientBody,
        uri: Uri,
        ctx: &mut Context,
    ) -> Result<Reply, ProxyError> {
        let limit = self.forwarder.limits().max_body;
        let body = body.whole(&parts.headers, limit, ctx).await?;
        let encoded_len = body.len();
        let body = decode::decode(&parts.headers, body, limit)?;
        if body.len() != encoded_len {
            let plain = body.len() as u64;
            ctx.plain_size(Box::new(move || Some(plain)));
        }
        let (payload, wants_stream) = self.credential.adapt(&body)?;
        // The dump shows the request as the upstream receives it.
        let exchange = self.dump_whole(&parts, &payload);
        let response = self
            .send(&parts, uri, Outgoing::Whole(payload), ctx, |headers| {
                headers.remove(CONTENT_LENGTH);
                headers.remove(CONTENT_ENCODING);
                headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            })
            .await?;
        if wants_stream || !response.status().is_success() {
            return Ok(relay(response, exchange, true));
        }
        let idle = self.forwarder.limits().idle_timeout;
        let (status, json) = assemble(response.into_body(), idle).await?;
        if status.is_success() {
            ctx.saw_response(&json);
        }
        if let Some(id) = exchange {
            let (parts, ()) = Response::builder()
                .status(status)
                .header(CONTENT_TYPE, "application/json")
                .body(())
                .unwrap_or_default()
                .into_parts();
            finish_dump(
                self.forwarder.open_response_dump(id, &parts),
                json.to_string().as_bytes(),
            );
        }
        Ok(Reply::Local(Box::new(json_response(status, &json))))
    }
}
