//! TLS for PostgreSQL with rustls, with libpq's `sslmode` meanings:
//! `disable`, `prefer` and `require` encrypt without checking the
//! certificate, `verify-ca` checks the chain, `verify-full` the chain and the
//! host name. `sslrootcert=FILE` replaces the built-in roots.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;

pub type TlsConnector = tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa { root: Option<String> },
    VerifyFull { root: Option<String> },
}

impl TlsMode {
    pub fn ssl_mode(&self) -> SslMode {
        match self {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        }
    }
}

/// Removes `sslmode` and `sslrootcert` from a URL's query (tokio-postgres
/// rejects `verify-full`) and returns what they asked for.
pub fn strip_sslmode(url: &str) -> Result<(String, TlsMode), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), TlsMode::Prefer));
    };
    let mut mode = "prefer".to_string();
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => mode = v.to_string(),
            Some(("sslrootcert", v)) => root = Some(percent_decode(v)),
            _ => kept.push(pair),
        }
    }
    let mode = match mode.as_str() {
        "disable" => TlsMode::Disable,
        "allow" | "prefer" => TlsMode::Prefer,
        "require" => TlsMode::Require,
        "verify-ca" => TlsMode::VerifyCa { root },
        "verify-full" => TlsMode::VerifyFull { root },
        other => {
            return Err(format!(
                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
            ));
        }
    };
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, mode))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(file: &Option<String>) -> RootCertStore {
    let mut store = RootCertStore::empty();
    match file {
        Some(path) => match CertificateDer::pem_file_iter(path) {
            Ok(certs) => {
                for cert in certs.flatten() {
                    let _ = store.add(cert);
                }
                if store.is_empty() {
                    tracing::error!(
                        path,
                        "sslrootcert holds no usable certificate; TLS verification will fail"
                    );
                }
            }
            Err(e) => {
                tracing::error!(path, error = %e, "cannot read sslrootcert; TLS verification will fail")
            }
        },
        None => {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = store.add(cert);
            }
        }
    }
    store
}

pub fn connector(mode: TlsMode) -> TlsConnector {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let config = match mode {
        TlsMode::Disable | TlsMode::Prefer | TlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified {
                provider: provider(),
                ca_only: None,
            }))
            .with_no_client_auth(),
        TlsMode::VerifyCa { root } => {
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(&root)), provider())
                    .build()
                    .ok();
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified {
                    provider: provider(),
                    ca_only: inner,
                }))
                .with_no_client_auth()
        }
        TlsMode::VerifyFull { root } => builder
            .with_root_certificates(roots(&root))
            .with_no_client_auth(),
    };
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// libpq's `require` does not check the certificate; `verify-ca` checks the
/// chain but not the name. Signatures are always checked.
#[derive(Debug)]
struct Unverified {
    provider: Arc<CryptoProvider>,
    ca_only: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(inner) = &self.ca_only {
            match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Ok(ok) => return Ok(ok),
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                ))
                | Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. },
                )) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        verify_tls13_signature(
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
    fn sslmode_is_taken_out_of_the_url() {
        let (url, mode) = strip_sslmode(
            "postgres://u:p@db.example.co:5432/postgres?sslmode=verify-full&application_name=x",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u:p@db.example.co:5432/postgres?application_name=x"
        );
        assert_eq!(mode, TlsMode::VerifyFull { root: None });
        let (url, mode) = strip_sslmode("postgres://h/db?sslmode=require").unwrap();
        assert_eq!((url.as_str(), mode), ("postgres://h/db", TlsMode::Require));
        let (_, mode) =
            strip_sslmode("postgres://h/db?sslrootcert=%2Ftmp%2Fca.pem&sslmode=verify-ca").unwrap();
        assert_eq!(
            mode,
            TlsMode::VerifyCa {
                root: Some("/tmp/ca.pem".into())
            }
        );
        assert_eq!(strip_sslmode("postgres://h/db").unwrap().1, TlsMode::Prefer);
        assert!(
            strip_sslmode("postgres://h/db?sslmode=always")
                .unwrap_err()
                .contains("sslmode=always")
        );
    }
}
