//! Reading `GET /v1/host/watch`: server-sent events, one [`WatchEvent`] per
//! `data:` line; comments are keep-alives. A stream that says nothing for
//! three keep-alive periods is taken as dead.

use std::time::Duration;

use berth_common::host_api::WatchEvent;

use super::ControlError;

/// The control plane sends a keep-alive every 15 s.
const SILENCE: Duration = Duration::from_secs(45);
/// An event larger than this is not a host's (a snapshot of a host's few
/// dozen sessions is a few KiB).
const MAX_EVENT: usize = 4 << 20;

#[derive(Debug)]
pub struct WatchStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl WatchStream {
    pub(super) fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next event; `Ok(None)` when the control plane ended the stream.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ControlError> {
        let lost = |why: String| ControlError::Malformed {
            doing: "the watch stream",
            why,
        };
        loop {
            if let Some(event) = self.take_event().map_err(lost)? {
                return Ok(Some(event));
            }
            let chunk = tokio::time::timeout(SILENCE, self.response.chunk())
                .await
                .map_err(|_| lost(format!("nothing heard for {} s", SILENCE.as_secs())))?
                .map_err(|e| lost(e.to_string()))?;
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            self.buffer.extend_from_slice(&chunk);
            if self.buffer.len() > MAX_EVENT {
                return Err(lost("an event larger than 4 MiB".into()));
            }
        }
    }

    /// Parses the first complete event (blank-line terminated) in the
    /// buffer, skipping comments.
    fn take_event(&mut self) -> Result<Option<WatchEvent>, String> {
        loop {
            let Some(end) = find(&self.buffer, b"\n\n") else {
                return Ok(None);
            };
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let data: String = text
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim_start)
                .collect::<Vec<_>>()
                .join("\n");
            if data.is_empty() {
                continue; // a keep-alive
            }
            return serde_json::from_str(&data)
                .map(Some)
                .map_err(|e| format!("an event that is not understood ({e}): {data:.200}"));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
