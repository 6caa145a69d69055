//! Connecting to JobTrackers: address normalisation and channels.

use std::sync::Arc;
use std::time::Duration;

use lts_registry::{Registry, Role};
use rand::seq::SliceRandom;
use tonic::transport::{Channel, Endpoint};

use crate::ClientError;

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
    pub async fn wait_addresses(&self, timeout: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let a = self.addresses();
            if !a.is_empty() || tokio::time::Instant::now() >= deadline {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Connects to one tracker of `trackers`, picked at random.
pub async fn connect_to(trackers: &Trackers) -> Result<(String, Channel), ClientError> {
    let addrs = trackers.wait_addresses(Duration::from_secs(3)).await;
    if addrs.is_empty() {
        return Err(ClientError::Unavailable(
            "no JobTracker is registered in the cluster".into(),
        ));
    }
    connect_any(&addrs).await
}

/// `host:port` → `http://host:port`; URLs pass unchanged.
pub fn normalize(addr: &str) -> String {
    let addr = addr.trim();
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// An endpoint with the settings every LTS connection uses (TCP_NODELAY, keepalive, timeouts).
pub fn endpoint(addr: &str) -> Result<Endpoint, ClientError> {
    let url = normalize(addr);
    Ok(Endpoint::from_shared(url.clone())
        .map_err(|e| ClientError::Config(format!("tracker address {addr:?}: {e}")))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// Connects to one of `addrs`, tried in random order.
pub async fn connect_any(addrs: &[String]) -> Result<(String, Channel), ClientError> {
    if addrs.is_empty() {
        return Err(ClientError::Config("no tracker address given".into()));
    }
    let mut order: Vec<&String> = addrs.iter().collect();
    order.shuffle(&mut rand::rng());
    let mut last = String::new();
    for addr in order {
        match endpoint(addr)?.connect().await {
            Ok(ch) => return Ok((addr.clone(), ch)),
            Err(e) => {
                last = format!("{addr}: {}", source_chain(&e));
                tracing::debug!(tracker = %addr, error = %last, "tracker not reachable");
            }
        }
    }
    Err(ClientError::Unavailable(format!(
        "no tracker reachable (last error: {last})"
    )))
}

/// A lazily connecting channel over all `addrs` (balanced when there are several).
pub fn lazy_channel(addrs: &[String]) -> Result<Channel, ClientError> {
    match addrs {
        [] => Err(ClientError::Config("no tracker address given".into())),
        [one] => Ok(endpoint(one)?.connect_lazy()),
        many => {
            let eps = many
                .iter()
                .map(|a| endpoint(a))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Channel::balance_list(eps.into_iter()))
        }
    }
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
