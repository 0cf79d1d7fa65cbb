//! TLS for the SSL and SASL_SSL listeners (rustls, on ring): the server's
//! certificate, optional client certificates, and the principal a client
//! certificate's subject maps to (Kafka's `ssl.principal.mapping.rules`).
//!
//! The certificate and key files are read again when they change on disk.
//! Each new connection checks their modification times (two `stat`s), so a
//! renewed certificate is served from the next connection on, and there is
//! no timer and no restart; a file that does not load leaves the previous
//! certificate in use and says why in the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{bail, Context};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::Principal;
use crate::config::SecuritySection;

/// Client certificates: not asked for, asked for, or required (ssl.client.auth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientAuth {
    None,
    Requested,
    Required,
}

/// The TLS settings of every TLS listener, reloaded when their files change.
pub struct Tls {
    files: Files,
    pub rules: PrincipalRules,
    loaded: Mutex<Loaded>,
}

/// Where the certificates come from, and whether clients show one.
struct Files {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: PathBuf,
    client_auth: ClientAuth,
}

struct Loaded {
    /// The files' modification times when the acceptors were built from them.
    stamps: Vec<Option<SystemTime>>,
    /// For SSL listeners: client certificates as `tls_client_auth` says.
    ssl: TlsAcceptor,
    /// For SASL_SSL listeners: no client certificates (SASL names the client;
    /// Kafka's `ssl.client.auth` does not apply to them either, KIP-684).
    sasl_ssl: TlsAcceptor,
}

/// Whether anything this broker serves uses TLS: a listener or the metrics endpoint.
pub fn needed(config: &crate::config::BrokerConfig, listeners: &[crate::config::Listener]) -> bool {
    config.metrics.tls || listeners.iter().any(|l| l.protocol.tls())
}

impl Tls {
    /// Loads the certificate and key now, so a broker with bad files does not start.
    pub fn load(config: &SecuritySection) -> anyhow::Result<Tls> {
        let client_auth = match config.tls_client_auth.as_str() {
            "requested" => ClientAuth::Requested,
            "required" => ClientAuth::Required,
            _ => ClientAuth::None,
        };
        let files = Files {
            cert_file: config.tls_cert_file.clone(),
            key_file: config.tls_key_file.clone(),
            client_ca_file: config.tls_client_ca_file.clone(),
            client_auth,
        };
        let loaded = Loaded {
            stamps: files.stamps(),
            ssl: files.build(files.client_auth)?,
            sasl_ssl: files.build(ClientAuth::None)?,
        };
        let rules = PrincipalRules::parse(&config.tls_principal_mapping_rules)?;
        Ok(Tls { files, rules, loaded: Mutex::new(loaded) })
    }

    /// The acceptor for a new connection: with client certificates as
    /// `tls_client_auth` says (SSL listeners), or without (SASL_SSL
    /// listeners and HTTP); rebuilt first if a file changed.
    pub fn acceptor(&self, client_certificates: bool) -> TlsAcceptor {
        let stamps = self.files.stamps();
        let mut loaded = self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if loaded.stamps != stamps {
            match (self.files.build(self.files.client_auth), self.files.build(ClientAuth::None)) {
                (Ok(ssl), Ok(sasl_ssl)) => {
                    tracing::info!(cert = %self.files.cert_file.display(), "TLS certificate reloaded");
                    (loaded.ssl, loaded.sasl_ssl) = (ssl, sasl_ssl);
                }
                (Err(e), _) | (_, Err(e)) => {
                    let error = format!("{e:#}");
                    tracing::error!(error, "TLS files changed but do not load; keeping the previous certificate")
                }
            }
            // Not retried until the files change again.
            loaded.stamps = stamps;
        }
        if client_certificates {
            loaded.ssl.clone()
        } else {
            loaded.sasl_ssl.clone()
        }
    }

    /// Who a client with these certificates is: its leaf's subject, mapped;
    /// ANONYMOUS without one.
    pub fn principal(&self, certificates: Option<&[CertificateDer<'_>]>) -> Principal {
        let Some(leaf) = certificates.and_then(|c| c.first()) else { return Principal::anonymous() };
        match subject_of(leaf) {
            Some(subject) => Principal::user(&self.rules.apply(&subject)),
            None => Principal::anonymous(),
        }
    }
}

impl Files {
    fn stamps(&self) -> Vec<Option<SystemTime>> {
        [&self.cert_file, &self.key_file, &self.client_ca_file]
            .iter()
            .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
            .collect()
    }

    fn build(&self, client_auth: ClientAuth) -> anyhow::Result<TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = read_certificates(&self.cert_file).context("security.tls_cert_file")?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file)
            .with_context(|| format!("security.tls_key_file {}: no PEM private key", self.key_file.display()))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS versions")?;
        let builder = match client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            auth => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in read_certificates(&self.client_ca_file).context("security.tls_client_ca_file")? {
                    roots.add(ca).context("security.tls_client_ca_file: a CA certificate")?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if auth == ClientAuth::Requested { verifier.allow_unauthenticated() } else { verifier };
                builder.with_client_cert_verifier(verifier.build().context("client certificate verifier")?)
            }
        };
        let config = builder.with_single_cert(chain, key).context("the TLS certificate and key do not go together")?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM", path.display()))?;
    if certificates.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certificates)
}

/// A certificate's subject as Kafka prints it (RFC 2253, as Java's
/// `X500Principal.getName()`): the last RDN first, "CN=alice,OU=eng,O=Example".
pub fn subject_of(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let mut rdns: Vec<String> = parsed
        .subject()
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attribute| {
                    let oid = attribute.attr_type().to_id_string();
                    let value = attribute.as_str().map(escape).unwrap_or_else(|_| hex(attribute.as_slice()));
                    format!("{}={value}", short_name(&oid).unwrap_or(&oid))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.reverse();
    Some(rdns.join(","))
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.11" => "OU",
        "2.5.4.10" => "O",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// RFC 2253's escaping of an attribute value.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let edge = (i == 0 && (c == ' ' || c == '#')) || (i + 1 == value.chars().count() && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    let digits: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("#{digits}")
}

/// Kafka's `ssl.principal.mapping.rules`: each rule a regex over the whole
/// subject with a replacement, lower- or upper-cased with `/L` or `/U`;
/// `DEFAULT` is the subject unchanged. The first rule that matches applies;
/// a subject no rule matches is used unchanged.
#[derive(Debug, Clone)]
pub struct PrincipalRules(Vec<Rule>);

#[derive(Debug, Clone)]
enum Rule {
    Default,
    Replace { pattern: regex::Regex, replacement: String, case: Case },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Keep,
    Lower,
    Upper,
}

/// Rules kept at most; more is a configuration mistake.
const MAX_RULES: usize = 100;

impl PrincipalRules {
    pub fn parse(rules: &[String]) -> anyhow::Result<PrincipalRules> {
        if rules.len() > MAX_RULES {
            bail!("at most {MAX_RULES} rules");
        }
        rules.iter().map(|r| parse_rule(r.trim())).collect::<anyhow::Result<Vec<_>>>().map(PrincipalRules)
    }

    pub fn apply(&self, subject: &str) -> String {
        for rule in &self.0 {
            match rule {
                Rule::Default => return subject.to_string(),
                Rule::Replace { pattern, replacement, case } => {
                    let Some(captures) = pattern.captures(subject) else { continue };
                    let mut name = String::new();
                    captures.expand(replacement, &mut name);
                    return match case {
                        Case::Keep => name,
                        Case::Lower => name.to_lowercase(),
                        Case::Upper => name.to_uppercase(),
                    };
                }
            }
        }
        subject.to_string()
    }
}

/// `DEFAULT`, or `RULE:pattern/replacement/` with an optional `L` or `U`
/// after the last slash; `\/` is a slash inside the pattern or replacement.
fn parse_rule(rule: &str) -> anyhow::Result<Rule> {
    if rule == "DEFAULT" {
        return Ok(Rule::Default);
    }
    let body = rule.strip_prefix("RULE:").with_context(|| format!("{rule:?} is neither DEFAULT nor RULE:..."))?;
    let mut parts = vec![String::new()];
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'/') => {
                parts.last_mut().expect("one part").push('/');
                chars.next();
            }
            '/' => parts.push(String::new()),
            c => parts.last_mut().expect("one part").push(c),
        }
    }
    let [pattern, replacement, case] = <[String; 3]>::try_from(parts)
        .map_err(|_| anyhow::anyhow!("{rule:?} must look like RULE:pattern/replacement/ (with L or U after it)"))?;
    let case = match case.as_str() {
        "" => Case::Keep,
        "L" => Case::Lower,
        "U" => Case::Upper,
        other => bail!("{rule:?}: {other:?} after the last slash must be L, U or nothing"),
    };
    let pattern = regex::Regex::new(&format!("^(?:{pattern})$")).with_context(|| format!("{rule:?}: bad pattern"))?;
    // Java writes group references as $1; so does the regex crate, once braced ($1x would be a group named "1x").
    let replacement =
        regex::Regex::new(r"\$(\d+)").expect("a valid regex").replace_all(&replacement, "$${$1}").into_owned();
    Ok(Rule::Replace { pattern, replacement, case })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[&str]) -> PrincipalRules {
        PrincipalRules::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    /// Kafka's documented examples (ssl.principal.mapping.rules).
    #[test]
    fn mapping_rules_as_kafka_documents_them() {
        let r = rules(&[
            "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/",
            "RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$2/L",
            "RULE:^.*[Cc][Nn]=([a-zA-Z0-9.]*).*$/$1/L",
            "DEFAULT",
        ]);
        assert_eq!(r.apply("CN=serviceuser,OU=ServiceUsers,O=Unknown,L=Unknown,ST=Unknown,C=Unknown"), "serviceuser");
        assert_eq!(r.apply("CN=adminUser,OU=Admin,O=Unknown,L=Unknown,ST=Unknown,C=Unknown"), "adminuser@admin");
        assert_eq!(r.apply("CN=Bob.Smith,O=x"), "bob.smith");
        assert_eq!(rules(&["DEFAULT"]).apply("CN=a,O=b"), "CN=a,O=b");
        assert_eq!(rules(&["RULE:^CN=(.*)$/$1/U"]).apply("CN=a,O=b"), "A,O=B");
        assert_eq!(rules(&["RULE:^CN=x$/y/"]).apply("CN=z"), "CN=z", "no rule matched: unchanged");
        assert_eq!(rules(&["RULE:^CN=(.*)\\/(.*)$/$2-$1/"]).apply("CN=a/b"), "b-a");
        for bad in ["RULE:x", "RULE:(/a/", "RULE:a/b/Q", "NOPE"] {
            assert!(PrincipalRules::parse(&[bad.to_string()]).is_err(), "{bad} refused");
        }
    }

    #[test]
    fn values_are_escaped_as_rfc_2253_says() {
        assert_eq!(escape("Smith, Bob"), "Smith\\, Bob");
        assert_eq!(escape("#x "), "\\#x\\ ");
        assert_eq!(escape("plain"), "plain");
    }
}
