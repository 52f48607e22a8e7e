#!/bin/bash
# EC2 user data for a Berth host (scaling-service: BERTH_USER_DATA_FILE). Before launch the
# scaler replaces the three brace placeholders below with the host's region, environment name and
# its launch's one-use bootstrap token (for the control plane's host API), by plain text
# substitution: never write those placeholders anywhere else in this file.
#
# The image (AMI) already holds /usr/local/bin/host-service, its systemd unit and the aws CLI.
# The daemon reads its own identity from instance metadata; this script only writes the settings
# it cannot discover: the environment name and the database URL (from Secrets Manager, through
# the instance profile, which needs secretsmanager:GetSecretValue on berth/<env>/*).
# Any failure stops here (log: /var/log/cloud-init-output.log); the host then never registers and
# the scaler terminates it after its registration timeout.
set -euo pipefail

REGION='{region}'
BERTH_ENV_NAME='{env}'
BERTH_HOST_TOKEN='{bootstrap_token}'
ENV_FILE=/etc/berth/host-service.env

die() {
	echo "berth user data: $*" >&2
	exit 1
}

command -v aws >/dev/null || die "the aws CLI is not installed; it is needed to read berth/$BERTH_ENV_NAME/database-url"
[ -x /usr/local/bin/host-service ] || die "/usr/local/bin/host-service is missing from the image"

# Secrets are regional: replicate berth/<env>/* to every region hosts run in.
secret() {
	aws secretsmanager get-secret-value --region "$REGION" --secret-id "$1" \
		--query SecretString --output text
}

database_url="$(secret "berth/$BERTH_ENV_NAME/database-url")" ||
	die "cannot read secret berth/$BERTH_ENV_NAME/database-url in $REGION"
# Optional: without it the daemon runs with error reporting off.
sentry_dsn="$(secret "berth/$BERTH_ENV_NAME/sentry-dsn" 2>/dev/null)" || sentry_dsn=""

# Values go in single quotes, which systemd's EnvironmentFile= and a shell both read literally.
for value in "$database_url" "$sentry_dsn"; do
	case "$value" in *"'"* | *$'\n'*) die "a secret holds a quote or newline; store it URL-encoded" ;; esac
done
[ -n "$database_url" ] || die "secret berth/$BERTH_ENV_NAME/database-url is empty"

# No magic SysRq: session containers drive virtual keyboards that are input devices of this
# host, and Alt+SysRq+<key> from any keyboard can reboot or crash the kernel. (berth-uinput's
# keyboard does not advertise SysRq either.) Persisted for later boots, applied now.
mkdir -p /etc/sysctl.d
printf '%s\n' '# Berth (scripts/ec2-user-data.sh): no SysRq from session keyboards' 'kernel.sysrq = 0' \
	>/etc/sysctl.d/90-berth-sysrq.conf
chmod 0644 /etc/sysctl.d/90-berth-sysrq.conf
sysctl -q -w kernel.sysrq=0 || die "cannot set kernel.sysrq=0"
[ "$(cat /proc/sys/kernel/sysrq)" = 0 ] || die "kernel.sysrq is $(cat /proc/sys/kernel/sysrq), not 0"

# 0600 from the start: the file holds the database password.
umask 077
mkdir -p /etc/berth
tmp="$(mktemp "$ENV_FILE.XXXXXX")"
{
	echo "BERTH_ENV='$BERTH_ENV_NAME'"
	echo "DATABASE_URL='$database_url'"
	echo "BERTH_HOST_TOKEN='$BERTH_HOST_TOKEN'"
	if [ -n "$sentry_dsn" ]; then echo "SENTRY_DSN='$sentry_dsn'"; fi
} >"$tmp"
mv -f "$tmp" "$ENV_FILE"

systemctl enable --now host-service
