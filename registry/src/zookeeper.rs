//! The ZooKeeper registry.
//!
//! Layout under the optional chroot:
//!
//! ```text
//! /lts/{cluster}/nodes/{job-tracker|task-tracker|job-client}/{identity}   ephemeral, data = NodeInfo JSON
//! /lts/{cluster}/election/job-tracker/n_0000000007                       ephemeral-sequential, data = NodeInfo JSON
//! ```
//!
//! **Election**: every JobTracker that is a candidate creates an ephemeral-sequential node; the
//! lowest sequence is the master. Each candidate watches only its predecessor (to take over)
//! and the current master's node (to learn who leads). The master steps down *the moment* its
//! session is suspended (disconnected) — not only when it expires — and becomes master again
//! only after the session is back and its candidate node is still the lowest.
//!
//! **Sessions**: one background task owns the ZooKeeper session. When a session expires, it
//! opens a new one and re-creates every ephemeral node it owns. Reconnects use backoff; the
//! current state is visible through [`Registry::health`] and the logs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backon::BackoffBuilder;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError, Permission, SessionState};

use crate::{Health, NodeInfo, Registry, RegistryError, Role};

/// Where ZooKeeper is and how to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkConfig {
    /// `host:port[,host:port…]`.
    pub servers: String,
    /// Path prefix for everything LTS writes (`""` for none).
    pub chroot: String,
    /// Cluster name.
    pub cluster: String,
    /// Session timeout; a dead node's ephemeral znodes vanish after this.
    pub session_timeout: Duration,
    /// The digest credential (`user:password`) the session authenticates with; the nodes it
    /// creates are then readable and writable only with the same credential. `None`: nodes
    /// are world-writable (a warning says so).
    pub auth: Option<ZkDigest>,
}

/// A ZooKeeper digest credential, `user:password`; shown without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct ZkDigest(String);

impl std::fmt::Debug for ZkDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = self.0.split_once(':').map(|(u, _)| u).unwrap_or("");
        write!(f, "ZkDigest({user}:***)")
    }
}

impl ZkDigest {
    /// Reads `user:password` from a file (a mounted Secret); surrounding whitespace is ignored.
    pub fn from_file(path: &std::path::Path) -> Result<ZkDigest, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            RegistryError::Config(format!(
                "reading the ZooKeeper credential {}: {e}",
                path.display()
            ))
        })?;
        ZkDigest::parse(text.trim()).map_err(|why| {
            RegistryError::Config(format!(
                "the ZooKeeper credential in {} {why}",
                path.display()
            ))
        })
    }

    /// `user:password`.
    pub fn parse(s: &str) -> Result<ZkDigest, String> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok(ZkDigest(s.to_string())),
            _ => Err("must be one line `user:password`".into()),
        }
    }
}

impl ZkConfig {
    /// Parses `zookeeper://HOST:PORT[,HOST:PORT]/CHROOT` (the chroot is optional).
    pub fn parse(url: &str, cluster: &str) -> Result<ZkConfig, RegistryError> {
        let rest = url.strip_prefix("zookeeper://").ok_or_else(|| {
            RegistryError::Config(format!(
                "registry {url:?} must look like zookeeper://HOST:PORT[,HOST:PORT]/CHROOT"
            ))
        })?;
        let (servers, chroot) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if servers.is_empty() {
            return Err(RegistryError::Config(format!(
                "registry {url:?} names no ZooKeeper server"
            )));
        }
        for s in servers.split(',') {
            let ok = s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(RegistryError::Config(format!(
                    "registry server {s:?} must be HOST:PORT"
                )));
            }
        }
        Ok(ZkConfig {
            servers: servers.to_string(),
            chroot: chroot.to_string(),
            cluster: cluster.to_string(),
            session_timeout: Duration::from_secs(6),
            auth: None,
        })
    }

    /// Authenticate with the digest credential in `path` (`None`: keep as is).
    pub fn with_auth_file(
        mut self,
        path: Option<&std::path::Path>,
    ) -> Result<ZkConfig, RegistryError> {
        if let Some(p) = path {
            self.auth = Some(ZkDigest::from_file(p)?);
        }
        Ok(self)
    }

    fn base(&self) -> String {
        format!("{}/lts/{}", self.chroot, self.cluster)
    }
}

fn role_index(role: Role) -> usize {
    match role {
        Role::JobTracker => 0,
        Role::TaskTracker => 1,
        Role::JobClient => 2,
    }
}

struct Inner {
    cfg: ZkConfig,
    base: String,
    candidate: Option<NodeInfo>,
    registered: Mutex<BTreeMap<(Role, String), NodeInfo>>,
    client: Mutex<Option<Client>>,
    is_master: AtomicBool,
    /// The sequence number of this tracker's election node while it is master.
    epoch: AtomicU64,
    master: watch::Sender<Option<NodeInfo>>,
    members: [watch::Sender<Vec<NodeInfo>>; 3],
    health: Mutex<Health>,
    kick: Notify,
    stop: CancellationToken,
    /// When ZooKeeper last answered this session (ms since `origin`): proof that the session
    /// was alive then. See [`Inner::session_fresh`].
    last_answer: AtomicU64,
    origin: std::time::Instant,
    /// Why the registry gave up for good (its nodes cannot be secured).
    fatal: Mutex<Option<String>>,
}

/// A registry backed by ZooKeeper. Cheap to clone; the session lives until the last clone is
/// dropped or [`ZkRegistry::close`] is called.
#[derive(Clone)]
pub struct ZkRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ZkRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkRegistry")
            .field("servers", &self.inner.cfg.servers)
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

fn zk_err(e: ZkError) -> RegistryError {
    RegistryError::Backend(format!("zookeeper: {e}"))
}

impl Inner {
    /// The ACL of every node this process creates: the creator's credential only, or (without
    /// one) anyone.
    fn acls(&self) -> Acls<'static> {
        if self.cfg.auth.is_some() {
            Acls::creator_all()
        } else {
            Acls::anyone_all()
        }
    }
}

impl ZkRegistry {
    /// Starts the session task. With `candidate`, this process takes part in the JobTracker
    /// election. Returns at once; the first connection is made in the background (see
    /// [`ZkRegistry::wait_connected`]).
    pub fn start(cfg: ZkConfig, candidate: Option<NodeInfo>) -> ZkRegistry {
        let base = cfg.base();
        let inner = Arc::new(Inner {
            cfg,
            base,
            candidate,
            registered: Mutex::new(BTreeMap::new()),
            client: Mutex::new(None),
            is_master: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            master: watch::channel(None).0,
            members: std::array::from_fn(|_| watch::channel(Vec::new()).0),
            health: Mutex::new(Health::Disconnected("connecting".into())),
            kick: Notify::new(),
            stop: CancellationToken::new(),
            last_answer: AtomicU64::new(0),
            origin: std::time::Instant::now(),
            fatal: Mutex::new(None),
        });
        if let Some(me) = &inner.candidate {
            inner
                .registered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((me.role, me.identity.clone()), me.clone());
        }
        tokio::spawn(run(inner.clone()));
        ZkRegistry { inner }
    }

    /// Waits until the first session is established, up to `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), RegistryError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.health() == Health::Connected {
                return Ok(());
            }
            if let Some(e) = self.fatal() {
                return Err(e);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RegistryError::Backend(format!(
                    "no ZooKeeper session with {} after {timeout:?}: {:?}",
                    self.inner.cfg.servers,
                    self.health()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Why the registry gave up for good (its nodes cannot be secured), once it did: it then
    /// never connects again, so a process that started while it was still trying must stop.
    pub fn fatal(&self) -> Option<RegistryError> {
        self.inner
            .fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .map(RegistryError::Config)
    }

    /// Deletes this process's znodes and closes the session.
    pub async fn close(&self) {
        self.inner.is_master.store(false, Ordering::SeqCst);
        let client = self
            .inner
            .client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(c) = client {
            let nodes: Vec<NodeInfo> = self
                .inner
                .registered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect();
            for n in nodes {
                let _ = c
                    .delete(&self.inner.node_path(n.role, &n.identity), None)
                    .await;
            }
        }
        self.inner.stop.cancel();
    }

    fn current(&self) -> Result<Client, RegistryError> {
        self.inner
            .client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| RegistryError::Backend("no ZooKeeper session".into()))
    }
}

impl Inner {
    fn dir(&self, role: Role) -> String {
        format!("{}/nodes/{}", self.base, role.as_str())
    }

    fn node_path(&self, role: Role, identity: &str) -> String {
        format!("{}/{identity}", self.dir(role))
    }

    fn election_dir(&self) -> String {
        format!("{}/election/job-tracker", self.base)
    }

    fn set_health(&self, h: Health) {
        let mut cur = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if *cur != h {
            match &h {
                Health::Connected => {
                    tracing::info!(servers = %self.cfg.servers, "ZooKeeper session established")
                }
                Health::Disconnected(why) => {
                    tracing::warn!(servers = %self.cfg.servers, reason = %why, "ZooKeeper disconnected")
                }
            }
            *cur = h;
        }
    }

    /// ZooKeeper answered this session just now.
    fn answered(&self) {
        self.last_answer
            .fetch_max(self.origin.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    /// Whether ZooKeeper answered this session recently enough that it cannot have expired
    /// yet (within two thirds of the session timeout). A process that was frozen (SIGSTOP, a
    /// paused VM) wakes up with this false, even before its client notices that the session
    /// expired meanwhile, and so does not act as master on what it held before the freeze.
    fn session_fresh(&self) -> bool {
        let since = (self.origin.elapsed().as_millis() as u64)
            .saturating_sub(self.last_answer.load(Ordering::SeqCst));
        u128::from(since) < self.cfg.session_timeout.as_millis() * 2 / 3
    }

    fn step_down(&self, why: &str) {
        if self.is_master.swap(false, Ordering::SeqCst) {
            tracing::warn!(reason = why, "stepping down as master");
        }
    }
}

async fn create_node(
    client: &Client,
    path: &str,
    node: &NodeInfo,
    acls: Acls<'static>,
) -> Result<(), ZkError> {
    let data = serde_json::to_vec(node).unwrap_or_default();
    let opts = CreateMode::Ephemeral.with_acls(acls);
    match client.create(path, &data, &opts).await {
        Ok(_) => Ok(()),
        Err(ZkError::NodeExists) => {
            // Left over from an earlier session of ours (it expires soon) or updated data:
            // replace it so it belongs to this session.
            let (_, stat) = client.get_data(path).await?;
            if stat.ephemeral_owner != client.session_id().0 {
                let _ = client.delete(path, None).await;
                client.create(path, &data, &opts).await.map(|_| ())
            } else {
                client.set_data(path, &data, None).await.map(|_| ())
            }
        }
        Err(e) => Err(e),
    }
}

/// The ACL id ZooKeeper gives a digest credential: `user:base64(sha1(user:password))`.
fn digest_id(auth: &ZkDigest) -> String {
    use base64::Engine;
    use sha1::Digest;
    let user = auth.0.split_once(':').map(|(u, _)| u).unwrap_or("");
    let hash = sha1::Sha1::digest(auth.0.as_bytes());
    format!(
        "{user}:{}",
        base64::engine::general_purpose::STANDARD.encode(hash)
    )
}

/// With a credential: creates the registry's directories (readable and writable only with
/// it) and checks that every one of them — also those made earlier, by anyone — lets nobody
/// else write. Without one: warns that the nodes are world-writable.
async fn check_secure(inner: &Inner, client: &Client) -> Result<(), String> {
    let Some(auth) = &inner.cfg.auth else {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "ZooKeeper nodes are created world-writable: give a credential (--zk-auth-file) so that only this cluster's nodes can change them"
            )
        });
        return Ok(());
    };
    let ours = digest_id(auth);
    let dir_opts = CreateMode::Persistent.with_acls(inner.acls());
    let mut dirs: Vec<String> = Role::ALL.iter().map(|r| inner.dir(*r)).collect();
    dirs.push(inner.election_dir());
    for d in &dirs {
        client.mkdir(d, &dir_opts).await.map_err(|e| {
            format!("creating {d}: {e} (is the credential the one that created it?)")
        })?;
    }
    // Every node from the base down to the directories LTS writes in.
    let mut paths: Vec<String> = vec![inner.base.clone()];
    for d in &dirs {
        let mut p = inner.base.clone();
        for part in d[inner.base.len()..].split('/').filter(|s| !s.is_empty()) {
            p = format!("{p}/{part}");
            if !paths.contains(&p) {
                paths.push(p.clone());
            }
        }
    }
    let write = Permission::WRITE | Permission::CREATE | Permission::DELETE | Permission::ADMIN;
    for p in &paths {
        let (acls, _) = client
            .get_acl(p)
            .await
            .map_err(|e| format!("reading the ACL of {p}: {e}"))?;
        for acl in &acls {
            let mine = acl.scheme() == "digest" && acl.id() == ours;
            if !mine && (acl.permission() & write) != Permission::NONE {
                return Err(format!(
                    "{p} can be changed by {}:{} (created without this credential): the registry cannot be secured there. Delete it (zkCli.sh deleteall {}) or give it this credential's ACL, then start again",
                    acl.scheme(),
                    acl.id(),
                    inner.base
                ));
            }
        }
    }
    Ok(())
}

async fn run(inner: Arc<Inner>) {
    let mut delays = backoff();
    while !inner.stop.is_cancelled() {
        let mut connector = Client::connector()
            .with_session_timeout(inner.cfg.session_timeout)
            .with_connection_timeout(Duration::from_secs(3));
        if let Some(auth) = &inner.cfg.auth {
            connector = connector.with_auth("digest", auth.0.as_bytes());
        }
        let connect = connector.connect(&inner.cfg.servers);
        let client = tokio::select! {
            c = connect => c,
            _ = inner.stop.cancelled() => return,
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                inner.set_health(Health::Disconnected(format!("connect: {e}")));
                let d = delays.next().unwrap_or(Duration::from_secs(5));
                tokio::select! {
                    _ = tokio::time::sleep(d) => continue,
                    _ = inner.stop.cancelled() => return,
                }
            }
        };
        delays = backoff();
        if let Err(why) = check_secure(&inner, &client).await {
            // Not a passing fault: refuse to work on nodes others can change.
            tracing::error!(error = %why, "ZooKeeper registry refused");
            *inner.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
            inner.set_health(Health::Disconnected(why));
            return;
        }
        *inner.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
        inner.set_health(Health::Connected);
        let why = session(&inner, &client).await;
        inner.step_down(&why);
        inner.master.send_replace(None);
        *inner.client.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if inner.stop.is_cancelled() {
            return;
        }
        inner.set_health(Health::Disconnected(why));
    }
}

fn backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs one session until it expires (or the registry stops); returns why it ended.
async fn session(inner: &Inner, client: &Client) -> String {
    let mut state = client.state_watcher();
    let mut candidate_path: Option<String> = None;
    // A read every third of the session timeout proves the session alive (see
    // `Inner::session_fresh`); the client's own pings are not visible from here.
    let mut probe = tokio::time::interval(inner.cfg.session_timeout / 3);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if inner.stop.is_cancelled() {
            return "registry closed".into();
        }
        match evaluate(inner, client, &mut candidate_path).await {
            Ok(mut watches) => {
                inner.answered();
                // Wait for a change to evaluate again; probes in between do not re-evaluate.
                loop {
                    tokio::select! {
                        _ = probe.tick() => match client.check_stat(&inner.base).await {
                            Ok(_) => inner.answered(),
                            Err(ZkError::SessionExpired) | Err(ZkError::ClientClosed) => {
                                return "session expired".into();
                            }
                            Err(e) => tracing::debug!(error = %e, "ZooKeeper probe failed"),
                        },
                        s = state.changed() => {
                            match s {
                                SessionState::Disconnected => {
                                    inner.step_down("ZooKeeper session suspended");
                                    inner.set_health(Health::Disconnected("connection lost; session still valid".into()));
                                }
                                SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                                    inner.set_health(Health::Connected);
                                }
                                other => return format!("session {other:?}"),
                            }
                            break;
                        }
                        _ = &mut watches => break,
                        _ = inner.kick.notified() => break,
                        _ = inner.stop.cancelled() => return "registry closed".into(),
                    }
                }
            }
            Err(ZkError::SessionExpired) | Err(ZkError::ClientClosed) => {
                return "session expired".into();
            }
            Err(e) => {
                tracing::debug!(error = %e, "ZooKeeper evaluation failed; retrying");
                if matches!(
                    state.peek_state(),
                    SessionState::Expired | SessionState::Closed | SessionState::AuthFailed
                ) {
                    return format!("session {:?}", state.peek_state());
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    s = state.changed() => if s == SessionState::Disconnected {
                        inner.step_down("ZooKeeper session suspended");
                        inner.set_health(Health::Disconnected("connection lost; session still valid".into()));
                    },
                    _ = inner.stop.cancelled() => return "registry closed".into(),
                }
            }
        }
    }
}

type Watches = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Makes ZooKeeper match what this process owns, recomputes master and members, and returns
/// a future that completes when any watched thing changes.
async fn evaluate(
    inner: &Inner,
    client: &Client,
    candidate_path: &mut Option<String>,
) -> Result<Watches, ZkError> {
    let dir_opts = CreateMode::Persistent.with_acls(inner.acls());
    for role in Role::ALL {
        client.mkdir(&inner.dir(role), &dir_opts).await?;
    }
    client.mkdir(&inner.election_dir(), &dir_opts).await?;

    // Our own registrations.
    let mine: Vec<NodeInfo> = inner
        .registered
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    for n in &mine {
        let path = inner.node_path(n.role, &n.identity);
        match client.check_stat(&path).await? {
            Some(stat) if stat.ephemeral_owner == client.session_id().0 => {}
            _ => create_node(client, &path, n, inner.acls()).await?,
        }
    }

    let mut futures: Vec<Watches> = Vec::new();

    // Election.
    let election = inner.election_dir();
    if let Some(me) = &inner.candidate {
        let exists = match candidate_path {
            Some(p) => client.check_stat(p).await?.is_some(),
            None => false,
        };
        if !exists {
            let data = serde_json::to_vec(me).unwrap_or_default();
            let (_, seq) = client
                .create(
                    &format!("{election}/n_"),
                    &data,
                    &CreateMode::EphemeralSequential.with_acls(inner.acls()),
                )
                .await?;
            *candidate_path = Some(format!("{election}/n_{seq}"));
            tracing::info!(candidate = ?candidate_path, "joined the JobTracker election");
        }
    }
    let mut children = client.list_children(&election).await?;
    children.sort_by_key(|c| {
        c.trim_start_matches("n_")
            .parse::<i64>()
            .unwrap_or(i64::MAX)
    });
    let master_node = match children.first() {
        Some(first) => {
            let path = format!("{election}/{first}");
            match client.get_and_watch_data(&path).await {
                Ok((data, _, w)) => {
                    futures.push(Box::pin(async move {
                        w.changed().await;
                    }));
                    serde_json::from_slice::<NodeInfo>(&data).ok()
                }
                Err(ZkError::NoNode) => {
                    futures.push(Box::pin(async {}));
                    None
                }
                Err(e) => return Err(e),
            }
        }
        None => {
            // Watch for the first candidate to appear.
            let (_, _, w) = client.get_and_watch_children(&election).await?;
            futures.push(Box::pin(async move {
                w.changed().await;
            }));
            None
        }
    };
    if let Some(mine) = candidate_path.as_deref() {
        let my_name = mine.rsplit('/').next().unwrap_or_default();
        let pos = children.iter().position(|c| c == my_name);
        let am_master = pos == Some(0);
        if am_master {
            let seq = my_name.trim_start_matches("n_").parse::<u64>().unwrap_or(0);
            inner.epoch.store(seq, Ordering::SeqCst);
            if !inner.is_master.swap(true, Ordering::SeqCst) {
                tracing::info!(candidate = %mine, "became master");
            }
        } else {
            inner.step_down("another candidate is first");
            if let Some(p) = pos.filter(|&p| p > 0) {
                // Watch only the predecessor.
                let pred = format!("{election}/{}", children[p - 1]);
                let (stat, w) = client.check_and_watch_stat(&pred).await?;
                if stat.is_none() {
                    futures.push(Box::pin(async {}));
                } else {
                    futures.push(Box::pin(async move {
                        w.changed().await;
                    }));
                }
            }
        }
    }
    inner.master.send_if_modified(|cur| {
        if *cur != master_node {
            tracing::info!(master = ?master_node.as_ref().map(|m| &m.identity), "master changed");
            *cur = master_node.clone();
            true
        } else {
            false
        }
    });

    // Members of the roles others look up.
    for role in Role::ALL {
        let (names, _, w) = client.get_and_watch_children(&inner.dir(role)).await?;
        futures.push(Box::pin(async move {
            w.changed().await;
        }));
        let mut list = Vec::with_capacity(names.len());
        for name in names {
            match client
                .get_data(&format!("{}/{name}", inner.dir(role)))
                .await
            {
                Ok((data, _)) => {
                    if let Ok(n) = serde_json::from_slice::<NodeInfo>(&data) {
                        list.push(n);
                    }
                }
                Err(ZkError::NoNode) => {}
                Err(e) => return Err(e),
            }
        }
        list.sort_by(|a, b| a.identity.cmp(&b.identity));
        inner.members[role_index(role)].send_if_modified(|cur| {
            if *cur != list {
                *cur = list;
                true
            } else {
                false
            }
        });
    }
    Ok(Box::pin(async move {
        futures::future::select_all(futures).await;
    }))
}

#[async_trait]
impl Registry for ZkRegistry {
    async fn register(&self, node: NodeInfo) -> Result<(), RegistryError> {
        self.inner
            .registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((node.role, node.identity.clone()), node.clone());
        let result = match self.current() {
            Ok(c) => create_node(
                &c,
                &self.inner.node_path(node.role, &node.identity),
                &node,
                self.inner.acls(),
            )
            .await
            .map_err(zk_err),
            Err(e) => Err(e),
        };
        // Whatever happened, the session task makes sure it exists once connected.
        self.inner.kick.notify_one();
        result
    }

    async fn unregister(&self, role: Role, identity: &str) -> Result<(), RegistryError> {
        self.inner
            .registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(role, identity.to_string()));
        let c = self.current()?;
        match c.delete(&self.inner.node_path(role, identity), None).await {
            Ok(()) | Err(ZkError::NoNode) => Ok(()),
            Err(e) => Err(zk_err(e)),
        }
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        let c = self.current()?;
        let mut out = Vec::new();
        for role in Role::ALL {
            let dir = self.inner.dir(role);
            let names = match c.list_children(&dir).await {
                Ok(n) => n,
                Err(ZkError::NoNode) => continue,
                Err(e) => return Err(zk_err(e)),
            };
            for name in names {
                match c.get_data(&format!("{dir}/{name}")).await {
                    Ok((data, _)) => {
                        if let Ok(n) = serde_json::from_slice::<NodeInfo>(&data) {
                            out.push(n);
                        }
                    }
                    Err(ZkError::NoNode) => {}
                    Err(e) => return Err(zk_err(e)),
                }
            }
        }
        Ok(out)
    }

    fn is_master(&self) -> bool {
        self.inner.is_master.load(Ordering::SeqCst) && self.inner.session_fresh()
    }

    fn master_epoch(&self) -> Option<u64> {
        self.is_master()
            .then(|| self.inner.epoch.load(Ordering::SeqCst))
    }

    fn master(&self) -> watch::Receiver<Option<NodeInfo>> {
        self.inner.master.subscribe()
    }

    fn members(&self, role: Role) -> watch::Receiver<Vec<NodeInfo>> {
        self.inner.members[role_index(role)].subscribe()
    }

    fn health(&self) -> Health {
        self.inner
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_urls() {
        let c = ZkConfig::parse("zookeeper://a:2181,b:2182/prod", "c1").unwrap();
        assert_eq!(c.servers, "a:2181,b:2182");
        assert_eq!(c.chroot, "/prod");
        assert_eq!(c.base(), "/prod/lts/c1");
        let c = ZkConfig::parse("zookeeper://127.0.0.1:2181", "default").unwrap();
        assert_eq!(c.base(), "/lts/default");
        for bad in [
            "zk://a:1",
            "zookeeper://",
            "zookeeper://host",
            "zookeeper://h:99999/x",
        ] {
            assert!(ZkConfig::parse(bad, "c").is_err(), "{bad}");
        }
    }
}
