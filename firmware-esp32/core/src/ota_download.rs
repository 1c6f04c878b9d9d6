//! Resumable image download, the decisions only: which URL to fetch (a manifest's
//! relative url resolved against the server), which `Range` to ask for, what an
//! answer means for the bytes already in the slot, which failures are worth another
//! attempt, and when to give up. The HTTP client (esp_http_client on the device, hyper
//! in the simulator) does the I/O.

use crate::ota::OtaError;

/// The URL to fetch a manifest's image from, given `server`, the URL of the server the
/// device is connected to (`ws[s]://host[:port][/prefix]`, or its `http[s]://` form).
///
/// - an absolute `http://` or `https://` URL with a host is used as it is;
/// - a URL starting with a single `/` (`/v1/firmware/{sha256}`) is resolved against the
///   server's origin: `wss://host:port/…` → `https://host:port`, `ws` → `http` (any path
///   prefix of `server` is not kept: an absolute path replaces it, as in RFC 3986);
/// - anything else is refused: a relative URL without a leading `/`, a scheme-relative
///   `//host/…` (it would name another host without saying how to reach it), other
///   schemes, and URLs with control characters, spaces or backslashes (which HTTP
///   clients and servers parse differently).
///
/// The offline signature then does not pin a host name: the same signed manifest works
/// on every server that stores the image.
pub fn resolve_image_url(url: &str, server: Option<&str>) -> Result<String, OtaError> {
    let refuse = |reason: &str| OtaError::BadUrl { url: url.to_owned(), reason: reason.to_owned() };
    if url.is_empty() {
        return Err(refuse("it is empty"));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\') {
        return Err(refuse("it contains control characters, spaces or backslashes"));
    }
    if url.starts_with("//") {
        return Err(refuse("scheme-relative URLs (//host/…) are not accepted; use an absolute https URL or a path"));
    }
    if url.starts_with('/') {
        let server = server
            .ok_or_else(|| refuse("a path needs a server to resolve against, and no server URL is configured"))?;
        let origin = server_origin(server).map_err(|e| refuse(&e))?;
        return Ok(format!("{origin}{url}"));
    }
    match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            // The host is what follows any userinfo; a port alone is no host.
            let host = authority.rsplit('@').next().unwrap_or("");
            if host.is_empty() || host.starts_with(':') {
                return Err(refuse("it has no host"));
            }
            Ok(url.to_owned())
        }
        _ if is_scheme_prefixed(url) => Err(refuse("only http and https URLs can be downloaded")),
        _ => Err(refuse("a relative URL must start with / (an absolute path on the server)")),
    }
}

/// `scheme:` at the start of `url` (RFC 3986: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`).
fn is_scheme_prefixed(url: &str) -> bool {
    let Some((scheme, _)) = url.split_once(':') else { return false };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// `http[s]://authority` of the server the device connects to.
fn server_origin(server: &str) -> Result<String, String> {
    let bad = || format!("the device's server URL {server:?} is not a ws, wss, http or https URL with a host");
    let (scheme, rest) = server.split_once("://").ok_or_else(bad)?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        _ => return Err(bad()),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') || authority.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad());
    }
    Ok(format!("{scheme}://{authority}"))
}

/// Whether `url` (a resolved image URL) has the same origin (scheme, host, port) as
/// `server`, the server the device is connected to (`ws` counts as `http`, `wss` as
/// `https`, a missing port as the scheme's default). Only then may the device's token
/// go with the request: the server's firmware store wants it, and no other host (a
/// CDN, any absolute URL a manifest names) may ever see it. Anything unusual (no
/// server, userinfo, an unparsable port) answers `false`.
pub fn same_origin(url: &str, server: Option<&str>) -> bool {
    match (origin_of(url), server.and_then(origin_of)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// `(scheme, host, port)` of an `http[s]`/`ws[s]` URL, lowercased, default port filled in.
fn origin_of(url: &str) -> Option<(&'static str, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let (scheme, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => ("http", 80),
        "https" | "wss" => ("https", 443),
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || authority.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return None;
    }
    // `port`: what follows the host, `""` or `:digits`.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (inner, after) = v6.split_once(']')?;
            (format!("[{inner}]"), after)
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (h.to_owned(), &authority[h.len()..h.len() + 1 + p.len()]),
            None => (authority.to_owned(), ""),
        },
    };
    let port = match port {
        "" | ":" => default_port,
        p => p.strip_prefix(':')?.parse().ok()?,
    };
    if host.is_empty() || host == "[]" {
        return None;
    }
    Some((scheme, host.to_ascii_lowercase(), port))
}

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
        // The same token would get the same answer: fail now, the rollout can offer again.
        401 => Err(AttemptError::Fatal(format!("HTTP {status}: the image server did not accept the device's token"))),
        403 => Err(AttemptError::Fatal(format!(
            "HTTP {status}: the image server refused this device (the image was not offered to it)"
        ))),
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

    fn refused(url: &str, server: Option<&str>) -> String {
        match resolve_image_url(url, server) {
            Err(e @ OtaError::BadUrl { .. }) => e.to_string(),
            other => panic!("{url:?} against {server:?}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn absolute_http_and_https_urls_are_kept_as_they_are() {
        for url in [
            "https://fw.example/a.bin",
            "http://127.0.0.1:8080/fw.bin?x=1",
            "HTTPS://fw.example:8443/v1/firmware/abc",
            "https://user@fw.example/a.bin",
        ] {
            assert_eq!(resolve_image_url(url, Some("wss://fleet.example")).as_deref(), Ok(url));
            assert_eq!(resolve_image_url(url, None).as_deref(), Ok(url), "no server needed");
        }
    }

    #[test]
    fn paths_resolve_against_the_origin_of_the_server_connected_to() {
        let path = "/v1/firmware/0123abcd";
        for (server, origin) in [
            ("wss://fleet.example.com", "https://fleet.example.com"),
            ("wss://fleet.example.com:8443", "https://fleet.example.com:8443"),
            ("ws://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("ws://localhost", "http://localhost"),
            ("wss://fleet.example.com/edge/mqtt", "https://fleet.example.com"),
            ("ws://127.0.0.1:8080/", "http://127.0.0.1:8080"),
            ("https://fleet.example.com", "https://fleet.example.com"),
            ("http://10.0.0.2:3000/edge", "http://10.0.0.2:3000"),
            ("WSS://[::1]:8443", "https://[::1]:8443"),
        ] {
            assert_eq!(resolve_image_url(path, Some(server)), Ok(format!("{origin}{path}")), "{server}");
        }
        assert_eq!(resolve_image_url("/fw.bin?v=2", Some("wss://h:1")).as_deref(), Ok("https://h:1/fw.bin?v=2"));
    }

    #[test]
    fn unusable_urls_are_refused_with_a_reason() {
        let server = Some("wss://fleet.example.com");
        for (url, why) in [
            ("v1/firmware/abc", "must start with /"),
            ("fw.bin", "must start with /"),
            ("./fw.bin", "must start with /"),
            ("", "empty"),
            ("//evil.example/fw.bin", "scheme-relative"),
            ("ftp://fw.example/a.bin", "only http and https"),
            ("file:///etc/passwd", "only http and https"),
            ("javascript:alert(1)", "only http and https"),
            ("http:fw.bin", "only http and https"),
            ("https:///fw.bin", "no host"),
            ("https://:443/fw.bin", "no host"),
            ("/v1/firmware/a\nb", "control characters"),
            ("/v1/firmware/a\u{0}", "control characters"),
            ("https://fw.example/a\rb", "control characters"),
            ("/v1/firm ware", "spaces"),
            ("/\\evil.example/fw.bin", "backslashes"),
        ] {
            let e = refused(url, server);
            assert!(e.contains(why), "{url:?}: {e}");
            assert!(e.starts_with("manifest url "), "{e}");
        }
    }

    #[test]
    fn a_path_needs_a_usable_server() {
        assert!(refused("/fw.bin", None).contains("no server"));
        for server in ["fleet.example.com", "mqtt://h:1883", "wss://", "wss://:8443/mqtt", "wss://h st"] {
            assert!(refused("/fw.bin", Some(server)).contains("not a ws, wss, http or https URL"), "{server}");
        }
    }

    #[test]
    fn refusals_read_as_sentences_for_status_reports() {
        assert_eq!(
            refused("fw.bin", Some("wss://h")),
            r#"manifest url "fw.bin" refused: a relative URL must start with / (an absolute path on the server)"#
        );
    }

    #[test]
    fn the_token_goes_only_to_the_origin_of_the_server_connected_to() {
        let same = [
            ("https://fleet.example.com:8443/v1/firmware/ab", "wss://fleet.example.com:8443/mqtt"),
            ("https://fleet.example.com/v1/firmware/ab", "wss://fleet.example.com"),
            ("https://fleet.example.com:443/v1/firmware/ab", "wss://FLEET.example.com/mqtt"),
            ("HTTPS://Fleet.Example.com/v1/firmware/ab", "https://fleet.example.com:443"),
            ("http://127.0.0.1:8080/v1/firmware/ab", "ws://127.0.0.1:8080/mqtt"),
            ("http://127.0.0.1/v1/firmware/ab", "ws://127.0.0.1:80"),
            ("https://[::1]:8443/fw?x#y", "wss://[::1]:8443/mqtt"),
        ];
        for (url, server) in same {
            assert!(same_origin(url, Some(server)), "{url} vs {server}");
        }
        let other = [
            ("https://cdn.example.com/fw.bin", "wss://fleet.example.com"),
            ("https://fleet.example.com.evil.io/fw.bin", "wss://fleet.example.com"),
            ("https://fleet.example.com:8443/fw.bin", "wss://fleet.example.com"),
            ("http://fleet.example.com/fw.bin", "wss://fleet.example.com"),
            ("https://fleet.example.com/fw.bin", "ws://fleet.example.com"),
            ("http://127.0.0.1:9000/fw.bin", "ws://127.0.0.1:8080"),
            ("https://user@fleet.example.com/fw.bin", "wss://fleet.example.com"),
            ("https://fleet.example.com:x/fw.bin", "wss://fleet.example.com"),
            ("https://[::1]:8443/fw", "wss://[::2]:8443"),
            ("ftp://fleet.example.com/fw.bin", "wss://fleet.example.com"),
        ];
        for (url, server) in other {
            assert!(!same_origin(url, Some(server)), "{url} vs {server}");
        }
        assert!(!same_origin("https://fleet.example.com/fw.bin", None), "no server: no token");
        // A path resolved against the server is always its origin.
        for server in ["wss://fleet.example.com:8443/edge/mqtt", "ws://127.0.0.1:8080", "https://h"] {
            let url = resolve_image_url("/v1/firmware/ab", Some(server)).unwrap();
            assert!(same_origin(&url, Some(server)), "{url} vs {server}");
        }
    }

    #[test]
    fn a_refused_download_says_why() {
        let e = plan_response(0, 403, None, 10).unwrap_err().to_string();
        assert!(e.starts_with("HTTP 403") && e.contains("not offered"), "{e}");
        let e = plan_response(0, 401, None, 10).unwrap_err().to_string();
        assert!(e.starts_with("HTTP 401") && e.contains("token"), "{e}");
    }

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
