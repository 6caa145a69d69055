//! A small certificate authority: a CA and the leaf certificates it signs (ECDSA P-256), as
//! PEM, and what a certificate says about itself ([`inspect`]). The operator keeps each
//! cluster's CA and certificates with it; `lts bench --secure`, `lts auth ca` and the tests
//! make theirs with it.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A CA that can sign leaf certificates.
#[derive(Debug)]
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<Ca, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert_pem,
        })
    }

    /// A CA from its certificate and key (PEM), as [`Ca::cert_pem`] and [`Ca::key_pem`] wrote
    /// them.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, rcgen::Error> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Ca {
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate, PEM: what clients and trackers trust.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA's private key, PEM: keep it secret.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate for `common_name` valid for the DNS names, URIs (`spiffe://…`) and IP
    /// addresses in `sans`,
    /// usable by servers and clients alike, until `valid_for` from now.
    pub fn issue(
        &self,
        common_name: &str,
        sans: &[&str],
        valid_for: std::time::Duration,
    ) -> Result<Leaf, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for s in sans {
            params.subject_alt_names.push(match s.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) if s.contains("://") => SanType::URI((*s).try_into()?),
                Err(_) => SanType::DnsName((*s).try_into()?),
            });
        }
        let now = time_now();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::seconds(valid_for.as_secs() as i64);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Its subject's common name, DNS names and URIs, as [`certificate_names`] lists them.
    pub names: Vec<String>,
    /// Valid from (Unix seconds).
    pub not_before: i64,
    /// Valid until (Unix seconds).
    pub not_after: i64,
}

impl CertInfo {
    /// Whether the certificate is past `fraction` (0..=1) of its life at `now` (Unix
    /// seconds): time to issue the next one. Renewing at two thirds leaves a third of the
    /// life for the new one to reach every pod.
    pub fn due_for_renewal(&self, now: i64, fraction: f64) -> bool {
        let life = (self.not_after - self.not_before).max(0) as f64;
        now as f64 >= self.not_before as f64 + life * fraction.clamp(0.0, 1.0)
    }
}

/// Reads the first certificate of a PEM bundle. `None` when there is none or it does not
/// parse.
pub fn inspect(cert_pem: &str) -> Option<CertInfo> {
    use x509_parser::prelude::*;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let (_, cert) = X509Certificate::from_der(&pem.contents).ok()?;
    Some(CertInfo {
        names: certificate_names(&pem.contents),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// SHA-256 of a PEM text, hex: tells whether a certificate was signed by the CA at hand.
pub fn fingerprint(pem: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(pem.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The names a certificate (DER) carries, for matching principals: its subject's common name,
/// its DNS names and its URIs (e.g. a SPIFFE id).
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::URI(u) => names.push(u.to_string()),
                _ => {}
            }
        }
    }
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_names_what_it_was_issued_for() {
        let ca = Ca::new("test CA").unwrap();
        let leaf = ca
            .issue(
                "workers.lts",
                &["localhost", "127.0.0.1"],
                std::time::Duration::from_secs(3600),
            )
            .unwrap();
        let info = inspect(&leaf.cert_pem).unwrap();
        assert_eq!(info.names, vec!["workers.lts", "localhost"]);
        assert_eq!(info.not_after - info.not_before, 3600 + 300);
        let now = info.not_before + 300;
        assert!(!info.due_for_renewal(now, 2.0 / 3.0));
        assert!(info.due_for_renewal(info.not_before + 2600, 2.0 / 3.0));
        assert_ne!(fingerprint(&ca.cert_pem()), fingerprint(&leaf.cert_pem));
        assert!(ca.cert_pem().contains("BEGIN CERTIFICATE"));
        let again = Ca::load(&ca.cert_pem(), &ca.key_pem()).unwrap();
        let other = again
            .issue("x", &["localhost"], std::time::Duration::from_secs(60))
            .unwrap();
        assert!(other.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn a_uri_san_is_a_name() {
        let ca = Ca::new("test CA").unwrap();
        let leaf = ca
            .issue(
                "w",
                &["spiffe://lts/ns/prod/worker"],
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(
            inspect(&leaf.cert_pem).unwrap().names,
            vec!["w", "spiffe://lts/ns/prod/worker"]
        );
        assert!(inspect("not a certificate").is_none());
    }
}
