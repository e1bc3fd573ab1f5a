//! TLS for the verifier's HTTPS listener: rustls with the `ring` provider.
//!
//! Owns the development CA (made on first start when no certificate is configured) and the
//! loading of an operator's certificate and key. Hands on a [`rustls::ServerConfig`] offering
//! HTTP/2 and HTTP/1.1. Never uses another crypto provider than `ring`, and never replaces an
//! existing CA: agents pin it, so a new one would cut them all off.
//!
//! # Development CA files (in the data directory)
//!
//! | file | content |
//! |---|---|
//! | `ca.pem` | the CA certificate (ECDSA P-256), to pin in agents' configuration |
//! | `ca.key` | its private key, PKCS#8 PEM, mode 0600 |
//! | `server.pem` | the server certificate for `127.0.0.1`, `::1` and `localhost`, signed by the CA |
//! | `server.key` | its private key, PKCS#8 PEM, mode 0600 |
//!
//! All four are made together. If only some exist, start-up fails and says which: repairing by
//! hand is safer than a silent new CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;
use crate::keys::write_secret_file;

/// The development CA certificate's file name.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The development CA key's file name.
pub const CA_KEY_FILE: &str = "ca.key";
/// The development server certificate's file name.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// The development server key's file name.
pub const SERVER_KEY_FILE: &str = "server.key";

/// Makes `ring` the process's rustls crypto provider, once; later calls do nothing. Call it
/// before building any rustls configuration or reqwest client.
pub fn install_crypto_provider() {
    // An Err means a provider is already installed (by an earlier call or by the embedding
    // program), which is what this function wants anyway.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Makes sure the development CA and server certificate exist in `data_dir`; returns the paths
/// of the server certificate and key. Returns whether they were just made.
pub fn ensure_dev_ca(data_dir: &Path) -> Result<(PathBuf, PathBuf, bool), Error> {
    let files =
        [CA_CERT_FILE, CA_KEY_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE].map(|f| data_dir.join(f));
    let present: Vec<&PathBuf> = files.iter().filter(|p| p.exists()).collect();
    let [ca_cert, ca_key, cert, key] = &files;
    if present.len() == files.len() {
        return Ok((cert.clone(), key.clone(), false));
    }
    if !present.is_empty() {
        let missing: Vec<String> = files
            .iter()
            .filter(|p| !p.exists())
            .map(|p| p.display().to_string())
            .collect();
        return Err(Error::Tls(format!(
            "development CA is incomplete, missing {}; restore it from a backup, or delete \
             ca.pem, ca.key, server.pem and server.key to make a new CA (agents must then be \
             given the new ca.pem)",
            missing.join(", ")
        )));
    }

    let tls = |e: rcgen::Error| Error::Tls(format!("generating the development CA: {e}"));
    let ca_key_pair = KeyPair::generate().map_err(tls)?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Cadence verifier development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = ca_params.self_signed(&ca_key_pair).map_err(tls)?.pem();
    let issuer = Issuer::new(ca_params, &ca_key_pair);

    let server_key = KeyPair::generate().map_err(tls)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Cadence verifier (development)");
    params.subject_alt_names = vec![
        SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
        SanType::DnsName("localhost".try_into().map_err(tls)?),
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let server_pem = params.signed_by(&server_key, &issuer).map_err(tls)?.pem();

    // Keys first, certificates last: a crash in between leaves an incomplete set, which the
    // next start reports instead of trusting.
    write_secret_file(ca_key, ca_key_pair.serialize_pem().as_bytes())?;
    write_secret_file(key, server_key.serialize_pem().as_bytes())?;
    write_public_file(cert, server_pem.as_bytes())?;
    write_public_file(ca_cert, ca_pem.as_bytes())?;
    Ok((cert.clone(), key.clone(), true))
}

/// A rustls server configuration from a PEM certificate chain and key, offering h2 and
/// http/1.1.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, Error> {
    install_crypto_provider();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| Error::Tls(format!("reading certificate {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(Error::Tls(format!("no certificate in {}", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Tls(format!("reading private key {}: {e}", key.display())))?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            Error::Tls(format!(
                "certificate {} and key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Writes a public file (a certificate), refusing to replace one.
fn write_public_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(Error::io("creating", path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(Error::io("writing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_ca_is_made_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, made) = ensure_dev_ca(dir.path()).unwrap();
        assert!(made);
        let ca = std::fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap();
        let (_, _, made) = ensure_dev_ca(dir.path()).unwrap();
        assert!(!made);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap(),
            ca
        );
        let config = server_config(&cert, &key).unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");
    }

    #[test]
    fn incomplete_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ensure_dev_ca(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(SERVER_KEY_FILE)).unwrap();
        let err = ensure_dev_ca(dir.path()).unwrap_err().to_string();
        assert!(err.contains("server.key"), "{err}");
    }
}
