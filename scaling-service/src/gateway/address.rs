//! Which session and port a gateway hostname names: `<session id>.<domain>`
//! is the session's default web port, `<session id>--<port>.<domain>` another
//! port its runtime declares. Each is its own browser origin.

use berth_common::SessionId;
use http::{header, Request};

/// A session's address on the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub session: SessionId,
    /// `None`: the runtime's default web port.
    pub port: Option<u16>,
    /// The first label as the browser sent it, lowercased (what cookies bind).
    pub label: String,
    /// `host[:port]` as the request named it, lowercased: the origin's authority.
    pub authority: String,
}

/// The gateway's domain, lowercased, without leading or trailing dots.
pub fn parse_domain(s: &str) -> Result<String, String> {
    let domain = s.trim().trim_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.len() > 200 || !domain.split('.').all(label_ok) {
        return Err(format!(
            "{s:?} is not a DNS domain (e.g. sessions.example.com); sessions are served at <session id>.<domain>"
        ));
    }
    Ok(domain)
}

/// The host a request was sent to: `Host` (HTTP/1.1) or the URI's authority (HTTP/2).
pub fn request_authority<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
        .map(|a| a.to_ascii_lowercase())
}

/// The session `authority` names under `domain`, if it names one.
pub fn parse(authority: &str, domain: &str) -> Option<Address> {
    let name = match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    };
    let name = name.trim_end_matches('.');
    let label = name.strip_suffix(domain)?.strip_suffix('.')?;
    if label.contains('.') {
        return None;
    }
    let (id, port) = match label.split_once("--") {
        Some((id, port)) => {
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p != 0 && !port.starts_with('0'))?;
            (id, Some(port))
        }
        None => (label, None),
    };
    // The canonical hyphenated form only, so one session has one origin per port.
    let session: SessionId = id.parse().ok()?;
    if session.to_string() != id {
        return None;
    }
    Some(Address {
        session,
        port,
        label: label.to_owned(),
        authority: authority.to_owned(),
    })
}

impl Address {
    /// The origin browsers give pages of this address.
    pub fn origin(&self) -> String {
        format!("https://{}", self.authority.trim_end_matches(":443"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b5a3f2e-61c4-4e0e-9d4b-7f1f5c1f2a10";

    #[test]
    fn session_hostnames_name_a_session_and_maybe_a_port() {
        let a = parse(&format!("{ID}.gw.test"), "gw.test").unwrap();
        assert_eq!((a.session.to_string().as_str(), a.port), (ID, None));
        let b = parse(&format!("{ID}--8081.gw.test:8443"), "gw.test").unwrap();
        assert_eq!(b.port, Some(8081));
        assert_eq!(b.label, format!("{ID}--8081"));
        assert_eq!(b.origin(), format!("https://{ID}--8081.gw.test:8443"));
        let c = parse(&format!("{ID}.gw.test:443"), "gw.test").unwrap();
        assert_eq!(c.origin(), format!("https://{ID}.gw.test"));
    }

    #[test]
    fn other_names_are_not_session_addresses() {
        for name in [
            "gw.test".to_owned(),
            "api.gw.test".to_owned(),
            format!("{ID}.other.test"),
            format!("x.{ID}.gw.test"),
            format!("{ID}gw.test"),
            format!("{ID}--0.gw.test"),
            format!("{ID}--080.gw.test"),
            format!("{ID}--70000.gw.test"),
            format!("{ID}--.gw.test"),
            ID.replace('-', "") + ".gw.test",
            format!("{ID}.gw.test.evil.example"),
        ] {
            assert_eq!(parse(&name, "gw.test"), None, "{name}");
        }
    }

    #[test]
    fn domains_are_checked() {
        assert_eq!(parse_domain(".GW.test.").unwrap(), "gw.test");
        for bad in ["", "a..b", "-a.b", "a_b.c", "a b"] {
            assert!(parse_domain(bad).is_err(), "{bad:?}");
        }
    }
}
