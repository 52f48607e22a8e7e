//! berth-test-app: the helper server of the `berth-test-app` Docker image.
//!
//! `/app/run` (the image's busybox shell app) starts it next to its httpd so the end-to-end
//! tests can exercise what the shell app cannot: the WebSocket/HTTP proxy of the host
//! service and the session "init" call. It listens on `0.0.0.0:${APP_WS_PORT:-8081}`:
//!
//! * `GET /ready` → `ready`
//! * `GET /echo` (WebSocket upgrade) → echoes every text and binary message
//! * `POST /init` (JSON, at most 64 KiB) → `{"password": <32 hex chars>, "params": <body>}`
//! * `GET /headers` → the request headers as a JSON object (lowercased names)
//! * `GET /stream?bytes=N` → N pattern bytes (`a`..`z`), chunked in 16 KiB pieces
//! * `POST /upload` → `{"bytes": <body length>}` (Content-Length or chunked body)
//!
//! One thread per connection; plain HTTP answers carry `Connection: close`. It is statically
//! linked (the image has no libc), and errors only end their own connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

const MAX_HEAD: usize = 16 * 1024;
const MAX_INIT_BODY: u64 = 64 * 1024;
const CHUNK: usize = 16 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The parsed request head; `len` is its size in bytes, up to and including the blank line.
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    len: usize,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        values.next().map(|(_, v)| v.as_str())
    }
}

/// Status line, content type and body of an answer; `None` when the route answered itself.
type Reply = Option<(&'static str, &'static str, Vec<u8>)>;

fn log(msg: &str) {
    eprintln!("berth-test-app: {msg}");
}

fn main() {
    let port = std::env::var("APP_WS_PORT").unwrap_or_else(|_| "8081".to_string());
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(l) => l,
        Err(e) => {
            log(&format!("cannot listen on 0.0.0.0:{port}: {e}"));
            std::process::exit(1);
        }
    };
    log(&format!("listening on 0.0.0.0:{port}"));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log(&format!("accept failed: {e}"));
                thread::sleep(Duration::from_millis(10)); // e.g. out of fds: don't spin
                continue;
            }
        };
        let spawned = thread::Builder::new().spawn(move || {
            let peer = stream.peer_addr().map_or("?".into(), |a| a.to_string());
            if let Err(e) = handle(stream) {
                log(&format!("{peer}: {e}"));
            }
        });
        if let Err(e) = spawned {
            log(&format!("cannot start a connection thread: {e}"));
        }
    }
}

fn handle(mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let reply = match parse_head(&peek_head(&stream)?) {
        Err(e) => bad("400 Bad Request", &e),
        Ok(head) if head.method == "GET" && head.path == "/echo" => {
            let upgrade = head.header("upgrade").unwrap_or("");
            if upgrade.eq_ignore_ascii_case("websocket") {
                return echo(stream); // the head is still unread: tungstenite parses it itself
            }
            bad("426 Upgrade Required", "/echo needs a WebSocket upgrade")
        }
        Ok(head) => {
            let mut reader = BufReader::new(stream.try_clone()?);
            reader.read_exact(&mut vec![0; head.len])?;
            route(&head, &mut reader, &mut stream)?
        }
    };
    let Some((status, ctype, body)) = reply else {
        return Ok(());
    };
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n");
    let head = format!("{head}Content-Length: {}\r\n", body.len());
    stream.write_all(&[head.as_bytes(), b"Connection: close\r\n\r\n", &body].concat())?;
    // Half-close, then drain a little of what the client may still send (an unread body):
    // closing with unread data would reset the connection and could lose the answer.
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let _ = io::copy(&mut stream.take(1 << 20), &mut io::sink());
    Ok(())
}

/// The plain HTTP routes; `reader` is positioned at the body, `out` writes to the client.
fn route(head: &Head, reader: &mut impl BufRead, out: &mut TcpStream) -> io::Result<Reply> {
    let (path, query) = head.path.split_once('?').unwrap_or((&head.path, ""));
    let json = |v: Value| Ok(Some(("200 OK", "application/json", v.to_string().into())));
    match (head.method.as_str(), path) {
        ("GET", "/ready") => Ok(Some(("200 OK", "text/plain", b"ready".to_vec()))),
        ("POST", "/init") => {
            let Some(len) = content_length(head)? else {
                return Ok(bad("411 Length Required", "/init needs a Content-Length"));
            };
            if len > MAX_INIT_BODY {
                return Ok(bad("413 Content Too Large", "/init body over 64 KiB"));
            }
            continue_100(out, head)?;
            let mut body = vec![0; len as usize];
            reader.read_exact(&mut body)?;
            let params: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return Ok(bad("400 Bad Request", &format!("/init: {e}"))),
            };
            let mut secret = [0u8; 16];
            std::fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
            let password: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            json(json!({ "password": password, "params": params }))
        }
        ("GET", "/headers") => {
            let mut map = Map::new();
            for (name, value) in &head.headers {
                match map.get_mut(name) {
                    Some(Value::String(s)) => *s = format!("{s}, {value}"),
                    _ => drop(map.insert(name.clone(), value.clone().into())),
                }
            }
            json(Value::Object(map))
        }
        ("GET", "/stream") => {
            let n = query.split('&').find_map(|kv| kv.strip_prefix("bytes="));
            let Some(total) = n.and_then(|n| n.parse::<usize>().ok()) else {
                return Ok(bad("400 Bad Request", "/stream needs ?bytes=N"));
            };
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")?;
            // The pattern repeats every 26 bytes: every chunk is a slice of one
            // buffer, written with its framing in one call. Benchmarks stream
            // through this app on a machine whose cores the proxies under test
            // share; making each byte would take CPU from them.
            let pattern: Vec<u8> = (0..CHUNK + 26).map(|i| b'a' + (i % 26) as u8).collect();
            let mut framed = Vec::with_capacity(CHUNK + 16);
            for start in (0..total).step_by(CHUNK) {
                let len = CHUNK.min(total - start);
                let offset = start % 26;
                framed.clear();
                framed.extend_from_slice(format!("{len:x}\r\n").as_bytes());
                framed.extend_from_slice(&pattern[offset..offset + len]);
                framed.extend_from_slice(b"\r\n");
                out.write_all(&framed)?;
            }
            out.write_all(b"0\r\n\r\n").map(|()| None)
        }
        ("POST", "/upload") => {
            continue_100(out, head)?;
            let te = head.header("transfer-encoding").unwrap_or("");
            if te.to_ascii_lowercase().contains("chunked") {
                return json(json!({ "bytes": read_chunked(reader)? }));
            }
            let len = content_length(head)?.unwrap_or(0);
            let got = io::copy(&mut reader.take(len), &mut io::sink())?;
            if got != len {
                let msg = format!("/upload: body ended at {got} of {len} bytes");
                return Err(io::Error::other(msg));
            }
            json(json!({ "bytes": got }))
        }
        (m, p) => Ok(bad("404 Not Found", &format!("no route for {m} {p}"))),
    }
}

/// Logs `msg` and makes it a plain-text error answer.
fn bad(status: &'static str, msg: &str) -> Reply {
    log(&format!("{status}: {msg}"));
    Some((status, "text/plain", format!("{msg}\n").into_bytes()))
}

/// Peeks (without consuming) until the whole request head is buffered, or the limits hit.
fn peek_head(stream: &TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; MAX_HEAD];
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let n = stream.peek(&mut buf)?; // blocks (up to the read timeout) only when empty
        if n == 0 {
            return Err(io::Error::other("closed before sending a request"));
        }
        if let Some(end) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end + 4);
            return Ok(buf);
        }
        if n == MAX_HEAD || Instant::now() > deadline {
            buf.truncate(n);
            return Ok(buf); // parse_head finds it incomplete: answered with a 400
        }
        thread::sleep(Duration::from_millis(2)); // partial head: wait for the rest
    }
}

fn parse_head(buf: &[u8]) -> Result<Head, String> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Head {
            method: req.method.unwrap_or_default().to_string(),
            path: req.path.unwrap_or_default().to_string(),
            headers: (req.headers.iter())
                .map(|h| (h.name.to_ascii_lowercase(), lossy(h.value)))
                .collect(),
            len,
        }),
        Ok(httparse::Status::Partial) => Err("incomplete head (over 16 KiB or 30 s)".into()),
        Err(e) => Err(format!("bad request head: {e}")),
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn content_length(head: &Head) -> io::Result<Option<u64>> {
    let parse = |v: &str| {
        v.trim()
            .parse()
            .map_err(|_| io::Error::other("bad Content-Length"))
    };
    head.header("content-length").map(parse).transpose()
}

fn continue_100(stream: &mut TcpStream, head: &Head) -> io::Result<()> {
    match head.header("expect") {
        Some(e) if e.eq_ignore_ascii_case("100-continue") => {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        }
        _ => Ok(()),
    }
}

/// Reads a chunked body to its end (trailers included) and returns its decoded length.
fn read_chunked(reader: &mut impl BufRead) -> io::Result<u64> {
    let mut total = 0;
    let mut line = String::new();
    loop {
        line.clear();
        reader.take(1024).read_line(&mut line)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| io::Error::other(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            break;
        }
        if io::copy(&mut reader.take(size), &mut io::sink())? != size {
            return Err(io::Error::other("chunked body ended mid-chunk"));
        }
        total += size;
        line.clear();
        reader.take(2).read_line(&mut line)?; // the CRLF after the data
    }
    loop {
        line.clear(); // trailers, up to the blank line
        if reader.take(16 * 1024).read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(total);
        }
    }
}

fn echo(stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(None)?; // WebSockets may idle for as long as the client likes
    let ws_err = |e: &dyn std::fmt::Display| io::Error::other(format!("/echo: {e}"));
    let mut ws = tungstenite::accept(stream).map_err(|e| ws_err(&e))?;
    loop {
        match ws.read() {
            Ok(msg) if msg.is_text() || msg.is_binary() => ws.send(msg).map_err(|e| ws_err(&e))?,
            Ok(_) => {} // pings are answered by tungstenite on the next read; close is echoed
            Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
            Err(e) => return Err(ws_err(&e)),
        }
    }
}
