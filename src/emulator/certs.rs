//! The emulator's TLS identity: the operator's PEM files, or a throwaway CA
//! and a `localhost`/`127.0.0.1` certificate made at start.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::tls::{load_certs, load_key, TlsError};

/// A server identity and the PEM of the CA a client must trust to verify it.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub ca_pem: Option<String>,
}

/// Loads `--cert/--key`.
pub fn from_files(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    Ok(Identity {
        chain: load_certs(cert)?,
        key: load_key(key)?,
        ca_pem: None,
    })
}

/// Makes a fresh CA and a server certificate for `localhost`, `127.0.0.1`
/// and the `extra_names` (e.g. a compose service's host name).
pub fn generate(extra_names: &[String]) -> Result<Identity, rcgen::Error> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "amqp-bridge emulator CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut params = rcgen::CertificateParams::new(
        ["localhost", "127.0.0.1"]
            .into_iter()
            .map(str::to_string)
            .chain(extra_names.iter().cloned())
            .collect::<Vec<_>>(),
    )?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    Ok(Identity {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        ca_pem: Some(ca_cert.pem()),
    })
}
