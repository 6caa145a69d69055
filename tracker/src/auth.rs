//! Who is calling, and what they may do.
//!
//! A caller proves who it is with a bearer token (`authorization: Bearer lts_…`) or with a
//! client certificate. The auth file (`--auth-file`, YAML; usually a mounted Kubernetes
//! Secret) maps both to principals and gives each principal its grants:
//!
//! ```yaml
//! principals:
//!   - name: billing-api
//!     tokens:
//!       - sha256: 5f0c…          # `lts auth token` prints the token and this line
//!         expires: 2027-01-01T00:00:00Z
//!     grants:
//!       - role: submitter        # submit, and read, cancel and watch its own jobs
//!         groups: [billing]      # submit node groups
//!   - name: billing-workers
//!     certificates: [billing-workers.lts]   # a client certificate's CN, DNS or URI name
//!     grants:
//!       - role: worker           # the Work stream of these TaskTracker node groups
//!         groups: [billing-jobs]
//!   - name: operator
//!     tokens: [{sha256: 9a41…}]
//!     grants: [{role: admin}]
//! ```
//!
//! Tokens are stored only as SHA-256 hashes; a token is 256 random bits, so a hash is all a
//! stolen file gives away. The file is read again every few seconds: adding, rotating and
//! revoking a token or a grant needs no restart. A file that no longer parses keeps the
//! previous rules, with a warning.
//!
//! Without an auth file (`--no-auth`, and `lts dev`) every caller is an administrator.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use sha2::Digest;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

/// How often the auth file is read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// Prefix of every token `lts auth token` makes.
pub const TOKEN_PREFIX: &str = "lts_";

/// A role a principal holds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase", deny_unknown_fields)]
pub enum GrantSpec {
    /// Everything, including cluster APIs and every node group.
    Admin,
    /// Submit jobs for these submit node groups (`"*"`: any), and read, change, watch and
    /// receive the feedback of the jobs they submitted.
    Submitter {
        /// Submit node groups.
        groups: Vec<String>,
    },
    /// Run the jobs of these TaskTracker node groups (`"*"`: any).
    Worker {
        /// TaskTracker node groups.
        groups: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSpec {
    sha256: String,
    #[serde(default)]
    expires: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalSpec {
    name: String,
    #[serde(default)]
    tokens: Vec<TokenSpec>,
    #[serde(default)]
    certificates: Vec<String>,
    grants: Vec<GrantSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    principals: Vec<PrincipalSpec>,
}

/// Node groups a grant covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups {
    any: bool,
    names: BTreeSet<String>,
}

impl Groups {
    fn add(&mut self, names: &[String]) {
        for n in names {
            if n == "*" {
                self.any = true;
            } else {
                self.names.insert(n.clone());
            }
        }
    }

    /// Whether `group` is covered.
    pub fn contains(&self, group: &str) -> bool {
        self.any || self.names.contains(group)
    }

    /// The one group covered, when exactly one is (a default for a filter left empty).
    pub fn only(&self) -> Option<&str> {
        if self.any || self.names.len() != 1 {
            return None;
        }
        self.names.iter().next().map(String::as_str)
    }

    fn describe(&self) -> String {
        if self.any {
            "any".into()
        } else if self.names.is_empty() {
            "none".into()
        } else {
            self.names.iter().cloned().collect::<Vec<_>>().join(", ")
        }
    }
}

/// An authenticated caller and its grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Its name in the auth file.
    pub name: String,
    /// Holds the admin role.
    pub admin: bool,
    /// Submit node groups it may submit for.
    pub submit: Groups,
    /// TaskTracker node groups it may work for.
    pub work: Groups,
}

/// What a refusal names: the grant that was missing.
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// The admin role.
    Admin,
    /// `submitter` of this submit node group.
    Submitter(&'a str),
    /// `worker` of this TaskTracker node group.
    Worker(&'a str),
}

impl std::fmt::Display for Need<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Need::Admin => f.write_str("role admin"),
            Need::Submitter(g) => write!(f, "role submitter of submit node group {g:?}"),
            Need::Worker(g) => write!(f, "role worker of TaskTracker node group {g:?}"),
        }
    }
}

impl Principal {
    /// The caller of a tracker without an auth file.
    pub fn anonymous_admin() -> Principal {
        Principal {
            name: "anonymous".into(),
            admin: true,
            submit: Groups {
                any: true,
                names: BTreeSet::new(),
            },
            work: Groups {
                any: true,
                names: BTreeSet::new(),
            },
        }
    }

    /// Whether the principal holds `need`.
    pub fn holds(&self, need: Need<'_>) -> bool {
        self.admin
            || match need {
                Need::Admin => false,
                Need::Submitter(g) => self.submit.contains(g),
                Need::Worker(g) => self.work.contains(g),
            }
    }

    /// `Ok` when the principal holds `need`; else `PERMISSION_DENIED` naming the grant, and
    /// what the call was doing (`action`).
    pub fn require(&self, need: Need<'_>, action: &str) -> Result<(), Status> {
        if self.holds(need) {
            return Ok(());
        }
        metrics::counter!("lts_auth_denied_total", "reason" => "grant").increment(1);
        let mut status = Status::permission_denied(format!(
            "principal {:?} may not {action}: it lacks the {need} (it is submitter of: {}; worker of: {})",
            self.name,
            self.submit.describe(),
            self.work.describe(),
        ));
        if let Ok(v) = need.to_string().parse() {
            status.metadata_mut().insert("lts-missing-grant", v);
        }
        Err(status)
    }
}

/// The rules of one version of the auth file.
#[derive(Debug, Default)]
struct Rules {
    tokens: HashMap<[u8; 32], (Arc<Principal>, Option<i64>)>,
    certificates: HashMap<String, Arc<Principal>>,
}

/// Hashes a token the way the auth file stores it.
pub fn token_sha256(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.trim().as_bytes()))
}

/// A new random token (256 bits from the thread's CSPRNG, seeded by the OS) and its hash
/// for the auth file.
pub fn new_token() -> (String, String) {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let hash = token_sha256(&token);
    (token, hash)
}

fn parse(text: &str) -> anyhow::Result<Rules> {
    let file: AuthFile = serde_yaml::from_str(text).context("not a valid auth file")?;
    let mut rules = Rules::default();
    let mut names = BTreeSet::new();
    for (i, p) in file.principals.into_iter().enumerate() {
        let at = format!("principals[{i}]");
        anyhow::ensure!(!p.name.trim().is_empty(), "{at}.name: must not be empty");
        anyhow::ensure!(
            names.insert(p.name.clone()),
            "{at}.name: {:?} is named twice",
            p.name
        );
        anyhow::ensure!(
            !p.tokens.is_empty() || !p.certificates.is_empty(),
            "{at}: principal {:?} has no token and no certificate name, so nobody can be it",
            p.name
        );
        anyhow::ensure!(
            !p.grants.is_empty(),
            "{at}.grants: principal {:?} has no grant",
            p.name
        );
        let mut principal = Principal {
            name: p.name.clone(),
            admin: false,
            submit: Groups::default(),
            work: Groups::default(),
        };
        for (j, g) in p.grants.iter().enumerate() {
            let groups = match g {
                GrantSpec::Admin => {
                    principal.admin = true;
                    continue;
                }
                GrantSpec::Submitter { groups } => {
                    principal.submit.add(groups);
                    groups
                }
                GrantSpec::Worker { groups } => {
                    principal.work.add(groups);
                    groups
                }
            };
            anyhow::ensure!(
                !groups.is_empty(),
                "{at}.grants[{j}].groups: name at least one node group (or \"*\")"
            );
            for group in groups.iter().filter(|g| g.as_str() != "*") {
                let mut v = Vec::new();
                lts_core::validate::check_node_group(
                    &format!("{at}.grants[{j}].groups"),
                    group,
                    &mut v,
                );
                if let Some(first) = v.first() {
                    anyhow::bail!("{first}");
                }
            }
        }
        let principal = Arc::new(principal);
        for (j, t) in p.tokens.iter().enumerate() {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(t.sha256.trim(), &mut hash).map_err(|_| {
                anyhow::anyhow!(
                    "{at}.tokens[{j}].sha256: must be 64 hex digits (the SHA-256 of the token; `lts auth token` prints it)"
                )
            })?;
            let expires = t.expires.map(|e| e.timestamp_millis());
            anyhow::ensure!(
                rules
                    .tokens
                    .insert(hash, (principal.clone(), expires))
                    .is_none(),
                "{at}.tokens[{j}]: the same token is listed twice"
            );
        }
        for (j, c) in p.certificates.iter().enumerate() {
            anyhow::ensure!(
                !c.trim().is_empty(),
                "{at}.certificates[{j}]: must not be empty"
            );
            anyhow::ensure!(
                rules
                    .certificates
                    .insert(c.clone(), principal.clone())
                    .is_none(),
                "{at}.certificates[{j}]: certificate name {c:?} belongs to two principals"
            );
        }
    }
    Ok(rules)
}

/// What a caller presented to prove who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// Nothing (or a tracker without an auth file).
    Nothing,
    /// The SHA-256 of a bearer token.
    Token([u8; 32]),
    /// A client certificate's names.
    Certificate(Vec<String>),
}

fn refused(reason: &'static str, message: String) -> Status {
    metrics::counter!("lts_auth_denied_total", "reason" => reason).increment(1);
    Status::unauthenticated(message)
}

/// Authenticates calls and binds TaskTracker identities to the principal that first used
/// them.
#[derive(Debug)]
pub struct Auth {
    file: Option<PathBuf>,
    rules: RwLock<(Vec<u8>, Arc<Rules>)>,
    /// TaskTracker identities connected now, with the principal speaking for them and how many
    /// streams use them.
    bound: Mutex<HashMap<String, (String, usize)>>,
    /// Every caller, without an auth file.
    anonymous: Arc<Principal>,
}

/// Holds a TaskTracker identity for its principal while the stream lives.
#[derive(Debug)]
pub struct Binding {
    auth: Arc<Auth>,
    identity: String,
}

impl Drop for Binding {
    fn drop(&mut self) {
        let mut b = self.auth.bound.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = b.get_mut(&self.identity) {
            entry.1 -= 1;
            if entry.1 == 0 {
                b.remove(&self.identity);
            }
        }
    }
}

impl Auth {
    /// Every caller is an administrator.
    pub fn open() -> Arc<Auth> {
        Arc::new(Auth {
            file: None,
            rules: RwLock::new((Vec::new(), Arc::new(Rules::default()))),
            bound: Mutex::new(HashMap::new()),
            anonymous: Arc::new(Principal::anonymous_admin()),
        })
    }

    /// Reads the auth file; an error names the entry and the reason.
    pub fn from_file(path: PathBuf) -> anyhow::Result<Arc<Auth>> {
        let text = std::fs::read(&path)
            .with_context(|| format!("reading the auth file {}", path.display()))?;
        let rules = parse(&String::from_utf8_lossy(&text))
            .with_context(|| format!("auth file {}", path.display()))?;
        Ok(Arc::new(Auth {
            file: Some(path),
            rules: RwLock::new((text, Arc::new(rules))),
            bound: Mutex::new(HashMap::new()),
            anonymous: Arc::new(Principal::anonymous_admin()),
        }))
    }

    /// Whether calls are checked at all.
    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Reads the auth file again; `Ok(true)` when its rules changed.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let text = std::fs::read(path)
            .with_context(|| format!("reading the auth file {}", path.display()))?;
        if self.rules.read().unwrap_or_else(|e| e.into_inner()).0 == text {
            return Ok(false);
        }
        let rules = parse(&String::from_utf8_lossy(&text))
            .with_context(|| format!("auth file {}", path.display()))?;
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = (text, Arc::new(rules));
        Ok(true)
    }

    /// Reloads every [`RELOAD_EVERY`] until `shutdown`.
    pub fn spawn_reloader(self: &Arc<Self>, shutdown: CancellationToken) {
        if !self.enabled() {
            return;
        }
        let auth = self.clone();
        crate::reload::spawn("auth file", RELOAD_EVERY, shutdown, move || auth.reload());
    }

    fn rules(&self) -> Arc<Rules> {
        self.rules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// The principal making `request`: from its bearer token, else its client certificate.
    /// `UNAUTHENTICATED` when it has neither, or they name nobody.
    pub fn principal<T>(&self, request: &Request<T>) -> Result<Arc<Principal>, Status> {
        Ok(self.authenticate(request)?.0)
    }

    /// The principal making `request`, and what it presented — to check again, against the
    /// rules of the moment, while a long stream lasts ([`Auth::recheck`]).
    pub fn authenticate<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(Arc<Principal>, Presented), Status> {
        if !self.enabled() {
            return Ok((self.anonymous.clone(), Presented::Nothing));
        }
        let presented = if let Some(value) = request.metadata().get("authorization") {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    refused(
                        "malformed",
                        "the authorization header must be `Bearer <token>`".into(),
                    )
                })?;
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&sha2::Sha256::digest(token.trim().as_bytes()));
            Presented::Token(hash)
        } else if let Some(certs) = request.peer_certs()
            && let Some(leaf) = certs.first()
        {
            Presented::Certificate(crate::tls::certificate_names(leaf))
        } else {
            Presented::Nothing
        };
        let principal = self.recheck(&presented)?;
        Ok((principal, presented))
    }

    /// The principal `presented` names under the rules of the moment: a token revoked or
    /// expired since, or a certificate name removed, is `UNAUTHENTICATED` now.
    pub fn recheck(&self, presented: &Presented) -> Result<Arc<Principal>, Status> {
        if !self.enabled() {
            return Ok(self.anonymous.clone());
        }
        let rules = self.rules();
        match presented {
            Presented::Token(hash) => {
                let Some((principal, expires)) = rules.tokens.get(hash) else {
                    return Err(refused(
                        "unknown_token",
                        "the token is not known to this tracker (revoked, or never issued)".into(),
                    ));
                };
                if let Some(at) = expires
                    && *at <= lts_core::now_ms()
                {
                    return Err(refused(
                        "expired_token",
                        format!(
                            "the token of principal {:?} expired at {}",
                            principal.name,
                            chrono::DateTime::from_timestamp_millis(*at)
                                .map(|t| t.to_rfc3339())
                                .unwrap_or_default()
                        ),
                    ));
                }
                Ok(principal.clone())
            }
            Presented::Certificate(names) => names
                .iter()
                .find_map(|n| rules.certificates.get(n).cloned())
                .ok_or_else(|| {
                    refused(
                        "unknown_certificate",
                        format!(
                            "the client certificate ({}) names no principal of this tracker",
                            names.join(", ")
                        ),
                    )
                }),
            Presented::Nothing => Err(refused(
                "no_credentials",
                "no credentials: this tracker needs a bearer token (--token-file or LTS_TOKEN) or a client certificate (--tls-cert and --tls-key)".into(),
            )),
        }
    }

    /// Ends when `presented` no longer holds `need` (revoked, expired, grant removed),
    /// with the status to end a stream with; never without an auth file. Checked at every
    /// reload of the rules.
    pub async fn revoked(&self, presented: &Presented, need: Need<'_>, action: &str) -> Status {
        if !self.enabled() {
            return std::future::pending().await;
        }
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.recheck(presented) {
                Ok(p) => {
                    if let Err(status) = p.require(need, action) {
                        return status;
                    }
                }
                Err(status) => return status,
            }
        }
    }

    /// Binds TaskTracker `identity` to `principal` while the returned guard lives. Refused
    /// (`PERMISSION_DENIED`) while another principal speaks for that identity: nobody can
    /// take over another worker's stream, leases or registration.
    pub fn bind(
        self: &Arc<Self>,
        identity: &str,
        principal: &Principal,
    ) -> Result<Binding, Status> {
        let mut b = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        match b.get_mut(identity) {
            Some((owner, n)) if *owner == principal.name => *n += 1,
            Some((owner, _)) => {
                metrics::counter!("lts_auth_denied_total", "reason" => "identity").increment(1);
                return Err(Status::permission_denied(format!(
                    "TaskTracker identity {identity:?} is in use by principal {owner:?}; principal {:?} may not speak for it",
                    principal.name
                )));
            }
            None => {
                b.insert(identity.to_string(), (principal.name.clone(), 1));
            }
        }
        Ok(Binding {
            auth: self.clone(),
            identity: identity.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
principals:
  - name: billing-api
    tokens:
      - sha256: HASH_A
    grants:
      - role: submitter
        groups: [billing]
  - name: workers
    certificates: [workers.lts]
    tokens:
      - sha256: HASH_B
        expires: 2001-01-01T00:00:00Z
    grants:
      - role: worker
        groups: [billing-jobs, "*"]
"#;

    fn file(a: &str, b: &str) -> String {
        FILE.replace("HASH_A", &token_sha256(a))
            .replace("HASH_B", &token_sha256(b))
    }

    fn call(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    fn auth(text: &str) -> Arc<Auth> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.yaml");
        std::fs::write(&path, text).unwrap();
        let a = Auth::from_file(path.clone()).unwrap();
        std::mem::forget(dir);
        a
    }

    #[test]
    fn tokens_name_principals_and_grants_are_checked() {
        let (a, _) = new_token();
        let (b, _) = new_token();
        let auth = auth(&file(&a, &b));
        let p = auth.principal(&call(Some(&a))).unwrap();
        assert_eq!(p.name, "billing-api");
        assert!(p.require(Need::Submitter("billing"), "submit").is_ok());
        let e = p.require(Need::Submitter("other"), "submit").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message()
                .contains("submitter of submit node group \"other\"")
        );
        assert!(p.require(Need::Admin, "list nodes").is_err());
        assert!(p.require(Need::Worker("billing"), "work").is_err());

        let e = auth.principal(&call(Some(&b))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("expired"), "{}", e.message());
        let e = auth.principal(&call(Some("lts_nope"))).unwrap_err();
        assert!(e.message().contains("not known"));
        let e = auth.principal(&call(None)).unwrap_err();
        assert!(e.message().contains("no credentials"));
    }

    #[test]
    fn a_bad_file_is_refused_with_the_entry_named() {
        for (text, says) in [
            (
                "principals: [{name: x, grants: [{role: admin}]}]",
                "no token",
            ),
            (
                "principals: [{name: x, tokens: [{sha256: abc}], grants: [{role: admin}]}]",
                "64 hex digits",
            ),
            (
                "principals: [{name: x, certificates: [c], grants: [{role: worker, groups: []}]}]",
                "grants[0].groups",
            ),
            (
                "principals: [{name: x, certificates: [c], grants: [{role: root}]}]",
                "not a valid auth file",
            ),
            (
                "principals: [{name: x, certificates: [c], grants: [{role: admin}]}, {name: y, certificates: [c], grants: [{role: admin}]}]",
                "belongs to two principals",
            ),
        ] {
            let e = format!("{:#}", parse(text).unwrap_err());
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn an_identity_is_held_by_one_principal_at_a_time() {
        let auth = Auth::open();
        let mut p = Principal::anonymous_admin();
        let first = auth.bind("w1", &p).unwrap();
        let again = auth.bind("w1", &p).unwrap();
        p.name = "thief".into();
        assert_eq!(
            auth.bind("w1", &p).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        drop(first);
        assert!(auth.bind("w1", &p).is_err());
        drop(again);
        assert!(auth.bind("w1", &p).is_ok());
    }

    #[test]
    fn new_tokens_differ_and_hash_as_listed() {
        let (a, ha) = new_token();
        let (b, _) = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == 68);
        assert_eq!(token_sha256(&a), ha);
        assert_eq!(token_sha256(&format!(" {a}\n")), ha);
    }
}
