//! Settings both binaries share, and the configuration contract every Berth
//! binary keeps:
//!
//! * every setting is a `--flag` with an environment variable of the same
//!   meaning, and the flag wins when both are given — so systemd units
//!   (`EnvironmentFile=`), Procfile platforms (config vars) and tests (argv)
//!   drive the binaries alike;
//! * booleans take exactly `true` or `false` ([`strict_bool`]); anything else
//!   is a usage error;
//! * `--help` lists every setting with its variable and default (the README's
//!   tables mirror it);
//! * exit codes are [`exit`]'s: 64 for a bad command line, 78 for
//!   configuration a restart cannot fix, 1 for runtime failures worth a retry.

use std::ops::RangeInclusive;
use std::str::FromStr;

use clap::builder::BoolValueParser;
use clap::{Args, ValueEnum};

/// The parser of every boolean setting: exactly `true` or `false` (also from
/// the environment). `yes`, `1`, `on` and friends are usage errors, so a typo
/// never silently means the opposite of what was meant.
pub fn strict_bool() -> BoolValueParser {
    BoolValueParser::new()
}

#[derive(Clone, Debug, Args)]
pub struct CommonArgs {
    /// Connections the HTTP(S) listener serves at once; past it a client is
    /// refused at once (503 TOO_MANY_CONNECTIONS) instead of queued.
    #[arg(long, env = "BERTH_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Environment name: used in cloud tags and as the Sentry environment.
    #[arg(long = "env", env = "BERTH_ENV", default_value = "dev", value_parser = parse_env_name)]
    pub environment: String,

    /// Bearer token of the operator surfaces (`/metrics`, and the scaler's
    /// `/regions`); unset, they answer nobody. At least 24 visible characters.
    #[arg(long, env = "BERTH_OPERATOR_TOKEN", hide_env_values = true, value_parser = crate::operator::parse_token)]
    pub operator_token: Option<String>,

    /// Sentry DSN; unset disables error reporting.
    #[arg(long, env = "SENTRY_DSN", hide_env_values = true)]
    pub sentry_dsn: Option<String>,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info,host_service=debug`.
    #[arg(long = "log-filter", env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,

    /// Log output: `text` for people, `json` for log shippers.
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl CommonArgs {
    /// What the operator surfaces check requests against.
    pub fn operator(&self) -> crate::operator::OperatorCredential {
        crate::operator::OperatorCredential::new(self.operator_token.as_deref())
    }
}

/// Development environments (`dev`, `dev-*`) may run with conveniences a
/// real deployment must not (unchecked token issuer and audience).
pub fn is_development(environment: &str) -> bool {
    environment == "dev" || environment.starts_with("dev-")
}

fn parse_env_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| s.to_owned())
        .ok_or_else(|| format!("{s:?}: use 1 to 32 characters from [A-Za-z0-9_-]"))
}

/// An inclusive numeric range written `LOW-HIGH`, e.g. `20000-32000`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberRange<T>(pub RangeInclusive<T>);

impl<T> FromStr for NumberRange<T>
where
    T: FromStr + PartialOrd + Copy + std::fmt::Display,
{
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (low, high) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: write the range as LOW-HIGH, e.g. 20000-32000"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<T>()
                .map_err(|_| format!("{s:?}: {v:?} is not a valid number here"))
        };
        let (low, high) = (parse(low)?, parse(high)?);
        if low > high {
            return Err(format!(
                "{s:?}: the low end {low} is above the high end {high}"
            ));
        }
        Ok(Self(low..=high))
    }
}

impl<T: std::fmt::Display> std::fmt::Display for NumberRange<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0.start(), self.0.end())
    }
}

/// Process exit codes (sysexits), so supervisors can tell bad configuration
/// from runtime failure.
pub mod exit {
    pub const RUNTIME: i32 = 1;
    pub const USAGE: i32 = 64;
    pub const CONFIG: i32 = 78;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_nonsense() {
        let r: NumberRange<u16> = "20000-32000".parse().unwrap();
        assert_eq!(r.0, 20000..=32000);
        assert!("32000-20000".parse::<NumberRange<u16>>().is_err());
        assert!("20000".parse::<NumberRange<u16>>().is_err());
        assert!("1-70000".parse::<NumberRange<u16>>().is_err());
        assert_eq!(
            "10-63".parse::<NumberRange<u8>>().unwrap().to_string(),
            "10-63"
        );
    }

    #[test]
    fn env_names_are_tag_safe() {
        assert!(parse_env_name("prod-eu_1").is_ok());
        assert!(parse_env_name("").is_err());
        assert!(parse_env_name("a b").is_err());
    }
}
