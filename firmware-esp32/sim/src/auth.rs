//! Device credentials: an API key exchanged for a device JWT
//! (`POST {http_base}/v1/devices/token`), or a fixed `--token` for tests.
//!
//! When to ask for the next token is the core session's decision
//! (`fleetwire_core::session`); a source only says how long a token lives.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::http::{HttpClient, HttpResponse};
use base64::Engine;
use fleetwire_core::secret::Secret;
use fleetwire_core::session::{IssuedToken, Jwt, TokenError};
use serde::Deserialize;

pub trait TokenSource: Send {
    /// A token for the next connection (a fresh one when the source can refresh).
    fn fetch(&mut self) -> impl Future<Output = Result<IssuedToken, TokenError>> + Send;
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
    jwt: Jwt,
}

impl StaticToken {
    pub fn new(jwt: Jwt) -> Self {
        StaticToken { jwt }
    }
}

impl TokenSource for StaticToken {
    async fn fetch(&mut self) -> Result<IssuedToken, TokenError> {
        if let Some(exp) = jwt_exp(self.jwt.expose()) {
            if exp <= unix_now_s() {
                return Err(TokenError::Rejected("the --token has expired".into()));
            }
        }
        Ok(IssuedToken { jwt: self.jwt.clone(), lifetime_ms: None })
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
pub fn interpret_token_response(expected_device: &str, r: &HttpResponse) -> Result<IssuedToken, TokenError> {
    if (200..300).contains(&r.status) {
        let t: TokenResponse = serde_json::from_slice(&r.body).map_err(|e| TokenError::Unavailable {
            error: format!("unreadable token response: {e}"),
            retry_after_ms: None,
        })?;
        if t.device_id != expected_device {
            // A key of another device: a configuration mistake (keys file lines swapped).
            return Err(TokenError::Rejected(format!("the API key belongs to device {:?}", t.device_id)));
        }
        if t.expires_in == 0 {
            return Err(TokenError::Unavailable { error: "token with no lifetime".into(), retry_after_ms: None });
        }
        return Ok(IssuedToken {
            jwt: Jwt::new(t.token),
            lifetime_ms: Some(millis(Duration::from_secs(t.expires_in))),
        });
    }
    let detail = serde_json::from_slice::<ErrorBody>(&r.body)
        .map(|b| format!("HTTP {} {}: {}", r.status, b.error.code, b.error.message))
        .unwrap_or_else(|_| format!("HTTP {}", r.status));
    match r.status {
        // 400 too: the request itself is wrong, sending it again will not fix it.
        400 | 401 | 403 => Err(TokenError::Rejected(detail)),
        _ => Err(TokenError::Unavailable { error: detail, retry_after_ms: r.retry_after.map(millis) }),
    }
}

/// A duration in the engine's unit.
fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
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
    async fn fetch(&mut self) -> Result<IssuedToken, TokenError> {
        let body = serde_json::to_vec(&serde_json::json!({ "api_key": self.api_key.expose() }))
            .expect("a JSON object of one string serialises");
        let resp = self
            .http
            .post_json(&self.url, body)
            .await
            .map_err(|error| TokenError::Unavailable { error, retry_after_ms: None })?;
        interpret_token_response(&self.device_id, &resp)
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
    async fn fetch(&mut self) -> Result<IssuedToken, TokenError> {
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
        let t = interpret_token_response("esp-01", &r).unwrap();
        assert_eq!((t.jwt.expose(), t.lifetime_ms), ("a.b.c", Some(900_000)));
    }

    #[test]
    fn bad_key_is_rejected_with_the_server_code_and_never_the_key() {
        let r = resp(401, r#"{"error":{"code":"AUTH_INVALID_API_KEY","message":"invalid API key"}}"#);
        let e = interpret_token_response("esp-01", &r).unwrap_err();
        assert_eq!(e, TokenError::Rejected("HTTP 401 AUTH_INVALID_API_KEY: invalid API key".into()));
    }

    #[test]
    fn key_of_another_device_is_rejected() {
        let r = resp(200, r#"{"token":"a.b.c","device_id":"esp-02","expires_in":900}"#);
        assert!(matches!(interpret_token_response("esp-01", &r), Err(TokenError::Rejected(_))));
    }

    #[test]
    fn server_trouble_is_retryable_and_keeps_retry_after() {
        let mut r = resp(429, "not json");
        r.retry_after = Some(Duration::from_secs(4));
        assert_eq!(
            interpret_token_response("esp-01", &r),
            Err(TokenError::Unavailable { error: "HTTP 429".into(), retry_after_ms: Some(4_000) })
        );
        assert!(matches!(interpret_token_response("esp-01", &resp(503, "")), Err(TokenError::Unavailable { .. })));
        assert!(matches!(interpret_token_response("esp-01", &resp(200, "{}")), Err(TokenError::Unavailable { .. })));
    }

    #[test]
    fn reads_exp_from_a_compact_jwt() {
        assert_eq!(jwt_exp(&jwt_with_exp(1_700_000_000)), Some(1_700_000_000));
        assert_eq!(jwt_exp("not-a-jwt"), None);
    }

    #[tokio::test]
    async fn static_token_is_served_until_its_exp_and_never_refreshes() {
        let mut live = StaticToken::new(Jwt::new(jwt_with_exp(unix_now_s() + 3600)));
        assert!(!live.can_refresh());
        assert!(live.fetch().await.unwrap().lifetime_ms.is_none());
        let mut dead = StaticToken::new(Jwt::new(jwt_with_exp(1)));
        assert!(matches!(dead.fetch().await, Err(TokenError::Rejected(_))));
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
        assert_eq!((t.jwt.expose(), t.lifetime_ms), ("h.p.s", Some(100_000)));
        assert!(server.await.unwrap().ends_with(r#"{"api_key":"fwk_test"}"#));
    }
}
