//! A throwaway certificate authority for TLS tests: a CA, a server
//! certificate (for `localhost`/`127.0.0.1`, or for the names a test gives)
//! and client certificates, as PEM files in a temporary directory.

use std::path::PathBuf;

/// PEM files made for one test; removed with it.
pub struct Pki {
    dir: tempfile::TempDir,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The client certificate's common name (the user of SASL EXTERNAL).
    pub client_cn: String,
}

impl Pki {
    /// A fresh CA with a server certificate for `localhost` and `127.0.0.1`
    /// and a client (`client_cn`) certificate.
    pub fn new(client_cn: &str) -> Pki {
        Pki::with_server_names(client_cn, &["localhost", "127.0.0.1"])
    }

    /// As [`Pki::new`], with the server certificate issued for `names` only
    /// (DNS names or IP addresses; the first is also its common name), e.g.
    /// another host's name, to check that clients verify host names.
    pub fn with_server_names(client_cn: &str, names: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "amqp-bridge test CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
        let pki = Pki {
            ca: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server.key"),
            client_cert: path("client.pem"),
            client_key: path("client.key"),
            client_cn: client_cn.to_string(),
            dir,
            ca_cert,
            ca_key,
        };
        pki.issue(
            names.iter().map(|n| n.to_string()).collect(),
            names.first().copied().unwrap_or("server"),
            "server",
        );
        pki.issue(Vec::new(), client_cn, "client");
        pki
    }

    /// Another client certificate from this CA, for `cn`: (cert, key) files.
    pub fn client(&self, cn: &str) -> (PathBuf, PathBuf) {
        let file = format!("client-{cn}");
        self.issue(Vec::new(), cn, &file);
        (
            self.dir.path().join(format!("{file}.pem")),
            self.dir.path().join(format!("{file}.key")),
        )
    }

    /// Another server certificate from this CA, for `names` (DNS names or
    /// IP addresses): (cert, key) files.
    pub fn server_for(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        let file = format!("server-{}", names.join("-"));
        self.issue(
            names.iter().map(|n| n.to_string()).collect(),
            names.first().copied().unwrap_or("server"),
            &file,
        );
        (
            self.dir.path().join(format!("{file}.pem")),
            self.dir.path().join(format!("{file}.key")),
        )
    }

    /// Copies the CA, the server certificate and its key into `dir` as
    /// `ca.crt`, `server.crt` and `server.key`, readable by everyone (for a
    /// broker that drops to its own user, e.g. Mosquitto); returns `dir`.
    pub fn server_files_into(&self, dir: &std::path::Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        for (from, to) in [
            (&self.ca, "ca.crt"),
            (&self.server_cert, "server.crt"),
            (&self.server_key, "server.key"),
        ] {
            std::fs::copy(from, dir.join(to)).unwrap();
            std::fs::set_permissions(dir.join(to), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        dir.to_path_buf()
    }

    /// Writes `FILE.pem` and `FILE.key`: a certificate for `names` and `cn`
    /// signed by the CA.
    fn issue(&self, names: Vec<String>, cn: &str, file: &str) {
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        let path = |ext: &str| self.dir.path().join(format!("{file}.{ext}"));
        std::fs::write(path("pem"), cert.pem()).unwrap();
        std::fs::write(path("key"), key.serialize_pem()).unwrap();
    }
}
