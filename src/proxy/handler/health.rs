//! `GET /healthz` and `GET /readyz`: whether keyward is alive, and whether every credential it
//! holds can be used.

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
        // Ready when every credential is; with several, each is named.
        let ready = all.iter().try_for_each(|credential| {
            credential.readiness().map_err(|reason| match all.len() {
                1 => reason,
                _ => format!("credential {}: {reason}", credential.name()),
            })
        });
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
                .map(|credential| {
                    let state = match credential.readiness() {
                        Ok(()) => serde_json::json!({ "kind": credential.kind(), "ready": true }),
                        Err(reason) => serde_json::json!({
                            "kind": credential.kind(), "ready": false, "reason": reason,
                        }),
                    };
                    (credential.name().to_string(), state)
                })
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        let degraded = all.iter().find_map(Credential::degraded).or_else(|| {
            self.telemetry
                .as_ref()
                .is_some_and(|t| t.state_down())
                .then_some("state database unreachable")
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
