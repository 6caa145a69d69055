//! `build`: the objects built for each shape of NodeGroup. Pure.

use super::*;
use crate::crd::{HttpTarget, SecretKeyRef, WorkerSpec};
use crate::fixtures::nodegroup as ng;
use crate::nodegroup::validate::validate;

fn container<'a>(d: &'a Desired, name: &str) -> &'a Container {
    d.workload
        .pod()
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("container {name}"))
}

fn env_value(c: &Container, name: &str) -> Option<String> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[test]
fn job_tracker_with_mongo_and_zookeeper() {
    let mut jt = ng("tracker", NodeRole::JobTracker);
    jt.spec.replicas = 3;
    jt.spec.zookeeper = Some("zk-0.zk:2181,zk-1.zk:2181/lts".into());
    jt.spec.mongo_uri_secret_ref = Some(SecretKeyRef {
        name: "mongo".into(),
        key: "uri".into(),
    });
    let v = validate(&jt, std::slice::from_ref(&jt)).expect("valid");
    let d = build(&jt, &v, &BuildConfig::default());
    let c = container(&d, "tracker");
    let args = c.args.clone().unwrap();
    assert!(args.contains(&"--registry=zookeeper://zk-0.zk:2181,zk-1.zk:2181/lts".to_string()));
    assert!(args.contains(&"--cluster=prod".to_string()));
    assert!(args.contains(&"--advertise=$(POD_IP):7070".to_string()));
    let store = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "LTS_STORE")
        .unwrap();
    let key = store
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .unwrap();
    assert_eq!((key.name.as_str(), key.key.as_str()), ("mongo", "uri"));
    let path = |p: &Option<Probe>| p.as_ref()?.http_get.as_ref()?.path.clone();
    assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(
        c.image.as_deref(),
        Some(BuildConfig::default().tracker_image.as_str())
    );
    let svc = d.service.as_ref().expect("service");
    let ports: Vec<i32> = svc
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [7070, 9090]);
    assert!(d.pdb.is_some(), "3 replicas get a PDB");
    let owner = &d.workload.metadata().owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("NodeGroup", Some(true))
    );
}

#[test]
fn single_job_tracker_uses_sqlite_on_its_claim_and_no_pdb() {
    let jt = ng("tracker", NodeRole::JobTracker);
    let v = validate(&jt, std::slice::from_ref(&jt)).unwrap();
    let d = build(&jt, &v, &BuildConfig::default());
    let c = container(&d, "tracker");
    assert_eq!(
        env_value(c, "LTS_STORE").as_deref(),
        Some("sqlite:/var/lib/lts/lts.db")
    );
    assert!(
        c.args
            .as_ref()
            .unwrap()
            .contains(&"--registry=local".to_string())
    );
    assert!(d.pdb.is_none());
}

#[test]
fn sdk_task_tracker_gets_lts_env_and_finds_trackers_through_the_service() {
    let jt = ng("tracker", NodeRole::JobTracker);
    let mut tt = ng("mailers", NodeRole::TaskTracker);
    tt.spec.image = Some("example/mailer:1".into());
    tt.spec.threads = Some(16);
    tt.spec.env = vec![env("SMTP_HOST", "smtp")];
    tt.spec.labels = [
        ("zone".to_string(), "eu".to_string()),
        ("gpu".to_string(), "a100".to_string()),
    ]
    .into();
    let v = validate(&tt, &[jt, tt.clone()]).unwrap();
    let d = build(&tt, &v, &BuildConfig::default());
    assert!(d.service.is_none());
    let c = container(&d, "worker");
    assert_eq!(
        env_value(c, "LTS_TRACKER").as_deref(),
        Some("tracker.lts.svc:7070")
    );
    assert_eq!(env_value(c, "LTS_THREADS").as_deref(), Some("16"));
    assert_eq!(env_value(c, "LTS_NODE_GROUP").as_deref(), Some("mailers"));
    assert_eq!(env_value(c, "LTS_CLUSTER").as_deref(), Some("prod"));
    assert_eq!(env_value(c, "SMTP_HOST").as_deref(), Some("smtp"));
    // Its labels, for the jobs' affinity.
    assert_eq!(
        env_value(c, "LTS_LABELS").as_deref(),
        Some("gpu=a100,zone=eu")
    );
    assert_eq!(c.image.as_deref(), Some("example/mailer:1"));
}

#[test]
fn task_tracker_inherits_zookeeper_from_its_job_tracker() {
    let mut jt = ng("tracker", NodeRole::JobTracker);
    jt.spec.zookeeper = Some("zk:2181".into());
    let mut tt = ng("w", NodeRole::TaskTracker);
    tt.spec.image = Some("img".into());
    let v = validate(&tt, &[jt, tt.clone()]).unwrap();
    let d = build(&tt, &v, &BuildConfig::default());
    assert_eq!(
        env_value(container(&d, "worker"), "LTS_REGISTRY").as_deref(),
        Some("zookeeper://zk:2181")
    );
}

#[test]
fn sidecar_http_adds_the_lts_worker_container() {
    let jt = ng("tracker", NodeRole::JobTracker);
    let mut tt = ng("reports", NodeRole::TaskTracker);
    tt.spec.image = Some("example/reports:2".into());
    tt.spec.worker = Some(WorkerSpec {
        mode: WorkerMode::Sidecar,
        http: Some(HttpTarget {
            port: 8080,
            path: "/run".into(),
        }),
        timeout_seconds: Some(60),
        ..WorkerSpec::default()
    });
    let v = validate(&tt, &[jt, tt.clone()]).unwrap();
    let d = build(&tt, &v, &BuildConfig::default());
    let app = container(&d, "app");
    assert_eq!(app.image.as_deref(), Some("example/reports:2"));
    let side = container(&d, "lts-worker");
    let args = side.args.clone().unwrap();
    assert_eq!(
        args,
        [
            "--http=http://127.0.0.1:8080/run",
            "--timeout=60",
            "--health-listen=0.0.0.0:8081"
        ]
    );
    let path = |p: &Option<Probe>| p.as_ref()?.http_get.as_ref()?.path.clone();
    assert_eq!(path(&side.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(path(&side.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(path(&side.startup_probe).as_deref(), Some("/healthz"));
    assert_eq!(
        side.command.as_deref(),
        Some(&["lts-worker".to_string()][..])
    );
    assert_eq!(
        env_value(side, "LTS_TRACKER").as_deref(),
        Some("tracker.lts.svc:7070")
    );
    assert_eq!(
        side.image.as_deref(),
        Some(BuildConfig::default().worker_image.as_str())
    );
}

#[test]
fn sidecar_exec_runs_alone_with_the_users_env_and_resources() {
    let jt = ng("tracker", NodeRole::JobTracker);
    let mut tt = ng("scripts", NodeRole::TaskTracker);
    tt.spec.worker = Some(WorkerSpec {
        mode: WorkerMode::Sidecar,
        exec: Some("./run.sh".into()),
        sidecar_image: Some("example/with-scripts:1".into()),
        ..WorkerSpec::default()
    });
    tt.spec.env = vec![env("A", "b")];
    let v = validate(&tt, &[jt, tt.clone()]).unwrap();
    let d = build(&tt, &v, &BuildConfig::default());
    let pod = d.workload.pod();
    assert_eq!(pod.containers.len(), 1);
    let side = container(&d, "lts-worker");
    assert_eq!(
        side.args.clone().unwrap(),
        ["--exec=./run.sh", "--health-listen=0.0.0.0:8081"]
    );
    assert_eq!(env_value(side, "A").as_deref(), Some("b"));
    assert_eq!(side.image.as_deref(), Some("example/with-scripts:1"));
}

#[test]
fn every_container_is_non_root_without_privilege_escalation() {
    let jt = ng("tracker", NodeRole::JobTracker);
    let mut tt = ng("reports", NodeRole::TaskTracker);
    tt.spec.image = Some("img".into());
    tt.spec.worker = Some(WorkerSpec {
        mode: WorkerMode::Sidecar,
        http: Some(HttpTarget {
            port: 8080,
            path: "/".into(),
        }),
        ..WorkerSpec::default()
    });
    for g in [&jt, &tt] {
        let v = validate(g, &[jt.clone(), tt.clone()]).unwrap();
        let d = build(g, &v, &BuildConfig::default());
        let pod = d.workload.pod().clone();
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        for c in pod.containers {
            let sc = c.security_context.unwrap();
            assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        }
    }
}

fn mounts(c: &Container) -> Vec<(String, String)> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone()))
        .collect()
}

fn secret_volumes(d: &Desired) -> Vec<(String, String)> {
    let pod = d.workload.pod();
    pod.volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.clone(), v.secret.as_ref()?.secret_name.clone()?)))
        .collect()
}

#[test]
fn a_secure_job_tracker_serves_tls_with_its_certificate_and_the_clusters_auth_file() {
    let jt = ng("tracker", NodeRole::JobTracker);
    let v = validate(&jt, std::slice::from_ref(&jt)).unwrap();
    let d = build(&jt, &v, &BuildConfig::default());
    let c = container(&d, "tracker");
    assert_eq!(
        env_value(c, "LTS_TLS_CERT").as_deref(),
        Some("/etc/lts/tls/tls.crt")
    );
    assert_eq!(
        env_value(c, "LTS_TLS_KEY").as_deref(),
        Some("/etc/lts/tls/tls.key")
    );
    assert_eq!(
        env_value(c, "LTS_TLS_CA").as_deref(),
        Some("/etc/lts/tls/ca.crt")
    );
    assert_eq!(
        env_value(c, "LTS_TLS_CLIENT_AUTH").as_deref(),
        Some("required")
    );
    assert_eq!(
        env_value(c, "LTS_AUTH_FILE").as_deref(),
        Some("/etc/lts/auth/auth.yaml")
    );
    assert_eq!(env_value(c, "LTS_INSECURE"), None);
    assert_eq!(env_value(c, "LTS_NO_AUTH"), None);
    assert_eq!(
        secret_volumes(&d),
        [
            ("tls".to_string(), "tracker-lts-tls".to_string()),
            ("auth".to_string(), "prod-lts-auth".to_string())
        ]
    );
    assert!(mounts(c).contains(&("tls".into(), "/etc/lts/tls".into())));
    assert!(mounts(c).contains(&("auth".into(), "/etc/lts/auth".into())));

    let insecure = BuildConfig {
        secure: false,
        ..BuildConfig::default()
    };
    let d = build(&jt, &v, &insecure);
    let c = container(&d, "tracker");
    assert_eq!(env_value(c, "LTS_INSECURE").as_deref(), Some("true"));
    assert_eq!(env_value(c, "LTS_NO_AUTH").as_deref(), Some("true"));
    assert_eq!(env_value(c, "LTS_TLS_CERT"), None);
    assert!(secret_volumes(&d).is_empty());
}

#[test]
fn secure_workers_present_their_groups_certificate_and_check_the_trackers_name() {
    let jt = ng("tracker", NodeRole::JobTracker);
    let mut sdk = ng("mailers", NodeRole::TaskTracker);
    sdk.spec.image = Some("img".into());
    let mut side = ng("reports", NodeRole::TaskTracker);
    side.spec.image = Some("img".into());
    side.spec.worker = Some(WorkerSpec {
        mode: WorkerMode::Sidecar,
        http: Some(HttpTarget {
            port: 8080,
            path: "/run".into(),
        }),
        ..WorkerSpec::default()
    });
    let all = [jt.clone(), sdk.clone(), side.clone()];
    for (g, name) in [(&sdk, "worker"), (&side, "lts-worker")] {
        let v = validate(g, &all).unwrap();
        let d = build(g, &v, &BuildConfig::default());
        let c = container(&d, name);
        assert_eq!(
            env_value(c, "LTS_TLS_CERT").as_deref(),
            Some("/etc/lts/tls/tls.crt"),
            "{name}"
        );
        assert_eq!(
            env_value(c, "LTS_TLS_DOMAIN").as_deref(),
            Some("tracker.lts.svc"),
            "{name}"
        );
        assert!(
            mounts(c).contains(&("tls".into(), "/etc/lts/tls".into())),
            "{name}"
        );
        let secret = format!("{}-lts-tls", g.name_any());
        assert!(
            secret_volumes(&d).contains(&("tls".to_string(), secret)),
            "{name}"
        );
    }
    // The user's own container in Sidecar mode gets no certificate.
    let v = validate(&side, &all).unwrap();
    let d = build(&side, &v, &BuildConfig::default());
    assert!(mounts(container(&d, "app")).is_empty());
    assert_eq!(env_value(container(&d, "app"), "LTS_TLS_CERT"), None);
}

#[test]
fn the_pod_template_shapes_the_built_pods() {
    let jt = ng("tracker", NodeRole::JobTracker);
    let mut tt = ng("mailers", NodeRole::TaskTracker);
    tt.spec.image = Some("example/mailer:1".into());
    tt.spec.pod_template = Some(serde_json::json!({
        "metadata": {"annotations": {"prometheus.io/scrape": "true"}},
        "spec": {
            "nodeSelector": {"pool": "batch"},
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
            "containers": [{"name": "worker", "ports": [{"name": "http", "containerPort": 8080}]}]
        }
    }));
    let v = validate(&tt, &[jt, tt.clone()]).unwrap();
    let d = build(&tt, &v, &BuildConfig::default());
    let template = d.workload.template();
    assert_eq!(
        template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["prometheus.io/scrape"],
        "true"
    );
    let pod = d.workload.pod();
    assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "batch");
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_user,
        Some(1000)
    );
    let c = container(&d, "worker");
    assert_eq!(c.image.as_deref(), Some("example/mailer:1"));
    assert_eq!(env_value(c, "LTS_NODE_GROUP").as_deref(), Some("mailers"));
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 8080);
    // The selector still matches the pods.
    let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    for (k, v) in selector_labels(&tt) {
        assert_eq!(labels.get(&k), Some(&v));
    }
}

#[test]
fn selector_is_a_subset_of_the_pod_labels() {
    let jt = ng("tracker", NodeRole::JobTracker);
    let v = validate(&jt, std::slice::from_ref(&jt)).unwrap();
    let d = build(&jt, &v, &BuildConfig::default());
    let Workload::StatefulSet(set) = d.workload else {
        panic!("an embedded-store JobTracker is a StatefulSet")
    };
    let spec = set.spec.unwrap();
    let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
    for (k, v) in spec.selector.match_labels.unwrap() {
        assert_eq!(pod_labels.get(&k), Some(&v));
    }
}

#[test]
fn an_embedded_store_job_tracker_is_one_pod_of_a_stateful_set_on_its_own_claim() {
    let mut jt = ng("tracker", NodeRole::JobTracker);
    jt.spec.storage = Some(crate::crd::StorageSpec {
        size: Quantity("10Gi".into()),
        storage_class_name: Some("fast".into()),
    });
    let v = validate(&jt, std::slice::from_ref(&jt)).unwrap();
    let d = build(&jt, &v, &BuildConfig::default());
    let Workload::StatefulSet(set) = &d.workload else {
        panic!("a StatefulSet: {:?}", d.workload)
    };
    let spec = set.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.service_name.as_deref(), Some("tracker"));
    // The default OrderedReady rolling update replaces the pod only after the old one
    // is gone: never two trackers on one SQLite file.
    assert_eq!(spec.pod_management_policy, None);
    assert_eq!(spec.update_strategy, None);
    let claims = spec.volume_claim_templates.as_ref().unwrap();
    assert_eq!(claims.len(), 1);
    let claim = &claims[0];
    assert_eq!(claim.metadata.name.as_deref(), Some(DATA_VOLUME));
    let cs = claim.spec.as_ref().unwrap();
    assert_eq!(cs.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        cs.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"],
        Quantity("10Gi".into())
    );
    let retain = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .unwrap();
    assert_eq!(retain.when_deleted.as_deref(), Some("Retain"));
    assert_eq!(retain.when_scaled.as_deref(), Some("Retain"));
    // The store is on the claim, not on an emptyDir.
    let pod = d.workload.pod();
    assert!(
        pod.volumes.iter().flatten().all(|v| v.name != DATA_VOLUME),
        "no pod volume shadows the claim"
    );
    let c = container(&d, "tracker");
    assert!(mounts(c).contains(&(DATA_VOLUME.to_string(), "/var/lib/lts".to_string())));
    // Building again gives the same object: a reconcile never replaces the pod, so the
    // pod that replaces a lost one mounts the same claim (data-tracker-0).
    assert_eq!(build(&jt, &v, &BuildConfig::default()), d);
    assert!(d.pdb.is_none());

    // On MongoDB: a Deployment, as many trackers as asked.
    let mut jt = ng("tracker", NodeRole::JobTracker);
    jt.spec.mongo_uri_secret_ref = Some(SecretKeyRef {
        name: "m".into(),
        key: "uri".into(),
    });
    let v = validate(&jt, std::slice::from_ref(&jt)).unwrap();
    assert!(matches!(
        build(&jt, &v, &BuildConfig::default()).workload,
        Workload::Deployment(_)
    ));
}
