//! `spec.podTemplate`: the user's pod template merged over the pod the operator builds. Pure.
//!
//! The rules (as the Flink and Spark operators do it):
//!
//! * The template is a JSON merge patch (RFC 7386) over the built `PodTemplateSpec`: what it
//!   sets wins, `null` removes what the operator set (e.g. `securityContext: {runAsUser:
//!   null}` lets the image's own user stand), objects merge key by key.
//! * `containers`, `initContainers` and `volumes` merge by `name`: a container named like
//!   one the operator builds (`tracker`, `worker`, `app`, `lts-worker`) is merged into it,
//!   its `env`, `envFrom`, `ports` and `volumeMounts` added to the operator's; other entries
//!   are added (extra sidecars, init containers, volumes).
//! * The operator keeps what it needs: its labels (the selector), the images (`spec.image`,
//!   `worker.sidecarImage`), the command and arguments of `tracker` and `lts-worker`, and the
//!   names of its volumes (`tmp`, `tls`, `auth`, `data`). A template that touches them is
//!   refused with the field named ([`check`]).

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

/// Containers the operator builds, and whether it also owns their command and arguments.
const OPERATOR_CONTAINERS: [(&str, bool); 4] = [
    ("tracker", true),
    ("lts-worker", true),
    ("worker", false),
    ("app", false),
];

/// Volume names the operator uses.
pub const RESERVED_VOLUMES: [&str; 4] =
    ["tmp", "tls", "auth", crate::nodegroup::build::DATA_VOLUME];

/// Lists added to, not replaced, when a template container merges into the operator's.
const ADDED_LISTS: [&str; 4] = ["env", "envFrom", "ports", "volumeMounts"];

/// The problems of a template: fields the operator keeps, names it uses, and whether the
/// result still reads as a pod template. Each names its field.
pub fn check(template: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let at = "spec.podTemplate";
    if !template.is_object() {
        return vec![format!("{at}: must be an object (a PodTemplateSpec)")];
    }
    let spec = &template["spec"];
    for (i, c) in spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = c["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            problems.push(format!("{at}.spec.containers[{i}].name: required"));
            continue;
        }
        if let Some((_, owns_command)) = OPERATOR_CONTAINERS.iter().find(|(n, _)| *n == name) {
            if !c["image"].is_null() {
                problems.push(format!(
                    "{at}.spec.containers[{i}].image: the operator sets the image of {name:?} (use spec.image or spec.worker.sidecarImage)"
                ));
            }
            for field in ["command", "args"] {
                if *owns_command && !c[field].is_null() {
                    problems.push(format!(
                        "{at}.spec.containers[{i}].{field}: the operator runs {name:?} with its own {field}"
                    ));
                }
            }
        }
    }
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let name = v["name"].as_str().unwrap_or_default();
        if RESERVED_VOLUMES.contains(&name) {
            problems.push(format!(
                "{at}.spec.volumes[{i}].name: {name:?} is the operator's; choose another name"
            ));
        }
    }
    if let Err(e) = merge(&PodTemplateSpec::default(), template) {
        problems.push(e);
    }
    problems
}

/// `built` with `template` merged over it (see the module docs), or why the result is not a
/// pod template.
pub fn merge(built: &PodTemplateSpec, template: &Value) -> Result<PodTemplateSpec, String> {
    let mut base = serde_json::to_value(built).map_err(|e| e.to_string())?;
    let mut patch = template.clone();
    if let Some(spec) = patch.get_mut("spec").and_then(Value::as_object_mut) {
        for key in ["containers", "initContainers", "volumes"] {
            let Some(Value::Array(items)) = spec.remove(key) else {
                continue;
            };
            if !base["spec"].is_object() {
                base["spec"] = Value::Object(Default::default());
            }
            let list = &mut base["spec"][key];
            if !list.is_array() {
                *list = Value::Array(Vec::new());
            }
            let list = list.as_array_mut().expect("made an array");
            for item in items {
                match list.iter_mut().find(|b| b["name"] == item["name"]) {
                    Some(existing) => merge_named(existing, item),
                    None => list.push(item),
                }
            }
        }
    }
    json_patch::merge(&mut base, &patch);
    // The operator's labels win: its selector must keep matching.
    if let Some(labels) = built.metadata.as_ref().and_then(|m| m.labels.as_ref()) {
        for (k, v) in labels {
            base["metadata"]["labels"][k] = Value::String(v.clone());
        }
    }
    serde_json::from_value(base).map_err(|e| format!("spec.podTemplate: not a pod template: {e}"))
}

/// Merges a template container (or volume) into the operator's: its lists added, the rest a
/// merge patch.
fn merge_named(existing: &mut Value, mut over: Value) {
    if let Some(o) = over.as_object_mut() {
        for key in ADDED_LISTS {
            if let Some(Value::Array(more)) = o.remove(key) {
                match existing[key].as_array_mut() {
                    Some(list) => list.extend(more),
                    None => existing[key] = Value::Array(more),
                }
            }
        }
    }
    json_patch::merge(existing, &over);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn built() -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app.kubernetes.io/instance": "w", "team": "lts"}},
            "spec": {
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "fsGroup": 65532},
                "automountServiceAccountToken": false,
                "containers": [{
                    "name": "worker", "image": "img:1",
                    "env": [{"name": "LTS_NODE_GROUP", "value": "w"}],
                    "volumeMounts": [{"name": "tls", "mountPath": "/etc/lts/tls"}]
                }],
                "volumes": [{"name": "tls", "secret": {"secretName": "w-lts-tls"}}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_template_adds_pod_settings_containers_and_volumes_and_may_unset_the_uid() {
        let template = json!({
            "metadata": {"labels": {"team": "mine", "extra": "x"}, "annotations": {"a": "b"}},
            "spec": {
                "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "gpu", "operator": "Exists"}],
                "serviceAccountName": "workers",
                "imagePullSecrets": [{"name": "regcred"}],
                "priorityClassName": "high",
                "securityContext": {"runAsUser": null, "runAsGroup": 1000},
                "containers": [
                    {"name": "worker",
                     "env": [{"name": "SMTP", "value": "smtp"}],
                     "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                     "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                     "resources": {"limits": {"memory": "1Gi"}}},
                    {"name": "proxy", "image": "envoy:1"}
                ],
                "volumes": [{"name": "cache", "emptyDir": {}}]
            }
        });
        assert!(check(&template).is_empty(), "{:?}", check(&template));
        let pod = merge(&built(), &template).unwrap();
        let meta = pod.metadata.unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["team"], "lts", "the operator's labels win");
        assert_eq!(labels["extra"], "x");
        assert_eq!(meta.annotations.unwrap()["a"], "b");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_selector.unwrap()["disk"], "ssd");
        assert_eq!(spec.service_account_name.as_deref(), Some("workers"));
        assert_eq!(spec.priority_class_name.as_deref(), Some("high"));
        assert_eq!(spec.tolerations.unwrap().len(), 1);
        assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "regcred");
        let sc = spec.security_context.unwrap();
        assert_eq!(sc.run_as_user, None, "null removes the operator's uid");
        assert_eq!(sc.run_as_group, Some(1000));
        assert_eq!(sc.run_as_non_root, Some(true), "the rest stays");
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.containers.len(), 2);
        let w = &spec.containers[0];
        assert_eq!(w.image.as_deref(), Some("img:1"));
        let env: Vec<&str> = w.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert_eq!(env, ["LTS_NODE_GROUP", "SMTP"], "env is added to");
        assert_eq!(w.volume_mounts.as_ref().unwrap().len(), 2);
        assert!(w.readiness_probe.is_some());
        assert!(w.resources.is_some());
        assert_eq!(spec.containers[1].name, "proxy");
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["tls", "cache"]);
    }

    #[test]
    fn what_the_operator_keeps_is_refused_with_its_field() {
        let template = json!({"spec": {
            "containers": [
                {"name": "tracker", "image": "mine", "command": ["sh"], "args": ["-c"]},
                {"name": "worker", "command": ["./run"]},
                {"image": "nameless"}
            ],
            "volumes": [{"name": "tls", "emptyDir": {}}]
        }});
        let problems = check(&template).join("\n");
        assert!(
            problems.contains("containers[0].image: the operator sets the image of \"tracker\""),
            "{problems}"
        );
        assert!(problems.contains("containers[0].command"), "{problems}");
        assert!(problems.contains("containers[0].args"), "{problems}");
        assert!(
            !problems.contains("containers[1]"),
            "a worker's command is the user's: {problems}"
        );
        assert!(
            problems.contains("containers[2].name: required"),
            "{problems}"
        );
        assert!(
            problems.contains("volumes[0].name: \"tls\" is the operator's"),
            "{problems}"
        );
        let wrong = json!({"spec": {"nodeSelector": "not a map"}});
        let problems = check(&wrong).join("\n");
        assert!(
            problems.contains("spec.podTemplate: not a pod template"),
            "{problems}"
        );
        assert_eq!(
            check(&json!([])),
            ["spec.podTemplate: must be an object (a PodTemplateSpec)"]
        );
    }
}
