#!/bin/bash
# EC2 user data for a Berth host (scaling-service: BERTH_USER_DATA_FILE). Before launch the
# scaler replaces the four brace placeholders below with the host's region, environment name, the
# control plane's URL and its launch's one-use bootstrap token (for the control plane's host
# API), by plain text substitution: never write those placeholders anywhere else in this file.
#
# The image (AMI) holds Docker, the aws CLI and either the host-service package installed or its
# .deb in /opt/berth/ (scripts/package-deb builds it), which this script then installs: the
# daemon, its systemd unit (enabled, not started), kernel settings and modules. The daemon reads
# its own identity from instance metadata; this script only writes the settings it cannot
# discover: the environment name, where the control plane is and the bootstrap token.
# A host holds no database credentials: everything goes through the control plane's host API.
# Only the optional Sentry DSN comes from Secrets Manager (through the instance profile, which
# then needs secretsmanager:GetSecretValue on berth/<env>/sentry-dsn and nothing else).
# Any failure stops here (log: /var/log/cloud-init-output.log); the host then never registers and
# the scaler terminates it after its registration timeout.
set -euo pipefail

REGION='{region}'
BERTH_ENV_NAME='{env}'
BERTH_CONTROL_URL='{control_url}'
BERTH_HOST_TOKEN='{bootstrap_token}'
ENV_FILE=/etc/berth/host-service.env

die() {
	echo "berth user data: $*" >&2
	exit 1
}

# The package, unless the image has it installed already. apt-get (not dpkg -i) fetches a
# dependency the image lacks; --force-confold keeps a settings file the image carries.
if ! dpkg-query -W -f='${db:Status-Abbrev}' host-service 2>/dev/null | grep -q '^ii'; then
	deb="$(find /opt/berth -maxdepth 1 -name 'host-service_*.deb' 2>/dev/null | sort -V | tail -n1)"
	[ -n "$deb" ] || die "host-service is not installed and the image has no /opt/berth/host-service_*.deb"
	export DEBIAN_FRONTEND=noninteractive
	apt_install() { apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "$deb"; }
	apt_install || { apt-get update -q && apt_install; } || die "installing $deb failed"
fi
[ -x /usr/bin/host-service ] || die "/usr/bin/host-service is missing after installing the host-service package"

# Optional, and regional (replicate it to every region hosts run in): without it the daemon
# runs with error reporting off.
sentry_dsn=""
if command -v aws >/dev/null; then
	sentry_dsn="$(aws secretsmanager get-secret-value --region "$REGION" \
		--secret-id "berth/$BERTH_ENV_NAME/sentry-dsn" --query SecretString --output text 2>/dev/null)" ||
		sentry_dsn=""
fi
# Values go in single quotes, which systemd's EnvironmentFile= and a shell both read literally.
case "$sentry_dsn" in *"'"* | *$'\n'*) die "the Sentry DSN secret holds a quote or newline; store it URL-encoded" ;; esac

# No magic SysRq: session containers drive virtual keyboards that are input devices of this
# host, and Alt+SysRq+<key> from any keyboard can reboot or crash the kernel. (berth-uinput's
# keyboard does not advertise SysRq either.) The package persists it for later boots
# (/usr/lib/sysctl.d/90-berth-host.conf); applied and checked here before the daemon starts.
sysctl -q -w kernel.sysrq=0 || die "cannot set kernel.sysrq=0"
[ "$(cat /proc/sys/kernel/sysrq)" = 0 ] || die "kernel.sysrq is $(cat /proc/sys/kernel/sysrq), not 0"

# 0600 from the start: the file holds the bootstrap token.
umask 077
mkdir -p /etc/berth
tmp="$(mktemp "$ENV_FILE.XXXXXX")"
{
	echo "BERTH_ENV='$BERTH_ENV_NAME'"
	echo "BERTH_CONTROL_URL='$BERTH_CONTROL_URL'"
	echo "BERTH_HOST_TOKEN='$BERTH_HOST_TOKEN'"
	if [ -n "$sentry_dsn" ]; then echo "SENTRY_DSN='$sentry_dsn'"; fi
} >"$tmp"
mv -f "$tmp" "$ENV_FILE"

systemctl enable --now host-service
