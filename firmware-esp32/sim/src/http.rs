//! A small HTTP/1.1 client on hyper's connection API, over TCP or rustls with the same
//! trust as the WebSocket: one JSON POST (the token exchange) and streaming GETs (OTA
//! images). No pooling: one connection per request, closed afterwards.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, AUTHORIZATION, CONNECTION, CONTENT_RANGE, CONTENT_TYPE, HOST, RANGE, RETRY_AFTER};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use fleetwire_core::secret::Secret;

use crate::transport::parse_retry_after;

/// Largest response body read (the token answer is well under 4 KB).
const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

#[derive(Clone)]
pub struct HttpClient {
    tls: TlsConnector,
    timeout: Duration,
}

/// A response whose body is read chunk by chunk. Dropping it closes the connection.
pub struct StreamingResponse {
    pub status: u16,
    pub content_range: Option<String>,
    body: Incoming,
    driver: JoinHandle<()>,
}

impl StreamingResponse {
    /// The next body bytes; `None` at the end of the body, `Err` when the connection
    /// broke (including a body shorter than its `Content-Length`).
    pub async fn chunk(&mut self) -> Option<Result<Bytes, String>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => return Some(Ok(data)),
                    // Trailers carry no image bytes.
                    Err(_) => continue,
                },
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }
}

impl Drop for StreamingResponse {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl HttpClient {
    /// `timeout` bounds connecting and the response head (and a POST's whole body).
    pub fn new(tls: Arc<rustls::ClientConfig>, timeout: Duration) -> Self {
        HttpClient { tls: TlsConnector::from(tls), timeout }
    }

    /// POST `body` as JSON to `url`. Errors are transport errors; any HTTP status is `Ok`.
    pub async fn post_json(&self, url: &str, body: Vec<u8>) -> Result<HttpResponse, String> {
        tokio::time::timeout(self.timeout, async {
            let headers = [(CONTENT_TYPE, "application/json"), (ACCEPT, "application/json")];
            let (resp, driver) = self.request(Method::POST, url, &headers, Bytes::from(body)).await?;
            let status = resp.status().as_u16();
            let retry_after = parse_retry_after(resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()));
            let collected = Limited::new(resp.into_body(), MAX_BODY_BYTES).collect().await;
            driver.abort();
            let body = collected.map_err(|e| e.to_string())?.to_bytes().to_vec();
            Ok(HttpResponse { status, retry_after, body })
        })
        .await
        .map_err(|_| format!("POST timed out after {} s", self.timeout.as_secs()))?
    }

    /// GET `url`, optionally with a `Range` and an `Authorization` header (a [`Secret`]:
    /// never logged); the body is left to stream. Any HTTP status is `Ok`.
    pub async fn get(
        &self,
        url: &str,
        range: Option<&str>,
        authorization: Option<&Secret>,
    ) -> Result<StreamingResponse, String> {
        tokio::time::timeout(self.timeout, async {
            let headers: Vec<_> = range
                .map(|r| (RANGE, r))
                .into_iter()
                .chain(authorization.map(|a| (AUTHORIZATION, a.expose())))
                .collect();
            let (resp, driver) = self.request(Method::GET, url, &headers, Bytes::new()).await?;
            let status = resp.status().as_u16();
            let content_range = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
            Ok(StreamingResponse { status, content_range, body: resp.into_body(), driver })
        })
        .await
        .map_err(|_| format!("GET timed out after {} s", self.timeout.as_secs()))?
    }

    /// Connect (TCP, then TLS for https), send one request, return the response head
    /// and the task driving the connection (abort it when done with the body).
    async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(hyper::header::HeaderName, &str)],
        body: Bytes,
    ) -> Result<(Response<Incoming>, JoinHandle<()>), String> {
        let uri: Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("URL scheme must be http or https".into()),
        };
        let authority = uri.authority().ok_or("URL has no host")?.clone();
        // `Uri::host` keeps IPv6 brackets; sockets and SNI want the bare address.
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("connect {authority}: {e}"))?;
        let _ = tcp.set_nodelay(true);

        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut req = Request::builder().method(method).uri(path).header(HOST, authority.as_str());
        for (name, value) in headers {
            req = req.header(name, *value);
        }
        let req = req.header(CONNECTION, "close").body(Full::new(body)).map_err(|e| e.to_string())?;
        if https {
            let name = ServerName::try_from(host).map_err(|e| format!("TLS server name: {e}"))?;
            let tls = self.tls.connect(name, tcp).await.map_err(|e| format!("TLS with {authority}: {e}"))?;
            send(tls, req).await
        } else {
            send(tcp, req).await
        }
    }
}

async fn send<S>(stream: S, req: Request<Full<Bytes>>) -> Result<(Response<Incoming>, JoinHandle<()>), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    // The connection future does the socket I/O, the body's included; it ends once the
    // response is read and `sender` is dropped, or when the caller aborts it.
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    match sender.send_request(req).await {
        Ok(resp) => Ok((resp, driver)),
        Err(e) => {
            driver.abort();
            Err(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Accept one connection, read the request head + body, answer `response`.
    async fn one_shot_server(response: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            // Read until the declared body has arrived.
            loop {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= head_end + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(response.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            String::from_utf8(buf).unwrap()
        });
        (format!("http://{addr}/v1/devices/token"), task)
    }

    fn client() -> HttpClient {
        let tls = crate::tls::client_config(&crate::tls::Trust { ca_file: None, webpki_roots: true }).unwrap();
        HttpClient::new(tls, Duration::from_secs(5))
    }

    #[tokio::test]
    async fn posts_json_and_reads_status_and_body() {
        let (url, server) = one_shot_server(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
        )
        .await;
        let r = client().post_json(&url, br#"{"api_key":"k"}"#.to_vec()).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, br#"{"ok":true}"#);
        let req = server.await.unwrap();
        assert!(req.starts_with("POST /v1/devices/token HTTP/1.1\r\n"), "{req}");
        assert!(req.to_ascii_lowercase().contains("content-type: application/json"));
        assert!(req.ends_with(r#"{"api_key":"k"}"#));
    }

    #[tokio::test]
    async fn reads_chunked_error_bodies_and_retry_after() {
        let (url, _server) = one_shot_server(
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 9\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n",
        )
        .await;
        let r = client().post_json(&url, b"{}".to_vec()).await.unwrap();
        assert_eq!((r.status, r.retry_after), (429, Some(Duration::from_secs(9))));
        assert_eq!(r.body, br#"{"a":1}"#);
    }

    #[tokio::test]
    async fn refuses_non_http_urls_and_reports_connection_failures() {
        assert!(client().post_json("ftp://x/y", vec![]).await.is_err());
        // A port just released by a listener refuses connections.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = client().post_json(&format!("http://{addr}/"), vec![]).await.unwrap_err();
        assert!(err.starts_with("connect "), "{err}");
    }
}
