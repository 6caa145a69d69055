//! The cluster's certificates and grants: every NodeGroup gets a certificate for its role and
//! every principal the right grants, without the user writing any.
//!
//! Three modes ([`PkiMode`], the operator's `--pki`):
//!
//! * `operator` (default): the operator is the certificate authority. Each LTS cluster has a
//!   CA in the Secret `<cluster>-lts-ca` (made once, owned by the JobTracker NodeGroup, never
//!   rewritten). Each NodeGroup gets a short-lived leaf certificate in `<ng>-lts-tls`
//!   (`tls.crt`, `tls.key`, `ca.crt`), issued again at two thirds of its life or when the CA
//!   changed. The operator signs its own client certificate for each cluster with the same
//!   CA, kept in files under its `--pki-dir`, so its clients pick up a renewal on their next
//!   connection.
//! * `cert-manager`: the same Secrets are written by cert-manager from `Certificate`
//!   objects the operator keeps, signed by the issuer the chart names; the operator presents
//!   the certificate the chart issued it (`--tls-cert`, `--tls-key`, `--tls-ca`).
//! * `none`: plaintext and no authentication (`LTS_INSECURE`, `LTS_NO_AUTH`), as before.
//!
//! Identities are SPIFFE-style URIs in the certificates' SANs
//! (`spiffe://lts/ns/<ns>/cluster/<cluster>/node-group/<ng>`), and the generated auth file
//! `<cluster>-lts-auth` (key `auth.yaml`) names exactly those: the operator is `admin`; each
//! TaskTracker NodeGroup is `worker` of its own group only; each entry of a JobTracker's
//! `spec.clients` gets its own certificate Secret and the grants listed there. Trackers read
//! the auth file again every few seconds, so a new TaskTracker group is let in (and a deleted
//! one shut out) without a restart.
//!
//! Everything but the API calls ([`Pki::reconcile`], [`Pki::credentials`]) is pure.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Resource, ResourceExt};
use lts_core::pki::{Ca, fingerprint, inspect};
use serde::Serialize;

use crate::crd::{ClientSpec, NodeGroup, NodeRole};
use crate::{Error, MANAGER, Result};

/// Where the operator's pods mount a NodeGroup's certificate Secret.
pub const TLS_DIR: &str = "/etc/lts/tls";
/// Where a JobTracker mounts the generated auth file.
pub const AUTH_DIR: &str = "/etc/lts/auth";
/// The key of the auth file in its Secret.
pub const AUTH_KEY: &str = "auth.yaml";
/// The operator's identity in every cluster's auth file.
pub const OPERATOR_ID: &str = "spiffe://lts/operator";
/// Default life of a leaf certificate.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// A leaf certificate is issued again once this fraction of its life has passed.
pub const RENEW_AT: f64 = 2.0 / 3.0;
/// Annotation on a certificate Secret: the fingerprint of the CA that signed it.
pub const CA_ANNOTATION: &str = "lts.io/ca-fingerprint";
/// Label on the client certificate Secrets of a cluster: the cluster.
pub const CLIENT_LABEL: &str = "lts.io/client-of";

/// How the cluster's certificates are made.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PkiMode {
    /// The operator is the CA.
    #[default]
    Operator,
    /// cert-manager issues the certificates from this issuer.
    CertManager(IssuerRef),
    /// No TLS, no authentication.
    Disabled,
}

impl PkiMode {
    /// Whether pods get certificates and an auth file.
    pub fn enabled(&self) -> bool {
        !matches!(self, PkiMode::Disabled)
    }
}

/// A cert-manager issuer: `Issuer/NAME` (in each NodeGroup's namespace) or
/// `ClusterIssuer/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerRef {
    /// `Issuer` or `ClusterIssuer`.
    pub kind: String,
    /// Its name.
    pub name: String,
}

impl std::str::FromStr for IssuerRef {
    type Err = String;

    fn from_str(s: &str) -> Result<IssuerRef, String> {
        let (kind, name) = s.split_once('/').unwrap_or(("ClusterIssuer", s));
        if !matches!(kind, "Issuer" | "ClusterIssuer") || name.trim().is_empty() {
            return Err(format!(
                "{s:?}: expected Issuer/NAME or ClusterIssuer/NAME (e.g. ClusterIssuer/lts-ca)"
            ));
        }
        Ok(IssuerRef {
            kind: kind.into(),
            name: name.trim().into(),
        })
    }
}

/// The Secret holding a cluster's CA.
pub fn ca_secret(cluster: &str) -> String {
    format!("{cluster}-lts-ca")
}

/// The Secret holding a NodeGroup's certificate.
pub fn tls_secret(node_group: &str) -> String {
    format!("{node_group}-lts-tls")
}

/// The Secret holding a cluster's auth file.
pub fn auth_secret(cluster: &str) -> String {
    format!("{cluster}-lts-auth")
}

/// The Secret holding the certificate of a cluster's client `name`.
pub fn client_secret(cluster: &str, name: &str) -> String {
    format!("{cluster}-lts-client-{name}")
}

/// The identity of a NodeGroup's pods.
pub fn node_group_id(namespace: &str, cluster: &str, node_group: &str) -> String {
    format!("spiffe://lts/ns/{namespace}/cluster/{cluster}/node-group/{node_group}")
}

/// The identity of a cluster's client `name`.
pub fn client_id(namespace: &str, cluster: &str, name: &str) -> String {
    format!("spiffe://lts/ns/{namespace}/cluster/{cluster}/client/{name}")
}

/// The DNS name clients check a JobTracker's certificate against (the Service's).
pub fn tracker_domain(job_tracker: &str, namespace: &str) -> String {
    format!("{job_tracker}.{namespace}.svc")
}

/// Common name and SANs of a NodeGroup's certificate: its identity URI; for a JobTracker also
/// every name of its Service.
pub fn leaf_names(ng: &NodeGroup, namespace: &str) -> (String, Vec<String>) {
    let name = ng.name_any();
    let id = node_group_id(namespace, &ng.spec.cluster, &name);
    match ng.spec.role {
        NodeRole::JobTracker => (
            tracker_domain(&name, namespace),
            vec![
                id,
                name.clone(),
                format!("{name}.{namespace}"),
                tracker_domain(&name, namespace),
                format!("{name}.{namespace}.svc.cluster.local"),
            ],
        ),
        NodeRole::TaskTracker => (format!("{name}.{}", ng.spec.cluster), vec![id]),
    }
}

#[derive(Serialize)]
struct AuthFile {
    principals: Vec<AuthPrincipal>,
}

#[derive(Serialize)]
struct AuthPrincipal {
    name: String,
    certificates: Vec<String>,
    grants: Vec<AuthGrant>,
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum AuthGrant {
    Admin,
    Submitter { groups: Vec<String> },
    Worker { groups: Vec<String> },
}

/// The auth file of `cluster` in `namespace`: the operator is admin, every TaskTracker
/// NodeGroup of the cluster among `node_groups` is worker of its own group, every client of
/// `clients` has its listed grants. Deterministic (sorted), so an unchanged cluster writes
/// the same bytes.
pub fn auth_file(
    namespace: &str,
    cluster: &str,
    node_groups: &[NodeGroup],
    clients: &[ClientSpec],
) -> String {
    let mut principals = vec![AuthPrincipal {
        name: "lts-operator".into(),
        certificates: vec![OPERATOR_ID.into()],
        grants: vec![AuthGrant::Admin],
    }];
    let mut workers: Vec<String> = node_groups
        .iter()
        .filter(|g| {
            g.spec.role == NodeRole::TaskTracker
                && g.spec.cluster == cluster
                && g.namespace().as_deref() == Some(namespace)
        })
        .map(|g| g.name_any())
        .collect();
    workers.sort();
    workers.dedup();
    for w in workers {
        principals.push(AuthPrincipal {
            name: format!("task-tracker/{w}"),
            certificates: vec![node_group_id(namespace, cluster, &w)],
            grants: vec![AuthGrant::Worker { groups: vec![w] }],
        });
    }
    let mut clients: Vec<&ClientSpec> = clients.iter().collect();
    clients.sort_by(|a, b| a.name.cmp(&b.name));
    for c in clients {
        let mut grants = Vec::new();
        if c.admin {
            grants.push(AuthGrant::Admin);
        }
        if !c.submit_node_groups.is_empty() {
            grants.push(AuthGrant::Submitter {
                groups: c.submit_node_groups.clone(),
            });
        }
        if grants.is_empty() {
            continue;
        }
        principals.push(AuthPrincipal {
            name: format!("client/{}", c.name),
            certificates: vec![client_id(namespace, cluster, &c.name)],
            grants,
        });
    }
    let body = serde_yaml::to_string(&AuthFile { principals }).expect("the auth file serializes");
    format!("# Written by lts-operator for LTS cluster {cluster:?}; edits are overwritten.\n{body}")
}

/// Whether `secret` holds a certificate to keep: signed by the CA with fingerprint `ca`,
/// naming every one of `names`, and not yet at [`RENEW_AT`] of its life at `now` (Unix
/// seconds).
pub fn leaf_is_current(secret: Option<&Secret>, ca: &str, names: &[String], now: i64) -> bool {
    let Some(secret) = secret else {
        return false;
    };
    let signed_by = secret.annotations().get(CA_ANNOTATION).map(String::as_str);
    let data = secret.data.as_ref();
    let pem = |k: &str| {
        data.and_then(|d| d.get(k))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let (Some(cert), Some(_key)) = (pem("tls.crt"), pem("tls.key")) else {
        return false;
    };
    let Some(info) = inspect(&cert) else {
        return false;
    };
    signed_by == Some(ca)
        && names.iter().all(|n| info.names.contains(n))
        && !info.due_for_renewal(now, RENEW_AT)
}

fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

fn secret_meta(
    name: &str,
    namespace: &str,
    owner: &NodeGroup,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(labels),
        owner_references: owner.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn base_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "lts".to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGER.to_string(),
        ),
        ("lts.io/cluster".to_string(), cluster.to_string()),
    ])
}

/// A certificate to issue, and the Secret that holds it.
#[derive(Debug, Clone)]
pub struct Wanted<'a> {
    /// The Secret's name.
    pub secret: String,
    /// Its namespace.
    pub namespace: String,
    /// The NodeGroup it goes with (deleted with it).
    pub owner: &'a NodeGroup,
    /// The Secret's labels.
    pub labels: BTreeMap<String, String>,
    /// The certificate's common name.
    pub common_name: String,
    /// Its DNS and URI names.
    pub sans: Vec<String>,
}

impl<'a> Wanted<'a> {
    /// The certificate of NodeGroup `ng` in `namespace`.
    pub fn node_group(ng: &'a NodeGroup, namespace: &str) -> Wanted<'a> {
        let (common_name, sans) = leaf_names(ng, namespace);
        let mut labels = base_labels(&ng.spec.cluster);
        labels.insert("lts.io/node-group".into(), ng.name_any());
        Wanted {
            secret: tls_secret(&ng.name_any()),
            namespace: namespace.into(),
            owner: ng,
            labels,
            common_name,
            sans,
        }
    }

    /// The certificate of client `name` of the cluster whose JobTracker NodeGroup is `jt`.
    pub fn client(jt: &'a NodeGroup, namespace: &str, name: &str) -> Wanted<'a> {
        let cluster = jt.spec.cluster.as_str();
        let mut labels = base_labels(cluster);
        labels.insert(CLIENT_LABEL.into(), cluster.into());
        Wanted {
            secret: client_secret(cluster, name),
            namespace: namespace.into(),
            owner: jt,
            labels,
            common_name: name.into(),
            sans: vec![client_id(namespace, cluster, name)],
        }
    }
}

/// A `kubernetes.io/tls` Secret with the certificate `w`, signed by `ca`.
pub fn leaf_secret(w: &Wanted<'_>, ca: &Ca, validity: Duration) -> Result<Secret> {
    let sans: Vec<&str> = w.sans.iter().map(String::as_str).collect();
    let leaf = ca
        .issue(&w.common_name, &sans, validity)
        .map_err(|e| Error::Pki(format!("issuing {}: {e}", w.secret)))?;
    let ca_pem = ca.cert_pem();
    let mut meta = secret_meta(&w.secret, &w.namespace, w.owner, w.labels.clone());
    meta.annotations = Some(BTreeMap::from([(
        CA_ANNOTATION.to_string(),
        fingerprint(&ca_pem),
    )]));
    Ok(Secret {
        metadata: meta,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_string(), bytes(&leaf.cert_pem)),
            ("tls.key".to_string(), bytes(&leaf.key_pem)),
            ("ca.crt".to_string(), bytes(&ca_pem)),
        ])),
        ..Secret::default()
    })
}

/// A cert-manager `Certificate` (named like its Secret) for the certificate `w`.
pub fn certificate(w: &Wanted<'_>, issuer: &IssuerRef, validity: Duration) -> DynamicObject {
    let secret = w.secret.as_str();
    let (uris, dns): (Vec<&String>, Vec<&String>) = w.sans.iter().partition(|s| s.contains("://"));
    let hours = (validity.as_secs() / 3600).max(1);
    let renew = ((validity.as_secs() as f64 * (1.0 - RENEW_AT)) / 3600.0).round() as u64;
    let mut obj = DynamicObject::new(secret, &certificate_resource()).within(&w.namespace);
    obj.metadata.labels = Some(w.labels.clone());
    obj.metadata.owner_references = w.owner.controller_owner_ref(&()).map(|o| vec![o]);
    obj.data = serde_json::json!({
        "spec": {
            "secretName": secret,
            "commonName": w.common_name,
            "dnsNames": dns,
            "uris": uris,
            "duration": format!("{hours}h"),
            "renewBefore": format!("{}h", renew.max(1)),
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "issuerRef": {"group": "cert-manager.io", "kind": issuer.kind, "name": issuer.name},
            "secretTemplate": {"labels": w.labels},
        }
    });
    obj
}

/// cert-manager's `Certificate` resource.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "cert-manager.io",
        "v1",
        "Certificate",
    ))
}

/// The operator's client identity in one cluster: files its clients read on each connection.
#[derive(Debug, Clone)]
struct OperatorIdentity {
    ca_fingerprint: String,
    renew_after: i64,
    creds: lts_worker_sdk::Credentials,
}

/// The operator's side of the cluster PKI: its mode and its own identities.
#[derive(Debug)]
pub struct Pki {
    /// How certificates are made.
    pub mode: PkiMode,
    /// Life of the leaf certificates.
    pub validity: Duration,
    dir: PathBuf,
    identities: Mutex<HashMap<(String, String), OperatorIdentity>>,
}

impl Pki {
    /// PKI in `mode`; the operator's own certificates go under `dir`.
    pub fn new(mode: PkiMode, validity: Duration, dir: impl Into<PathBuf>) -> Pki {
        Pki {
            mode,
            validity,
            dir: dir.into(),
            identities: Mutex::default(),
        }
    }

    /// No certificates (the test default).
    pub fn disabled() -> Pki {
        Pki::new(PkiMode::Disabled, DEFAULT_VALIDITY, std::env::temp_dir())
    }

    fn identity_dir(&self, namespace: &str, cluster: &str) -> PathBuf {
        self.dir.join(namespace).join(cluster)
    }

    /// Makes sure everything `ng` needs exists and is current: in `operator` mode the
    /// cluster's CA, the NodeGroup's certificate and, for a JobTracker, its clients'
    /// certificates (removing those no longer listed); in `cert-manager` mode the matching
    /// `Certificate` objects. In both, the cluster's auth file from `siblings` (the
    /// NodeGroups of the namespace). `job_tracker` is the cluster's JobTracker NodeGroup.
    pub async fn reconcile(
        &self,
        client: &kube::Client,
        ng: &NodeGroup,
        job_tracker: &NodeGroup,
        siblings: &[NodeGroup],
    ) -> Result<()> {
        let ns = ng
            .namespace()
            .ok_or(Error::MissingField("metadata.namespace"))?;
        let cluster = ng.spec.cluster.as_str();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let pp = PatchParams::apply(MANAGER).force();
        let is_tracker = ng.spec.role == NodeRole::JobTracker;
        let mut wanted = vec![Wanted::node_group(ng, &ns)];
        if is_tracker {
            wanted.extend(
                ng.spec
                    .clients
                    .iter()
                    .map(|c| Wanted::client(ng, &ns, &c.name)),
            );
        }
        let clients: Vec<String> = wanted[1..].iter().map(|w| w.secret.clone()).collect();
        let selector = format!("{CLIENT_LABEL}={cluster}");
        match &self.mode {
            PkiMode::Disabled => return Ok(()),
            PkiMode::Operator => {
                let ca = self.ensure_ca(&secrets, &ns, job_tracker).await?;
                self.ca_seen(&ns, cluster, &ca)?;
                let (ca_fp, now) = (fingerprint(&ca.cert_pem()), now());
                for w in &wanted {
                    let current = secrets.get_opt(&w.secret).await?;
                    if leaf_is_current(current.as_ref(), &ca_fp, &w.sans, now) {
                        continue;
                    }
                    let secret = leaf_secret(w, &ca, self.validity)?;
                    secrets
                        .patch(&w.secret, &pp, &Patch::Apply(&secret))
                        .await?;
                    tracing::info!(namespace = %ns, secret = %w.secret, "issued a certificate");
                }
            }
            PkiMode::CertManager(issuer) => {
                let certs: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), &ns, &certificate_resource());
                for w in &wanted {
                    let c = certificate(w, issuer, self.validity);
                    certs.patch(&w.secret, &pp, &Patch::Apply(&c)).await?;
                }
                if is_tracker {
                    prune(&certs, &selector, &clients).await?;
                }
            }
        }
        if is_tracker {
            prune(&secrets, &selector, &clients).await?;
        }
        let auth = auth_file(&ns, cluster, siblings, &job_tracker.spec.clients);
        let secret = Secret {
            metadata: secret_meta(
                &auth_secret(cluster),
                &ns,
                job_tracker,
                base_labels(cluster),
            ),
            data: Some(BTreeMap::from([(AUTH_KEY.to_string(), bytes(&auth))])),
            ..Secret::default()
        };
        secrets
            .patch(&auth_secret(cluster), &pp, &Patch::Apply(&secret))
            .await?;
        Ok(())
    }

    /// The cluster's CA: read from its Secret, or made and stored once (a concurrent maker
    /// wins; its CA is read back). Never rewritten: every certificate hangs off it.
    async fn ensure_ca(
        &self,
        secrets: &Api<Secret>,
        ns: &str,
        job_tracker: &NodeGroup,
    ) -> Result<Ca> {
        let cluster = &job_tracker.spec.cluster;
        let name = ca_secret(cluster);
        let stored = match secrets.get_opt(&name).await? {
            Some(s) => s,
            None => {
                let ca = Ca::new(&format!("LTS cluster {cluster} CA ({ns})"))
                    .map_err(|e| Error::Pki(format!("making the CA of {cluster}: {e}")))?;
                let secret = Secret {
                    metadata: secret_meta(&name, ns, job_tracker, base_labels(cluster)),
                    data: Some(BTreeMap::from([
                        ("ca.crt".to_string(), bytes(&ca.cert_pem())),
                        ("ca.key".to_string(), bytes(&ca.key_pem())),
                    ])),
                    ..Secret::default()
                };
                match secrets.create(&PostParams::default(), &secret).await {
                    Ok(_) => {
                        tracing::info!(cluster = %cluster, namespace = %ns, secret = %name, "made the cluster's CA");
                        return Ok(ca);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => secrets.get(&name).await?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let field = |k: &str| {
            stored
                .data
                .as_ref()
                .and_then(|d| d.get(k))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .ok_or_else(|| Error::Pki(format!("the Secret {name} has no {k}")))
        };
        Ca::load(&field("ca.crt")?, &field("ca.key")?)
            .map_err(|e| Error::Pki(format!("the Secret {name} does not hold a usable CA: {e}")))
    }

    /// What the operator presents to the trackers of `cluster` in `namespace`: in `operator`
    /// mode its own certificate signed by the cluster's CA (made or renewed here, in files
    /// its clients read again on each connection); otherwise `None` (the operator's flags).
    pub async fn credentials(
        &self,
        client: &kube::Client,
        namespace: &str,
        job_tracker: &NodeGroup,
    ) -> Result<Option<lts_worker_sdk::Credentials>> {
        if self.mode != PkiMode::Operator {
            return Ok(None);
        }
        let cluster = job_tracker.spec.cluster.clone();
        let dir = self.identity_dir(namespace, &cluster);
        let key = (namespace.to_string(), cluster.clone());
        let known = self
            .identities
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        match known {
            Some(k) if now() < k.renew_after => Ok(Some(k.creds)),
            _ => {
                let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
                let ca = self.ensure_ca(&secrets, namespace, job_tracker).await?;
                Ok(Some(self.write_identity(&key, &dir, &ca)?))
            }
        }
    }

    /// Notes the CA a reconcile just read: when it is not the one the operator's identity
    /// for that cluster hangs off (the CA was replaced), the identity is issued again now.
    pub fn ca_seen(&self, namespace: &str, cluster: &str, ca: &Ca) -> Result<()> {
        let key = (namespace.to_string(), cluster.to_string());
        let stale = self
            .identities
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .is_some_and(|k| k.ca_fingerprint != fingerprint(&ca.cert_pem()));
        if stale {
            self.write_identity(&key, &self.identity_dir(namespace, cluster), ca)?;
        }
        Ok(())
    }

    /// Issues the operator's certificate for one cluster into `dir`; the credentials that
    /// read it (again on each connection).
    fn write_identity(
        &self,
        key: &(String, String),
        dir: &Path,
        ca: &Ca,
    ) -> Result<lts_worker_sdk::Credentials> {
        let leaf = ca
            .issue("lts-operator", &[OPERATOR_ID], self.validity)
            .map_err(|e| Error::Pki(format!("issuing the operator's certificate: {e}")))?;
        let io = |e: std::io::Error| {
            Error::Pki(format!(
                "writing the operator's certificate under {}: {e}",
                dir.display()
            ))
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        // Certificate and key in one file, replaced in one rename: a client never reads a
        // certificate with the other one's key.
        write_atomic(
            &dir.join("identity.pem"),
            &format!("{}{}", leaf.cert_pem, leaf.key_pem),
        )
        .map_err(io)?;
        write_atomic(&dir.join("ca.crt"), &ca.cert_pem()).map_err(io)?;
        let info =
            inspect(&leaf.cert_pem).ok_or_else(|| Error::Pki("unreadable certificate".into()))?;
        let renew_after =
            info.not_before + ((info.not_after - info.not_before) as f64 * RENEW_AT) as i64;
        let files = |e: lts_worker_sdk::ClientError| Error::Pki(e.to_string());
        let creds = lts_worker_sdk::Credentials::default()
            .tls_ca_file(dir.join("ca.crt"))
            .map_err(files)?
            .tls_identity_files(dir.join("identity.pem"), dir.join("identity.pem"))
            .map_err(files)?;
        self.identities
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                key.clone(),
                OperatorIdentity {
                    ca_fingerprint: fingerprint(&ca.cert_pem()),
                    renew_after,
                    creds: creds.clone(),
                },
            );
        tracing::info!(namespace = %key.0, cluster = %key.1, "issued the operator's own certificate");
        Ok(creds)
    }
}

/// Deletes the objects `selector` finds whose names are not in `keep` (client certificates
/// taken off a JobTracker's list).
async fn prune<K>(api: &Api<K>, selector: &str, keep: &[String]) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let listed = api
        .list_metadata(&ListParams::default().labels(selector))
        .await?;
    for o in listed {
        let name = o.name_any();
        if keep.contains(&name) {
            continue;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(name = %name, "removed a client certificate no longer listed"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn write_atomic(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "pki_tests.rs"]
mod tests;
