//! Shared test parts: a fake upstream, an HTTP client, and keyward started in-process or as a
//! child process.

#![allow(dead_code)]

pub mod api;
pub mod chatgpt;
pub mod client;
pub mod keyward;
pub mod postgres;
pub mod responses;
pub mod upstream;
pub mod users;
pub mod ws;

use std::time::Duration;

/// Generous bound for anything that should happen "at once": the point is ordering, not speed.
pub const SOON: Duration = Duration::from_secs(10);

/// A CA, and a certificate and key for `localhost` it signed, all PEM: for test servers that
/// speak TLS.
pub fn localhost_certificate() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(SOON, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// For a test that needs root: it is ignored when the tests were not built as root
/// (`keyward_root`, see build.rs); run as another user anyway, it fails here, saying why.
pub fn need_root() {
    assert_eq!(
        ::keyward::secret::hardening::effective_uid(),
        0,
        "this test needs root; it was built as root (build.rs) but runs as another user"
    );
}

/// The name of the user the tests run as: keyward counts this process's requests under it.
pub fn me() -> &'static str {
    static ME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ME.get_or_init(|| {
        let uid = ::keyward::secret::hardening::effective_uid();
        nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map_or_else(|| format!("uid:{uid}"), |user| user.name)
    })
}
