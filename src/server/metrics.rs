//! The telemetry hub as the server builds it, and the operator's listener (`--metrics-listen`):
//! `GET /metrics` and the usage page, `GET /usage`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::proxy::credentials::Credentials;
use crate::state::ledger::SharedLedger;
use crate::telemetry::ledger::LedgerStore;
use crate::telemetry::ledger::{Ledger, LedgerError};
use crate::telemetry::metrics::{SharedTelemetry, Telemetry};
use crate::telemetry::quota::Quotas;
use crate::upstream::state_db::StateDb;

/// The metrics, the ledger and the quotas, when any of them is configured. Token counts for the
/// quotas are rebuilt from the last 24 hours of the ledger.
pub(crate) fn telemetry(
    config: &Config,
    credentials: &Credentials,
    state_db: Option<&Arc<StateDb>>,
    owners: Option<&Arc<crate::access::owners::Owners>>,
) -> Result<Option<Arc<Telemetry>>, LedgerError> {
    if config.metrics_listen.is_none()
        && config.usage_log.is_none()
        && config.quotas.is_empty()
        && config.config_file.is_none()
        && state_db.is_none()
    {
        return Ok(None);
    }
    let quotas = Arc::new(Quotas::new(config.quotas.clone()));
    let mut ledgers: Vec<Box<dyn LedgerStore>> = Vec::new();
    let mut read_back = None;
    if let Some(path) = &config.usage_log {
        let ledger = Ledger::open(path, config.usage_log_buffer)?;
        if std::fs::metadata(path).is_ok_and(|meta| meta.is_file()) {
            read_back = Some(path.clone());
        } else {
            // A FIFO (a log shipper reading it), a device: nothing to read back.
            tracing::info!(
                path = %path.display(),
                "the usage ledger is not a regular file: token quotas and the usage views start from zero"
            );
        }
        ledgers.push(Box::new(ledger));
    }
    let logins = credentials
        .all()
        .iter()
        .filter_map(|c| Some((c.name().clone(), c.tokens()?.clone())))
        .collect();
    let shared = match (state_db, &config.state) {
        (Some(db), Some(state)) => {
            if state.ledger {
                let table = SharedLedger::spawn(
                    db.clone(),
                    state.replica.clone(),
                    state.unsent.clone(),
                    config.usage_log_buffer,
                )
                .map_err(|error| LedgerError::Io {
                    path: state.unsent.clone(),
                    error,
                })?;
                ledgers.push(Box::new(table));
            }
            Some(SharedTelemetry::new(db.clone(), owners.cloned()))
        }
        _ => None,
    };
    let telemetry = Arc::new(Telemetry::new(ledgers, quotas, logins, shared));
    if let Some(path) = read_back {
        // With the ledger's table, the day's token counts (every replica's) come from the
        // state database at the first exchange, and the usage views' days from its table.
        let with_quotas = state_db.is_none();
        let with_days = !config.state.as_ref().is_some_and(|state| state.ledger);
        if with_quotas || with_days {
            read_ledger(&path, &telemetry, with_quotas, with_days)?;
        }
    }
    Ok(Some(telemetry))
}

/// The ledger read back at start, so that quotas and the usage views survive a restart: the
/// token counts of the last 24 hours (with `quotas`) and the days the usage views show.
fn read_ledger(
    path: &std::path::Path,
    telemetry: &Telemetry,
    with_quotas: bool,
    with_days: bool,
) -> Result<(), LedgerError> {
    use crate::telemetry::daily::{DAYS_KEPT, Line};
    let started = std::time::Instant::now();
    let now = crate::telemetry::daily::secs(std::time::SystemTime::now());
    let day_ago = now.saturating_sub(86_400) as f64;
    let since = if with_days {
        (now / 86_400 + 1).saturating_sub(DAYS_KEPT) * 86_400
    } else {
        now.saturating_sub(86_400)
    };
    let mut entries = 0u64;
    let stats = crate::telemetry::ledger::read_counted_since(path, since as f64, |entry| {
        entries += 1;
        if with_quotas && entry.ts >= day_ago {
            let at = std::time::UNIX_EPOCH + Duration::from_secs_f64(entry.ts.max(0.0));
            let tokens = entry.input_tokens.saturating_add(entry.output_tokens);
            telemetry.quotas.add_tokens(&entry.client, at, tokens);
            if let Some(credential) = &entry.credential {
                telemetry
                    .quotas
                    .add_credential_tokens(credential, at, tokens);
            }
        }
        if with_days {
            telemetry.daily.add(&Line::from_counted(entry));
        }
    })?;
    tracing::info!(
        path = %path.display(),
        entries,
        lines_read = stats.lines,
        ms = started.elapsed().as_millis() as u64,
        "usage ledger read back: token counts of the last 24 hours, usage by day of the last {DAYS_KEPT} days"
    );
    Ok(())
}

/// Serves `GET /metrics` and `GET /usage` until shutdown.
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|&stop| stop) => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let telemetry = telemetry.clone();
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let telemetry = telemetry.clone();
            async move {
                let get = req.method() == http::Method::GET;
                let response = if get && req.uri().path() == "/usage" {
                    let usage = telemetry.operator_usage();
                    super::usage_page::answer(&usage, req.headers().get(http::header::ACCEPT))
                } else if get && req.uri().path() == "/metrics" {
                    let mut response = http::Response::new(crate::proxy::body::ProxyBody::full(
                        bytes::Bytes::from(telemetry.encode()),
                    ));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    response
                } else {
                    crate::proxy::error::error_response(
                        http::StatusCode::NOT_FOUND,
                        "invalid_request_error",
                        "not_found",
                        "this is keyward's operator listener: GET /metrics (Prometheus) and GET \
                         /usage (the usage page; JSON with Accept: application/json)",
                    )
                };
                Ok::<_, Infallible>(response)
            }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
