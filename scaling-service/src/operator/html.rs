//! HTML pieces of the dashboard: escaping and the page frame. Every value
//! from the fleet (host ids, users, reasons) passes through [`esc`].

use std::fmt::Write as _;

/// `s` safe as HTML text and as a double-quoted attribute value.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page names of the navigation, with their paths.
const NAV: [(&str, &str); 4] = [
    ("overview", "/ui/"),
    ("hosts", "/ui/hosts"),
    ("sessions", "/ui/sessions"),
    ("audit", "/ui/audit"),
];

/// A whole page: `events` is the URL of its live updates (server-sent
/// events), if it has any.
pub(crate) fn page(
    title: &str,
    current: &str,
    subject: &str,
    events: Option<&str>,
    body: &str,
) -> String {
    let mut nav = String::new();
    for (name, href) in NAV {
        let class = if name == current {
            r#" class="current""#
        } else {
            ""
        };
        let _ = write!(nav, r#"<a href="{href}"{class}>{name}</a>"#);
    }
    let events = events
        .map(|e| format!(r#" data-events="{}""#, esc(e)))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Berth</title><link rel="icon" href="/ui/favicon.svg" type="image/svg+xml"><link rel="stylesheet" href="/ui/app.css"><script src="/ui/app.js" defer></script></head>
<body{events}><header><strong>Berth</strong><nav>{nav}</nav><span class="who">{subject}</span>
<form method="post" action="/ui/logout"><button type="submit">log out</button></form></header>
<p id="flash" role="status"></p><main>{body}</main>
<dialog id="confirm"><p id="confirm-text"></p><button id="confirm-yes" type="button">Confirm</button> <button id="confirm-no" type="button">Cancel</button></dialog>
</body></html>"#,
        title = esc(title),
        subject = esc(subject),
    )
}

/// The login page (no script: it works before any credential).
pub(crate) fn login_page(message: Option<&str>) -> String {
    let message = message
        .map(|m| format!(r#"<p class="error">{}</p>"#, esc(m)))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log in · Berth</title><link rel="icon" href="/ui/favicon.svg" type="image/svg+xml"><link rel="stylesheet" href="/ui/app.css"></head>
<body><main class="login"><h1>Berth fleet dashboard</h1>{message}
<form method="post" action="/ui/login"><label>Operator token or operator JWT <input type="password" name="token" autocomplete="off" required></label>
<button type="submit">Log in</button></form></main></body></html>"#
    )
}

/// A live section: replaced in place when the server sends a new rendering.
pub(crate) fn section(id: &str, inner: &str) -> String {
    format!(r#"<section id="{id}" class="live">{inner}</section>"#)
}

/// A button that asks for confirmation, then sends `method url` with `body`.
pub(crate) fn action_button(
    label: &str,
    method: &str,
    url: &str,
    confirm: &str,
    body: Option<&str>,
) -> String {
    let body = body
        .map(|b| format!(r#" data-body="{}""#, esc(b)))
        .unwrap_or_default();
    format!(
        r#"<button type="button" class="action" data-method="{method}" data-url="{}" data-confirm="{}"{body}>{}</button>"#,
        esc(url),
        esc(confirm),
        esc(label)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
