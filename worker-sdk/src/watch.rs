//! A cluster-wide watch of job changes ([`JobClient::watch`](crate::JobClient::watch)).
//!
//! Every tracker announces the changes made through it (`JobService.Watch`), so a watch of
//! the whole cluster holds one stream to every tracker and merges them. Trackers are followed
//! as they come and go: from the registry (ZooKeeper) when the client has one, otherwise from
//! `ClusterService.ListNodes`, asked again every [`REFRESH`]. A stream that breaks is
//! reconnected with backoff; each (re)connection yields [`WatchEvent::Resync`], the moment to
//! re-read what the watcher tracks, because changes made while it was away were not seen.

use std::collections::HashMap;
use std::time::Duration;

use backon::BackoffBuilder;
use lts_core::proto::{self, job_service_client::JobServiceClient};
use lts_core::{Job, convert};
use lts_registry::Role;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ClientError;
use crate::background::Background;
use crate::connect::{self, Trackers};
use crate::credentials::Credentials;

/// How often the set of trackers is read again when no registry tells of changes.
pub const REFRESH: Duration = Duration::from_secs(10);

/// What a watch wants to see; `None` fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchFilter {
    /// Only jobs of this TaskTracker node group.
    pub task_tracker_node_group: Option<String>,
    /// Only jobs submitted by this JobClient node group.
    pub submit_node_group: Option<String>,
    /// Only task ids starting with this.
    pub task_id_prefix: Option<String>,
}

impl WatchFilter {
    fn to_proto(&self) -> proto::WatchJobsRequest {
        proto::WatchJobsRequest {
            task_tracker_node_group: self.task_tracker_node_group.clone().unwrap_or_default(),
            submit_node_group: self.submit_node_group.clone().unwrap_or_default(),
            task_id_prefix: self.task_id_prefix.clone().unwrap_or_default(),
        }
    }
}

/// One event of a [`JobWatch`].
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// A job changed; this is how it is stored now.
    Changed(Box<Job>),
    /// A tracker's stream (re)connected, or fell behind: changes may have been missed, so
    /// re-read the jobs you track (e.g. with [`JobClient::list`](crate::JobClient::list)).
    Resync {
        /// The tracker whose stream it is.
        tracker: String,
    },
}

/// A running cluster-wide watch; stops when dropped.
#[derive(Debug)]
pub struct JobWatch {
    rx: mpsc::Receiver<WatchEvent>,
    task: Background,
}

impl JobWatch {
    /// The next event; `None` once the watch has stopped.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        self.rx.recv().await
    }

    /// Stops watching.
    pub async fn stop(self) {
        self.task.stop().await;
    }
}

/// Starts a watch of every tracker of `trackers`.
pub(crate) fn start(trackers: Trackers, creds: Credentials, filter: WatchFilter) -> JobWatch {
    let (tx, rx) = mpsc::channel(1024);
    let stop = CancellationToken::new();
    let task = tokio::spawn(supervise(trackers, creds, filter, tx, stop.clone()));
    JobWatch {
        rx,
        task: Background::new(stop, task),
    }
}

/// Keeps one stream per tracker address, adding and dropping streams as trackers change.
async fn supervise(
    trackers: Trackers,
    creds: Credentials,
    filter: WatchFilter,
    tx: mpsc::Sender<WatchEvent>,
    stop: CancellationToken,
) {
    let mut streams: HashMap<String, CancellationToken> = HashMap::new();
    let mut members = match &trackers {
        Trackers::Registry(r) => Some(r.members(Role::JobTracker)),
        Trackers::Static(_) => None,
    };
    loop {
        let targets = targets(&trackers, &creds).await;
        streams.retain(|addr, token| {
            let keep = targets.contains(addr);
            if !keep {
                tracing::debug!(tracker = %addr, "tracker gone; its job watch stops");
                token.cancel();
            }
            keep
        });
        for addr in targets {
            streams.entry(addr.clone()).or_insert_with(|| {
                let token = stop.child_token();
                tokio::spawn(follow(
                    addr,
                    creds.clone(),
                    filter.clone(),
                    tx.clone(),
                    token.clone(),
                ));
                token
            });
        }
        let changed = async {
            match members.as_mut() {
                Some(m) => {
                    if m.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => tokio::time::sleep(REFRESH).await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
            _ = changed => {}
        }
    }
}

/// The addresses to hold streams to. With a registry: its JobTracker members. With a fixed
/// list: the trackers `ListNodes` names when there are several (a Service in front of a
/// cluster), otherwise the fixed addresses themselves.
async fn targets(trackers: &Trackers, creds: &Credentials) -> Vec<String> {
    let fixed = match trackers {
        Trackers::Registry(_) => return trackers.addresses(),
        Trackers::Static(a) => a.clone(),
    };
    let listed = async {
        let (_, ch) = connect::connect_any(&fixed, creds).await?;
        let resp = lts_core::proto::cluster_service_client::ClusterServiceClient::new(ch)
            .list_nodes(proto::ListNodesRequest {})
            .await?
            .into_inner();
        Ok::<_, ClientError>(
            resp.nodes
                .into_iter()
                .filter(|n| n.role == proto::NodeRole::JobTracker as i32)
                .map(|n| n.address)
                .filter(|a| !a.is_empty() && !unspecified_host(a))
                .collect::<Vec<_>>(),
        )
    };
    match tokio::time::timeout(Duration::from_secs(5), listed).await {
        Ok(Ok(listed)) if listed.len() > 1 => listed,
        _ => fixed,
    }
}

fn unspecified_host(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_unspecified())
}

/// Holds the watch stream of one tracker until `stop`, reconnecting with backoff.
async fn follow(
    addr: String,
    creds: Credentials,
    filter: WatchFilter,
    tx: mpsc::Sender<WatchEvent>,
    stop: CancellationToken,
) {
    let new_backoff = || {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    loop {
        let run = async {
            let ch = connect::connect_one(&addr, &creds).await?;
            let mut stream = JobServiceClient::new(ch)
                .max_decoding_message_size(64 << 20)
                .watch(filter.to_proto())
                .await?
                .into_inner();
            while let Some(change) = stream.message().await? {
                backoff = new_backoff();
                let event = match change.job {
                    Some(job) if !change.resync => {
                        WatchEvent::Changed(Box::new(convert::job_from_proto(job)))
                    }
                    _ => WatchEvent::Resync {
                        tracker: addr.clone(),
                    },
                };
                if tx.send(event).await.is_err() {
                    return Ok(());
                }
            }
            Err(ClientError::Unavailable(format!(
                "{addr}: watch stream ended"
            )))
        };
        let err = tokio::select! {
            _ = stop.cancelled() => return,
            r = run => match r {
                Ok(()) => return,
                Err(e) => e,
            },
        };
        let delay = backoff.next().unwrap_or(Duration::from_secs(5));
        tracing::debug!(tracker = %addr, error = %err, ?delay, "job watch stream lost; reconnecting");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
