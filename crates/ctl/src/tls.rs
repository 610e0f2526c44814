//! TLS around `n0m1_web`: its certificate's fingerprint (`sha256:<64 hex digits>`, what
//! `n0m1ctl web fingerprint` prints and `--fingerprint` pins), PEM files, and the rustls client
//! configuration `--remote https://…` uses: a pinned fingerprint, a CA file, or the system's
//! roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use n0m1_core::config::TlsSetting;
use n0m1_core::{Config, Home};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Where Debian (and most distributions) keep the system's trusted roots, as one PEM file.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A certificate's SHA-256, as `sha256:<64 lowercase hex digits>`.
pub fn fingerprint_of(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Checks a fingerprint as an operator writes it (`sha256:` then 64 hex digits, colons
/// between pairs allowed, any case) and returns it as `fingerprint_of` writes it.
pub fn parse_fingerprint(text: &str) -> anyhow::Result<String> {
    let hex: String = text
        .trim()
        .strip_prefix("sha256:")
        .or_else(|| text.trim().strip_prefix("SHA256:"))
        .unwrap_or("")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "--fingerprint {text:?}: expected sha256: and 64 hex digits, as `n0m1ctl web fingerprint` prints on the server"
        );
    }
    Ok(format!("sha256:{hex}"))
}

pub fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read the certificate file {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
    if certificates.is_empty() {
        bail!(
            "{} holds no certificate (PEM, BEGIN CERTIFICATE)",
            path.display()
        );
    }
    Ok(certificates)
}

pub fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read a private key (PEM) from {}", path.display()))
}

/// The certificate file n0m1_web serves, as config.json says (`None`: no TLS).
pub fn certificate_path(home: &Home, config: &Config) -> Option<PathBuf> {
    match config.web.tls.as_ref()? {
        TlsSetting::Named(_) => Some(home.web_cert()),
        TlsSetting::Files { cert, .. } => Some(home.root().join(cert)),
    }
}

/// `n0m1ctl web fingerprint`: the fingerprint of the certificate n0m1_web serves.
pub fn home_fingerprint(home: &Home) -> anyhow::Result<String> {
    let config = Config::load(&home.config_path())?;
    let Some(path) = certificate_path(home, &config) else {
        bail!(
            "n0m1_web serves plain HTTP: set \"web\": {{\"tls\": \"self-signed\"}} (or {{\"cert\": FILE, \"key\": FILE}}) in {}",
            home.config_path().display()
        );
    };
    if !path.exists() && matches!(config.web.tls, Some(TlsSetting::Named(_))) {
        bail!(
            "no certificate yet at {}: n0m1_web makes it at its first start with web.tls = \"self-signed\"",
            path.display()
        );
    }
    let certificates = read_certificates(&path)?;
    Ok(fingerprint_of(&certificates[0]))
}

/// Whom `--remote https://…` trusts.
#[derive(Debug, Clone, PartialEq)]
pub enum Trust {
    /// Exactly this certificate (`--fingerprint`), whatever signed it: for self-signed ones.
    Pinned(String),
    /// Certificates signed by the CAs in this PEM file (`--ca-file`).
    CaFile(PathBuf),
    /// The system's roots.
    System,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration for `trust`.
pub fn client_config(trust: &Trust) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = match trust {
        Trust::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
                pin: pin.clone(),
                provider: provider(),
            }))
            .with_no_client_auth(),
        Trust::CaFile(path) => builder
            .with_root_certificates(roots_from(path)?)
            .with_no_client_auth(),
        Trust::System => builder
            .with_root_certificates(roots_from(Path::new(SYSTEM_ROOTS)).with_context(|| {
                format!("the system's roots ({SYSTEM_ROOTS}): install ca-certificates, or pass --ca-file or --fingerprint")
            })?)
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn roots_from(path: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(read_certificates(path)?);
    if added == 0 {
        bail!("{} holds no usable CA certificate", path.display());
    }
    Ok(roots)
}

/// Accepts exactly the pinned certificate (its name is not checked: the pin is stronger);
/// the handshake's signatures are still verified, so the server must hold its key.
#[derive(Debug)]
struct PinnedCertificate {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint_of(end_entity);
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate is {got}, not the pinned {}",
                self.pin
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_written_one_way_and_read_every_usual_way() {
        let fp = fingerprint_of(b"not a certificate");
        assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64, "{fp}");
        assert_eq!(parse_fingerprint(&fp).unwrap(), fp);
        let upper = fp.to_ascii_uppercase().replacen("SHA256:", "sha256:", 1);
        assert_eq!(parse_fingerprint(&upper).unwrap(), fp);
        let hex = &fp[7..];
        let colons: Vec<&str> = (0..32).map(|i| &hex[2 * i..2 * i + 2]).collect();
        assert_eq!(
            parse_fingerprint(&format!("sha256:{}", colons.join(":"))).unwrap(),
            fp
        );
        for bad in ["", "sha256:", "md5:abcd", &fp[..fp.len() - 1], "sha256:zz"] {
            assert!(parse_fingerprint(bad).is_err(), "{bad}");
        }
    }
}
