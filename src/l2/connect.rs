//! How mdcache reaches Redis: the URL or the cluster's seeds, the ACL credentials and the TLS roots of a configuration as one `Endpoint`, which the L2, the backplane and configuration checks all use.
//!
//! - **URL**: `redis://`, `rediss://` (TLS) or `redis+unix://`. A `rediss://` URL ending in
//!   `#insecure` skips certificate verification (redis-rs's convention): for tests only.
//! - **Cluster**: [`CacheConfig::redis_cluster`] (`CACHE_REDIS_CLUSTER`), seeds as
//!   `host:port` or URLs, all plain or all `rediss://`; exclusive with the URL.
//! - **Credentials**: in the URL (`redis://user:password@host/`) or in
//!   [`CacheConfig::redis_username`] / [`CacheConfig::redis_password`] (`CACHE_USERNAME`,
//!   `CACHE_PASSWORD`), not both: two sources that disagree would make a failed login a
//!   puzzle at 3 a.m.
//! - **TLS roots**: [`CacheConfig::tls_ca_file`] (`CACHE_TLS_CA_FILE`), a PEM file of the
//!   authorities the server's certificate must chain to; without it, the system's roots.
//!   rustls does the TLS, with ring as its crypto provider.

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::config::{CacheConfig, redact_in};
use crate::error::{Error, Result};

/// Where the L2 lives: one server, or the seed nodes of a cluster.
#[derive(Clone)]
pub(crate) enum Endpoint {
    /// One Redis server (`CACHE_REDIS_URL`).
    Server(ConnectionInfo),
    /// A Redis Cluster (`CACHE_REDIS_CLUSTER`): its seeds, each with the credentials and TLS
    /// roots applied, and the TLS roots again for the cluster client (which takes them apart
    /// from the seeds, for the nodes it discovers).
    Cluster {
        seeds: Vec<ConnectionInfo>,
        ca: Option<Vec<u8>>,
    },
}

impl Endpoint {
    /// Every address a plain connection (the backplane's) may use, in order of preference.
    pub(crate) fn servers(&self) -> Vec<ConnectionInfo> {
        match self {
            Endpoint::Server(info) => vec![info.clone()],
            Endpoint::Cluster { seeds, .. } => seeds.clone(),
        }
    }
}

/// Where and how to reach `cfg`'s Redis: its URL (or each cluster seed) with the credentials
/// and the TLS roots applied. A configuration error names the variable at fault and never
/// shows a password. Reads the CA file, if one is set.
pub(crate) fn endpoint(cfg: &CacheConfig) -> Result<Endpoint> {
    // The settings first: a CA file without TLS is that mistake, whatever the file holds.
    let endpoint = settings(cfg)?;
    let ca = match &cfg.tls_ca_file {
        Some(path) => Some(read_ca(path)?),
        None => None,
    };
    let with_ca = |info: ConnectionInfo| -> Result<ConnectionInfo> {
        let Some(pem) = &ca else { return Ok(info) };
        let client = redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        )
        .map_err(|e| ca_error(cfg, e.to_string()))?;
        Ok(client.get_connection_info().clone())
    };
    Ok(match endpoint {
        Endpoint::Server(info) => Endpoint::Server(with_ca(info)?),
        Endpoint::Cluster { seeds, .. } => Endpoint::Cluster {
            seeds: seeds.into_iter().map(with_ca).collect::<Result<_>>()?,
            ca,
        },
    })
}

/// [`endpoint`] of a configuration with one server: its `ConnectionInfo`.
#[cfg(test)]
pub(crate) fn connection_info(cfg: &CacheConfig) -> Result<ConnectionInfo> {
    match endpoint(cfg)? {
        Endpoint::Server(info) => Ok(info),
        Endpoint::Cluster { .. } => Err(Error::Unsupported("a cluster has no one server")),
    }
}

fn ca_error(cfg: &CacheConfig, reason: String) -> Error {
    let path = cfg
        .tls_ca_file
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    Error::config("CACHE_TLS_CA_FILE", format!("{path}: {reason}"))
}

/// The PEM file of TLS roots, checked to hold a certificate.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>> {
    let unreadable = |reason: String| {
        Error::config("CACHE_TLS_CA_FILE", format!("{}: {reason}", path.display()))
    };
    let pem = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(unreadable("holds no PEM certificate".to_owned()));
    }
    Ok(pem)
}

/// Checks `cfg`'s Redis settings without any I/O (the CA file is read when the cache is
/// built): the URL or seeds parse, one of them only, credentials come from one place, a CA
/// file goes with TLS.
pub(crate) fn check_settings(cfg: &CacheConfig) -> Result<()> {
    settings(cfg).map(|_| ())
}

/// The URL or the seeds with the credentials applied (no TLS roots yet).
fn settings(cfg: &CacheConfig) -> Result<Endpoint> {
    let endpoint = match (&cfg.redis_url, cfg.redis_cluster.as_slice()) {
        (Some(_), [_, ..]) => {
            return Err(Error::config(
                "CACHE_REDIS_CLUSTER",
                "is set with CACHE_REDIS_URL (or CACHE_ADDRESS): give one server or one cluster",
            ));
        }
        (None, []) => {
            return Err(Error::config(
                "CACHE_REDIS_URL",
                "no Redis address (CACHE_REDIS_URL, CACHE_ADDRESS or CACHE_REDIS_CLUSTER)",
            ));
        }
        (Some(url), []) => Endpoint::Server(server(cfg, "CACHE_REDIS_URL", url)?),
        (None, seeds) => {
            let seeds = seeds
                .iter()
                .map(|seed| {
                    let url = if seed.contains("://") {
                        seed.clone()
                    } else {
                        format!("redis://{seed}")
                    };
                    let info = server(cfg, "CACHE_REDIS_CLUSTER", &url)?;
                    if matches!(info.addr(), ConnectionAddr::Unix(_)) {
                        return Err(Error::config(
                            "CACHE_REDIS_CLUSTER",
                            "a cluster node is reached over TCP (host:port), not a Unix socket",
                        ));
                    }
                    Ok(info)
                })
                .collect::<Result<Vec<_>>>()?;
            let tls = |i: &ConnectionInfo| matches!(i.addr(), ConnectionAddr::TcpTls { .. });
            if seeds.iter().any(tls) && !seeds.iter().all(tls) {
                return Err(Error::config(
                    "CACHE_REDIS_CLUSTER",
                    "mixes rediss:// (TLS) and plain seeds: every node of a cluster speaks the same",
                ));
            }
            Endpoint::Cluster { seeds, ca: None }
        }
    };
    let tls = endpoint
        .servers()
        .first()
        .is_some_and(|i| matches!(i.addr(), ConnectionAddr::TcpTls { .. }));
    if tls {
        install_crypto_provider();
    } else if cfg.tls_ca_file.is_some() {
        return Err(Error::config(
            "CACHE_TLS_CA_FILE",
            "is set, but the Redis URL is not rediss:// (TLS)",
        ));
    }
    Ok(endpoint)
}

/// One server's URL (`var` names where it came from) with the credentials applied.
fn server(cfg: &CacheConfig, var: &str, url: &str) -> Result<ConnectionInfo> {
    let mut info = url
        .into_connection_info()
        .map_err(|e| Error::config(var, redact_in(&e.to_string(), url)))?;
    if cfg.redis_username.is_some() || cfg.redis_password.is_some() {
        let settings = info.redis_settings();
        if settings.username().is_some() || settings.password().is_some() {
            return Err(Error::config(
                "CACHE_PASSWORD",
                "credentials are both in the Redis URL and in CACHE_USERNAME/CACHE_PASSWORD \
                 (or the builder's setters): give them in one place",
            ));
        }
        let mut settings = settings.clone();
        if let Some(user) = &cfg.redis_username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &cfg.redis_password {
            settings = settings.set_password(password.expose());
        }
        info = info.set_redis_settings(settings);
    }
    Ok(info)
}

/// Makes ring the process's rustls crypto provider, unless one is installed already (by the
/// application, or an earlier call).
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means a provider is installed already: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Password;

    fn cfg(url: &str) -> CacheConfig {
        CacheConfig {
            redis_url: Some(url.to_owned()),
            ..CacheConfig::default()
        }
    }

    #[test]
    fn credentials_come_from_the_url_or_the_settings_not_both() {
        let info = connection_info(&cfg("redis://engine:pw1@h:6379/")).unwrap();
        let s = info.redis_settings();
        assert_eq!((s.username(), s.password()), (Some("engine"), Some("pw1")));

        let mut c = cfg("redis://h:6379/");
        c.redis_username = Some("engine".into());
        c.redis_password = Some(Password::new("p@ss word"));
        let info = connection_info(&c).unwrap();
        let s = info.redis_settings();
        assert_eq!(
            (s.username(), s.password()),
            (Some("engine"), Some("p@ss word"))
        );

        let mut c = cfg("redis://other:pw2@h:6379/");
        c.redis_password = Some(Password::new("p@ss word"));
        let e = connection_info(&c).unwrap_err().to_string();
        assert!(
            e.contains("CACHE_PASSWORD") && e.contains("one place"),
            "{e}"
        );
        assert!(!e.contains("pw2") && !e.contains("p@ss"), "{e}");
    }

    #[test]
    fn a_ca_file_needs_tls_and_a_certificate() {
        let mut c = cfg("redis://h:6379/");
        c.tls_ca_file = Some("/nonexistent/ca.pem".into());
        let e = connection_info(&c).unwrap_err().to_string();
        assert!(
            e.contains("CACHE_TLS_CA_FILE") && e.contains("rediss"),
            "{e}"
        );

        c.redis_url = Some("rediss://h:6379/".into());
        let e = connection_info(&c).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        c.tls_ca_file = Some(junk);
        let e = connection_info(&c).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");

        // rediss:// without a CA file: the system's roots.
        let info = connection_info(&cfg("rediss://h:6380/")).unwrap();
        assert!(matches!(info.addr(), ConnectionAddr::TcpTls { .. }));
    }
}
