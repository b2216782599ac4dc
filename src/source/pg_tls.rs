//! PostgreSQL over TLS: the libpq `sslmode` and `sslrootcert` parameters of a database URL, read by mdcache, and the rustls connector they make.
//!
//! | `sslmode` | mdcache |
//! |---|---|
//! | absent, `disable`, `allow`, `prefer` | plain TCP: mdcache never negotiates a TLS it does not verify |
//! | `require`, `verify-ca`, `verify-full` | TLS, the server's certificate verified against `sslrootcert` (a PEM file) or the system's roots, and its name checked: stricter than libpq's `require` and `verify-ca`, which check less |
//!
//! tokio-postgres does not know `sslrootcert` and has no `verify-*` modes, so both are taken out
//! of the URL before it is parsed. rustls does the TLS, with ring as its crypto provider.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

/// What a database URL asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted {
    /// The URL with the parameters mdcache read taken out, for tokio-postgres.
    pub(crate) url: String,
    /// TLS, verified.
    pub(crate) tls: bool,
    /// `sslrootcert`: the trusted roots, else the system's.
    pub(crate) ca_file: Option<PathBuf>,
}

/// Reads `sslmode` and `sslrootcert` from `url` (URL form `postgres://…?sslmode=require`, or
/// libpq's `key=value` form with unquoted values).
pub(crate) fn wanted(url: &str) -> Wanted {
    let mut tls = false;
    let mut ca_file = None;
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            tls = matches!(value, "require" | "verify-ca" | "verify-full");
            true
        }
        "sslrootcert" => {
            ca_file = Some(PathBuf::from(value));
            true
        }
        _ => false,
    };
    let url = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        !take(k, &crate::config::percent_decode(v))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_owned(),
        }
    } else {
        url.split_whitespace()
            .filter(|kv| {
                kv.split_once('=')
                    .is_none_or(|(k, v)| v.starts_with('\'') || !take(k, v))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    Wanted { url, tls, ca_file }
}

/// The connector for `w`: one that verifies against its roots when it wants TLS (an error
/// names an unreadable or empty `sslrootcert`); one with no roots otherwise, which is never
/// used (the connection's `sslmode` is then `disable`).
pub(crate) fn connector(w: &Wanted) -> Result<MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    if w.tls {
        match &w.ca_file {
            Some(path) => {
                let shown = path.display();
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("sslrootcert {shown}: {e}"))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("sslrootcert {shown}: {e}"))?;
                if certs.is_empty() {
                    return Err(format!("sslrootcert {shown}: holds no PEM certificate"));
                }
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| format!("sslrootcert {shown}: {e}"))?;
                }
            }
            None => {
                // Unreadable system certificates are skipped; none at all is an error below.
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(
                        "sslmode asks for TLS, but no sslrootcert is given and the system has no \
                         root certificates"
                            .to_owned(),
                    );
                }
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_parameters_are_read_and_taken_out() {
        let w = wanted(
            "postgres://u:pw@db:5432/x?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=e",
        );
        assert_eq!(w.url, "postgres://u:pw@db:5432/x?application_name=e");
        assert!(w.tls);
        assert_eq!(w.ca_file, Some(PathBuf::from("/etc/ca.pem")));

        for (mode, tls) in [
            ("disable", false),
            ("prefer", false),
            ("require", true),
            ("verify-ca", true),
        ] {
            let w = wanted(&format!("postgres://db/x?sslmode={mode}"));
            assert_eq!((w.url.as_str(), w.tls), ("postgres://db/x", tls), "{mode}");
        }
        assert!(!wanted("postgres://db/x").tls);

        let w = wanted("host=db user=u sslmode=require sslrootcert=/etc/ca.pem dbname=x");
        assert_eq!(w.url, "host=db user=u dbname=x");
        assert!(w.tls);
        assert_eq!(w.ca_file, Some(PathBuf::from("/etc/ca.pem")));
    }

    #[test]
    fn a_bad_root_file_is_an_error_naming_it() {
        let mut w = wanted("postgres://db/x?sslmode=require&sslrootcert=/nonexistent/ca.pem");
        let e = connector(&w).err().unwrap();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "no certificate here").unwrap();
        w.ca_file = Some(junk);
        let e = connector(&w).err().unwrap();
        assert!(e.contains("no PEM certificate"), "{e}");
        // Without TLS, no roots are read at all.
        assert!(connector(&wanted("postgres://db/x?sslrootcert=/nonexistent")).is_ok());
    }
}
