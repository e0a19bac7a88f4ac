//! The federation listener's TLS certificate: configured files, or a self-signed pair that is
//! generated on first start and kept in the data directory.

use std::path::{Path, PathBuf};

/// Paths of a PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// Returns `dir/tls.crt` and `dir/tls.key`, creating a self-signed pair for `names` (DNS
/// names or IP addresses) if they do not exist yet.
pub fn self_signed_in(dir: &Path, names: &[String]) -> std::io::Result<TlsFiles> {
    let files = TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let certified = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| std::io::Error::other(format!("cannot generate a certificate: {e}")))?;
    std::fs::create_dir_all(dir)?;
    write_private(&files.key, certified.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&files.cert, certified.cert.pem())?;
    Ok(files)
}

/// Writes a file readable only by its owner (where the platform has permissions).
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_is_generated_once() {
        let dir = std::env::temp_dir().join(format!("cairn-tls-{}", std::process::id()));
        let files = self_signed_in(&dir, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let pem = std::fs::read_to_string(&files.cert).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            std::fs::read_to_string(&files.key)
                .unwrap()
                .contains("PRIVATE KEY")
        );
        let again = self_signed_in(&dir, &["other".into()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&again.cert).unwrap(),
            pem,
            "kept, not regenerated"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
