//! Resumable image download, the decisions only: which `Range` to ask for, what an
//! answer means for the bytes already in the slot, which failures are worth another
//! attempt, and when to give up. The HTTP client (esp_http_client on the device, hyper
//! in the simulator) does the I/O.

/// `Range` header value asking for the rest of the image from byte `from`; `None`
/// when there is nothing to resume.
pub fn range_header(from: u64) -> Option<String> {
    (from > 0).then(|| format!("bytes={from}-"))
}

/// Where the response body lands in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The body continues the image at the requested offset (206, or 200 from 0).
    Append,
    /// The server ignored the range and sends the whole image (200): discard what the
    /// slot holds and start over from byte 0.
    Restart,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptError {
    /// Worth another attempt (transport error, 5xx, 408/429, interrupted body).
    Retry(String),
    /// Another attempt would get the same answer (404, 403, wrong total size, …).
    Fatal(String),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Retry(m) | AttemptError::Fatal(m) => f.write_str(m),
        }
    }
}

/// `Content-Range: bytes <first>-<last>/<total|*>` → `(first, last, total)`.
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first.trim().parse().ok()?, last.trim().parse().ok()?, total))
}

/// Interpret the status line and `Content-Range` of a GET sent with
/// [`range_header`]`(from)` for an image of `size` bytes.
pub fn plan_response(from: u64, status: u16, content_range: Option<&str>, size: u64) -> Result<Plan, AttemptError> {
    match status {
        200 if from == 0 => Ok(Plan::Append),
        200 => Ok(Plan::Restart),
        206 => {
            let cr = content_range.ok_or_else(|| AttemptError::Retry("206 without Content-Range".into()))?;
            let (first, last, total) = parse_content_range(cr)
                .ok_or_else(|| AttemptError::Retry(format!("unreadable Content-Range {cr:?}")))?;
            if total.is_some_and(|t| t != size) {
                return Err(AttemptError::Fatal(format!(
                    "server's image is {} bytes, the manifest says {size}",
                    total.unwrap_or_default()
                )));
            }
            if first != from || last < first {
                // Bytes from elsewhere in the image cannot be appended; ask again (a
                // server that keeps doing this exhausts the attempt budget).
                return Err(AttemptError::Retry(format!("asked for bytes from {from}, got {cr:?}")));
            }
            Ok(Plan::Append)
        }
        // Our offset is past the server's image: only a fresh download can tell.
        416 => Ok(Plan::Restart),
        408 | 429 | 500..=599 => Err(AttemptError::Retry(format!("HTTP {status}"))),
        300..=399 => Err(AttemptError::Fatal(format!("HTTP {status}: redirects are not followed"))),
        _ => Err(AttemptError::Fatal(format!("HTTP {status}"))),
    }
}

/// Bounds retries by consecutive attempts that brought no new bytes, so a link that
/// keeps dropping but keeps making progress still finishes, and a dead one gives up.
#[derive(Debug, Clone)]
pub struct AttemptBudget {
    max_fruitless: u32,
    fruitless: u32,
}

impl AttemptBudget {
    pub fn new(max_fruitless: u32) -> Self {
        AttemptBudget { max_fruitless: max_fruitless.max(1), fruitless: 0 }
    }

    /// An attempt failed after writing `new_bytes`. `true`: try again; `false`: give up.
    pub fn failed(&mut self, new_bytes: u64) -> bool {
        if new_bytes > 0 {
            self.fruitless = 0;
        }
        self.fruitless += 1;
        self.fruitless < self.max_fruitless
    }

    /// Failed attempts since the last one that made progress.
    pub fn fruitless(&self) -> u32 {
        self.fruitless
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_is_asked_only_when_resuming() {
        assert_eq!(range_header(0), None);
        assert_eq!(range_header(4096).as_deref(), Some("bytes=4096-"));
    }

    #[test]
    fn partial_content_at_the_offset_is_appended() {
        assert_eq!(plan_response(100, 206, Some("bytes 100-999/1000"), 1000), Ok(Plan::Append));
        assert_eq!(plan_response(100, 206, Some("bytes 100-999/*"), 1000), Ok(Plan::Append));
        assert_eq!(plan_response(0, 200, None, 1000), Ok(Plan::Append));
    }

    #[test]
    fn a_full_answer_to_a_range_request_restarts_from_zero() {
        assert_eq!(plan_response(100, 200, None, 1000), Ok(Plan::Restart));
        assert_eq!(plan_response(1000, 416, Some("bytes */1000"), 1000), Ok(Plan::Restart));
    }

    #[test]
    fn bad_partial_answers_are_retried_or_fatal() {
        assert!(matches!(plan_response(100, 206, None, 1000), Err(AttemptError::Retry(_))));
        assert!(matches!(plan_response(100, 206, Some("bytes 0-999/1000"), 1000), Err(AttemptError::Retry(_))));
        assert!(matches!(plan_response(100, 206, Some("items 1-2/3"), 1000), Err(AttemptError::Retry(_))));
        assert!(matches!(plan_response(100, 206, Some("bytes 100-1999/2000"), 1000), Err(AttemptError::Fatal(_))));
    }

    #[test]
    fn server_errors_are_retried_and_client_errors_are_not() {
        for s in [408, 429, 500, 502, 503] {
            assert!(matches!(plan_response(0, s, None, 10), Err(AttemptError::Retry(_))), "{s}");
        }
        for s in [301, 302, 400, 401, 403, 404, 410] {
            assert!(matches!(plan_response(0, s, None, 10), Err(AttemptError::Fatal(_))), "{s}");
        }
    }

    #[test]
    fn budget_counts_only_fruitless_attempts_in_a_row() {
        let mut b = AttemptBudget::new(3);
        assert!(b.failed(0));
        assert!(b.failed(0));
        assert!(b.failed(10), "progress resets the count");
        assert_eq!(b.fruitless(), 1);
        assert!(b.failed(0));
        assert!(!b.failed(0));
    }
}
