//! Connecting to JobTrackers: address normalisation and channels.

use std::sync::Arc;
use std::time::Duration;

use lts_registry::{Health, Registry, Role};
use rand::seq::SliceRandom;
use tonic::transport::Endpoint;

use crate::ClientError;
use crate::credentials::{AuthChannel, Credentials};

/// Where to find JobTrackers.
#[derive(Clone)]
pub enum Trackers {
    /// A fixed list of addresses (e.g. a Kubernetes Service).
    Static(Vec<String>),
    /// The live JobTracker members of a registry (ZooKeeper), followed as they change.
    Registry(Arc<dyn Registry>),
}

impl std::fmt::Debug for Trackers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trackers::Static(a) => f.debug_tuple("Static").field(a).finish(),
            Trackers::Registry(_) => f.write_str("Registry"),
        }
    }
}

impl Trackers {
    /// The tracker addresses known right now.
    pub fn addresses(&self) -> Vec<String> {
        match self {
            Trackers::Static(a) => a.clone(),
            Trackers::Registry(r) => r
                .members(Role::JobTracker)
                .borrow()
                .iter()
                .map(|n| n.address.clone())
                .filter(|a| !a.is_empty())
                .collect(),
        }
    }

    /// The tracker addresses, waiting up to `timeout` for the registry to know one.
    ///
    /// A registry still connecting (its first listing comes only once its session is up)
    /// gets the whole `timeout` again from the moment it connects, up to
    /// [`Trackers::CONNECTING_WAIT`] in all, so that a client made and used at once does not
    /// fail just because ZooKeeper answered slowly.
    pub async fn wait_addresses(&self, timeout: Duration) -> Vec<String> {
        let start = tokio::time::Instant::now();
        let hard = start + timeout.max(Self::CONNECTING_WAIT);
        let mut deadline = start + timeout;
        loop {
            let a = self.addresses();
            let now = tokio::time::Instant::now();
            if !a.is_empty() {
                return a;
            }
            if !self.connected() {
                deadline = (now + timeout).min(hard);
            }
            if now >= deadline {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The longest [`Trackers::wait_addresses`] waits for a registry that is still connecting.
    pub const CONNECTING_WAIT: Duration = Duration::from_secs(15);

    /// Whether the source of addresses is up (always, for a static list).
    fn connected(&self) -> bool {
        match self {
            Trackers::Static(_) => true,
            Trackers::Registry(r) => r.health() == Health::Connected,
        }
    }

    /// Why no address is known, for an error message.
    fn why_none(&self) -> String {
        match self {
            Trackers::Static(_) => "no JobTracker address is configured".into(),
            Trackers::Registry(r) => match r.health() {
                Health::Connected => "no JobTracker is registered in the cluster".into(),
                Health::Disconnected(why) => {
                    format!("no JobTracker is known: the registry is not connected ({why})")
                }
            },
        }
    }
}

/// Connects to one tracker of `trackers`, picked at random.
pub async fn connect_to(
    trackers: &Trackers,
    creds: &Credentials,
) -> Result<(String, AuthChannel), ClientError> {
    connect_avoiding(trackers, &[], creds).await
}

/// Connects to one tracker of `trackers`, picked at random among those not in `avoid` (which
/// just failed or went silent); the avoided ones are tried only when no other is reachable.
pub async fn connect_avoiding(
    trackers: &Trackers,
    avoid: &[String],
    creds: &Credentials,
) -> Result<(String, AuthChannel), ClientError> {
    let addrs = trackers.wait_addresses(Duration::from_secs(3)).await;
    if addrs.is_empty() {
        return Err(ClientError::Unavailable(trackers.why_none()));
    }
    let (avoided, preferred): (Vec<String>, Vec<String>) =
        addrs.into_iter().partition(|a| avoid.contains(a));
    if preferred.is_empty() {
        return connect_any(&avoided, creds).await;
    }
    match connect_any(&preferred, creds).await {
        Ok(c) => Ok(c),
        Err(e) if avoided.is_empty() => Err(e),
        Err(_) => connect_any(&avoided, creds).await,
    }
}

/// Trackers that failed recently, kept out of the way for a while (30 s) so that a reconnect
/// or a retried call goes elsewhere first.
#[derive(Debug, Default)]
pub struct Avoid(std::sync::Mutex<Vec<(String, std::time::Instant)>>);

impl Avoid {
    const FOR: Duration = Duration::from_secs(30);

    /// Keeps `addr` out of the way.
    pub fn add(&self, addr: &str) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|(a, at)| a != addr && at.elapsed() < Self::FOR);
        v.push((addr.to_string(), std::time::Instant::now()));
    }

    /// The addresses to avoid now.
    pub fn current(&self) -> Vec<String> {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|(_, at)| at.elapsed() < Self::FOR);
        v.iter().map(|(a, _)| a.clone()).collect()
    }
}

/// An endpoint with the settings every LTS connection uses (TCP_NODELAY, keepalive, timeouts).
///
/// HTTP/2 keepalive pings every 3 s and gives up after 3 s more: a tracker that froze (or a
/// partition) ends every stream on the connection within ~6 s, so feedback subscriptions and
/// job watches move to another tracker. (The `Work` stream has its own, faster heartbeat.)
/// With TLS in `creds`, the tracker's certificate is checked and the client's presented.
pub fn endpoint(addr: &str, creds: &Credentials) -> Result<Endpoint, ClientError> {
    let url = creds.url(addr);
    creds.apply(
        Endpoint::from_shared(url.clone())
            .map_err(|e| ClientError::Config(format!("tracker address {addr:?}: {e}")))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(3))
            .http2_keep_alive_interval(Duration::from_secs(3))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true),
    )
}

/// A channel to `addr` that connects on first use.
pub fn lazy(addr: &str, creds: &Credentials) -> Result<AuthChannel, ClientError> {
    Ok(AuthChannel::new(
        endpoint(addr, creds)?.connect_lazy(),
        creds.interceptor(),
    ))
}

/// Connects to `addr` now.
pub async fn connect_one(addr: &str, creds: &Credentials) -> Result<AuthChannel, ClientError> {
    match endpoint(addr, creds)?.connect().await {
        Ok(ch) => Ok(AuthChannel::new(ch, creds.interceptor())),
        Err(e) => Err(ClientError::Unavailable(format!(
            "{addr}: {}",
            explain(&source_chain(&e), creds)
        ))),
    }
}

fn closed(error: &str) -> bool {
    [
        "connection reset",
        "broken pipe",
        "h2 protocol error",
        "connection closed",
    ]
    .iter()
    .any(|m| error.contains(m))
}

/// A connect error, with what to do about it when it is about TLS.
pub fn explain(error: &str, creds: &Credentials) -> String {
    let hint = if error.contains("CertificateRequired") || error.contains("certificate required") {
        Some(
            "the tracker asks for a client certificate: pass --tls-cert/--tls-key or set LTS_TLS_CERT/LTS_TLS_KEY",
        )
    } else if error.contains("UnknownIssuer") || error.contains("invalid peer certificate") {
        Some(
            "the tracker's certificate is not signed by the CA given (--tls-ca, LTS_TLS_CA), or does not name this address (--tls-domain)",
        )
    } else if !creds.uses_tls() && closed(error) {
        Some("the tracker may serve TLS: pass --tls-ca (LTS_TLS_CA)")
    } else if creds.uses_tls() && !creds.has_identity() && closed(error) {
        // TLS 1.3: a tracker that requires a client certificate closes the connection after
        // the handshake, which the client sees as a closed connection.
        Some(
            "the tracker may ask for a client certificate: pass --tls-cert/--tls-key or set LTS_TLS_CERT/LTS_TLS_KEY",
        )
    } else if creds.uses_tls()
        && (error.contains("InvalidContentType") || error.contains("corrupt message"))
    {
        Some("the tracker serves plaintext (--insecure): leave out --tls-ca")
    } else {
        None
    };
    match hint {
        Some(h) => format!("{error} ({h})"),
        None => error.to_string(),
    }
}

/// Connects to one of `addrs`, tried in random order.
pub async fn connect_any(
    addrs: &[String],
    creds: &Credentials,
) -> Result<(String, AuthChannel), ClientError> {
    if addrs.is_empty() {
        return Err(ClientError::Config("no tracker address given".into()));
    }
    let mut order: Vec<&String> = addrs.iter().collect();
    order.shuffle(&mut rand::rng());
    let mut last = String::new();
    for addr in order {
        match endpoint(addr, creds)?.connect().await {
            Ok(ch) => return Ok((addr.clone(), AuthChannel::new(ch, creds.interceptor()))),
            Err(e) => {
                last = format!("{addr}: {}", explain(&source_chain(&e), creds));
                tracing::debug!(tracker = %addr, error = %last, "tracker not reachable");
            }
        }
    }
    Err(ClientError::Unavailable(format!(
        "no tracker reachable (last error: {last})"
    )))
}

/// An error with its sources, on one line.
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
