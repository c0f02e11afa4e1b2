//! The turns of one WebSocket: each `response.create` the client sends is a request, checked
//! against the client's quotas and the credential's, logged, and charged in the ledger when the upstream's final
//! event (`response.completed`, `.incomplete`, `.failed`) or an `error` ends it. A socket that
//! ends mid-turn is charged an estimate, as a cut stream is.

use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;

use crate::proxy::RESPONSES_PATH;
use crate::proxy::context::Context;
use std::sync::Arc;

use crate::proxy::credential::Credential;
use crate::proxy::credentials::Credentials;
use crate::proxy::error::ProxyError;
use crate::proxy::previous::PreviousCheck;
use crate::proxy::websocket::owner::Owner;
use crate::telemetry::charge::Charge;
use crate::telemetry::record::End;
use crate::telemetry::usage::{EventName, message_type};

/// What to do with a client's message.
pub enum FromClient {
    /// Send this upstream (the message itself, or as the ChatGPT backend's rules made it).
    Forward(String),
    /// Refused (over a quota): send this `error` message back, the socket stays open.
    Refuse(String),
    /// The socket's credential is over its quota (this error): the turn runs, and is the route's
    /// next credential's to answer, or refused with [`Turns::refuse_running`] if none can.
    OverCredentialQuota(Box<ProxyError>),
}

pub struct Turns {
    owner: Owner,
    credentials: Arc<Credentials>,
    /// The socket's credential, by index.
    index: usize,
    credential: Credential,
    /// The running turn's context.
    current: Option<Context>,
}

impl Turns {
    pub fn new(owner: Owner, credentials: Arc<Credentials>, index: usize) -> Self {
        let credential = credentials.get(index).clone();
        Self {
            owner,
            credentials,
            index,
            credential,
            current: None,
        }
    }

    pub fn client(&self) -> &std::sync::Arc<str> {
        &self.owner.client
    }

    /// The running turn's context.
    pub fn context(&mut self) -> Option<&mut Context> {
        self.current.as_mut()
    }

    /// The socket goes on with the credential at `index` (the running turn is already sent
    /// with it).
    pub fn switch(&mut self, index: usize) {
        self.index = index;
        self.credential = self.credentials.get(index).clone();
    }

    /// Ends the running turn as refused by keyward with `err`: its line is written now, and the
    /// `error` message for the client returned.
    pub fn refuse_running(&mut self, err: &ProxyError) -> String {
        let message = error_message(err);
        if let Some(ctx) = self.current.take() {
            ctx.finish_local(err.status(), message.len() as u64);
        }
        message
    }

    /// Whether a response is being generated (the upstream owes the client events).
    pub fn running(&self) -> bool {
        self.current.is_some()
    }

    /// A text message from the client.
    pub fn client_message(&mut self, text: &str) -> FromClient {
        if message_type(text.as_bytes()).as_deref() != Some("response.create") {
            return FromClient::Forward(text.to_owned());
        }
        if let Some(telemetry) = &self.owner.telemetry {
            telemetry.websocket_turn();
        }
        // A new turn before the last one ended: the last one is over, unfinished.
        self.end(End::NoCompletedEvent);
        // Continuing a response reads it: only the client's own may be named.
        if let Some(owners) = self.owner.owners.as_ref().filter(|o| o.enforced())
            && let Err(id) = PreviousCheck::new(owners.clone(), self.owner.client.clone())
                .check_whole(text.as_bytes())
        {
            tracing::warn!(client = %self.owner.client, previous_response = id, "refused a turn that continues a response its client did not create");
            return FromClient::Refuse(error_message(&ProxyError::UnknownPrevious { id }));
        }
        let mut ctx = Context::new(Method::GET, RESPONSES_PATH, Instant::now());
        ctx.endpoint(
            "responses.create",
            Charge::Generated,
            self.owner.owners.clone(),
        );
        ctx.identify(self.owner.uid, Some(self.owner.client.clone()));
        if let Some(telemetry) = &self.owner.telemetry {
            ctx.track(telemetry.clone());
            match telemetry.quotas.admit(&self.owner.client) {
                Ok(permit) => ctx.hold(permit),
                Err(exceeded) => {
                    telemetry.quota_refused(&self.owner.client, exceeded.quota);
                    let err = ProxyError::QuotaExceeded {
                        client: self.owner.client.to_string(),
                        exceeded,
                    };
                    let message = error_message(&err);
                    ctx.finish_local(err.status(), message.len() as u64);
                    return FromClient::Refuse(message);
                }
            }
        }
        ctx.add_bytes_in(text.len());
        let over = match self.credentials.admit(self.index) {
            Ok(permit) => {
                ctx.hold_for_credential(permit);
                None
            }
            Err(err) => Some(err),
        };
        let forwarded = self.credential.adapt_message(text);
        ctx.sending(self.credential.name());
        ctx.upstream_head(StatusCode::OK, &HeaderMap::new());
        ctx.relaying(true);
        self.current = Some(ctx);
        match over {
            None => FromClient::Forward(forwarded),
            Some(err) => FromClient::OverCredentialQuota(Box::new(err)),
        }
    }

    /// A text message from the upstream: read for usage; a final event or an error ends the
    /// turn.
    pub fn upstream_message(&mut self, text: &str) {
        self.credential.observe_message(text);
        let Some(ctx) = &mut self.current else {
            return;
        };
        match ctx.relayed_event(text.as_bytes()) {
            EventName::Final => self.end(End::Completed),
            EventName::Error => self.end(End::UpstreamError),
            EventName::Created | EventName::Named | EventName::Other => {}
        }
    }

    /// Ends the running turn, if any, as `end` says; its line is written now.
    pub fn end(&mut self, end: End) {
        if let Some(mut ctx) = self.current.take() {
            ctx.finish(end);
        }
    }
}

/// keyward's own error as a WebSocket message, in the shape the upstream uses.
pub fn error_message(err: &ProxyError) -> String {
    serde_json::json!({
        "type": "error",
        "status": err.status().as_u16(),
        "error": {
            "type": if err.status().is_server_error() { "keyward_upstream_error" } else { "invalid_request_error" },
            "code": err.code(),
            "message": err.client_message(),
            "param": null,
        }
    })
    .to_string()
}
