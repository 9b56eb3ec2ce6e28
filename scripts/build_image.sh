#!/usr/bin/env bash
# Build proof of the Dockerfile without Docker or a container registry: builds the unchanged
# Dockerfile with buildah, runs the image (buildah run), waits for /ready, sends one chat completion,
# checks that the answer is a well-formed completion, and prints the elapsed time and image size.
#
# Needs: root on Debian/Ubuntu (installs buildah, debootstrap and curl with apt-get when missing),
# this machine's Rust toolchain of the version the Dockerfile's builder names (rustup), and network
# access to a Debian mirror, PyPI and crates.io. No public container registry: the two base images
# the Dockerfile's FROM lines name are made here first and stored under those exact names, and the
# build never pulls (--pull=never):
#   debian:bookworm-slim        Debian bookworm from debootstrap (minbase), imported into buildah;
#   rust:1.95-slim-bookworm     that Debian + gcc/g++/make/pkg-config + this machine's toolchain,
#                               laid out like the official image (RUSTUP_HOME=/usr/local/rustup,
#                               CARGO_HOME=/usr/local/cargo).
# Certificate authorities this machine adds (/usr/local/share/ca-certificates, e.g. a TLS-intercepting
# proxy's) go into the builder base image so that pip and cargo reach PyPI and crates.io through it.
# Existing base images are reused; REBUILD_BASE=1 remakes them.
#
# Slow (18 min measured on 2 busy cores with BUILD_JOBS=1, 11.5 of them the Rust release build) and
# needs about 20 GB of disk with the vfs driver, so it is not part of `make test` or CI.
# Run it as `nice -n 19 scripts/build_image.sh` on a shared machine.
#
# Environment:
#   IMAGE=localhost/infini:latest  the tag built
#   STORAGE_DRIVER=vfs             buildah's storage driver (vfs works anywhere; overlay is faster)
#   BUILD_JOBS=1                   cargo jobs inside the build (the Dockerfile's build-arg; empty: all cores)
#   PORT=18080                     the port the test run listens on (host network)
#   DEBIAN_MIRROR=http://deb.debian.org/debian
#   KEEP=1                         keep the test container (default: removed)
#   BASE_ONLY=1                    stop after making the base images
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/infini:latest}
STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
BUILD_JOBS=${BUILD_JOBS-1}
PORT=${PORT:-18080}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=${WORK:-/var/tmp/infini-image}

log() { printf '\n=== build_image: %s\n' "$*" >&2; }
die() { printf 'build_image: FAILED: %s\n' "$*" >&2; exit 1; }
started=$(date +%s)
since() { echo $(( $(date +%s) - $1 )); }

[ "$(id -u)" = 0 ] || die "run as root (buildah with the chroot isolation and debootstrap need it)"
missing=()
for tool in buildah debootstrap curl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

bah() { buildah --storage-driver "$STORAGE_DRIVER" "$@"; }
have_image() { bah inspect --type image "$1" >/dev/null 2>&1; }

# The base images, under the names the Dockerfile's FROM lines use (short names resolve to
# docker.io/library/…, which is where they are stored).
DEBIAN_REF=$(sed -n 's/^FROM \(debian:[^ ]*\).*/\1/p' Dockerfile | head -n1)
RUST_REF=$(sed -n 's/^FROM \(rust:[^ ]*\).*/\1/p' Dockerfile | head -n1)
[ -n "$DEBIAN_REF" ] && [ -n "$RUST_REF" ] || die "the Dockerfile's FROM lines name no debian:… and rust:… image"
DEBIAN_IMAGE=docker.io/library/$DEBIAN_REF
RUST_IMAGE=docker.io/library/$RUST_REF
SUITE=${DEBIAN_REF#debian:}
SUITE=${SUITE%-slim}

mkdir -p "$WORK"
if [ "${REBUILD_BASE:-0}" = 1 ] || ! have_image "$DEBIAN_IMAGE"; then
  t=$(date +%s)
  log "making $DEBIAN_IMAGE: debootstrap --variant=minbase $SUITE from $DEBIAN_MIRROR"
  rootfs=$WORK/rootfs-$SUITE
  rm -rf "$rootfs"
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log"; die "debootstrap"; }
  # Slim it as the official image is: no apt lists or caches, no docs, man pages or locales.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
  rm -f "$rootfs"/etc/apt/sources.list
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${DEBIAN_MIRROR%/debian}/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  printf 'path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\n' \
    >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim"
  tar -C "$rootfs" --numeric-owner -cf "$WORK/rootfs-$SUITE.tar" .
  ctr=$(bah from scratch)
  bah add --quiet "$ctr" "$WORK/rootfs-$SUITE.tar" /
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash "$ctr"
  bah commit --quiet --format docker "$ctr" "$DEBIAN_IMAGE" >/dev/null
  bah rm "$ctr" >/dev/null
  rm -rf "$rootfs" "$WORK/rootfs-$SUITE.tar"
  echo "$DEBIAN_IMAGE made in $(since "$t") s"
else
  echo "$DEBIAN_IMAGE present"
fi

if [ "${REBUILD_BASE:-0}" = 1 ] || ! have_image "$RUST_IMAGE"; then
  t=$(date +%s)
  want=${RUST_REF#rust:}
  want=${want%%-*}
  toolchain_dir=$(rustc --print sysroot)
  have=$(rustc --version | awk '{print $2}')
  arch=$(rustc -vV | sed -n 's/^host: //p')
  case "$have." in
    "$want".*) ;;
    *) die "the Dockerfile's builder is $RUST_REF, this machine's rustc is $have (rustup toolchain install $want)" ;;
  esac
  log "making $RUST_IMAGE: $DEBIAN_IMAGE + gcc, g++, make, pkg-config + this machine's Rust $have ($toolchain_dir)"
  ctr=$(bah from --pull=never "$DEBIAN_IMAGE")
  bah run --isolation chroot "$ctr" -- sh -c \
    'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates gcc g++ libc6-dev make pkg-config >/dev/null && rm -rf /var/lib/apt/lists/*'
  # Certificate authorities this machine adds to the system's (e.g. a TLS-intercepting proxy's):
  # the build's pip and cargo must trust them too to reach PyPI and crates.io.
  extra_cas=(/usr/local/share/ca-certificates/*.crt)
  if [ -e "${extra_cas[0]}" ]; then
    echo "adding this machine's ${#extra_cas[@]} local CA certificate(s) to $RUST_IMAGE"
    for ca in "${extra_cas[@]}"; do bah copy --quiet "$ctr" "$ca" /usr/local/share/ca-certificates/; done
    bah run --isolation chroot "$ctr" -- update-ca-certificates >/dev/null
    bundle=/etc/ssl/certs/ca-certificates.crt
    bah config --env "SSL_CERT_FILE=$bundle" --env "PIP_CERT=$bundle" \
      --env "REQUESTS_CA_BUNDLE=$bundle" --env "CARGO_HTTP_CAINFO=$bundle" "$ctr"
  fi
  # The official image's layout: the toolchain under RUSTUP_HOME, rustup and its proxies in CARGO_HOME/bin.
  tar -C "$toolchain_dir" --exclude=./share/doc --transform "s,^\.,toolchains/$have-$arch," -cf "$WORK/toolchain.tar" .
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$have-$arch" >"$WORK/settings.toml"
  bah add --quiet "$ctr" "$WORK/toolchain.tar" /usr/local/rustup/
  bah copy --quiet "$ctr" "$WORK/settings.toml" /usr/local/rustup/settings.toml
  bah copy --quiet "$ctr" "$(command -v rustup)" /usr/local/cargo/bin/rustup
  bah config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env RUST_VERSION="$have" "$ctr"
  bah run --isolation chroot "$ctr" -- sh -c 'cd /usr/local/cargo/bin && for p in cargo cargo-clippy cargo-fmt clippy-driver rustc rustdoc rustfmt; do ln -f rustup "$p"; done && cargo --version && rustc --version && g++ --version | head -n1'
  bah commit --quiet --format docker "$ctr" "$RUST_IMAGE" >/dev/null
  bah rm "$ctr" >/dev/null
  rm -f "$WORK/toolchain.tar" "$WORK/settings.toml"
  echo "$RUST_IMAGE made in $(since "$t") s"
else
  echo "$RUST_IMAGE present"
fi

[ "${BASE_ONLY:-0}" = 1 ] && exit 0

# The build: the Dockerfile as it is, Docker image format (OCI has no HEALTHCHECK).
t=$(date +%s)
log "buildah bud -t $IMAGE (storage $STORAGE_DRIVER, cargo jobs ${BUILD_JOBS:-all})"
bah bud --isolation chroot --format docker --pull=never --layers=false \
  --build-arg "BUILD_JOBS=$BUILD_JOBS" -t "$IMAGE" -f Dockerfile .
build_s=$(since "$t")

# The run: `buildah run` of the image's own ENTRYPOINT + CMD, as its USER, with its ENV and VOLUMEs
# (podman run would be closer to Docker, but crun cannot set rlimits where CAP_SYS_RESOURCE is
# missing, as in many CI sandboxes). The chroot isolation shares the host network, so the server is
# reached on 127.0.0.1:PORT.
config() { bah inspect --type image "$IMAGE" | python3 -c "
import json, sys
c = json.load(sys.stdin)['Docker']['config']
$1"; }
mapfile -d '' argv < <(config "sys.stdout.write(''.join(a + '\0' for a in (c['Entrypoint'] or []) + (c['Cmd'] or [])))")
mapfile -d '' health < <(config "t = (c.get('Healthcheck') or {}).get('Test') or []
assert t[:1] == ['CMD'], t
sys.stdout.write(''.join(a + '\0' for a in t[1:]))")
image_user=$(config "print(c['User'])")
[ ${#argv[@]} -gt 0 ] || die "the image has no ENTRYPOINT or CMD"
[ ${#health[@]} -gt 0 ] || die "the image has no HEALTHCHECK CMD"

name=infini-build-proof-$$
ctr=$(bah from --quiet --pull=never --name "$name" "$IMAGE")
run_pid=
cleanup() {
  [ -z "$run_pid" ] || kill "$run_pid" 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || bah rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT
log "buildah run $IMAGE: ${argv[*]} on 127.0.0.1:$PORT"
t=$(date +%s)
bah run --isolation chroot --env "INFINI_ADDR=127.0.0.1:$PORT" --env INFINI_THREADS=2 "$ctr" -- "${argv[@]}" \
  >"$WORK/run.log" 2>&1 &
run_pid=$!
until curl -fsS "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1; do
  kill -0 "$run_pid" 2>/dev/null || { tail -n 30 "$WORK/run.log"; die "the server exited"; }
  [ "$(since "$t")" -lt 300 ] || { tail -n 30 "$WORK/run.log"; die "not ready after 300 s"; }
  sleep 1
done
ready_s=$(since "$t")
descendants() { local p; for p in $(pgrep -P "$1"); do echo "$p"; descendants "$p"; done; }
server_pid=$(for p in $(descendants "$run_pid"); do [ "$(cat "/proc/$p/comm")" = infini ] && echo "$p"; done | head -n1)
[ -n "$server_pid" ] || die "no infini process under buildah run"
uid=$(ps -o uid= -p "$server_pid" | tr -d ' ')
[ "$uid" = "${image_user%%:*}" ] || die "the server runs as uid $uid, the image's USER is $image_user"
bah run --isolation chroot --env "INFINI_ADDR=127.0.0.1:$PORT" "$ctr" -- "${health[@]}" \
  || die "the image's HEALTHCHECK (${health[*]}) fails while /ready answers 200"
echo "ready after $ready_s s, as uid $uid; the image's HEALTHCHECK passes"

reply=$(curl -fsS "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"temperature": 0, "max_tokens": 16, "messages": [{"role": "user", "content": "What is the capital of France?"}]}') \
  || die "POST /v1/chat/completions"
python3 - "$reply" <<'PY' || die "the reply is not a well-formed chat completion: $reply"
import json, sys
r = json.loads(sys.argv[1])
assert r["object"] == "chat.completion", r
assert r["id"].startswith("chatcmpl-"), r
choice = r["choices"][0]
assert choice["message"]["role"] == "assistant", r
assert isinstance(choice["message"]["content"], str) and choice["message"]["content"].strip(), r
assert choice["finish_reason"] in ("stop", "length"), r
u = r["usage"]
assert u["completion_tokens"] >= 1 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], r
print("reply:", json.dumps(choice["message"]["content"]))
PY

# STOPSIGNAL (SIGTERM): drains and exits 0.
kill -TERM "$server_pid"
code=0
wait "$run_pid" || code=$?
run_pid=
[ "$code" = 0 ] || { tail -n 30 "$WORK/run.log"; die "after SIGTERM the server exited with $code"; }
echo "SIGTERM: drained and exited 0"

size=$(bah images --format '{{.Size}}' "$IMAGE" | head -n1)
log "OK"
echo "image $IMAGE: $size (uncompressed)"
echo "buildah bud: $build_s s; ready $ready_s s after start; whole script: $(since "$started") s"
