//! Test fixtures: readable builders of resources, and the mocked API server.

use std::collections::BTreeMap;

use crate::crd::{Job, JobSpec, MisfirePolicy, NodeGroup, NodeGroupSpec, NodeRole};

/// A NodeGroup `name` of cluster `prod` in namespace `lts`.
pub fn nodegroup(name: &str, role: NodeRole) -> NodeGroup {
    let mut ng = NodeGroup::new(
        name,
        NodeGroupSpec {
            cluster: "prod".into(),
            role,
            replicas: 1,
            image: None,
            image_pull_policy: None,
            threads: None,
            worker: None,
            resources: None,
            env: vec![],
            zookeeper: None,
            mongo_uri_secret_ref: None,
        },
    );
    ng.metadata.namespace = Some("lts".into());
    ng.metadata.uid = Some(format!("uid-{name}"));
    ng.metadata.generation = Some(1);
    ng
}

/// A real-time Job `name` in namespace `lts` for node group `mailers`.
pub fn job(name: &str) -> Job {
    let mut j = Job::new(
        name,
        JobSpec {
            cluster: None,
            task_id: None,
            task_tracker_node_group: "mailers".into(),
            submit_node_group: None,
            priority: 5,
            params: BTreeMap::from([("to".to_string(), "a@b.c".to_string())]),
            need_feedback: false,
            max_retries: 2,
            schedule: None,
            rely_on_prev_cycle: false,
            replace_on_exist: false,
            misfire_policy: MisfirePolicy::FireOnce,
            suspend: false,
        },
    );
    j.metadata.namespace = Some("lts".into());
    j.metadata.uid = Some("0b6f3c1e-uid".into());
    j.metadata.generation = Some(1);
    j
}
