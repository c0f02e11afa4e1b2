//! Usage by day, kept in memory for the usage views (`GET /keyward/usage` for a client, the
//! operator's `GET /usage`): per UTC day, per client and model, the requests and their tokens,
//! and the requests keyward refused, by status. Built once at start from the ledger (the file,
//! or with `--state` the database's table) and added to as requests end, so that a view never
//! reads the ledger. The last [`DAYS_KEPT`] days are kept.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use crate::telemetry::ledger::Counted;
use crate::telemetry::record::Record;
use crate::telemetry::usage::Tokens;

/// Days kept: this month and the 30 days before today, whatever the date.
pub const DAYS_KEPT: u64 = 62;

/// At most this many distinct model names are kept (a model name is what a client sent); later
/// ones are summed as `other`.
const MAX_MODELS: usize = 100;

/// The model of requests that named none (a retrieve, a refusal).
pub const NO_MODEL: &str = "-";

/// What some requests added up to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sums {
    pub requests: u64,
    /// Refused, failed, or not ended with a whole response.
    pub errors: u64,
    /// Requests whose tokens are keyward's estimate (the upstream reported no usage).
    pub estimated: u64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Sums {
    pub fn add(&mut self, other: &Sums) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.estimated += other.estimated;
        self.input_tokens += other.input_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.output_tokens += other.output_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
    }

    /// Input plus output tokens: what the token quota counts.
    pub fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// One finished request, as the roll-ups see it.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub client: &'a str,
    /// The credential it was sent with; `None` when keyward answered itself.
    pub credential: Option<&'a str>,
    pub model: Option<&'a str>,
    pub status: u16,
    /// `None`: keyward answered itself.
    pub upstream_status: Option<u16>,
    pub completed: bool,
    pub tokens: Tokens,
    pub estimated: bool,
}

impl<'a> Line<'a> {
    pub fn from_record(record: &'a Record) -> Self {
        Line {
            at: secs(record.at),
            client: &record.client,
            credential: record.credential.as_deref(),
            model: record.model.as_deref(),
            status: record.status,
            upstream_status: record.upstream_status,
            completed: record.end == crate::telemetry::record::End::Completed,
            tokens: record.tokens.unwrap_or_default(),
            estimated: record.estimated,
        }
    }

    pub fn from_counted(entry: &'a Counted) -> Self {
        Line {
            at: entry.ts.max(0.0) as u64,
            client: &entry.client,
            credential: entry.credential.as_deref(),
            model: entry.model.as_deref(),
            status: entry.status,
            upstream_status: entry.upstream_status,
            completed: entry.end == "completed",
            tokens: Tokens {
                input: entry.input_tokens,
                cached_input: entry.cached_input_tokens,
                output: entry.output_tokens,
                reasoning: entry.reasoning_tokens,
            },
            estimated: entry.estimated,
        }
    }

    fn sums(&self) -> Sums {
        Sums {
            requests: 1,
            errors: u64::from(self.status >= 400 || !self.completed),
            estimated: u64::from(self.estimated),
            input_tokens: self.tokens.input,
            cached_input_tokens: self.tokens.cached_input,
            output_tokens: self.tokens.output,
            reasoning_tokens: self.tokens.reasoning,
        }
    }
}

/// One day's sums of one client and model, as the state database sums them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summed {
    pub day: u64,
    pub client: String,
    pub credential: Option<String>,
    pub model: Option<String>,
    pub sums: Sums,
}

/// One day's sums.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Day {
    /// Client → model → sums.
    pub clients: HashMap<Arc<str>, HashMap<Arc<str>, Sums>>,
    /// Credential → sums (the requests sent upstream).
    pub credentials: HashMap<Arc<str>, Sums>,
    /// Requests keyward answered itself with an error (the upstream never saw them), by status.
    pub refused: BTreeMap<u16, u64>,
}

impl Day {
    fn add(&mut self, line: &Line, model: Arc<str>) {
        let by_model = match self.clients.get_mut(line.client) {
            Some(by_model) => by_model,
            None => self.clients.entry(Arc::from(line.client)).or_default(),
        };
        let sums = line.sums();
        by_model.entry(model).or_default().add(&sums);
        if let Some(credential) = line.credential {
            self.credential(credential).add(&sums);
        }
        if line.upstream_status.is_none() && line.status >= 400 {
            *self.refused.entry(line.status).or_default() += 1;
        }
    }

    /// The sums of the credential named `name` (made on first use).
    fn credential(&mut self, name: &str) -> &mut Sums {
        if !self.credentials.contains_key(name) {
            self.credentials.insert(Arc::from(name), Sums::default());
        }
        self.credentials
            .get_mut(name)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Every sum of the day, or of one client's.
    pub fn total(&self, client: Option<&str>) -> Sums {
        let mut sums = Sums::default();
        for (name, by_model) in &self.clients {
            if client.is_none_or(|c| c == &**name) {
                by_model.values().for_each(|s| sums.add(s));
            }
        }
        sums
    }
}

#[derive(Default)]
struct Days {
    /// Shared with the views reading them: a view holds the lock only to take the days it
    /// reads, and a request that ends meanwhile writes to a copy of its day.
    by_day: BTreeMap<u64, Arc<Day>>,
    models: HashSet<Arc<str>>,
}

/// The roll-ups, shared by every worker.
pub struct Daily {
    days: Mutex<Days>,
    other: Arc<str>,
}

impl Default for Daily {
    fn default() -> Self {
        Self {
            days: Mutex::new(Days::default()),
            other: Arc::from("other"),
        }
    }
}

impl Daily {
    /// Counts one finished request on its day.
    pub fn add(&self, line: &Line) {
        let day = line.at / 86_400;
        let mut days = self.days.lock();
        let Days { by_day, models } = &mut *days;
        if !by_day.contains_key(&day) {
            // A new day: the oldest leaves.
            let newest = by_day.keys().next_back().map_or(day, |&last| last.max(day));
            let oldest = newest.saturating_sub(DAYS_KEPT - 1);
            if day < oldest {
                return;
            }
            by_day.retain(|&d, _| d >= oldest);
        }
        let model = self.model(models, line.model.unwrap_or(NO_MODEL));
        Arc::make_mut(by_day.entry(day).or_default()).add(line, model);
    }

    /// The name a model is kept under: its own, or past [`MAX_MODELS`], `other`.
    fn model(&self, models: &mut HashSet<Arc<str>>, name: &str) -> Arc<str> {
        match models.get(name) {
            Some(known) => known.clone(),
            None if models.len() < MAX_MODELS => {
                let name: Arc<str> = Arc::from(name);
                models.insert(name.clone());
                name
            }
            None => self.other.clone(),
        }
    }

    /// Replaces the days from `from` on with what the state database's table holds (every
    /// replica's lines), summed by the database.
    pub fn replace_from(&self, from: u64, sums: Vec<Summed>, refused: Vec<(u64, u16, u64)>) {
        let mut days = self.days.lock();
        let Days { by_day, models } = &mut *days;
        by_day.retain(|&d, _| d < from);
        for row in sums.into_iter().filter(|row| row.day >= from) {
            let model = self.model(models, row.model.as_deref().unwrap_or(NO_MODEL));
            let day = Arc::make_mut(by_day.entry(row.day).or_default());
            let client = match day.clients.get_key_value(row.client.as_str()) {
                Some((name, _)) => name.clone(),
                None => Arc::from(row.client),
            };
            let by_model = day.clients.entry(client).or_default();
            by_model.entry(model).or_default().add(&row.sums);
            if let Some(credential) = &row.credential {
                day.credential(credential).add(&row.sums);
            }
        }
        for (day, status, n) in refused.into_iter().filter(|r| r.0 >= from) {
            *Arc::make_mut(by_day.entry(day).or_default())
                .refused
                .entry(status)
                .or_default() += n;
        }
    }

    /// Calls `each` with every kept day from `from` on, in order. Requests ending meanwhile
    /// never wait for it: the lock is held only to take the days.
    pub fn visit(&self, from: u64, mut each: impl FnMut(u64, &Day)) {
        let days: Vec<(u64, Arc<Day>)> = {
            let days = self.days.lock();
            let held = days.by_day.range(from..);
            held.map(|(&day, sums)| (day, sums.clone())).collect()
        };
        for (day, sums) in days {
            each(day, &sums);
        }
    }

    /// The first day held.
    pub fn first_day(&self) -> Option<u64> {
        self.days.lock().by_day.keys().next().copied()
    }
}

/// Seconds since the Unix epoch.
pub fn secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A day's date, `2026-12-02`.
pub fn date(day: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(day * 86_400);
    humantime::format_rfc3339_seconds(at).to_string()[..10].to_owned()
}

/// The first day of `day`'s month.
pub fn month_start(day: u64) -> u64 {
    let of_month: u64 = date(day)[8..10].parse().unwrap_or(1);
    day + 1 - of_month
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(at: u64, client: &str, model: &str, status: u16, output: u64) -> Line<'static> {
        let client: &'static str = Box::leak(client.to_owned().into_boxed_str());
        let model: &'static str = Box::leak(model.to_owned().into_boxed_str());
        Line {
            at,
            client,
            credential: (status != 429).then_some("api-key"),
            model: Some(model),
            status,
            upstream_status: (status != 429).then_some(status),
            completed: status == 200,
            tokens: Tokens {
                input: 10,
                cached_input: 4,
                output,
                reasoning: 1,
            },
            estimated: false,
        }
    }

    #[test]
    fn dates_and_months_are_utc() {
        // 2026-12-02 is day 20_789.
        assert_eq!(date(20_789), "2026-12-02");
        assert_eq!(date(month_start(20_789)), "2026-12-01");
        assert_eq!(month_start(20_788), 20_788);
        assert_eq!(date(month_start(20_787)), "2026-11-01");
    }

    #[test]
    fn requests_add_up_by_day_client_and_model_and_old_days_leave() {
        let daily = Daily::default();
        let day = 20_789u64;
        daily.add(&line(day * 86_400 + 5, "alice", "gpt-5", 200, 7));
        daily.add(&line(day * 86_400 + 9, "alice", "gpt-5", 200, 3));
        daily.add(&line(day * 86_400 + 9, "bob", "gpt-5", 429, 0));
        daily.add(&line((day - 1) * 86_400, "alice", "o3", 200, 1));
        let mut seen = Vec::new();
        daily.visit(0, |d, sums| seen.push((d, sums.total(Some("alice")))));
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].0, day);
        assert_eq!(seen[1].1.requests, 2);
        assert_eq!(seen[1].1.output_tokens, 10);
        assert_eq!(seen[1].1.tokens(), 30);
        daily.visit(day, |_, sums| {
            assert_eq!(sums.total(None).requests, 3);
            assert_eq!(sums.total(None).errors, 1);
            assert_eq!(sums.refused, BTreeMap::from([(429, 1)]));
        });
        // DAYS_KEPT later, the first day has left.
        daily.add(&line((day + DAYS_KEPT - 1) * 86_400, "alice", "o3", 200, 1));
        assert_eq!(daily.first_day(), Some(day));
        // A line older than what is kept is not counted.
        daily.add(&line((day - 5) * 86_400, "alice", "o3", 200, 1));
        assert_eq!(daily.first_day(), Some(day));
    }

    #[test]
    fn a_request_ending_while_a_view_reads_the_days_does_not_wait_for_it() {
        let daily = std::sync::Arc::new(Daily::default());
        daily.add(&line(86_400 * 100, "alice", "gpt-5", 200, 1));
        let mut added_meanwhile = false;
        daily.visit(0, |_, _| {
            // A worker's account phase, while the view is still reading.
            let (done, finished) = std::sync::mpsc::channel();
            let worker = daily.clone();
            std::thread::spawn(move || {
                worker.add(&line(86_400 * 100, "bob", "gpt-5", 200, 1));
                let _ = done.send(());
            });
            added_meanwhile = finished
                .recv_timeout(std::time::Duration::from_secs(5))
                .is_ok();
        });
        assert!(added_meanwhile, "the request waited for the view");
        daily.visit(0, |_, day| assert_eq!(day.total(None).requests, 2));
    }

    #[test]
    fn model_names_are_capped() {
        let daily = Daily::default();
        for i in 0..MAX_MODELS + 10 {
            daily.add(&line(86_400 * 100, "mallory", &format!("m{i}"), 200, 1));
        }
        daily.visit(0, |_, sums| {
            let by_model = &sums.clients["mallory"];
            assert_eq!(by_model.len(), MAX_MODELS + 1);
            assert_eq!(by_model["other"].requests, 10);
        });
    }
}
