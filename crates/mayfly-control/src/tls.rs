//! TLS for listeners that are not loopback: a configured certificate, or a
//! self-signed one generated at first start and kept in the state directory.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// A certificate chain and key, and where they came from.
pub struct Identity {
    pub config: Arc<rustls::ServerConfig>,
    pub cert_path: PathBuf,
    /// SHA-256 of the leaf certificate, as colon-separated hex.
    pub fingerprint: String,
    pub generated: bool,
}

fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref()).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let mut file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Generates a self-signed certificate for `names` into `dir` unless one is
/// there already.
fn ensure_self_signed(dir: &Path, names: Vec<String>) -> Result<(PathBuf, PathBuf, bool), String> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path, false));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| format!("cannot generate a self-signed certificate: {e}"))?;
    write_private(&key_path, generated.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_private(&cert_path, generated.cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path, true))
}

fn load(cert_path: &Path, key_path: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("cannot read the certificate {}: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate {} is not valid PEM: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| format!("cannot read the private key {}: {e}", key_path.display()))?;
    Ok((certs, key))
}

/// Loads the configured certificate, or the generated one under `dir`.
pub fn identity(configured: Option<(&PathBuf, &PathBuf)>, dir: &Path, listen: std::net::IpAddr) -> Result<Identity, String> {
    let (cert_path, key_path, generated) = match configured {
        Some((cert, key)) => (cert.clone(), key.clone(), false),
        None => {
            let mut names = vec!["localhost".to_string()];
            // An unspecified address (0.0.0.0, ::) is no name a client connects to.
            if !listen.is_unspecified() {
                names.push(listen.to_string());
            }
            if let Ok(host) = nix::unistd::gethostname() {
                if let Some(host) = host.to_str() {
                    names.push(host.to_string());
                }
            }
            ensure_self_signed(dir, names)?
        }
    };
    let (certs, key) = load(&cert_path, &key_path)?;
    let fingerprint = fingerprint(&certs[0]);
    // ring rather than aws-lc-rs keeps the build free of a C toolchain step;
    // rustls marks it deprecated only for lacking post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate {} and key {} do not form a usable pair: {e}", cert_path.display(), key_path.display()))?;
    Ok(Identity { config: Arc::new(config), cert_path, fingerprint, generated })
}
