#!/usr/bin/env bash
# The stack's images on a machine that reaches no container registry (`make images`).
#
#   docker/local/images.sh            install what is missing, start dockerd, build what changed
#   docker/local/images.sh daemon     only install and start dockerd
#   docker/local/images.sh stop       stop the dockerd this script started (its pidfile)
#   docker/local/images.sh mtu        the MTU dockerd is given (for the stack's network)
#
# 1. docker.io and mmdebstrap from Debian's packages when missing (as root; else it names them:
#    docker.io is needed only where no Docker daemon answers, mmdebstrap only to build the base).
# 2. dockerd, when no Docker socket answers: in the background, no systemd, with its pidfile
#    and log in .tools/docker/ (overlay2, the MTU of the default route's interface, published
#    ports by NAT without docker-proxy).
# 3. The local base: Debian bookworm (minbase, python3 with venv and pip, ca-certificates,
#    curl) made by mmdebstrap, then `docker import`ed as coupon-local/base:bookworm.
# 4. The other services from Debian's packages on that base (docker/local/Dockerfile):
#    coupon-local/{postgres,redis,nginx,prometheus,redis-exporter,postgres-exporter}:bookworm.
# 5. The project's image, coupon-service:local, from docker/Dockerfile with BASE_IMAGE the local
#    base. pip inside the build trusts this machine's extra CA certificates
#    (/usr/local/share/ca-certificates/*.crt, where present) as a BuildKit secret: read by the
#    install step only, in no layer and never in git. HTTP(S)_PROXY and NO_PROXY, where set,
#    pass as build arguments (Docker keeps them out of the image's history).
#
# Each image carries the hash of its inputs (label coupon.inputs); one whose hash matches is
# not built again, so a second run takes seconds. FORCE=1 builds everything again.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
state=$root/.tools/docker
mkdir -p "$state"

base_image=coupon-local/base:bookworm
service_targets=(postgres redis nginx prometheus redis-exporter postgres-exporter)
project_image=${COUPON_LOCAL_IMAGE:-coupon-service:local}
debian_packages=(docker.io mmdebstrap)
suite=bookworm
mirror=http://deb.debian.org/debian
base_include=python3,python3-venv,python3-pip,ca-certificates,curl,passwd
# No recommended packages; no documentation, manual pages or translations in the image.
base_options=(
    '--aptopt=APT::Install-Recommends "false"'
    '--dpkgopt=path-exclude=/usr/share/doc/*'
    '--dpkgopt=path-exclude=/usr/share/man/*'
    '--dpkgopt=path-exclude=/usr/share/locale/*'
    '--dpkgopt=path-include=/usr/share/locale/locale.alias'
)

say() { printf 'images: %s\n' "$*"; }
die() {
    printf 'images: %s\n' "$*" >&2
    exit 1
}
# Exit 3: Docker cannot run on this machine at all (tests/containers skips, saying why).
cannot_run() {
    printf 'images: Docker cannot run here: %s\n' "$*" >&2
    exit 3
}

# docker.io is needed where no Docker daemon answers; mmdebstrap only to build the base.
install_missing() {
    local missing=()
    daemon_answers || command -v dockerd >/dev/null || [[ -x /usr/sbin/dockerd ]] || missing+=(docker.io)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing ${missing[*]} from Debian's packages"
        apt-get update -qq
        RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    elif [[ ${missing[0]} == docker.io ]]; then
        cannot_run "no Docker daemon answers and docker.io is missing; install with: sudo apt-get install -y ${debian_packages[*]}"
    fi
}

daemon_answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# The MTU of the interface of the default route (1500 without one): containers' packets must
# fit the host's path out.
host_mtu() {
    local iface
    iface=$(ip route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
    if [[ -n $iface && -r /sys/class/net/$iface/mtu ]]; then cat "/sys/class/net/$iface/mtu"; else echo 1500; fi
}

start_daemon() {
    daemon_answers && return 0
    local mtu deadline pid
    mtu=$(host_mtu)
    [[ $(id -u) == 0 ]] || cannot_run "no Docker daemon answers and only root can start one (dockerd)"
    say "starting dockerd (overlay2, MTU $mtu, no userland proxy); log $state/dockerd.log"
    # --userland-proxy=false: published ports by NAT alone, also from 127.0.0.1 (docker-proxy
    # copies every byte through a process of its own: a fifth of a CPU at 1,000 requests/s).
    # The daemon outlives this script: it must hold none of the descriptors this script was
    # given beyond stdio (a lock a caller holds, flock(1)'s, would be held as long as dockerd).
    (
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            if ((fd > 2)); then eval "exec $fd>&-"; fi
        done
        exec setsid "$(command -v dockerd || echo /usr/sbin/dockerd)" --storage-driver=overlay2 --mtu "$mtu" \
            --userland-proxy=false --pidfile "$state/dockerd.pid" >>"$state/dockerd.log" 2>&1 </dev/null
    ) &
    pid=$!
    deadline=$((SECONDS + 30))
    until daemon_answers; do
        if ((SECONDS >= deadline)) || ! kill -0 "$pid" 2>/dev/null; then
            cannot_run "dockerd did not start ($(tail -n 1 "$state/dockerd.log")); its log: $state/dockerd.log"
        fi
        sleep 0.3
    done
}

stop_daemon() {
    local pid
    [[ -f $state/dockerd.pid ]] || { say "no dockerd started by this script"; return 0; }
    pid=$(<"$state/dockerd.pid")
    if kill -0 "$pid" 2>/dev/null; then
        say "stopping dockerd (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
    fi
    rm -f "$state/dockerd.pid"
}

# BuildKit builds (the project's image reads a build secret): buildx where the client has it,
# else the classic client's own BuildKit (Debian's docker.io, /usr/bin/docker).
build() {
    if docker buildx version >/dev/null 2>&1; then
        docker build "$@"
    elif [[ -x /usr/bin/docker ]]; then
        DOCKER_BUILDKIT=1 /usr/bin/docker build "$@"
    else
        die "no BuildKit client: install docker's buildx plugin or Debian's docker.io"
    fi
}

label_of() { docker image inspect --format '{{index .Config.Labels "coupon.inputs"}}' "$1" 2>/dev/null || true; }

files_hash() { (cd "$root" && find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16); }

build_base() {
    local hash tarball partial
    hash=$(printf '%s\n' "$suite" "$mirror" "$base_include" "${base_options[@]}" | sha256sum | cut -c1-16)
    if [[ $(label_of "$base_image") == "$hash" && -z ${FORCE:-} ]]; then
        say "$base_image is up to date"
        return
    fi
    tarball=$state/base-$hash.tar
    if [[ ! -s $tarball ]]; then
        command -v mmdebstrap >/dev/null ||
            die "mmdebstrap is needed to build $base_image; install with: sudo apt-get install -y mmdebstrap"
        say "building the base with mmdebstrap ($suite, minbase + $base_include), about a minute"
        # mmdebstrap writes a tarball for a name ending in .tar (else a folder).
        partial=$state/base-$hash.partial.tar
        rm -rf "$state"/base-*.tar
        mmdebstrap --quiet --variant=minbase --include="$base_include" "${base_options[@]}" \
            "$suite" "$partial" \
            "deb $mirror $suite main" "deb $mirror $suite-updates main" \
            "deb ${mirror%/debian}/debian-security $suite-security main"
        mv "$partial" "$tarball"
    fi
    docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
        --change "LABEL coupon.inputs=$hash" "$tarball" "$base_image" >/dev/null
    say "imported $base_image"
}

build_services() {
    local base_id hash target image
    base_id=$(docker image inspect --format '{{.Id}}' "$base_image")
    hash=$(printf '%s\n' "$base_id" "$(files_hash docker/local/Dockerfile docker/local/*-entrypoint.sh)" |
        sha256sum | cut -c1-16)
    for target in "${service_targets[@]}"; do
        image=coupon-local/$target:$suite
        if [[ $(label_of "$image") == "$hash" && -z ${FORCE:-} ]]; then
            say "$image is up to date"
            continue
        fi
        say "building $image"
        build --quiet --target "$target" --build-arg BASE_IMAGE="$base_image" --label "coupon.inputs=$hash" \
            -t "$image" -f "$here/Dockerfile" "$here" >/dev/null
    done
}

build_project() {
    local base_id hash args=() name certs=()
    base_id=$(docker image inspect --format '{{.Id}}' "$base_image")
    hash=$(printf '%s\n' "$base_id" "$(files_hash setup.cfg pyproject.toml README.md service batcher lua docker/Dockerfile .dockerignore)" |
        sha256sum | cut -c1-16)
    if [[ $(label_of "$project_image") == "$hash" && -z ${FORCE:-} ]]; then
        say "$project_image is up to date"
        return
    fi
    shopt -s nullglob
    certs=(/usr/local/share/ca-certificates/*.crt)
    shopt -u nullglob
    if ((${#certs[@]} > 0)); then
        (umask 077 && cat "${certs[@]}" >"$state/extra-ca.crt")
        args+=(--secret "id=extra_ca,src=$state/extra-ca.crt")
        say "pip in the build trusts ${#certs[@]} extra CA certificate(s) of this machine (a build secret)"
    fi
    for name in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
        [[ -n ${!name:-} ]] && args+=(--build-arg "$name")
    done
    say "building $project_image from docker/Dockerfile on $base_image"
    build --quiet "${args[@]}" --build-arg BASE_IMAGE="$base_image" --label "coupon.inputs=$hash" \
        -t "$project_image" -f "$root/docker/Dockerfile" "$root" >/dev/null
    rm -f "$state/extra-ca.crt"
}

main() {
    case ${1:-all} in
    stop)
        stop_daemon
        return
        ;;
    mtu)
        host_mtu
        return
        ;;
    daemon)
        install_missing
        start_daemon
        return
        ;;
    all) ;;
    *)
        sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2
        return 2
        ;;
    esac
    local started=$SECONDS
    install_missing
    start_daemon
    build_base
    build_services
    build_project
    # What a rebuild replaced: this script's images that no tag names any more.
    docker image prune -f --filter label=coupon.inputs >/dev/null
    say "done in $((SECONDS - started)) s: $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$project_image")"
}

main "$@"
