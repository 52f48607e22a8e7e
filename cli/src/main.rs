//! `berth`: the operator's command line over the control plane's operator API
//! (`/v1/operator/`). Tables for people, `--json` for scripts (the API's own
//! JSON, one object). Exit codes: 0 done, 1 refused or failed (the API's code
//! and message on stderr), 64 bad usage.

mod client;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use client::Client;
use table::{cell, render, Column};

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Operate a Berth fleet: status, hosts, sessions, drain, end, regions, deploys, audit",
    long_about = "Operate a Berth fleet through the control plane's operator API.\n\n\
        Every command needs the control plane's URL (--url or BERTH_URL; https, or http to loopback) and an \
        operator credential (--token or BERTH_OPERATOR_TOKEN: the operator token, or a JWT with the operator claim). \
        Actions are idempotent: asking again for what already holds says so and changes nothing. Every action is \
        recorded in the audit trail under the credential's subject."
)]
struct Cli {
    /// The control plane's base URL, e.g. https://berth.example.com.
    #[arg(long, env = "BERTH_URL", global = true)]
    url: Option<String>,
    /// The operator token or an operator's JWT.
    #[arg(
        long,
        env = "BERTH_OPERATOR_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Regions: buffer target, free slots, hosts by status, launches, image, deploy.
    Status,
    /// Hosts (not terminated), with heartbeat age, load and sessions.
    Hosts {
        #[arg(long)]
        region: Option<String>,
        /// ACTIVE, DRAINING, UNREACHABLE, LAUNCHING, …
        #[arg(long)]
        status: Option<String>,
    },
    /// Users' sessions (and warm ones with --warm).
    Sessions {
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        runtime: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        host: Option<String>,
        /// Include warm (unassigned) sessions.
        #[arg(long)]
        warm: bool,
    },
    /// Drain a host: it takes no new sessions and ends once empty.
    Drain { host: String },
    /// End a session now (as its owner's delete would).
    End { session: String },
    /// Change a region: enable or disable it, set its buffer target or host cap.
    Region {
        name: String,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        /// Free slots to keep warm.
        #[arg(long)]
        target: Option<i32>,
        /// Most hosts the region may run.
        #[arg(long)]
        max_hosts: Option<i32>,
    },
    /// Image roll-outs: start, release (swap in), abort (drain the candidate).
    #[command(subcommand)]
    Deploy(Deploy),
    /// The audit trail, newest first.
    Audit {
        #[arg(long)]
        actor: Option<String>,
        /// e.g. host.drain, session.assign, deploy.start, host.register
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        region: Option<String>,
        /// ok, refused or failed
        #[arg(long)]
        outcome: Option<String>,
        /// RFC 3339, e.g. 2026-12-01T00:00:00Z
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// Records per page (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only records older than this id (the previous page's last).
        #[arg(long)]
        before: Option<i64>,
        /// Follow the pages to the oldest record.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
enum Deploy {
    /// Start rolling `image` out in `region` (a protected buffer is built first).
    Start {
        region: String,
        image: String,
        #[arg(long, default_value = "")]
        client_sha: String,
    },
    /// Let a ready deploy swap its image in.
    Release { region: String },
    /// Fail the deploy in progress; its buffer drains.
    Abort { region: String },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let usage = error.use_stderr();
            let _ = error.print();
            return if usage {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("berth: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("berth: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let url = cli
        .url
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("no control plane URL: pass --url or set BERTH_URL"))?;
    let client = Client::new(url, cli.token.as_deref())?;
    let out = |value: &Value, text: String| {
        if cli.json {
            println!("{value}");
        } else {
            print!("{text}");
        }
    };
    match cli.command {
        Command::Status => {
            let answer = client
                .call(Method::GET, "/v1/operator/regions", None)
                .await?;
            out(&answer, render(&REGION_COLUMNS, list(&answer, "regions")));
        }
        Command::Hosts { region, status } => {
            let path = with_query(
                "/v1/operator/hosts",
                &[("region", region), ("status", status)],
            );
            let answer = client.call(Method::GET, &path, None).await?;
            out(&answer, render(&HOST_COLUMNS, list(&answer, "hosts")));
        }
        Command::Sessions {
            region,
            user,
            runtime,
            status,
            host,
            warm,
        } => {
            let path = with_query(
                "/v1/operator/sessions",
                &[
                    ("region", region),
                    ("user", user),
                    ("runtime", runtime),
                    ("status", status),
                    ("host", host),
                    ("warm", warm.then(|| "true".to_owned())),
                ],
            );
            let answer = client.call(Method::GET, &path, None).await?;
            out(&answer, render(&SESSION_COLUMNS, list(&answer, "sessions")));
        }
        Command::Drain { host } => {
            let path = format!("/v1/operator/hosts/{}/drain", segment(&host));
            let answer = client.call(Method::POST, &path, None).await?;
            out(
                &answer,
                done(
                    &answer,
                    &format!("host {host} is {}", cell(&answer["status"])),
                ),
            );
        }
        Command::End { session } => {
            let path = format!("/v1/operator/sessions/{}/end", segment(&session));
            let answer = client.call(Method::POST, &path, None).await?;
            out(
                &answer,
                done(
                    &answer,
                    &format!("session {session} is {}", cell(&answer["status"])),
                ),
            );
        }
        Command::Region {
            name,
            enable,
            disable,
            target,
            max_hosts,
        } => {
            let mut change = serde_json::Map::new();
            if enable || disable {
                change.insert("enabled".into(), json!(enable));
            }
            if let Some(target) = target {
                change.insert("target_free_slots".into(), json!(target));
            }
            if let Some(max) = max_hosts {
                change.insert("max_hosts".into(), json!(max));
            }
            if change.is_empty() {
                anyhow::bail!(
                    "nothing to change: pass --enable, --disable, --target and/or --max-hosts"
                );
            }
            let path = format!("/v1/operator/regions/{}", segment(&name));
            let answer = client
                .call(Method::PATCH, &path, Some(Value::Object(change)))
                .await?;
            let after = &answer["after"];
            out(
                &answer,
                done(
                    &answer,
                    &format!(
                        "region {name}: {}, target {} free slots, at most {} hosts",
                        if after["enabled"] == json!(true) {
                            "enabled"
                        } else {
                            "disabled"
                        },
                        cell(&after["target_free_slots"]),
                        cell(&after["max_hosts"])
                    ),
                ),
            );
        }
        Command::Deploy(deploy) => {
            let (path, body, what) = match deploy {
                Deploy::Start {
                    region,
                    image,
                    client_sha,
                } => (
                    format!("/v1/operator/regions/{}/deploy", segment(&region)),
                    Some(json!({"image_id": image, "client_sha": client_sha})),
                    format!("deploy of {image} in {region}"),
                ),
                Deploy::Release { region } => (
                    format!("/v1/operator/regions/{}/deploy/release", segment(&region)),
                    None,
                    format!("deploy in {region} released"),
                ),
                Deploy::Abort { region } => (
                    format!("/v1/operator/regions/{}/deploy/abort", segment(&region)),
                    None,
                    format!("deploy in {region} aborted"),
                ),
            };
            let answer = client.call(Method::POST, &path, body).await?;
            let state = answer.get("state").map(cell).unwrap_or_default();
            out(&answer, done(&answer, format!("{what} {state}").trim_end()));
        }
        Command::Audit {
            actor,
            action,
            target,
            region,
            outcome,
            since,
            until,
            limit,
            mut before,
            all,
        } => {
            let mut first = true;
            loop {
                let path = with_query(
                    "/v1/operator/audit",
                    &[
                        ("actor", actor.clone()),
                        ("action", action.clone()),
                        ("target", target.clone()),
                        ("region", region.clone()),
                        ("outcome", outcome.clone()),
                        ("since", since.clone()),
                        ("until", until.clone()),
                        ("limit", Some(limit.to_string())),
                        ("before", before.map(|b| b.to_string())),
                    ],
                );
                let answer = client.call(Method::GET, &path, None).await?;
                let rows = list(&answer, "records");
                if cli.json {
                    println!("{answer}");
                } else {
                    let text = render(&AUDIT_COLUMNS, rows);
                    // The heading once, however many pages follow.
                    print!(
                        "{}",
                        if first {
                            &text[..]
                        } else {
                            text.split_once('\n').map_or("", |(_, rest)| rest)
                        }
                    );
                }
                first = false;
                match answer["next_before"].as_i64() {
                    Some(next) if all => before = Some(next),
                    Some(next) if !cli.json => {
                        eprintln!("(more: --before {next}, or --all)");
                        break;
                    }
                    _ => break,
                }
            }
        }
    }
    Ok(())
}

/// A path segment from user input, percent-encoded.
fn segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn with_query(path: &str, pairs: &[(&str, Option<String>)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (key, value) in pairs {
        if let Some(value) = value {
            query.append_pair(key, value);
            any = true;
        }
    }
    if any {
        format!("{path}?{}", query.finish())
    } else {
        path.to_owned()
    }
}

fn list<'a>(answer: &'a Value, key: &str) -> &'a [Value] {
    answer[key].as_array().map_or(&[], Vec::as_slice)
}

fn done(answer: &Value, what: &str) -> String {
    if answer["changed"] == json!(false) {
        format!("{what} (already so; nothing changed)\n")
    } else {
        format!("{what}\n")
    }
}

fn hosts_by_status(row: &Value) -> String {
    row["hosts"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

const REGION_COLUMNS: [Column; 10] = [
    Column {
        heading: "REGION",
        cell: |r| cell(&r["name"]),
    },
    Column {
        heading: "ENABLED",
        cell: |r| cell(&r["enabled"]),
    },
    Column {
        heading: "TARGET",
        cell: |r| cell(&r["target_free_slots"]),
    },
    Column {
        heading: "FREE",
        cell: |r| cell(&r["free_slots"]),
    },
    Column {
        heading: "SESSIONS",
        cell: |r| cell(&r["sessions"]),
    },
    Column {
        heading: "HOSTS",
        cell: hosts_by_status,
    },
    Column {
        heading: "LAUNCHING",
        cell: |r| cell(&r["launching"]),
    },
    Column {
        heading: "MAX",
        cell: |r| cell(&r["max_hosts"]),
    },
    Column {
        heading: "IMAGE",
        cell: |r| cell(&r["current_image"]),
    },
    Column {
        heading: "DEPLOY",
        cell: |r| match r["deploy_state"].as_str() {
            Some(state) => format!("{state}:{}", cell(&r["deploy_image"])),
            None => "-".into(),
        },
    },
];

const HOST_COLUMNS: [Column; 8] = [
    Column {
        heading: "HOST",
        cell: |r| cell(&r["id"]),
    },
    Column {
        heading: "REGION",
        cell: |r| cell(&r["region"]),
    },
    Column {
        heading: "STATUS",
        cell: |r| cell(&r["status"]),
    },
    Column {
        heading: "HEARTBEAT",
        cell: |r| {
            r["heartbeat_age_s"]
                .as_f64()
                .map_or("-".into(), |s| format!("{s:.0}s ago"))
        },
    },
    Column {
        heading: "LOAD",
        cell: |r| {
            r["load_average"]
                .as_f64()
                .map_or("-".into(), |l| format!("{l:.2}"))
        },
    },
    Column {
        heading: "SESSIONS",
        cell: |r| format!("{}/{}", cell(&r["sessions"]), cell(&r["capacity"])),
    },
    Column {
        heading: "IMAGE",
        cell: |r| cell(&r["image_id"]),
    },
    Column {
        heading: "VERSION",
        cell: |r| cell(&r["host_version"]),
    },
];

const SESSION_COLUMNS: [Column; 7] = [
    Column {
        heading: "SESSION",
        cell: |r| cell(&r["id"]),
    },
    Column {
        heading: "USER",
        cell: |r| cell(&r["user_id"]),
    },
    Column {
        heading: "RUNTIME",
        cell: |r| cell(&r["runtime"]),
    },
    Column {
        heading: "STATUS",
        cell: |r| cell(&r["status"]),
    },
    Column {
        heading: "AGE",
        cell: |r| {
            r["age_s"]
                .as_f64()
                .map_or("-".into(), |s| format!("{s:.0}s"))
        },
    },
    Column {
        heading: "HOST",
        cell: |r| cell(&r["host_id"]),
    },
    Column {
        heading: "REGION",
        cell: |r| cell(&r["region"]),
    },
];

const AUDIT_COLUMNS: [Column; 8] = [
    Column {
        heading: "ID",
        cell: |r| cell(&r["id"]),
    },
    Column {
        heading: "AT",
        cell: |r| cell(&r["at"]),
    },
    Column {
        heading: "WHO",
        cell: |r| format!("{}:{}", cell(&r["actor_kind"]), cell(&r["actor"])),
    },
    Column {
        heading: "ACTION",
        cell: |r| cell(&r["action"]),
    },
    Column {
        heading: "TARGET",
        cell: |r| cell(&r["target"]),
    },
    Column {
        heading: "FROM",
        cell: |r| cell(&r["address"]),
    },
    Column {
        heading: "OUTCOME",
        cell: |r| cell(&r["outcome"]),
    },
    Column {
        heading: "REGION",
        cell: |r| cell(&r["region"]),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_carry_only_given_filters_encoded() {
        assert_eq!(with_query("/p", &[("a", None)]), "/p");
        assert_eq!(
            with_query("/p", &[("user", Some("a b&c".into())), ("x", None)]),
            "/p?user=a+b%26c"
        );
        assert_eq!(segment("a/b"), "a%2Fb");
    }

    #[test]
    fn the_command_line_parses_as_documented() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "berth",
            "--json",
            "region",
            "eu",
            "--disable",
            "--target",
            "3",
        ])
        .unwrap();
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Region {
                disable: true,
                target: Some(3),
                ..
            }
        ));
        assert!(Cli::try_parse_from(["berth", "region", "eu", "--enable", "--disable"]).is_err());
    }
}
