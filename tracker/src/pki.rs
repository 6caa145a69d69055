//! A small certificate authority: a CA and the leaf certificates it signs (ECDSA P-256), as
//! PEM. `lts bench --secure`, `lts auth ca` and the tests make their certificates with it.

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

    /// A certificate for `common_name` valid for the DNS names and IP addresses in `sans`,
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

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
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        let names = crate::tls::certificate_names(&der);
        assert_eq!(names, vec!["workers.lts", "localhost"]);
        assert!(ca.cert_pem().contains("BEGIN CERTIFICATE"));
        let again = Ca::load(&ca.cert_pem(), &ca.key_pem()).unwrap();
        let other = again
            .issue("x", &["localhost"], std::time::Duration::from_secs(60))
            .unwrap();
        assert!(other.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
    }
}
