//! The operator's usage page, `GET /usage` on the metrics listener: HTML rendered here, charts
//! as inline SVG ([`charts`]), one inline style sheet allowed by its hash, no script, nothing
//! from another origin. `Accept: application/json` gets the same numbers as JSON.

mod breakdown;
mod charts;

use std::fmt::Write;
use std::sync::LazyLock;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::proxy::body::ProxyBody;
use crate::telemetry::usage_view::{OperatorUsage, Period};

const STYLE: &str = "\
:root{color-scheme:light;font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1f2328;background:#f6f8fa}\
body{margin:0 auto;max-width:1100px;padding:16px}\
h1{font-size:1.5rem;margin:0 0 4px}h2{font-size:1.05rem;margin:0 0 10px}\
.meta{color:#57606a;margin:0 0 16px;font-size:.9rem}\
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:14px 16px;margin:0 0 16px}\
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:12px;background:none;border:0;padding:0}\
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px 14px}\
.card h2{font-size:.85rem;color:#57606a;font-weight:600;margin:0}\
.big{font-size:1.6rem;font-weight:600;margin:4px 0 2px;font-variant-numeric:tabular-nums}\
.small{color:#57606a;font-size:.85rem;margin:0}\
.scroll{overflow-x:auto}\
table{border-collapse:collapse;width:100%;font-size:.9rem}\
th,td{padding:6px 8px;border-bottom:1px solid #eaeef2;text-align:left;white-space:nowrap}\
th{color:#57606a;font-weight:600}\
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}\
td.barcell{width:40%;min-width:90px}\
.legend{display:flex;flex-wrap:wrap;gap:6px 14px;list-style:none;padding:0;margin:8px 0 0;font-size:.85rem}\
.legend svg{vertical-align:middle;margin-right:4px}\
.empty{color:#57606a;margin:0}\
.chart{display:block;min-width:560px;direction:ltr}\
.latest{direction:rtl}\
footer{color:#57606a;font-size:.85rem}";

/// The page's Content-Security-Policy: its one style sheet, nothing else.
static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    let digest = ring::digest::digest(&ring::digest::SHA256, STYLE.as_bytes());
    let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    let policy = format!(
        "default-src 'none'; style-src 'sha256-{hash}'; img-src 'none'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    );
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
});

/// The answer to `GET /usage`: JSON when the request asks for it, else the page.
pub fn answer(usage: &OperatorUsage, accept: Option<&HeaderValue>) -> Response<ProxyBody> {
    let wants_json = accept
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let (body, content_type) = if wants_json {
        let text = serde_json::to_vec(usage).unwrap_or_default();
        (text, HeaderValue::from_static("application/json"))
    } else {
        (
            render(usage).into_bytes(),
            HeaderValue::from_static("text/html; charset=utf-8"),
        )
    };
    let mut response = Response::new(ProxyBody::full(Bytes::from(body)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_SECURITY_POLICY, CSP.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::VARY, HeaderValue::from_static("Accept"));
    response
}

/// The whole page.
pub fn render(usage: &OperatorUsage) -> String {
    let mut page = String::with_capacity(64 * 1024);
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>keyward usage</title><style>{STYLE}</style></head><body>\
         <h1>keyward usage</h1><p class=\"meta\">At {} · days are {} days · usage kept since {}</p>",
        when(&usage.overview.generated_at),
        usage.overview.days_are,
        usage
            .overview
            .kept_since
            .as_deref()
            .map_or("now".into(), escape),
    );
    cards(&mut page, usage);
    per_day(&mut page, usage);
    clients(&mut page, usage);
    breakdown::models(&mut page, usage);
    breakdown::credentials(&mut page, usage);
    quotas(&mut page, usage);
    plan(&mut page, usage);
    refusals(&mut page, usage);
    page.push_str(
        "<footer>The same numbers as JSON: this address with <code>Accept: application/json</code>. \
         Tokens are input plus output; cached input is part of input, reasoning part of output.\
         </footer></body></html>",
    );
    page
}

fn cards(page: &mut String, usage: &OperatorUsage) {
    page.push_str("<section class=\"cards\" id=\"totals\">");
    for (id, title, period) in [
        ("today", "Today", &usage.overview.today),
        ("month", "This month", &usage.overview.this_month),
        ("30d", "Last 30 days", &usage.overview.last_30_days),
    ] {
        card(page, id, title, period);
    }
    let _ = write!(
        page,
        "<div class=\"card\" id=\"open-now\"><h2>Open now</h2><p class=\"big\" data-k=\"streams\">{}</p>\
         <p class=\"small\">streams · <span data-k=\"websockets\">{}</span> WebSockets</p></div></section>",
        usage.open_now.streams, usage.open_now.websockets
    );
}

fn card(page: &mut String, id: &str, title: &str, period: &Period) {
    let s = &period.sums;
    let _ = write!(
        page,
        "<div class=\"card\" id=\"total-{id}\"><h2>{title}</h2>\
         <p class=\"big\" data-k=\"tokens\">{}</p><p class=\"small\">tokens · \
         <span data-k=\"requests\">{}</span> requests</p></div>",
        group(s.tokens()),
        group(s.requests),
    );
}

fn per_day(page: &mut String, usage: &OperatorUsage) {
    let named: Vec<String> = usage
        .clients
        .iter()
        .filter(|c| c.last_30_days.tokens() > 0)
        .take(charts::NAMED_CLIENTS)
        .map(|c| c.client.clone())
        .collect();
    page.push_str("<section id=\"per-day\"><h2>Tokens per day, by client (last 30 days)</h2>");
    // On a narrow screen the chart scrolls, starting at its right end: the latest days.
    page.push_str("<div class=\"scroll latest\">");
    page.push_str(&charts::tokens_per_day(&usage.days, &named));
    page.push_str("</div><ul class=\"legend\">");
    let others = usage.clients.len() > named.len();
    let labels = named
        .iter()
        .map(String::as_str)
        .chain(others.then_some("others"));
    for (i, name) in labels.enumerate() {
        let colour = if i < named.len() {
            charts::colour(i)
        } else {
            charts::colour(usize::MAX)
        };
        let _ = write!(
            page,
            "<li><svg width=\"10\" height=\"10\" aria-hidden=\"true\"><rect width=\"10\" height=\"10\" fill=\"{colour}\"/></svg>{}</li>",
            escape(name)
        );
    }
    page.push_str("</ul></section>");
}

fn clients(page: &mut String, usage: &OperatorUsage) {
    page.push_str("<section id=\"clients\"><h2>Clients</h2>");
    if usage.clients.is_empty() {
        page.push_str("<p class=\"empty\">No requests yet.</p></section>");
        return;
    }
    page.push_str(
        "<div class=\"scroll\"><table><thead><tr><th>Client</th><th class=\"n\">Today</th>\
         <th class=\"n\">This month</th><th class=\"n\">Last 30 days</th><th class=\"n\">Requests</th>\
         <th class=\"n\">Input</th><th class=\"n\">Cached</th><th class=\"n\">Output</th>\
         <th class=\"n\">Reasoning</th><th class=\"n\">Estimated</th><th class=\"n\">Errors</th>\
         </tr></thead><tbody>",
    );
    for row in &usage.clients {
        let s = &row.last_30_days;
        let _ = write!(
            page,
            "<tr data-client=\"{name}\"><td>{name}</td>{}{}{}{}{}{}{}{}{}{}</tr>",
            num("tokens-today", row.today.tokens()),
            num("tokens-month", row.this_month.tokens()),
            num("tokens-30d", s.tokens()),
            num("requests", s.requests),
            num("input", s.input_tokens),
            num("cached", s.cached_input_tokens),
            num("output", s.output_tokens),
            num("reasoning", s.reasoning_tokens),
            num("estimated", s.estimated),
            num("errors", s.errors),
            name = escape(&row.client),
        );
    }
    page.push_str("</tbody></table></div><p class=\"small\">Token columns after the first three are the last 30 days.</p></section>");
}

fn quotas(page: &mut String, usage: &OperatorUsage) {
    page.push_str("<section id=\"quotas\"><h2>Quota headroom</h2>");
    if usage.quotas.iter().all(|c| c.quotas.is_empty()) {
        page.push_str("<p class=\"empty\">No quotas are set (<code>--quota</code>, <code>[quota]</code>).</p></section>");
        return;
    }
    page.push_str(
        "<div class=\"scroll\"><table><thead><tr><th>Client</th><th>Quota</th><th></th>\
         <th class=\"n\">Used</th><th class=\"n\">Limit</th><th class=\"n\">Left</th><th>Frees up</th>\
         </tr></thead><tbody>",
    );
    for client in &usage.quotas {
        for quota in &client.quotas {
            let fraction = if quota.limit == 0 {
                1.0
            } else {
                quota.used as f64 / quota.limit as f64
            };
            let _ = write!(
                page,
                "<tr data-client=\"{name}\" data-quota=\"{key}\"><td>{name}</td><td>{q}</td><td class=\"barcell\">{}</td>{}{}{}<td>{}</td></tr>",
                charts::bar(fraction, charts::headroom_colour(fraction)),
                num("used", quota.used),
                num("limit", quota.limit),
                num("left", quota.left),
                quota.resets_at.as_deref().map_or("–".into(), when),
                name = escape(&client.client),
                key = quota.quota,
                q = quota.quota.replace('_', " "),
            );
        }
    }
    page.push_str("</tbody></table></div></section>");
}

fn plan(page: &mut String, usage: &OperatorUsage) {
    if usage.plan.is_empty() {
        return;
    }
    page.push_str(
        "<section id=\"plan\"><h2>ChatGPT plan</h2><div class=\"scroll\"><table><thead><tr>\
         <th>Window</th><th></th><th class=\"n\">Used</th><th>Resets</th></tr></thead><tbody>",
    );
    // With several logins, each window says whose it is.
    let several = usage
        .plan
        .iter()
        .any(|w| w.credential != usage.plan[0].credential);
    for window in &usage.plan {
        let fraction = window.used_percent / 100.0;
        let name = match window.window_minutes {
            Some(minutes) if minutes % 1440 == 0 => {
                format!("{} ({} days)", window.window, minutes / 1440)
            }
            Some(minutes) if minutes % 60 == 0 => {
                format!("{} ({} hours)", window.window, minutes / 60)
            }
            Some(minutes) => format!("{} ({minutes} minutes)", window.window),
            None => window.window.to_owned(),
        };
        let name = if several {
            format!("{}: {name}", escape(&window.credential))
        } else {
            name
        };
        let _ = write!(
            page,
            "<tr data-window=\"{}\"><td>{name}</td><td class=\"barcell\">{}</td><td class=\"n\" data-k=\"used-percent\">{:.1}%</td><td>{}</td></tr>",
            window.window,
            charts::bar(fraction, charts::headroom_colour(fraction)),
            window.used_percent,
            window.resets_at.as_deref().map_or("–".into(), when),
        );
    }
    page.push_str("</tbody></table></div></section>");
}

fn refusals(page: &mut String, usage: &OperatorUsage) {
    page.push_str(
        "<section id=\"refusals\"><h2>Answered by keyward itself, by reason (last 30 days)</h2>",
    );
    if usage.refusals.is_empty() {
        page.push_str("<p class=\"empty\">None.</p></section>");
        return;
    }
    let top = usage.refusals.iter().map(|r| r.requests).max().unwrap_or(0);
    page.push_str(
        "<div class=\"scroll\"><table><thead><tr><th>Status</th><th>Reason</th><th></th>\
         <th class=\"n\">Requests</th></tr></thead><tbody>",
    );
    for refusal in &usage.refusals {
        let _ = write!(
            page,
            "<tr data-status=\"{s}\"><td>{s}</td><td>{}</td><td class=\"barcell\">{}</td>{}</tr>",
            refusal.reason,
            charts::bar(refusal.requests as f64 / top.max(1) as f64, "#e15759"),
            num("requests", refusal.requests),
            s = refusal.status,
        );
    }
    page.push_str("</tbody></table></div></section>");
}

/// An RFC 3339 time as people read it: `2026-12-02 23:14 UTC`.
fn when(rfc3339: &str) -> String {
    match rfc3339.get(..16) {
        Some(minute) if rfc3339.ends_with('Z') => format!("{} UTC", minute.replace('T', " ")),
        _ => escape(rfc3339),
    }
}

/// A number cell.
fn num(key: &str, n: u64) -> String {
    format!("<td class=\"n\" data-k=\"{key}\">{}</td>", group(n))
}

/// `12,345,678`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Text made safe for HTML content and attribute values (client and model names are whatever
/// a client or the operator chose).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_and_names_escaped() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(12_345_678), "12,345,678");
        assert_eq!(
            escape("<script>\"x\"&'y'"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;"
        );
    }
}
