//! Device credentials: an API key exchanged for a device JWT
//! (`POST {http_base}/v1/devices/token`), or a fixed `--token` for tests.
//!
//! When to ask for the next token is the core session's decision
//! (`fleetwire_core::session`); a source only says how long a token lives.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::http::{HttpClient, HttpResponse};
use crate::secret::Secret;
use base64::Engine;
use serde::Deserialize;

#[derive(Debug, Clone)]
pub struct Token {
    pub jwt: Secret,
    /// `expires_in`; `None` when the source cannot refresh.
    pub lifetime: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Wrong, revoked or expired credentials: retrying cannot help.
    Rejected(String),
    /// The server is unreachable or failing: retry later, not before `retry_after`.
    Unavailable { message: String, retry_after: Option<Duration> },
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Rejected(m) => write!(f, "credentials rejected: {m}"),
            AuthError::Unavailable { message, .. } => write!(f, "token service unavailable: {message}"),
        }
    }
}

pub trait TokenSource: Send {
    /// A token for the next connection (a fresh one when the source can refresh).
    fn fetch(&mut self) -> impl Future<Output = Result<Token, AuthError>> + Send;
    /// Whether `fetch` can ever return a different token.
    fn can_refresh(&self) -> bool;
}

/// Unix seconds now.
fn unix_now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The `exp` claim of a compact JWT, read without verifying (the broker verifies).
pub fn jwt_exp(jwt: &str) -> Option<u64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?.get("exp")?.as_u64()
}

/// A fixed `--token`: never refreshed; refused locally once its `exp` has passed.
#[derive(Debug, Clone)]
pub struct StaticToken {
    jwt: Secret,
}

impl StaticToken {
    pub fn new(jwt: Secret) -> Self {
        StaticToken { jwt }
    }
}

impl TokenSource for StaticToken {
    async fn fetch(&mut self) -> Result<Token, AuthError> {
        if let Some(exp) = jwt_exp(self.jwt.expose()) {
            if exp <= unix_now_s() {
                return Err(AuthError::Rejected("the --token has expired".into()));
            }
        }
        Ok(Token { jwt: self.jwt.clone(), lifetime: None })
    }
    fn can_refresh(&self) -> bool {
        false
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token: String,
    device_id: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}
#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// Interpret the token endpoint's answer. Pure, so every status is unit-tested.
pub fn interpret_token_response(expected_device: &str, r: &HttpResponse) -> Result<(Secret, Duration), AuthError> {
    if (200..300).contains(&r.status) {
        let t: TokenResponse = serde_json::from_slice(&r.body).map_err(|e| AuthError::Unavailable {
            message: format!("unreadable token response: {e}"),
            retry_after: None,
        })?;
        if t.device_id != expected_device {
            // A key of another device: a configuration mistake (keys file lines swapped).
            return Err(AuthError::Rejected(format!("the API key belongs to device {:?}", t.device_id)));
        }
        if t.expires_in == 0 {
            return Err(AuthError::Unavailable { message: "token with no lifetime".into(), retry_after: None });
        }
        return Ok((Secret::new(t.token), Duration::from_secs(t.expires_in)));
    }
    let detail = serde_json::from_slice::<ErrorBody>(&r.body)
        .map(|b| format!("HTTP {} {}: {}", r.status, b.error.code, b.error.message))
        .unwrap_or_else(|_| format!("HTTP {}", r.status));
    match r.status {
        // 400 too: the request itself is wrong, sending it again will not fix it.
        400 | 401 | 403 => Err(AuthError::Rejected(detail)),
        _ => Err(AuthError::Unavailable { message: detail, retry_after: r.retry_after }),
    }
}

/// Exchanges the device's API key for a device JWT.
#[derive(Clone)]
pub struct ApiKeyExchange {
    http: HttpClient,
    url: String,
    api_key: Secret,
    device_id: String,
}

impl ApiKeyExchange {
    /// `url`: the full token endpoint (`Endpoint::token_url`).
    pub fn new(http: HttpClient, url: String, api_key: Secret, device_id: String) -> Self {
        ApiKeyExchange { http, url, api_key, device_id }
    }
}

impl TokenSource for ApiKeyExchange {
    async fn fetch(&mut self) -> Result<Token, AuthError> {
        let body = serde_json::to_vec(&serde_json::json!({ "api_key": self.api_key.expose() }))
            .expect("a JSON object of one string serialises");
        let resp = self
            .http
            .post_json(&self.url, body)
            .await
            .map_err(|message| AuthError::Unavailable { message, retry_after: None })?;
        let (jwt, lifetime) = interpret_token_response(&self.device_id, &resp)?;
        Ok(Token { jwt, lifetime: Some(lifetime) })
    }
    fn can_refresh(&self) -> bool {
        true
    }
}

/// Either kind of credentials, so a fleet of devices has one concrete source type.
#[derive(Clone)]
pub enum Credentials {
    Static(StaticToken),
    ApiKey(ApiKeyExchange),
}

impl TokenSource for Credentials {
    async fn fetch(&mut self) -> Result<Token, AuthError> {
        match self {
            Credentials::Static(s) => s.fetch().await,
            Credentials::ApiKey(k) => k.fetch().await,
        }
    }
    fn can_refresh(&self) -> bool {
        match self {
            Credentials::Static(s) => s.can_refresh(),
            Credentials::ApiKey(k) => k.can_refresh(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str) -> HttpResponse {
        HttpResponse { status, retry_after: None, body: body.as_bytes().to_vec() }
    }

    fn jwt_with_exp(exp: u64) -> String {
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!("{}.{}.{}", enc(r#"{"alg":"EdDSA"}"#), enc(&format!(r#"{{"sub":"esp-01","exp":{exp}}}"#)), enc("sig"))
    }

    #[test]
    fn ok_answer_yields_token_and_lifetime() {
        let r = resp(200, r#"{"token":"a.b.c","device_id":"esp-01","expires_in":900}"#);
        let (jwt, life) = interpret_token_response("esp-01", &r).unwrap();
        assert_eq!((jwt.expose(), life), ("a.b.c", Duration::from_secs(900)));
    }

    #[test]
    fn bad_key_is_rejected_with_the_server_code_and_never_the_key() {
        let r = resp(401, r#"{"error":{"code":"AUTH_INVALID_API_KEY","message":"invalid API key"}}"#);
        let e = interpret_token_response("esp-01", &r).unwrap_err();
        assert_eq!(e, AuthError::Rejected("HTTP 401 AUTH_INVALID_API_KEY: invalid API key".into()));
    }

    #[test]
    fn key_of_another_device_is_rejected() {
        let r = resp(200, r#"{"token":"a.b.c","device_id":"esp-02","expires_in":900}"#);
        assert!(matches!(interpret_token_response("esp-01", &r), Err(AuthError::Rejected(_))));
    }

    #[test]
    fn server_trouble_is_retryable_and_keeps_retry_after() {
        let mut r = resp(429, "not json");
        r.retry_after = Some(Duration::from_secs(4));
        assert_eq!(
            interpret_token_response("esp-01", &r),
            Err(AuthError::Unavailable { message: "HTTP 429".into(), retry_after: Some(Duration::from_secs(4)) })
        );
        assert!(matches!(interpret_token_response("esp-01", &resp(503, "")), Err(AuthError::Unavailable { .. })));
        assert!(matches!(interpret_token_response("esp-01", &resp(200, "{}")), Err(AuthError::Unavailable { .. })));
    }

    #[test]
    fn reads_exp_from_a_compact_jwt() {
        assert_eq!(jwt_exp(&jwt_with_exp(1_700_000_000)), Some(1_700_000_000));
        assert_eq!(jwt_exp("not-a-jwt"), None);
    }

    #[tokio::test]
    async fn static_token_is_served_until_its_exp_and_never_refreshes() {
        let mut live = StaticToken::new(Secret::new(jwt_with_exp(unix_now_s() + 3600)));
        assert!(!live.can_refresh());
        assert!(live.fetch().await.unwrap().lifetime.is_none());
        let mut dead = StaticToken::new(Secret::new(jwt_with_exp(1)));
        assert!(matches!(dead.fetch().await, Err(AuthError::Rejected(_))));
    }

    #[tokio::test]
    async fn exchange_posts_the_key_and_returns_the_token_with_its_lifetime() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).contains("fwk_") {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            let body = r#"{"token":"h.p.s","device_id":"esp-01","expires_in":100}"#;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(body.as_bytes()).await.unwrap();
            String::from_utf8(got).unwrap()
        });
        let tls = crate::tls::client_config(&crate::tls::Trust { ca_file: None, webpki_roots: true }).unwrap();
        let mut ex = ApiKeyExchange::new(
            HttpClient::new(tls, Duration::from_secs(5)),
            format!("http://{addr}/v1/devices/token"),
            Secret::new("fwk_test"),
            "esp-01".into(),
        );
        let t = ex.fetch().await.unwrap();
        assert_eq!((t.jwt.expose(), t.lifetime), ("h.p.s", Some(Duration::from_secs(100))));
        assert!(server.await.unwrap().ends_with(r#"{"api_key":"fwk_test"}"#));
    }
}
