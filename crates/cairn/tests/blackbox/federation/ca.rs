//! A throw-away certificate authority for the test kit: each server's federation listener gets
//! a certificate for its name signed by it, and every server trusts it, so TLS is checked as in
//! production (the server's name, not the address, must match).

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

pub struct TestCa {
    /// The CA certificate, PEM: what servers are told to trust.
    pub ca_file: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "Cairn test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, issuer.pem()).unwrap();
        Self {
            ca_file,
            issuer,
            dir,
        }
    }

    /// A certificate for `host` and its key, as PEM files.
    pub fn issue(&self, host: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![host.to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let (cert_file, key_file) = (
            self.dir.path().join(format!("{host}.crt")),
            self.dir.path().join(format!("{host}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}
