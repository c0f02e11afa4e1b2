//! `GET /healthz` and `GET /readyz`: whether keyward is alive, and whether the credentials it
//! holds can be used (all of them: ready; some: degraded, naming the others; none: not ready).

use http::{Response, StatusCode};

use super::{Proxy, json_response};
use crate::proxy::body::ProxyBody;
use crate::proxy::credential::Credential;

impl Proxy {
    /// `GET /healthz` (alive) and `GET /readyz` (a credential is loaded and usable).
    pub(super) fn health(&self, path: &str) -> Response<ProxyBody> {
        if path == "/healthz" {
            return json_response(StatusCode::OK, &serde_json::json!({ "status": "alive" }));
        }
        let all = self.credentials.all();
        let first = self.credentials.first();
        // Ready while any credential is (routes pass over the others); one that is not makes
        // the answer `degraded` and is named.
        let unready: Vec<String> = all
            .iter()
            .filter_map(|credential| {
                let reason = credential.readiness().err()?;
                Some(match all.len() {
                    1 => reason,
                    _ => format!("credential {}: {reason}", credential.name()),
                })
            })
            .collect();
        let ready = match unready.len() {
            0 => Ok(()),
            n if n < all.len() => Ok(()),
            _ => Err(unready.join("; ")),
        };
        let mut answer = serde_json::json!({
            "status": "ready",
            "credential": first.kind(),
            "sandbox": if crate::secret::sandbox::is_on() { "on" } else { "off" },
            "sandbox_files": if crate::secret::sandbox::files_on() { "on" } else { "off" },
        });
        first.report(&mut answer);
        if all.len() > 1 {
            answer["credentials"] = all
                .iter()
                .enumerate()
                .map(|(index, credential)| {
                    let mut state = match credential.readiness() {
                        Ok(()) => serde_json::json!({ "kind": credential.kind(), "ready": true }),
                        Err(reason) => serde_json::json!({
                            "kind": credential.kind(), "ready": false, "reason": reason,
                        }),
                    };
                    // Passed over for now, and until when: a spent plan, a quota reached.
                    if let Some(until) = self.credentials.resting_until(index) {
                        state["resting_until"] = until.into();
                    }
                    if let Err(crate::proxy::error::ProxyError::CredentialQuota {
                        exceeded, ..
                    }) = self.credentials.within_quota(index)
                    {
                        state["over_quota"] = exceeded.quota.into();
                    }
                    (credential.name().to_string(), state)
                })
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        let degraded = unready
            .first()
            .cloned()
            .or_else(|| all.iter().find_map(Credential::degraded).map(str::to_owned))
            .or_else(|| {
                self.telemetry
                    .as_ref()
                    .is_some_and(|t| t.state_down())
                    .then(|| "state database unreachable".to_owned())
            });
        if let Some(reason) = degraded
            && ready.is_ok()
        {
            answer["status"] = "degraded".into();
            answer["reason"] = reason.into();
        }
        match ready {
            Ok(()) => json_response(StatusCode::OK, &answer),
            Err(reason) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({
                    "status": "not_ready",
                    "credential": first.kind(),
                    "reason": reason,
                }),
            ),
        }
    }
}
