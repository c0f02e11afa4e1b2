//! What a request is charged in the ledger and the token quotas: the usage the upstream
//! reported, an estimate when an answer ended without it, or nothing for endpoints that generate
//! nothing; and a stored response's usage once, whoever's request shows it first. Who owns a
//! created response is `access`'s ([`crate::access::ownership`]).

use crate::access::owners::Owners;

/// How to learn the plain size of a request body that came compressed, if it is needed.
pub type PlainSize = Box<dyn FnOnce() -> Option<u64> + Send>;
use crate::telemetry::usage::{Seen, Tokens};

/// Bytes per token for estimates: OpenAI's rule of thumb for English text (about four
/// characters a token).
pub const BYTES_PER_TOKEN: u64 = 4;

/// How an endpoint's answers are charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// What the model generated (create, compact); an answer without usage gets an estimate,
    /// unless it is a background response that has not run yet.
    Generated,
    /// A stored response's usage, the first time it shows finished (a background response
    /// retrieved or cancelled): charged once, and only if its creation was not.
    StoredOnce,
    /// Nothing: the endpoint costs no tokens.
    Free,
}

/// Statuses of a response that will not change again.
const FINISHED: [&str; 4] = ["completed", "incomplete", "failed", "cancelled"];

/// One finished request, as far as charging goes.
pub struct Bill<'a> {
    pub charge: Charge,
    pub seen: &'a Seen,
    /// The record a stored response is charged against, once.
    pub stored: Option<&'a Owners>,
    /// The upstream took the request and answered with success.
    pub answered: bool,
    pub bytes_in: u64,
    /// How to learn the request body's size decoded, when it came compressed.
    pub plain_in: &'a mut Option<PlainSize>,
    /// What the answer delivered: the text of a stream, the bytes of anything else.
    pub output_bytes: u64,
}

/// The tokens charged, and whether they are an estimate.
pub fn settle(bill: Bill) -> (Option<Tokens>, bool) {
    let status = bill.seen.status.as_deref();
    match (bill.charge, bill.seen.tokens) {
        (Charge::Free, _) | (Charge::StoredOnce, None) => (None, false),
        (Charge::StoredOnce, Some(tokens)) => {
            let first = status.is_some_and(|s| FINISHED.contains(&s))
                && bill
                    .seen
                    .id
                    .as_deref()
                    .zip(bill.stored)
                    .is_some_and(|(id, owners)| owners.bill(id));
            (first.then_some(tokens), false)
        }
        (Charge::Generated, Some(tokens)) => (Some(tokens), false),
        // A background response that has not run yet is charged when it has.
        (Charge::Generated, None) if matches!(status, Some("queued" | "in_progress")) => {
            (None, false)
        }
        // The upstream took the request and answered: it bills for what it generated, so an
        // answer that ended before its usage came is charged an estimate.
        (Charge::Generated, None) if bill.answered => {
            let plain = bill.plain_in.take().and_then(|size| size());
            let input = plain.unwrap_or(bill.bytes_in);
            (Some(estimate(input, bill.output_bytes)), true)
        }
        (Charge::Generated, None) => (None, false),
    }
}

/// What a response that reported no usage is charged: the request body's bytes as input and the
/// text relayed as output, [`BYTES_PER_TOKEN`] bytes a token, rounded up.
fn estimate(bytes_in: u64, output_bytes: u64) -> Tokens {
    Tokens {
        input: bytes_in.div_ceil(BYTES_PER_TOKEN),
        cached_input: 0,
        output: output_bytes.div_ceil(BYTES_PER_TOKEN),
        reasoning: 0,
    }
}
