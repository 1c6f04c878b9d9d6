//! Where a device connects: `--url ws[s]://host[:port][/prefix]` gives the MQTT
//! WebSocket URL (`…/mqtt`) and the HTTP base of the same server (`http[s]://…`) used
//! for the token exchange, so one flag configures both and they share the TLS trust.

use hyper::Uri;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `ws[s]://host:port/prefix/mqtt`.
    pub ws_url: String,
    /// `http[s]://host:port/prefix`, without a trailing slash.
    pub http_base: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (http_scheme, rest) = if let Some(r) = url.strip_prefix("ws://") {
            ("http", r)
        } else if let Some(r) = url.strip_prefix("wss://") {
            ("https", r)
        } else {
            return Err(format!("--url must start with ws:// or wss://, got {url:?}"));
        };
        if rest.contains(['?', '#']) {
            // The broker never reads a query string, and a credential there would end up in proxy logs.
            return Err("--url must not have a query string or fragment".into());
        }
        let rest = rest.trim_end_matches('/');
        // Accept the full MQTT URL too: `ws://h/mqtt` and `ws://h` mean the same server.
        let base = rest.strip_suffix("/mqtt").unwrap_or(rest);
        let http_base = format!("{http_scheme}://{base}");
        let uri: Uri = http_base.parse().map_err(|e| format!("--url {url:?}: {e}"))?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("--url {url:?} has no host"));
        }
        let ws_scheme = if http_scheme == "https" { "wss" } else { "ws" };
        Ok(Endpoint { ws_url: format!("{ws_scheme}://{base}/mqtt"), http_base })
    }

    /// `{http_base}/v1/devices/token`.
    pub fn token_url(&self) -> String {
        format!("{}/v1/devices/token", self.http_base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_url_gets_the_mqtt_path_and_http_base_the_same_authority() {
        let e = Endpoint::parse("ws://127.0.0.1:8080").unwrap();
        assert_eq!(e.ws_url, "ws://127.0.0.1:8080/mqtt");
        assert_eq!(e.http_base, "http://127.0.0.1:8080");
        assert_eq!(e.token_url(), "http://127.0.0.1:8080/v1/devices/token");
    }

    #[test]
    fn wss_maps_to_https_and_prefixes_and_trailing_slashes_are_kept_sane() {
        let e = Endpoint::parse("wss://fleet.example.com/edge/").unwrap();
        assert_eq!(e.ws_url, "wss://fleet.example.com/edge/mqtt");
        assert_eq!(e.http_base, "https://fleet.example.com/edge");
        assert_eq!(Endpoint::parse("wss://fleet.example.com/edge/mqtt").unwrap(), e);
    }

    #[test]
    fn refuses_other_schemes_queries_and_missing_hosts() {
        assert!(Endpoint::parse("http://h:8080").is_err());
        assert!(Endpoint::parse("ws://h:8080/?token=x").is_err());
        assert!(Endpoint::parse("ws://").is_err());
    }
}
