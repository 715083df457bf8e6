//! The HTTP sink (CONTRACT.md §5): a `POST` of the JSON body to the resource's URL, with
//! its bearer token if it names one; any 2xx is delivered, anything else is retried with
//! exponential backoff, each attempt within the resource's timeout.
//!
//! This is the only file that names the HTTP client (ureq, blocking, which suits rayon).
//! HTTPS checks certificates against the system's roots.

use std::sync::OnceLock;
use std::time::Duration;

use super::{Delivery, Sink};
use crate::report::{DeliveryStatus, NotificationRecord};

/// The wait before the first retry; it doubles per retry up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Delivers by HTTP `POST`, one shared client for the process.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HttpSink;

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                    .build(),
            )
            // Statuses are ours to judge (any 2xx is delivered); a redirect is not
            // followed, so a bearer token never travels to another host.
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("hsm-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent()
    })
}

/// The wait before retry number `retry` (1-based).
fn backoff(retry: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
        .min(MAX_BACKOFF)
}

impl Sink for HttpSink {
    /// One delivery: attempts with the resource's timeout, retried with exponential
    /// backoff.
    fn deliver(&self, d: &Delivery<'_>) -> NotificationRecord {
        let r = d.resource;
        let mut rec = d.unsent();
        let auth = match &r.bearer_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(format!("Bearer {v}")),
                _ => {
                    rec.error = Some(format!(
                        "environment variable `{var}` (the bearer token of resource `{}`) is not set; nothing was sent",
                        r.name
                    ));
                    return rec;
                }
            },
        };
        let body = match serde_json::to_vec(&d.body) {
            Ok(b) => b,
            Err(e) => {
                rec.error = Some(format!("cannot encode the body: {e}"));
                return rec;
            }
        };
        for attempt in 1..=r.retries.saturating_add(1) {
            if attempt > 1 {
                std::thread::sleep(backoff(attempt - 1));
            }
            rec.attempts = Some(attempt);
            let mut req = agent()
                .post(&r.url)
                .config()
                .timeout_global(Some(r.timeout))
                .build()
                .header("Content-Type", "application/json");
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            match req.send(&body[..]) {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    rec.http_status = Some(status);
                    if (200..300).contains(&status) {
                        rec.status = DeliveryStatus::Sent;
                        rec.error = None;
                        return rec;
                    }
                    rec.error = Some(format!("HTTP {status}"));
                }
                Err(e) => {
                    rec.http_status = None;
                    rec.error = Some(describe_http_error(&e, r.timeout));
                }
            }
        }
        rec
    }
}

fn describe_http_error(e: &ureq::Error, timeout: Duration) -> String {
    match e {
        ureq::Error::Timeout(_) => format!("no answer within {} (timeout)", humantime::format_duration(timeout)),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
