//! The ChatGPT plans' limit windows, as the usage views show them.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::credential::chatgpt::plan::PlanUsage;
use crate::telemetry::ledger::rfc3339;

/// One of a ChatGPT plan's limit windows, as the backend last reported it.
#[derive(Debug, Serialize)]
pub struct PlanWindow {
    /// The credential of the login whose plan it is.
    pub credential: String,
    /// `primary` (the short window) or `secondary` (the weekly one).
    pub window: &'static str,
    pub used_percent: f64,
    pub window_minutes: Option<u64>,
    pub resets_at: Option<String>,
}

pub(super) fn plan_windows(plans: &[(Arc<str>, PlanUsage)]) -> Vec<PlanWindow> {
    plans
        .iter()
        .flat_map(|(credential, plan)| {
            [("primary", &plan.primary), ("secondary", &plan.secondary)]
                .into_iter()
                .map(move |(window, limit)| (credential, window, limit))
        })
        .filter_map(|(credential, window, limit)| {
            let limit = limit.as_ref()?;
            Some(PlanWindow {
                credential: credential.to_string(),
                window,
                used_percent: limit.used_percent,
                window_minutes: limit.window_minutes,
                resets_at: limit
                    .reset_at
                    .and_then(|at| u64::try_from(at).ok())
                    .map(|at| rfc3339(UNIX_EPOCH + Duration::from_secs(at))),
            })
        })
        .collect()
}
