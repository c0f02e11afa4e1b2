//! The numbers of the usage views: a client's own (`GET /keyward/usage`) and the operator's
//! (`GET /usage` on the metrics listener), from the daily roll-ups ([`Daily`]), the quotas and
//! the ChatGPT plan's windows. Days are UTC days; "tokens" alone is input plus output, as the
//! token quota counts them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::credential::chatgpt::plan::PlanUsage;
use crate::telemetry::daily::{self, Daily, Sums};
use crate::telemetry::ledger::rfc3339;
use crate::telemetry::quota::{QuotaStatus, Quotas};

mod plan;

pub use plan::PlanWindow;
use plan::plan_windows;

/// Days in the by-day series.
pub const SERIES_DAYS: u64 = 30;

/// Some days' sums.
#[derive(Debug, Serialize)]
pub struct Period {
    /// First and last day, `2026-12-01`.
    pub from: String,
    pub to: String,
    #[serde(flatten)]
    pub sums: Sums,
}

#[derive(Debug, Serialize)]
pub struct DayRow {
    pub date: String,
    #[serde(flatten)]
    pub sums: Sums,
}

#[derive(Debug, Serialize)]
pub struct ModelRow {
    pub model: String,
    #[serde(flatten)]
    pub sums: Sums,
}

/// One credential's sums.
#[derive(Debug, Serialize)]
pub struct CredentialRow {
    pub credential: String,
    #[serde(flatten)]
    pub sums: Sums,
}

/// What both views start with: when, and the totals of today, this month and the last 30 days.
#[derive(Debug, Serialize)]
pub struct Overview {
    pub generated_at: String,
    pub days_are: &'static str,
    /// The first day keyward holds usage for (the ledger's first line, at most 62 days back).
    pub kept_since: Option<String>,
    pub today: Period,
    pub this_month: Period,
    pub last_30_days: Period,
}

/// `GET /keyward/usage`: one client's own numbers, and nobody else's.
#[derive(Debug, Serialize)]
pub struct ClientUsage {
    pub client: String,
    #[serde(flatten)]
    pub overview: Overview,
    /// The last 30 days, oldest first, days without requests included.
    pub days: Vec<DayRow>,
    /// The last 30 days by model, most tokens first.
    pub by_model: Vec<ModelRow>,
    /// The quotas that apply to this client.
    pub quotas: Vec<QuotaStatus>,
    /// With a ChatGPT login: the plan's windows.
    pub plan: Vec<PlanWindow>,
}

/// `GET /usage` on the metrics listener: every client's numbers.
#[derive(Debug, Serialize)]
pub struct OperatorUsage {
    #[serde(flatten)]
    pub overview: Overview,
    /// The last 30 days, oldest first, each with its clients' sums.
    pub days: Vec<OperatorDay>,
    /// Every client of the last 30 days (or this month), most tokens first.
    pub clients: Vec<ClientRow>,
    pub by_model: Vec<ModelRow>,
    /// The last 30 days by the credential requests were sent with, most tokens first.
    pub by_credential: Vec<CredentialRow>,
    pub quotas: Vec<ClientQuotas>,
    pub plan: Vec<PlanWindow>,
    pub open_now: OpenNow,
    /// Requests of the last 30 days keyward answered itself with an error, by status.
    pub refusals: Vec<Refusal>,
}

#[derive(Debug, Serialize)]
pub struct OperatorDay {
    pub date: String,
    #[serde(flatten)]
    pub sums: Sums,
    pub by_client: BTreeMap<String, Sums>,
}

#[derive(Debug, Serialize)]
pub struct ClientRow {
    pub client: String,
    pub today: Sums,
    pub this_month: Sums,
    pub last_30_days: Sums,
}

#[derive(Debug, Serialize)]
pub struct ClientQuotas {
    pub client: String,
    pub quotas: Vec<QuotaStatus>,
}

#[derive(Debug, Serialize)]
pub struct OpenNow {
    /// Responses being relayed.
    pub streams: i64,
    pub websockets: i64,
}

#[derive(Debug, Serialize)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
    pub requests: u64,
}

/// What the views are built from.
pub struct Sources<'a> {
    pub daily: &'a Daily,
    pub quotas: &'a Quotas,
    /// Each ChatGPT login's plan, by the name of its credential.
    pub plans: Vec<(Arc<str>, PlanUsage)>,
    pub now: SystemTime,
}

/// The days a view covers, as day numbers.
struct Span {
    today: u64,
    month: u64,
    series: u64,
}

impl Span {
    fn at(now: SystemTime) -> Self {
        let today = daily::secs(now) / 86_400;
        Span {
            today,
            month: daily::month_start(today),
            series: today + 1 - SERIES_DAYS,
        }
    }

    /// From the earliest day either view needs.
    fn first(&self) -> u64 {
        self.month.min(self.series)
    }

    fn period(&self, from: u64, sums: Sums) -> Period {
        Period {
            from: daily::date(from),
            to: daily::date(self.today),
            sums,
        }
    }

    fn overview(&self, sources: &Sources, total: Periods) -> Overview {
        Overview {
            generated_at: rfc3339(sources.now),
            days_are: "UTC",
            kept_since: sources.daily.first_day().map(daily::date),
            today: self.period(self.today, total.today),
            this_month: self.period(self.month, total.month),
            last_30_days: self.period(self.series, total.series),
        }
    }
}

/// Sums by period, kept per key (a client, a model).
#[derive(Default)]
struct Periods {
    today: Sums,
    month: Sums,
    series: Sums,
}

impl Periods {
    fn add(&mut self, span: &Span, day: u64, sums: &Sums) {
        if day == span.today {
            self.today.add(sums);
        }
        if day >= span.month {
            self.month.add(sums);
        }
        if day >= span.series {
            self.series.add(sums);
        }
    }
}

pub fn client_usage(sources: &Sources, client: &str) -> ClientUsage {
    let span = Span::at(sources.now);
    let mut total = Periods::default();
    let mut by_day: HashMap<u64, Sums> = HashMap::new();
    let mut models: HashMap<String, Sums> = HashMap::new();
    sources.daily.visit(span.first(), |day, sums| {
        let Some(by_model) = sums.clients.get(client) else {
            return;
        };
        for (model, sums) in by_model {
            total.add(&span, day, sums);
            if day >= span.series {
                by_day.entry(day).or_default().add(sums);
                models.entry(model.to_string()).or_default().add(sums);
            }
        }
    });
    ClientUsage {
        client: client.to_owned(),
        overview: span.overview(sources, total),
        days: (span.series..=span.today)
            .map(|day| DayRow {
                date: daily::date(day),
                sums: by_day.remove(&day).unwrap_or_default(),
            })
            .collect(),
        by_model: model_rows(models),
        quotas: sources.quotas.status(client),
        plan: plan_windows(&sources.plans),
    }
}

pub fn operator_usage(sources: &Sources, open_now: OpenNow) -> OperatorUsage {
    let span = Span::at(sources.now);
    let mut total = Periods::default();
    let mut clients: HashMap<String, Periods> = HashMap::new();
    let mut days: BTreeMap<u64, OperatorDay> = (span.series..=span.today)
        .map(|day| {
            let row = OperatorDay {
                date: daily::date(day),
                sums: Sums::default(),
                by_client: BTreeMap::new(),
            };
            (day, row)
        })
        .collect();
    let mut models: HashMap<String, Sums> = HashMap::new();
    let mut refused: BTreeMap<u16, u64> = BTreeMap::new();
    let mut credentials: HashMap<String, Sums> = HashMap::new();
    sources.daily.visit(span.first(), |day, sums| {
        for (client, by_model) in &sums.clients {
            let periods = clients.entry(client.to_string()).or_default();
            for (model, sums) in by_model {
                total.add(&span, day, sums);
                periods.add(&span, day, sums);
                if let Some(row) = days.get_mut(&day) {
                    row.sums.add(sums);
                    row.by_client
                        .entry(client.to_string())
                        .or_default()
                        .add(sums);
                    models.entry(model.to_string()).or_default().add(sums);
                }
            }
        }
        if day >= span.series {
            for (&status, &n) in &sums.refused {
                *refused.entry(status).or_default() += n;
            }
            for (credential, sums) in &sums.credentials {
                credentials
                    .entry(credential.to_string())
                    .or_default()
                    .add(sums);
            }
        }
    });
    let mut clients: Vec<ClientRow> = clients
        .into_iter()
        .map(|(client, periods)| ClientRow {
            client,
            today: periods.today,
            this_month: periods.month,
            last_30_days: periods.series,
        })
        .collect();
    clients.sort_by(|a, b| {
        (b.last_30_days.tokens(), b.this_month.tokens(), &a.client).cmp(&(
            a.last_30_days.tokens(),
            a.this_month.tokens(),
            &b.client,
        ))
    });
    OperatorUsage {
        overview: span.overview(sources, total),
        days: days.into_values().collect(),
        clients,
        by_model: model_rows(models),
        by_credential: {
            let mut rows: Vec<CredentialRow> = credentials
                .into_iter()
                .map(|(credential, sums)| CredentialRow { credential, sums })
                .collect();
            rows.sort_by(|a, b| {
                (b.sums.tokens(), &a.credential).cmp(&(a.sums.tokens(), &b.credential))
            });
            rows
        },
        quotas: sources
            .quotas
            .clients()
            .into_iter()
            .map(|client| ClientQuotas {
                quotas: sources.quotas.status(&client),
                client: client.to_string(),
            })
            .collect(),
        plan: plan_windows(&sources.plans),
        open_now,
        refusals: refused
            .into_iter()
            .map(|(status, requests)| Refusal {
                status,
                reason: refusal_reason(status),
                requests,
            })
            .collect(),
    }
}

fn model_rows(models: HashMap<String, Sums>) -> Vec<ModelRow> {
    let mut rows: Vec<ModelRow> = models
        .into_iter()
        .map(|(model, sums)| ModelRow { model, sums })
        .collect();
    rows.sort_by(|a, b| {
        (b.sums.tokens(), b.sums.requests, &a.model).cmp(&(
            a.sums.tokens(),
            a.sums.requests,
            &b.model,
        ))
    });
    rows
}

/// Why keyward answers a request itself with `status`.
pub fn refusal_reason(status: u16) -> &'static str {
    match status {
        400 => "malformed request",
        401 => "no valid client token",
        403 => "not allowed (access policy, path or Host)",
        404 => "unknown path, or a response of another client",
        405 => "wrong method",
        413 => "request body too large",
        429 => "over a quota",
        431 => "request headers too large",
        502 => "upstream unreachable",
        503 => "not ready (credential, or the ledger behind)",
        504 => "upstream did not answer in time",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::quota::QuotaConfig;
    use crate::telemetry::daily::Line;
    use crate::telemetry::usage::Tokens;
    use std::time::{Duration, UNIX_EPOCH};

    fn line(
        at: u64,
        client: &'static str,
        status: u16,
        upstream: bool,
        output: u64,
    ) -> Line<'static> {
        Line {
            at,
            client,
            credential: upstream.then_some(if client == "bob" { "key" } else { "plan" }),
            model: Some("gpt-5"),
            status,
            upstream_status: upstream.then_some(status),
            completed: status == 200,
            tokens: Tokens {
                input: 100,
                cached_input: 20,
                output,
                reasoning: 5,
            },
            estimated: output == 7,
        }
    }

    #[test]
    fn a_client_sees_its_own_days_and_periods_and_the_operator_sees_all() {
        // 2026-12-02 12:00 UTC.
        let now = UNIX_EPOCH + Duration::from_secs(20_789 * 86_400 + 43_200);
        let today = 20_789 * 86_400;
        let daily = Daily::default();
        daily.add(&line(today + 60, "alice", 200, true, 50));
        daily.add(&line(today + 90, "alice", 200, true, 7));
        daily.add(&line(today - 86_400 * 3, "alice", 200, true, 10));
        daily.add(&line(today - 86_400 * 40, "alice", 200, true, 1));
        daily.add(&line(today + 100, "bob", 429, false, 0));
        let mut config = QuotaConfig::default();
        config.add_spec("alice:tokens-per-day=1000").unwrap();
        let quotas = Quotas::new(config);
        quotas.add_tokens("alice", now, 257);
        let sources = Sources {
            daily: &daily,
            quotas: &quotas,
            plans: Vec::new(),
            now,
        };

        let alice = client_usage(&sources, "alice");
        assert_eq!(alice.overview.today.from, "2026-12-02");
        assert_eq!(alice.overview.today.sums.requests, 2);
        assert_eq!(alice.overview.today.sums.output_tokens, 57);
        assert_eq!(alice.overview.today.sums.estimated, 1);
        // The day 40 days back is in neither this month nor the last 30 days.
        assert_eq!(alice.overview.this_month.from, "2026-12-01");
        assert_eq!(alice.overview.this_month.sums.requests, 2);
        assert_eq!(alice.overview.last_30_days.sums.requests, 3);
        assert_eq!(alice.days.len(), 30);
        assert_eq!(alice.days[29].date, "2026-12-02");
        assert_eq!(alice.days[26].sums.output_tokens, 10);
        assert_eq!(alice.by_model[0].model, "gpt-5");
        assert_eq!(alice.quotas[0].used, 257);
        assert_eq!(alice.quotas[0].left, 743);
        let text = serde_json::to_string(&alice).unwrap();
        assert!(!text.contains("bob"), "{text}");

        let all = operator_usage(
            &sources,
            OpenNow {
                streams: 0,
                websockets: 0,
            },
        );
        assert_eq!(all.overview.today.sums.requests, 3);
        assert_eq!(all.clients[0].client, "alice");
        assert_eq!(all.clients[1].client, "bob");
        assert_eq!(all.days[29].by_client["bob"].errors, 1);
        assert_eq!(all.refusals[0].status, 429);
        assert_eq!(all.refusals[0].requests, 1);
        assert_eq!(all.quotas[0].client, "alice");
        // By credential: alice's three requests of the last 30 days went with the plan; bob's
        // refusal with none.
        assert_eq!(all.by_credential.len(), 1, "{:?}", all.by_credential);
        assert_eq!(all.by_credential[0].credential, "plan");
        assert_eq!(all.by_credential[0].sums.requests, 3);
    }
}
