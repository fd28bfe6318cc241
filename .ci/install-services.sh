#!/usr/bin/env bash
# Install what the integration tests need to run real servers without Docker (docs/DESIGN.md
# section 7), idempotently: redis-server (the binary only: the system service is not used),
# chromium (for the dashboard's browser tests), a JDK 17+ and Maven, then the pinned Kafka
# jars into the cache (${KAFKA_BLACKBOARD_CACHE:-~/.cache/kafka-blackboard}). Progress goes to
# stderr.
#
#   bash .ci/install-services.sh
set -euo pipefail

cd "$(dirname "$0")/.."

log() { printf 'install-services: %s\n' "$*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo -n)
fi

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        "${SUDO[@]}" apt-get update -qq >&2
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@" >&2
}

java_major() {
    # "17.0.15" -> 17, "1.8.0_412" -> 8; empty if java is missing or unreadable.
    java -version 2>&1 | sed -n 's/.*version "\([0-9]*\)\.\{0,1\}\([0-9]*\).*/\1 \2/p' | head -n 1 |
        awk '{ print ($1 == 1 ? $2 : $1) }' || true
}

# -- redis-server ---------------------------------------------------------------------------
if command -v redis-server >/dev/null 2>&1; then
    log "redis-server present: $(redis-server --version | cut -d' ' -f3)"
else
    apt_install redis-server
    # Debian's postinst may start the packaged service; the tests run their own server on a
    # free port, so stop only that service (never other redis processes).
    if [ -d /run/systemd/system ] && systemctl is-active --quiet redis-server 2>/dev/null; then
        log "stopping the redis-server system service the package started"
        "${SUDO[@]}" systemctl stop redis-server >&2
    elif command -v service >/dev/null 2>&1 && service redis-server status >/dev/null 2>&1; then
        log "stopping the redis-server system service the package started"
        "${SUDO[@]}" service redis-server stop >&2
    fi
    log "installed $(redis-server --version | cut -d' ' -f3)"
fi

# -- chromium (the dashboard's browser tests drive Debian's build with Playwright; Playwright
# never downloads a browser of its own) ---------------------------------------------------
if command -v chromium >/dev/null 2>&1; then
    log "chromium present: $(chromium --version 2>/dev/null | head -n 1)"
else
    apt_install chromium
    log "installed $(chromium --version 2>/dev/null | head -n 1)"
fi

# -- docker-compose (only to check compose/docker-compose.yml parses; no engine needed) ------
if ! command -v docker-compose >/dev/null 2>&1; then
    apt_install docker-compose
fi

# -- Java 17+ -------------------------------------------------------------------------------
if [ -z "$(java_major)" ]; then
    apt_install default-jdk-headless
fi
major="$(java_major)"
if [ -z "$major" ] || [ "$major" -lt 17 ]; then
    log "error: Kafka 4.x needs Java 17+, found '${major:-none}' (java on PATH or JAVA_HOME)"
    exit 1
fi
log "java $major present"

# -- Maven ----------------------------------------------------------------------------------
if ! mvn -v >/dev/null 2>&1; then
    apt_install maven
fi
log "$(mvn -v 2>/dev/null | head -n 1 | sed 's/\x1b\[[0-9;]*m//g')"

# -- Kafka jars -----------------------------------------------------------------------------
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
log "fetching the Kafka jars (skipped if cached): the pinned release and the fault tests' other"
"$PYTHON" compose/kafka_local.py fetch >&2
"$PYTHON" compose/kafka_local.py fetch --version 3.9.1 >&2
log "done"
