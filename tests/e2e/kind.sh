#!/usr/bin/env bash
# End-to-end test on a real Kubernetes cluster (kind, k3d, …): installs the chart with a small
# default cluster (one JobTracker on the embedded store, one TaskTracker whose lts-worker
# sidecar runs a shell command), applies a Job, waits for phase Succeeded, replaces the
# JobTracker's pod (same PersistentVolumeClaim, the job still known), deletes the Job
# (its finalizer cancels it on the trackers), runs a Workflow to phase Succeeded (its node
# counts and owned Job checked), deletes it (its Job goes with it) and uninstalls everything.
#
#   LTS_E2E_KUBECONFIG=~/.kube/config tests/e2e/kind.sh
#
# Needs LTS_E2E_KUBECONFIG (a kubeconfig); without it, it says so and exits 2.
# The images must be reachable by the cluster, e.g. built and loaded into kind:
#   docker build -f docker/Dockerfile --build-arg BIN=lts-operator -t lts-operator:dev .
#   docker build -f docker/Dockerfile --build-arg BIN=lts-tracker  -t lts-tracker:dev .
#   docker build -f docker/Dockerfile --build-arg BIN=lts-worker \
#       --build-arg PACKAGE=lts-worker-sdk --build-arg RUNTIME=shell -t lts-worker:dev .
#   kind load docker-image lts-operator:dev lts-tracker:dev lts-worker:dev
#
# Settings: LTS_E2E_IMAGE_PREFIX (registry prefix of the images, default none: local images),
# LTS_E2E_IMAGE_TAG (default dev), LTS_E2E_NAMESPACE (default lts-e2e-<random>),
# LTS_E2E_TIMEOUT (seconds per wait, default 180), LTS_E2E_KEEP=1 (leave everything installed),
# HELM and KUBECTL (the binaries, default helm and kubectl).
set -euo pipefail

if [ -z "${LTS_E2E_KUBECONFIG:-}" ]; then
    echo "e2e: set LTS_E2E_KUBECONFIG to the kubeconfig of a disposable cluster (kind/k3d)" >&2
    exit 2
fi
cd "$(dirname "$0")/../.."
export KUBECONFIG="$LTS_E2E_KUBECONFIG"
HELM="${HELM:-helm}"
KUBECTL="${KUBECTL:-kubectl}"
NS="${LTS_E2E_NAMESPACE:-lts-e2e-$RANDOM}"
PREFIX="${LTS_E2E_IMAGE_PREFIX:-}"
TAG="${LTS_E2E_IMAGE_TAG:-dev}"
TIMEOUT="${LTS_E2E_TIMEOUT:-180}s"
RELEASE=lts-e2e

log() { echo "e2e: $*" >&2; }
k() { "$KUBECTL" -n "$NS" "$@"; }

dump() {
    log "state of namespace $NS:"
    k get nodegroups,ltsjobs,ltswf,deployments,statefulsets,pvc,pods -o wide >&2 || true
    k describe ltsjobs >&2 || true
    k logs "deployment/$RELEASE-operator" --tail=100 >&2 || true
}

cleanup() {
    local rc=$?
    [ $rc -ne 0 ] && dump
    if [ "${LTS_E2E_KEEP:-}" = 1 ]; then
        log "keeping namespace $NS (LTS_E2E_KEEP=1)"
    else
        k delete ltswf --all --wait=true --timeout=60s >/dev/null 2>&1 || true
        k delete ltsjobs --all --wait=true --timeout=60s >/dev/null 2>&1 || true
        "$HELM" uninstall "$RELEASE" -n "$NS" --wait >/dev/null 2>&1 || true
        "$KUBECTL" delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
    fi
    exit $rc
}
trap cleanup EXIT

for tool in "$HELM" "$KUBECTL"; do
    command -v "$tool" >/dev/null || { log "$tool not found"; exit 1; }
done
"$KUBECTL" version >/dev/null || { log "cannot reach the cluster of $KUBECONFIG"; exit 1; }

log "installing the chart into namespace $NS"
"$HELM" install "$RELEASE" charts/lts -n "$NS" --create-namespace --wait --timeout "$TIMEOUT" \
    --set image.repository="${PREFIX}lts-operator" --set image.tag="$TAG" \
    --set images.tracker.repository="${PREFIX}lts-tracker" --set images.tracker.tag="$TAG" \
    --set images.worker.repository="${PREFIX}lts-worker" --set images.worker.tag="$TAG" \
    --set operator.logFormat=text \
    --set cluster.enabled=true --set cluster.name=e2e \
    --set cluster.jobTracker.replicas=1 --set cluster.taskTracker.replicas=1

log "waiting for the NodeGroups to become Ready"
k wait nodegroup/job-tracker nodegroup/workers --for=condition=Ready --timeout="$TIMEOUT"

log "applying a Job"
k apply -f - <<'YAML'
apiVersion: lts.io/v1alpha1
kind: Job
metadata:
  name: e2e-hello
spec:
  taskTrackerNodeGroup: workers
  maxRetries: 2
  params:
    greeting: hello
YAML

log "waiting for phase Succeeded"
k wait ltsjob/e2e-hello --for=jsonpath='{.status.phase}'=Succeeded --timeout="$TIMEOUT"
k get ltsjob e2e-hello

log "replacing the JobTracker pod: its successor mounts the same volume and keeps the queue"
PVC_UID="$(k get pvc data-job-tracker-0 -o jsonpath='{.metadata.uid}')"
k delete pod job-tracker-0 --wait=true --timeout="$TIMEOUT"
for _ in $(seq 90); do k get pod job-tracker-0 >/dev/null 2>&1 && break; sleep 2; done
k wait pod/job-tracker-0 --for=condition=Ready --timeout="$TIMEOUT"
if [ "$(k get pvc data-job-tracker-0 -o jsonpath='{.metadata.uid}')" != "$PVC_UID" ]; then
    log "the replaced JobTracker pod got a new volume"
    exit 1
fi
# The operator asks the new tracker for the job: still Succeeded, not submitted again.
sleep 20
k wait ltsjob/e2e-hello --for=jsonpath='{.status.phase}'=Succeeded --timeout="$TIMEOUT"
SUBMITS="$(k get events --field-selector involvedObject.name=e2e-hello,reason=Submitted \
    -o jsonpath='{range .items[*]}{.count}{"\n"}{end}' | awk '{ n += ($1 == "" ? 1 : $1) } END { print n + 0 }')"
if [ "$SUBMITS" -gt 1 ]; then
    log "the Job was submitted again after the tracker pod was replaced"
    exit 1
fi

log "deleting the Job (its finalizer cancels it on the trackers)"
k delete ltsjob e2e-hello --wait=true --timeout="$TIMEOUT"
if k get ltsjob e2e-hello >/dev/null 2>&1; then
    log "the Job is still there after delete"
    exit 1
fi

log "applying a Workflow: first, then second and, if second fails, cleanup (skipped)"
k apply -f - <<'YAML'
apiVersion: lts.io/v1alpha1
kind: Workflow
metadata:
  name: e2e-flow
spec:
  taskTrackerNodeGroup: workers
  nodes:
    - name: first
    - name: second
      after: [first]
    - name: cleanup
  edges:
    - from: second
      to: cleanup
      when: Failure
YAML
log "waiting for the Workflow's phase Succeeded, each node's phase in its status"
k wait ltswf/e2e-flow --for=jsonpath='{.status.phase}'=Succeeded --timeout="$TIMEOUT"
k wait ltswf/e2e-flow --for=jsonpath='{.status.nodeCounts.skipped}'=1 --timeout="$TIMEOUT"
k get ltswf e2e-flow -o jsonpath='{.status.nodes}' >&2
OWNER="$(k get ltsjob e2e-flow -o jsonpath='{.metadata.ownerReferences[0].kind}')"
if [ "$OWNER" != Workflow ]; then
    log "the Workflow's Job is not owned by it (owner: $OWNER)"
    exit 1
fi
log "deleting the Workflow: the garbage collector deletes its Job"
k delete ltswf e2e-flow --wait=true --timeout="$TIMEOUT"
k wait ltsjob/e2e-flow --for=delete --timeout="$TIMEOUT"
log "passed"
