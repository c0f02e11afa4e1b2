//! The usage page's tables of the last 30 days by model and by credential, each row with a bar.

use std::fmt::Write;

use super::{charts, escape, num};
use crate::telemetry::daily::{NO_MODEL, Sums};
use crate::telemetry::usage_view::OperatorUsage;

pub(super) fn models(page: &mut String, usage: &OperatorUsage) {
    page.push_str("<section id=\"models\"><h2>By model (last 30 days)</h2>");
    let top = usage.by_model.first().map_or(0, |m| m.sums.tokens());
    let rows: Vec<_> = usage
        .by_model
        .iter()
        .filter(|m| m.sums.requests > 0)
        .map(|m| {
            let label = if m.model == NO_MODEL {
                "(none named)"
            } else {
                &m.model
            };
            (label, &m.sums)
        })
        .collect();
    bar_table(page, "model", &rows, top, "Model");
    page.push_str("</section>");
}

/// Which credential answered, when keyward holds more than one (or names its one).
pub(super) fn credentials(page: &mut String, usage: &OperatorUsage) {
    page.push_str("<section id=\"credentials\"><h2>By credential (last 30 days)</h2>");
    let top = usage.by_credential.first().map_or(0, |c| c.sums.tokens());
    let rows: Vec<_> = usage
        .by_credential
        .iter()
        .map(|c| (c.credential.as_str(), &c.sums))
        .collect();
    bar_table(page, "credential", &rows, top, "Credential");
    page.push_str("</section>");
}

fn bar_table(page: &mut String, key: &str, rows: &[(&str, &Sums)], top: u64, head: &str) {
    if rows.is_empty() {
        page.push_str("<p class=\"empty\">No requests in the last 30 days.</p>");
        return;
    }
    let _ = write!(
        page,
        "<div class=\"scroll\"><table><thead><tr><th>{head}</th><th></th><th class=\"n\">Tokens</th>\
         <th class=\"n\">Requests</th></tr></thead><tbody>"
    );
    for (label, sums) in rows {
        let fraction = if top == 0 {
            0.0
        } else {
            sums.tokens() as f64 / top as f64
        };
        let _ = write!(
            page,
            "<tr data-{key}=\"{label}\"><td>{label}</td><td class=\"barcell\">{}</td>{}{}</tr>",
            charts::bar(fraction, "#4e79a7"),
            num("tokens", sums.tokens()),
            num("requests", sums.requests),
            label = escape(label),
        );
    }
    page.push_str("</tbody></table></div>");
}
