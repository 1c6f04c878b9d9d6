//! API key → device token over HTTPS (`POST /v1/devices/token`), with the private CA.

use embedded_svc::http::client::Client;
use embedded_svc::http::Method;
use embedded_svc::io::Write;
use esp_idf_svc::http::client::{Configuration, EspHttpConnection};
use fleetwire_core::session::{IssuedToken, Jwt, TokenError};
use serde::Deserialize;

use crate::provisioning::Provisioning;

#[derive(Deserialize)]
struct Answer {
    token: String,
    device_id: String,
    expires_in: u64,
}

/// 400/401/403 are `Rejected` (the key is wrong or the device revoked: retrying will not
/// help); network or server trouble is `Unavailable`, with the server's `Retry-After`.
pub fn exchange(p: &Provisioning) -> Result<IssuedToken, TokenError> {
    let transient = |e: &dyn std::fmt::Display| TokenError::Unavailable { error: e.to_string(), retry_after_ms: None };
    let conn = EspHttpConnection::new(&Configuration {
        crt_bundle_attach: if p.ca_pem.is_none() { Some(esp_idf_svc::sys::esp_crt_bundle_attach) } else { None },
        server_certificate: p.ca_pem.as_deref().map(|pem| esp_idf_svc::tls::X509::pem_until_nul(pem.as_bytes())),
        timeout: Some(std::time::Duration::from_secs(15)),
        ..Default::default()
    })
    .map_err(|e| transient(&e))?;
    let mut client = Client::wrap(conn);
    let body = serde_json::json!({ "api_key": p.api_key }).to_string();
    let len = body.len().to_string();
    let url = format!("{}/v1/devices/token", p.server_url);
    let headers = [("content-type", "application/json"), ("content-length", len.as_str())];
    let mut req = client.request(Method::Post, &url, &headers).map_err(|e| transient(&e))?;
    req.write_all(body.as_bytes()).map_err(|e| transient(&e))?;
    let mut res = req.submit().map_err(|e| transient(&e))?;
    let status = res.status();
    let retry_after_ms = res.header("retry-after").and_then(|v| v.parse::<u64>().ok()).map(|s| s * 1000);
    let mut buf = vec![0u8; 2048];
    let mut n = 0;
    while n < buf.len() {
        match res.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(transient(&e)),
        }
    }
    match status {
        200 => {
            let a: Answer = serde_json::from_slice(&buf[..n]).map_err(|e| transient(&e))?;
            if a.device_id != p.device_id {
                return Err(TokenError::Rejected(format!("the key belongs to {}, not {}", a.device_id, p.device_id)));
            }
            Ok(IssuedToken { jwt: Jwt::new(a.token), lifetime_ms: Some(a.expires_in * 1000) })
        }
        400 | 401 | 403 => Err(TokenError::Rejected(format!("HTTP {status}: {}", String::from_utf8_lossy(&buf[..n])))),
        _ => Err(TokenError::Unavailable { error: format!("HTTP {status}"), retry_after_ms }),
    }
}
