//! What a request is charged in the ledger and the token quotas: the usage the upstream
//! reported, an estimate when an answer ended without it, or nothing for endpoints that generate
//! nothing; and a stored response's usage once, whoever's request shows it first.

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
    /// The record a created response goes in, and a stored one is charged against.
    pub owners: Option<&'a Owners>,
    pub client: &'a str,
    /// The response's id is in the record already (it was seen as the answer passed).
    pub recorded: bool,
    /// The upstream took the request and answered with success.
    pub answered: bool,
    pub bytes_in: u64,
    /// How to learn the request body's size decoded, when it came compressed.
    pub plain_in: &'a mut Option<PlainSize>,
    /// What the answer delivered: the text of a stream, the bytes of anything else.
    pub output_bytes: u64,
}

/// The tokens charged, and whether they are an estimate. A created response goes in the record
/// of owners (if it is not already), marked charged when it was.
pub fn settle(bill: Bill) -> (Option<Tokens>, bool) {
    let status = bill.seen.status.as_deref();
    let charged = match (bill.charge, bill.seen.tokens) {
        (Charge::Free, _) | (Charge::StoredOnce, None) => (None, false),
        (Charge::StoredOnce, Some(tokens)) => {
            let first = status.is_some_and(|s| FINISHED.contains(&s))
                && bill
                    .seen
                    .id
                    .as_deref()
                    .zip(bill.owners)
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
    };
    if bill.charge == Charge::Generated
        && let (Some(owners), Some(id)) = (bill.owners, &bill.seen.id)
    {
        if !bill.recorded {
            owners.record(id, bill.client, charged.0.is_some());
        } else if charged.0.is_some() {
            owners.bill(id);
        }
    }
    charged
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
