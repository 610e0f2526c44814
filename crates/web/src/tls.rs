//! `web.tls`: the server's rustls configuration, from the operator's certificate and key or
//! from a self-signed pair made in the home at the first start (0600, kept, so its fingerprint
//! stays what clients pinned).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use n0m1_core::Home;
use n0m1_core::config::TlsSetting;
use n0m1_core::home::write_private;
use n0m1_ctl::tls::{fingerprint_of, read_certificates, read_key};

/// The server configuration, and the certificate's fingerprint (for the log).
pub fn server_config(
    home: &Home,
    setting: &TlsSetting,
    listen: SocketAddr,
) -> anyhow::Result<(Arc<rustls::ServerConfig>, String)> {
    let (cert_path, key_path) = match setting {
        TlsSetting::Named(_) => {
            let (cert, key) = (home.web_cert(), home.web_key());
            if !cert.exists() || !key.exists() {
                make_self_signed(&cert, &key, listen)?;
            }
            (cert, key)
        }
        TlsSetting::Files { cert, key } => (home.root().join(cert), home.root().join(key)),
    };
    let certificates = read_certificates(&cert_path)?;
    let fingerprint = fingerprint_of(&certificates[0]);
    let key = read_key(&key_path)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certificates, key)
    .with_context(|| {
        format!(
            "the key {} does not go with the certificate {}",
            key_path.display(),
            cert_path.display()
        )
    })?;
    Ok((Arc::new(config), fingerprint))
}

/// A key and a self-signed certificate naming this machine's names and the listening address.
fn make_self_signed(cert: &Path, key: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname")
        && !host.trim().is_empty()
    {
        names.push(host.trim().to_owned());
    }
    names.dedup();
    let made = rcgen::generate_simple_self_signed(names)
        .context("cannot make a self-signed certificate")?;
    write_private(key, made.signing_key.serialize_pem().as_bytes())?;
    write_private(cert, made.cert.pem().as_bytes())?;
    tracing::info!(
        "made a self-signed certificate {} (key {})",
        cert.display(),
        key.display()
    );
    Ok(())
}
