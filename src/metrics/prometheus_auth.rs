//! How the operator proves itself to Prometheus and whom it trusts there:
//! a bearer token file or basic auth, a CA bundle, a client certificate.
//! The flags are checked in pure code; TLS files are read once at startup;
//! the token or password file is read again for every query, so a rotated
//! (projected service-account) token is used as soon as the kubelet writes it.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The Prometheus access flags as given (`--prometheus-*`), unchecked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromAuthFlags {
    pub bearer_token_file: Option<PathBuf>,
    pub basic_auth_username: Option<String>,
    pub basic_auth_password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// What is sent with every query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    None,
    /// `Authorization: Bearer <file contents>`.
    Bearer { token_file: PathBuf },
    /// `Authorization: Basic`, the password from a file.
    Basic {
        username: String,
        password_file: PathBuf,
    },
}

/// The checked flags: which credentials, which trust roots, which client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromAuth {
    pub credentials: Credentials,
    /// Replaces the system trust roots when set.
    pub ca_file: Option<PathBuf>,
    /// (certificate chain, private key), both PEM.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The TLS material read from the files [`PromAuth`] names.
#[derive(Debug, Clone, Default)]
pub struct PromTls {
    /// DER of every CA certificate; `None`: the system roots.
    pub roots: Option<Vec<Vec<u8>>>,
    /// Certificate chain followed by the key, PEM, as reqwest takes it.
    pub identity: Option<Vec<u8>>,
}

const BEARER: &str = "--prometheus-bearer-token-file";
const USERNAME: &str = "--prometheus-basic-auth-username";
const PASSWORD: &str = "--prometheus-basic-auth-password-file";
const CA: &str = "--prometheus-ca-file";
const CERT: &str = "--prometheus-client-cert";
const KEY: &str = "--prometheus-client-key";

/// An empty path or username counts as not given (the chart sets env vars to "").
fn given<T: AsRef<std::ffi::OsStr>>(value: &Option<T>) -> Option<&T> {
    value.as_ref().filter(|v| !v.as_ref().is_empty())
}

impl PromAuthFlags {
    /// Pairs complete, bearer and basic not both. Reads no file.
    pub fn check(&self) -> Result<PromAuth, String> {
        let bearer = given(&self.bearer_token_file);
        let username = given(&self.basic_auth_username);
        let password = given(&self.basic_auth_password_file);
        let credentials = match (bearer, username, password) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(format!(
                    "{BEARER} and basic auth ({USERNAME}, {PASSWORD}) exclude each other; give one"
                ));
            }
            (Some(file), None, None) => Credentials::Bearer {
                token_file: file.clone(),
            },
            (None, Some(user), Some(file)) => Credentials::Basic {
                username: user.clone(),
                password_file: file.clone(),
            },
            (None, Some(_), None) => return Err(format!("{USERNAME} needs {PASSWORD}")),
            (None, None, Some(_)) => return Err(format!("{PASSWORD} needs {USERNAME}")),
            (None, None, None) => Credentials::None,
        };
        let client_cert = match (given(&self.client_cert), given(&self.client_key)) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (Some(_), None) => return Err(format!("{CERT} needs {KEY}")),
            (None, Some(_)) => return Err(format!("{KEY} needs {CERT}")),
            (None, None) => None,
        };
        Ok(PromAuth {
            credentials,
            ca_file: given(&self.ca_file).cloned(),
            client_cert,
        })
    }
}

impl PromAuth {
    /// Whether anything differs from a plain, unauthenticated client.
    pub fn is_plain(&self) -> bool {
        *self == PromAuth::default()
    }

    /// Read and check every file once, so a bad one stops the operator at
    /// start rather than failing each query. The secret is read again per query.
    pub fn load(&self) -> Result<PromTls, String> {
        match &self.credentials {
            Credentials::None => {}
            Credentials::Bearer { token_file } => {
                read_secret(token_file).map_err(|e| format!("{BEARER}: {e}"))?;
            }
            Credentials::Basic { password_file, .. } => {
                read_secret(password_file).map_err(|e| format!("{PASSWORD}: {e}"))?;
            }
        }
        let roots = match &self.ca_file {
            Some(path) => Some(ca_bundle(&read(CA, path)?).map_err(|e| at(CA, path, &e))?),
            None => None,
        };
        let identity = match &self.client_cert {
            Some((cert, key)) => Some(client_identity(
                (&read(CERT, cert)?, cert),
                (&read(KEY, key)?, key),
            )?),
            None => None,
        };
        Ok(PromTls { roots, identity })
    }
}

fn at(flag: &str, path: &Path, what: &str) -> String {
    format!("{flag} {}: {what}", path.display())
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| at(flag, path, &format!("cannot read: {e}")))
}

/// A token or password file's contents, surrounding whitespace removed.
pub fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    secret_text(&text).ok_or_else(|| format!("{} is empty", path.display()))
}

/// The secret in a file's text: trimmed, and never empty.
pub fn secret_text(text: &str) -> Option<String> {
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// The PEM sections of a file, in order.
fn sections(bytes: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, String> {
    let mut reader = bytes;
    let mut found = Vec::new();
    while let Some(section) = pem::from_buf(&mut reader).map_err(|e| format!("bad PEM: {e}"))? {
        found.push(section);
    }
    Ok(found)
}

/// Every certificate of a PEM bundle, each checked to be a usable trust anchor.
pub fn ca_bundle(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut store = rustls::RootCertStore::empty();
    let mut certs = Vec::new();
    for (kind, der) in sections(bytes)? {
        if kind != SectionKind::Certificate {
            continue;
        }
        store
            .add(CertificateDer::from(der.as_slice()))
            .map_err(|e| format!("a CERTIFICATE block is not a usable CA certificate: {e}"))?;
        certs.push(der);
    }
    if certs.is_empty() {
        return Err("no PEM CERTIFICATE block".into());
    }
    Ok(certs)
}

/// The client certificate chain and its private key as one PEM, as reqwest takes it.
pub fn client_identity(
    (cert, cert_path): (&[u8], &Path),
    (key, key_path): (&[u8], &Path),
) -> Result<Vec<u8>, String> {
    let chain: Vec<Vec<u8>> = sections(cert)
        .map_err(|e| at(CERT, cert_path, &e))?
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| der)
        .collect();
    if chain.is_empty() {
        return Err(at(CERT, cert_path, "no PEM CERTIFICATE block"));
    }
    let private = private_key(key).map_err(|e| at(KEY, key_path, &e))?;
    let mut identity: Vec<u8> = chain
        .iter()
        .flat_map(|der| pem_block("CERTIFICATE", der))
        .collect();
    identity.extend(private);
    Ok(identity)
}

/// The one private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC), checked usable.
fn private_key(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let keys: Vec<(SectionKind, Vec<u8>)> = sections(bytes)?
        .into_iter()
        .filter(|(kind, _)| {
            matches!(
                kind,
                SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
            )
        })
        .collect();
    let [(kind, der)] = keys.as_slice() else {
        return Err(format!(
            "expected one unencrypted PEM private key, found {}",
            keys.len()
        ));
    };
    let (label, parsed) = match kind {
        SectionKind::PrivateKey => ("PRIVATE KEY", PrivateKeyDer::Pkcs8(der.clone().into())),
        SectionKind::RsaPrivateKey => ("RSA PRIVATE KEY", PrivateKeyDer::Pkcs1(der.clone().into())),
        _ => ("EC PRIVATE KEY", PrivateKeyDer::Sec1(der.clone().into())),
    };
    rustls::crypto::ring::sign::any_supported_type(&parsed)
        .map_err(|e| format!("unusable private key: {e}"))?;
    Ok(pem_block(label, der))
}

/// DER back to PEM text (64-column base64).
fn pem_block(label: &str, der: &[u8]) -> Vec<u8> {
    let encoded = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out.into_bytes()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed P-256 CA certificate (its key was thrown away).
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBnTCCAUOgAwIBAgIUCDB+HHQkqtZpF0LRq8ZG1hghWFgwCgYIKoZIzj0EAwIw
IzEhMB8GA1UEAwwYbW9kZWxkZXBsb3kgdW5pdCB0ZXN0IENBMCAXDTI2MTIwMzE5
MzAzMloYDzIxMjYxMTA5MTkzMDMyWjAjMSEwHwYDVQQDDBhtb2RlbGRlcGxveSB1
bml0IHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATj+o1YZmDfYofX
3erXKHXl/M0SO4/jw5i5wARcP85qd2e9FVZZRmhc8nonJT1Q+jCYgjnI5RjliHnb
vt7UPDbro1MwUTAdBgNVHQ4EFgQUPjjRoV2SXQeBLWxoNSgPlsETSGkwHwYDVR0j
BBgwFoAUPjjRoV2SXQeBLWxoNSgPlsETSGkwDwYDVR0TAQH/BAUwAwEB/zAKBggq
hkjOPQQDAgNIADBFAiBRXmh/zAIuEqMemRw+rg96z5PC2I8noVwa/s0Bgxc3UQIh
AM8ofrkZ8KNJdePeKii0UHAxnsH7Lyt3p1N7pjVkaKCc
-----END CERTIFICATE-----
";

    fn path(p: &str) -> Option<PathBuf> {
        Some(PathBuf::from(p))
    }

    #[test]
    fn no_flags_mean_a_plain_client() {
        let auth = PromAuthFlags::default().check().unwrap();
        assert!(auth.is_plain());
        // The chart sets unused variables to "", which means not given.
        let empty = PromAuthFlags {
            bearer_token_file: path(""),
            basic_auth_username: Some(String::new()),
            ..Default::default()
        };
        assert!(empty.check().unwrap().is_plain());
    }

    #[test]
    fn bearer_and_basic_exclude_each_other_and_name_both() {
        let both = PromAuthFlags {
            bearer_token_file: path("/t"),
            basic_auth_username: Some("u".into()),
            basic_auth_password_file: path("/p"),
            ..Default::default()
        };
        let e = both.check().unwrap_err();
        assert!(e.contains(BEARER) && e.contains(USERNAME), "{e}");
    }

    #[test]
    fn pairs_are_complete_or_the_missing_flag_is_named() {
        let user_only = PromAuthFlags {
            basic_auth_username: Some("u".into()),
            ..Default::default()
        };
        assert_eq!(
            user_only.check().unwrap_err(),
            format!("{USERNAME} needs {PASSWORD}")
        );
        let cert_only = PromAuthFlags {
            client_cert: path("/c"),
            ..Default::default()
        };
        assert_eq!(
            cert_only.check().unwrap_err(),
            format!("{CERT} needs {KEY}")
        );
        let key_only = PromAuthFlags {
            client_key: path("/k"),
            ..Default::default()
        };
        assert_eq!(key_only.check().unwrap_err(), format!("{KEY} needs {CERT}"));
        let basic = PromAuthFlags {
            basic_auth_username: Some("u".into()),
            basic_auth_password_file: path("/p"),
            ca_file: path("/ca"),
            client_cert: path("/c"),
            client_key: path("/k"),
            ..Default::default()
        };
        assert_eq!(
            basic.check().unwrap(),
            PromAuth {
                credentials: Credentials::Basic {
                    username: "u".into(),
                    password_file: "/p".into()
                },
                ca_file: path("/ca"),
                client_cert: Some(("/c".into(), "/k".into())),
            }
        );
    }

    #[test]
    fn unreadable_files_stop_the_start_naming_flag_and_file() {
        let auth = PromAuthFlags {
            bearer_token_file: path("/nonexistent/token"),
            ..Default::default()
        }
        .check()
        .unwrap();
        let e = auth.load().unwrap_err();
        assert!(
            e.starts_with(BEARER) && e.contains("/nonexistent/token"),
            "{e}"
        );
        let auth = PromAuthFlags {
            ca_file: path("/nonexistent/ca.pem"),
            ..Default::default()
        }
        .check()
        .unwrap();
        let e = auth.load().unwrap_err();
        assert!(
            e.starts_with(CA) && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn a_ca_bundle_needs_a_usable_certificate() {
        assert_eq!(ca_bundle(CA_PEM.as_bytes()).unwrap().len(), 1);
        let twice = format!("# comment\n{CA_PEM}\n{CA_PEM}");
        assert_eq!(ca_bundle(twice.as_bytes()).unwrap().len(), 2);
        assert!(ca_bundle(b"").unwrap_err().contains("no PEM CERTIFICATE"));
        assert!(
            ca_bundle(b"not pem at all\n")
                .unwrap_err()
                .contains("no PEM CERTIFICATE")
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(ca_bundle(garbage.as_bytes()).is_err());
        let cut = &CA_PEM[..CA_PEM.len() - 30];
        assert!(ca_bundle(cut.as_bytes()).unwrap_err().contains("bad PEM"));
    }

    #[test]
    fn a_client_identity_needs_a_certificate_and_one_usable_key() {
        let (cert, key) = (Path::new("/c.pem"), Path::new("/k.pem"));
        let e = client_identity((b"", cert), (b"", key)).unwrap_err();
        assert!(e.starts_with(CERT) && e.contains("/c.pem"), "{e}");
        let e = client_identity((CA_PEM.as_bytes(), cert), (CA_PEM.as_bytes(), key)).unwrap_err();
        assert!(e.starts_with(KEY) && e.contains("found 0"), "{e}");
        let bad_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let e = client_identity((CA_PEM.as_bytes(), cert), (bad_key.as_bytes(), key)).unwrap_err();
        assert!(e.contains("unusable private key"), "{e}");
    }

    #[test]
    fn der_goes_back_to_the_same_pem() {
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(base64(b"M"), "TQ==");
        let der = ca_bundle(CA_PEM.as_bytes()).unwrap().remove(0);
        assert_eq!(
            String::from_utf8(pem_block("CERTIFICATE", &der)).unwrap(),
            CA_PEM
        );
    }

    #[test]
    fn secrets_are_trimmed_and_never_empty() {
        assert_eq!(secret_text("tok\n").as_deref(), Some("tok"));
        assert_eq!(secret_text(" \n"), None);
    }
}
