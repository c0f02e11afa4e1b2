//! The one per-request context the pipeline's phases pass along ([`crate::proxy::pipeline`]):
//! who the request is from, what it holds (a concurrent-stream quota slot, the active-stream
//! count), its figures ([`Account`]), and its claim to the response it creates ([`Claim`]).
//!
//! The account phase is [`Context::finish`]: the pipeline calls it when keyward answered itself,
//! when the relayed answer ended or was cut, when a WebSocket turn ended. A request abandoned
//! before any of those (the client hung up while keyward waited for the upstream, or mid-body)
//! is noticed only when its context is dropped, and `Drop` calls the same phase with
//! `client_gone`: hyper gives no other sign of a hang-up.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;

use crate::access::owners::Owners;
use crate::access::ownership::Claim;
use crate::telemetry::account::Account;
use crate::telemetry::charge::{Charge, PlainSize};
use crate::telemetry::metrics::{StreamGuard, Telemetry};
use crate::telemetry::quota::Permit;
use crate::telemetry::record::End;
use crate::telemetry::usage::EventName;

/// One request (or one WebSocket turn), from its head to its account.
pub struct Context {
    /// `None` once accounted for.
    account: Option<Account>,
    /// The record of owners: a created response's id goes in it; a stored one is charged
    /// against it.
    owners: Option<Arc<Owners>>,
    claim: Option<Claim>,
    /// Held until the request is accounted for; dropping them releases them.
    permit: Option<Permit>,
    /// The credential's, likewise (a request sent again with another credential holds that one's).
    credential_permit: Option<Permit>,
    stream: Option<StreamGuard>,
}

impl Context {
    pub fn new(method: Method, path: &str, started: Instant) -> Self {
        Self {
            account: Some(Account::new(method, path, started, Arc::default())),
            owners: None,
            claim: None,
            permit: None,
            credential_permit: None,
            stream: None,
        }
    }

    /// Runs `f` on the figures while the request is not yet accounted for; after the account
    /// phase, nothing more is noted.
    fn note<T: Default>(&mut self, f: impl FnOnce(&mut Account) -> T) -> T {
        self.account.as_mut().map(f).unwrap_or_default()
    }

    /// What was called, how its answer is charged, and the record of owners it uses.
    pub fn endpoint(&mut self, name: &'static str, charge: Charge, owners: Option<Arc<Owners>>) {
        self.note(|account| account.endpoint(name, charge));
        self.owners = owners;
    }

    /// Who sent the request: the connection's uid and the client's name, as known.
    pub fn identify(&mut self, uid: Option<u32>, client: Option<Arc<str>>) {
        self.note(|account| account.identify(uid, client));
    }

    /// Claims the response the request creates for its client, from now on (once the client
    /// is known: its answer is about to pass).
    fn claim(&mut self) {
        if self.claim.is_none()
            && let Some(owners) = &self.owners
            && let Some(account) = &self.account
            && account.charge() == Charge::Generated
        {
            self.claim = Some(Claim::new(owners.clone(), account.client()));
        }
    }

    /// Counts the request in the metrics, the ledger and the quotas.
    pub fn track(&mut self, telemetry: Arc<Telemetry>) {
        self.note(|account| account.track(telemetry));
    }

    /// Not counted after all (a WebSocket handshake: its turns are); its log line is written.
    pub fn untrack(&mut self) {
        self.note(|account| account.untrack());
    }

    /// Holds a concurrent-stream quota slot until the request is accounted for.
    pub fn hold_for_credential(&mut self, permit: Option<Permit>) {
        self.credential_permit = permit;
    }

    pub fn hold(&mut self, permit: Option<Permit>) {
        self.permit = permit;
    }

    /// Sent upstream now, with the credential named `credential`.
    pub fn sending(&mut self, credential: &Arc<str>) {
        self.note(|account| account.sending(credential));
    }

    pub fn upstream_head(&mut self, status: StatusCode, headers: &HeaderMap) {
        self.note(|account| account.upstream_head(status, headers));
    }

    pub fn upstream_status(&mut self, status: StatusCode) {
        self.note(|account| account.upstream_status(status));
    }

    /// The answer starts relaying to the client (an event stream with `sse`).
    pub fn relaying(&mut self, sse: bool) {
        if let Some(telemetry) = self.note(|account| account.telemetry().cloned()) {
            self.stream = Some(telemetry.stream_started());
        }
        self.claim();
        let claims = self.claim.is_some();
        self.note(|account| account.relaying(sse, claims));
    }

    /// A chunk of the answer on its way to the client: counted, read for its usage, and a
    /// created response's id claimed as soon as it passes.
    pub fn relayed(&mut self, data: &[u8]) {
        let counted = self.note(|account| account.telemetry().is_some());
        let claiming = self.claim.as_ref().is_some_and(|claim| !claim.recorded());
        self.note(|account| {
            account.add_bytes_out(data.len());
            // Once the id is in the record, an uncounted answer has nothing more to give.
            if counted || claiming {
                account.scan(data);
            }
        });
        if claiming {
            self.claim_id();
        }
    }

    /// One message from the upstream on a WebSocket; says which kind it was.
    pub fn relayed_event(&mut self, data: &[u8]) -> EventName {
        self.claim();
        let name = self.note(|account| account.scan_event(data));
        self.claim_id();
        name
    }

    fn claim_id(&mut self) {
        if let Some(claim) = self.claim.as_mut().filter(|claim| !claim.recorded())
            && let Some(id) = self.account.as_ref().and_then(Account::response_id)
        {
            claim.saw(&id);
        }
    }

    /// A whole response object keyward assembled itself.
    pub fn saw_response(&mut self, response: &serde_json::Value) {
        self.note(|account| account.saw_response(response));
    }

    pub fn add_bytes_in(&mut self, n: usize) {
        self.note(|account| account.add_bytes_in(n));
    }

    /// The counter the request body adds to as it is forwarded.
    pub fn bytes_in(&mut self) -> Arc<AtomicU64> {
        self.note(|account| account.bytes_in())
    }

    pub fn plain_size(&mut self, size: PlainSize) {
        self.note(|account| account.plain_size(size));
    }

    pub fn add_bytes_out(&mut self, n: usize) {
        self.note(|account| account.add_bytes_out(n));
    }

    /// How the request will have ended, if nothing says otherwise first.
    pub fn end(&mut self, end: End) {
        self.note(|account| account.end(end));
    }

    /// The account phase for an answer keyward made itself.
    pub fn finish_local(mut self, status: StatusCode, body_len: u64) {
        self.note(|account| account.local(status, body_len));
        self.finish(End::Completed);
    }

    /// The account phase: what the request is charged, the response it created recorded as its
    /// client's, its log line, metrics, ledger line and quota counts; then what it held is
    /// released. Only the first call counts.
    pub fn finish(&mut self, end: End) {
        self.claim();
        let Some(mut account) = self.account.take() else {
            return;
        };
        // Read for its id alone, an answer that showed it has nothing more to give.
        let read_body = account.telemetry().is_some()
            || self.claim.as_ref().is_some_and(|claim| !claim.recorded());
        let settled = account.settle(end, self.owners.as_deref(), read_body);
        if let Some(claim) = &mut self.claim {
            claim.settle(settled.response_id.as_deref(), settled.tokens.is_some());
        }
        account.close(settled);
        self.permit = None;
        self.credential_permit = None;
        self.stream = None;
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // Abandoned before its end was seen: the client went away.
        self.finish(End::ClientGone);
    }
}
