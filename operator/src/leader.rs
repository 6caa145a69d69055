//! Leader election with a `coordination.k8s.io/v1` Lease, so exactly one replica reconciles.
//!
//! kube-runtime has no leader election, so this is the classic client-go algorithm in small:
//! a replica takes the Lease when it is free or its holder stopped renewing for a whole lease
//! duration, writes with the Lease's resourceVersion (a concurrent writer gets a conflict and
//! loses), renews every third of the duration, and gives up the moment it cannot renew in
//! time. On shutdown the holder releases the Lease so a standby takes over at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use tokio_util::sync::CancellationToken;

/// Where the Lease lives and who we are.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica (the pod name).
    pub identity: String,
    /// How long a holder keeps the Lease without renewing.
    pub duration: Duration,
}

/// What to do with the Lease as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It is free or expired: take it (a new term).
    Take,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it and renews it.
    Wait,
}

/// Decides from the Lease's spec (pure).
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Take;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Decision::Take,
        Some(h) if h == identity => Decision::Renew,
        Some(_) => {
            let duration =
                SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            match &spec.renew_time {
                Some(MicroTime(t)) if t.checked_add(duration).is_ok_and(|end| end > now) => {
                    Decision::Wait
                }
                _ => Decision::Take,
            }
        }
    }
}

/// The spec to write for `decision` (pure).
pub fn next_spec(
    previous: Option<&LeaseSpec>,
    decision: Decision,
    cfg: &LeaseConfig,
    now: Timestamp,
) -> LeaseSpec {
    let prev = previous.cloned().unwrap_or_default();
    let secs = i32::try_from(cfg.duration.as_secs()).unwrap_or(15).max(1);
    match decision {
        Decision::Renew => LeaseSpec {
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(secs),
            ..prev
        },
        _ => LeaseSpec {
            holder_identity: Some(cfg.identity.clone()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(secs),
            lease_transitions: Some(
                prev.lease_transitions.unwrap_or(0) + i32::from(previous.is_some()),
            ),
            ..prev
        },
    }
}

/// A contender for the Lease.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

impl Elector {
    /// A contender for `cfg.name` in `cfg.namespace`.
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Elector {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    /// One attempt to take or renew the Lease; `true` when we hold it afterwards.
    pub async fn try_hold(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.cfg.name).await?;
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let decision = decide(spec, &self.cfg.identity, now);
        if decision == Decision::Wait {
            return Ok(false);
        }
        let new_spec = next_spec(spec, decision, &self.cfg, now);
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(new_spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // Carries metadata.resourceVersion: a concurrent writer makes this a conflict.
                lease.spec = Some(new_spec);
                self.api
                    .replace(&self.cfg.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => {
                if decision == Decision::Take {
                    tracing::info!(identity = %self.cfg.identity, lease = %self.cfg.name, "became leader");
                }
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until we hold the Lease; `false` if `shutdown` came first.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> bool {
        let retry = (self.cfg.duration / 3).max(Duration::from_millis(200));
        let mut logged = false;
        loop {
            match self.try_hold().await {
                Ok(true) => return true,
                Ok(false) if !logged => {
                    tracing::info!(lease = %self.cfg.name, "another replica leads; standing by");
                    logged = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "lease: cannot read or write"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }

    /// Renews the Lease until `stop`; cancels the returned token when the Lease is lost
    /// (not renewed within its duration, or taken by another replica).
    pub fn keep(self: std::sync::Arc<Self>, stop: CancellationToken) -> CancellationToken {
        let lost = CancellationToken::new();
        let lost2 = lost.clone();
        tokio::spawn(async move {
            let period = (self.cfg.duration / 3).max(Duration::from_millis(200));
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
                match self.try_hold().await {
                    Ok(true) => last_ok = tokio::time::Instant::now(),
                    Ok(false) => {
                        tracing::error!("the lease was taken by another replica");
                        lost2.cancel();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lease renewal failed");
                        if last_ok.elapsed() >= self.cfg.duration {
                            tracing::error!("lease not renewed within its duration");
                            lost2.cancel();
                            return;
                        }
                    }
                }
            }
        });
        lost
    }

    /// Gives the Lease up (if we still hold it) so a standby can take over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let ours = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.cfg.identity.as_str());
        if !ours {
            return;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
        }
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("lease released"),
            Err(e) => tracing::warn!(error = %e, "lease release failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(id: &str) -> LeaseConfig {
        LeaseConfig {
            name: "lts-operator".into(),
            namespace: "lts".into(),
            identity: id.into(),
            duration: Duration::from_secs(15),
        }
    }

    fn held_by(id: &str, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(id.into()),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn free_or_expired_leases_are_taken_live_ones_are_not() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        assert_eq!(decide(None, "a", now), Decision::Take);
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "a", now),
            Decision::Take
        );
        let fresh = held_by("b", now - SignedDuration::from_secs(5));
        assert_eq!(decide(Some(&fresh), "a", now), Decision::Wait);
        assert_eq!(decide(Some(&fresh), "b", now), Decision::Renew);
        let stale = held_by("b", now - SignedDuration::from_secs(16));
        assert_eq!(decide(Some(&stale), "a", now), Decision::Take);
    }

    #[test]
    fn taking_counts_a_transition_renewing_does_not() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let stale = held_by("b", now - SignedDuration::from_secs(60));
        let taken = next_spec(Some(&stale), Decision::Take, &cfg("a"), now);
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        let mine = held_by("a", now - SignedDuration::from_secs(5));
        let renewed = next_spec(Some(&mine), Decision::Renew, &cfg("a"), now);
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        let first = next_spec(None, Decision::Take, &cfg("a"), now);
        assert_eq!(first.lease_transitions, Some(0));
    }

    mod api {
        use super::*;
        use crate::fixtures::{FakeTracker, Step, context, finish};
        use http::Method;
        use serde_json::json;
        use std::sync::Arc;

        const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/lts/leases/lts-operator";

        fn elector() -> (Elector, crate::fixtures::ApiServerVerifier) {
            let (ctx, api) = context(&[], Arc::new(FakeTracker::default()));
            (Elector::new(ctx.client.clone(), cfg("me")), api)
        }

        fn lease(holder: &str, renewed: Timestamp) -> serde_json::Value {
            json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "lts-operator", "namespace": "lts", "resourceVersion": "7"},
                "spec": serde_json::to_value(held_by(holder, renewed)).unwrap(),
            })
        }

        #[tokio::test]
        async fn creates_a_missing_lease() {
            let (e, api) = elector();
            let v = api.run(vec![
                Step::error(Method::GET, LEASE, 404, "NotFound"),
                Step::echo(
                    Method::POST,
                    "/apis/coordination.k8s.io/v1/namespaces/lts/leases",
                ),
            ]);
            assert!(e.try_hold().await.unwrap());
            let calls = finish(v).await;
            assert_eq!(calls[1].body["spec"]["holderIdentity"], "me");
        }

        #[tokio::test]
        async fn waits_while_another_replica_renews() {
            let (e, api) = elector();
            let v = api.run(vec![Step::json(
                Method::GET,
                LEASE,
                lease("other", Timestamp::now()),
            )]);
            assert!(!e.try_hold().await.unwrap());
            finish(v).await;
        }

        #[tokio::test]
        async fn takes_an_expired_lease_with_its_resource_version() {
            let (e, api) = elector();
            let stale = Timestamp::now() - SignedDuration::from_secs(60);
            let v = api.run(vec![
                Step::json(Method::GET, LEASE, lease("other", stale)),
                Step::echo(Method::PUT, LEASE),
            ]);
            assert!(e.try_hold().await.unwrap());
            let calls = finish(v).await;
            assert_eq!(calls[1].body["metadata"]["resourceVersion"], "7");
            assert_eq!(calls[1].body["spec"]["holderIdentity"], "me");
            assert_eq!(calls[1].body["spec"]["leaseTransitions"], 4);
        }

        #[tokio::test]
        async fn a_conflicting_write_loses() {
            let (e, api) = elector();
            let stale = Timestamp::now() - SignedDuration::from_secs(60);
            let v = api.run(vec![
                Step::json(Method::GET, LEASE, lease("other", stale)),
                Step::error(Method::PUT, LEASE, 409, "Conflict"),
            ]);
            assert!(!e.try_hold().await.unwrap());
            finish(v).await;
        }

        #[tokio::test]
        async fn release_clears_the_holder() {
            let (e, api) = elector();
            let v = api.run(vec![
                Step::json(Method::GET, LEASE, lease("me", Timestamp::now())),
                Step::echo(Method::PUT, LEASE),
            ]);
            e.release().await;
            let calls = finish(v).await;
            assert!(
                calls[1].body["spec"]
                    .get("holderIdentity")
                    .is_none_or(|h| h.is_null())
            );
        }
    }
}
