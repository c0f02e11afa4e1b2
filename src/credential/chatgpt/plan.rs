//! How much of the ChatGPT plan's limits is used, as the Codex backend reports it: the
//! `x-codex-{primary,secondary}-{used-percent,window-minutes,reset-at}` headers of its answers and
//! the `codex.rate_limits` event of a WebSocket. Read as they pass (never changing what the client
//! gets), kept as the latest snapshot, and written to `plan-usage.json` in the home so that
//! `keyward status` can show it.

use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

/// The file in keyward's home holding the latest snapshot.
pub const FILE: &str = "plan-usage.json";

/// One limit window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub used_percent: f64,
    pub window_minutes: Option<u64>,
    /// When the window resets, in seconds since the Unix epoch.
    pub reset_at: Option<i64>,
}

/// The latest report of the plan's usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanUsage {
    pub primary: Option<Window>,
    pub secondary: Option<Window>,
    /// When keyward saw it, in seconds since the Unix epoch.
    pub seen_at: i64,
}

impl PlanUsage {
    /// From an answer's headers; `None` when they say nothing about the limits.
    pub fn from_headers(headers: &HeaderMap, now: i64) -> Option<Self> {
        let window = |name: &str| -> Option<Window> {
            let get = |field: &str| {
                headers
                    .get(format!("x-codex-{name}-{field}"))
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
            };
            Some(Window {
                used_percent: get("used-percent")?.parse().ok()?,
                window_minutes: get("window-minutes").and_then(|v| v.parse().ok()),
                reset_at: get("reset-at").and_then(|v| v.parse().ok()),
            })
        };
        Self::from_windows(window("primary"), window("secondary"), now)
    }

    /// From a `codex.rate_limits` event (its windows at the top or under `rate_limits`).
    pub fn from_event(event: &Value, now: i64) -> Option<Self> {
        if event["type"] != "codex.rate_limits" {
            return None;
        }
        let limits = if event["rate_limits"].is_object() {
            &event["rate_limits"]
        } else {
            event
        };
        let window = |value: &Value| -> Option<Window> {
            Some(Window {
                used_percent: value["used_percent"].as_f64()?,
                window_minutes: value["window_minutes"].as_u64(),
                reset_at: value["reset_at"]
                    .as_i64()
                    .or_else(|| value["resets_at"].as_i64()),
            })
        };
        Self::from_windows(
            window(&limits["primary"]),
            window(&limits["secondary"]),
            now,
        )
    }

    fn from_windows(primary: Option<Window>, secondary: Option<Window>, now: i64) -> Option<Self> {
        (primary.is_some() || secondary.is_some()).then_some(Self {
            primary,
            secondary,
            seen_at: now,
        })
    }

    /// The snapshot `keyward serve` last wrote to `home`, if any.
    pub fn read(home: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(home.join(FILE)).ok()?).ok()
    }
}

/// The latest snapshot, shared by every request; written to the home by a task of its own.
pub struct PlanLimits {
    latest: Mutex<Option<PlanUsage>>,
    changed: watch::Sender<Option<PlanUsage>>,
}

impl Default for PlanLimits {
    fn default() -> Self {
        Self {
            latest: Mutex::new(None),
            changed: watch::channel(None).0,
        }
    }
}

impl PlanLimits {
    /// Takes in a report; cheap, and never waits.
    pub fn observe(&self, usage: PlanUsage) {
        *self.latest.lock() = Some(usage.clone());
        self.changed.send_replace(Some(usage));
    }

    pub fn latest(&self) -> Option<PlanUsage> {
        self.latest.lock().clone()
    }

    /// Writes each new snapshot to `home`/[`FILE`] (0600), at most once a second (a second
    /// after a change), until `stop` says keyward is stopping.
    pub async fn write_to(&self, home: PathBuf, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut changed = self.changed.subscribe();
        loop {
            tokio::select! {
                seen = changed.changed() => if seen.is_err() { return },
                _ = stop.wait_for(|&stop| stop) => return,
            }
            // Changes within a second are written once, a second after the first: keyward that
            // stops meanwhile writes nothing more.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|&stop| stop) => return,
            }
            let usage = changed.borrow_and_update().clone();
            if let Some(usage) = usage {
                let path = home.join(FILE);
                let written =
                    tokio::task::spawn_blocking(move || write_private(&path, &usage)).await;
                if let Ok(Err(err)) = written {
                    tracing::debug!(error = %err, "could not write the plan usage file");
                }
            }
        }
    }
}

fn write_private(path: &Path, usage: &PlanUsage) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".plan-usage-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    file.write_all(&serde_json::to_vec(usage).map_err(std::io::Error::other)?)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_events_give_the_same_snapshot() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("x-codex-primary-used-percent", "42.5"),
            ("x-codex-primary-window-minutes", "300"),
            ("x-codex-primary-reset-at", "1795000000"),
            ("x-codex-secondary-used-percent", "7"),
        ] {
            headers.insert(k, v.parse().unwrap_or_else(|_| panic!("{v}")));
        }
        let from_headers = PlanUsage::from_headers(&headers, 1).unwrap_or_else(|| panic!("none"));
        let event = serde_json::json!({"type": "codex.rate_limits", "rate_limits": {
            "primary": {"used_percent": 42.5, "window_minutes": 300, "reset_at": 1_795_000_000},
            "secondary": {"used_percent": 7.0}}});
        assert_eq!(PlanUsage::from_event(&event, 1), Some(from_headers.clone()));
        assert_eq!(from_headers.secondary.map(|w| w.used_percent), Some(7.0));
        assert_eq!(PlanUsage::from_headers(&HeaderMap::new(), 1), None);
    }
}
