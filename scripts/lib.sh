# shellcheck shell=bash
# Shared defaults and helpers for Berth's dev/test scripts. Source it; don't run it.
#
# Every default below can be overridden from the environment, so CI and developers
# can move ports or directories without editing scripts.

# Repo root = parent of the directory holding this file, so scripts work from any cwd.
BERTH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

: "${BERTH_DEV_DIR:=/var/tmp/berth-dev}"     # venv, logs, pidfiles, cached .debs
: "${BERTH_PG_PORT:=5432}"                   # PostgreSQL on 127.0.0.1
: "${BERTH_PG_CLUSTER:=main}"                # Debian cluster name (pg_ctlcluster <ver> <name>)
: "${BERTH_PG_MAX_CONNECTIONS:=300}"         # many sqlx pools run concurrently in tests
: "${BERTH_MOTO_PORT:=5055}"                 # moto EC2 emulator on 127.0.0.1
: "${BERTH_MOTO_VERSION:=5.2.5}"             # pinned so emulator behaviour doesn't drift
: "${BERTH_TEST_IMAGE:=berth-test-app:1}"    # busybox-based app image built locally

# Derived, never taken from the environment: a stale export from an earlier
# `eval` must not point the tests at a different port than the one we start.
BERTH_EC2_ENDPOINT="http://127.0.0.1:${BERTH_MOTO_PORT}"

# Fixed by the project's test contract (not overridable: they end up inside SQL).
BERTH_PG_USER=berth
BERTH_PG_PASSWORD=berth
BERTH_PG_DB=berth
DATABASE_URL_DEFAULT="postgres://${BERTH_PG_USER}:${BERTH_PG_PASSWORD}@127.0.0.1:${BERTH_PG_PORT}/${BERTH_PG_DB}"

export BERTH_ROOT BERTH_DEV_DIR BERTH_PG_PORT BERTH_PG_CLUSTER BERTH_PG_MAX_CONNECTIONS \
	BERTH_MOTO_PORT BERTH_MOTO_VERSION BERTH_TEST_IMAGE BERTH_EC2_ENDPOINT

# Name shown in front of every progress line; scripts set it before sourcing.
: "${BERTH_LOG_TAG:=berth}"

# Progress always goes to stderr so stdout stays clean for --print-env.
log() { printf '[%s] %s\n' "$BERTH_LOG_TAG" "$*" >&2; }

# die "what is wrong" ["how to fix it"]
die() {
	printf '[%s] ERROR: %s\n' "$BERTH_LOG_TAG" "$1" >&2
	if [ $# -gt 1 ]; then printf '[%s]   fix: %s\n' "$BERTH_LOG_TAG" "$2" >&2; fi
	exit 1
}

# The environment the Rust tests read, as `export` lines (eval-able / source-able).
berth_env() {
	printf 'export %s=%q\n' \
		DATABASE_URL "$DATABASE_URL_DEFAULT" \
		BERTH_EC2_ENDPOINT "$BERTH_EC2_ENDPOINT" \
		BERTH_TEST_IMAGE "$BERTH_TEST_IMAGE" \
		AWS_ACCESS_KEY_ID testing \
		AWS_SECRET_ACCESS_KEY testing \
		AWS_REGION us-east-1
}

require_root() {
	[ "$(id -u)" -eq 0 ] || die "this script installs packages and starts services, so it must run as root" \
		"re-run it as root (e.g. sudo $0)"
}

# Wall clock in milliseconds (bash 5's EPOCHREALTIME: no fork).
now_ms() {
	local t=${EPOCHREALTIME/[.,]/}
	echo $((t / 1000))
}

# fmt_ms 1234 -> "1.234 s"
# Unmounts (lazily, deepest first) every mount beneath DIR: a host's state dir
# holds a tmpfs per session directory, which `rm -rf` cannot remove.
unmount_beneath() {
	local dir=${1%/}
	awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r |
		while read -r mount; do umount -l "$mount" 2>/dev/null || true; done
}

fmt_ms() { printf '%d.%03d s' $(($1 / 1000)) $(($1 % 1000)); }

# wait_until <seconds> <description> <command...>: poll every 0.1 s, bounded.
wait_until() {
	local secs=$1 what=$2
	shift 2
	local deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			log "gave up after ${secs}s waiting for ${what}"
			return 1
		fi
		sleep 0.1
	done
}

# Packages (of those given) that are not installed.
apt_missing() {
	local pkg status
	for pkg in "$@"; do
		status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)"
		[ "${status:0:2}" = "ii" ] || printf '%s\n' "$pkg"
	done
}

# apt_ensure pkg...: install only the missing ones; refresh the index only then.
apt_ensure() {
	local missing
	mapfile -t missing < <(apt_missing "$@")
	if [ "${#missing[@]}" -eq 0 ]; then
		log "apt: already installed: $*"
		return 0
	fi
	command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get" \
		"this script targets Debian 12; install ${missing[*]} by hand"
	log "apt: installing ${missing[*]} (apt-get update first)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2 || die "apt-get update failed" "check network access to the Debian mirrors"
	apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
		die "apt-get install ${missing[*]} failed" "run it by hand to see why: apt-get install ${missing[*]}"
}
