//! Command line. Hand-parsed: a dozen flags do not justify an argument-parser
//! dependency in a crate whose clean build time matters.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use fleetwire_core::heartbeat::{MAX_INTERVAL_S, MIN_INTERVAL_S};
use fleetwire_core::ml::MlAsk;
use fleetwire_core::ota::{compare_versions, is_valid_chip, parse_public_key_hex};
use fleetwire_core::secret::Secret;
use fleetwire_core::session::Jwt;
use fleetwire_core::topics::is_valid_device_id;

use crate::log::Level;
use crate::ota::{DEFAULT_CONFIRM_TIMEOUT, DEFAULT_PARTITION_SIZE};

pub const USAGE: &str = "\
fleetwire-sim: simulated Fleetwire devices running the ESP32 firmware's core logic

USAGE:
  fleetwire-sim --url URL --device-id ID (--api-key KEY | --token JWT) [OPTIONS]
  fleetwire-sim --url URL --keys-file FILE [--devices N] [OPTIONS]
  fleetwire-sim --url URL --device-id ID (--api-key KEY | --token JWT) [OPTIONS] \\
      ml --model NAME --input JSON [--version V] [--deadline-ms N] [--timeout-s N]

CREDENTIALS:
  --url URL           ws://host:port or wss://host:port (MQTT at URL/mqtt, token exchange at URL/v1/devices/token)
  --device-id ID      the device id (also the MQTT client id)
  --api-key KEY       the device's API key (fwk_...), exchanged for a device JWT and refreshed
                      [env FLEETWIRE_API_KEY]
  --token JWT         a device JWT used as is, never refreshed (tests) [env FLEETWIRE_TOKEN]
  --keys-file FILE    lines `device_id api_key` (blank lines and # comments ignored)
  --devices N         run the first N devices of --keys-file (default: all)

OPTIONS:
  --ca FILE           trust the CA certificate(s) in this PEM file, besides the webpki roots
  --no-webpki-roots   trust only --ca
  --heartbeat-s N     initial heartbeat interval, 5..=3600 (default 30; the server may change it)
  --telemetry-s N     simulated sensor publish interval, 0 = off (default 60)
  --keepalive-s N     MQTT keepalive (default 60)
  --duration-s N      stop after N seconds (default: until Ctrl-C / SIGTERM)
  --stats-s N         stats line interval on stderr (default 10)
  --log LEVEL         debug | info | warn | error (default info)
  -h, --help          this text

OTA (offers on devices/{id}/ota are verified, downloaded, installed and confirmed):
  --fw-version V      version the device runs at its first start (default 1.0.0); later the
                      state in --state-dir says what runs
  --chip C            the device's chip; an image for another chip is refused (default esp32)
  --partition-size N  OTA slot size in bytes; larger images are refused (default 1572864)
  --ota-public-key HEX  Ed25519 public key (64 hex digits) manifests must be signed with;
                      without it every offer is refused [env FLEETWIRE_OTA_PUBLIC_KEY]
  --state-dir DIR     per-device NVS and flash slots in DIR/<device-id>/, kept across runs
                      (default: a temporary directory removed at exit)
  --fail-boot-version V  simulate that booting version V crashes, so the bootloader rolls
                      back (repeatable, or a comma list)
  --ota-confirm-timeout-s N  a new image must reach CONNACK + an acknowledged heartbeat
                      within N s or it is rolled back (default 120)

ML (`ml`, after the other options: one inference request as this device, then exit):
  The device connects as usual, publishes one request on devices/{id}/ml/infer (QoS 1) once
  connected, waits for the answer with its cid on devices/{id}/ml/result and prints it on
  stdout as one JSON line: {\"cid\",\"ok\",\"output\"|\"error\":{\"code\",\"message\"},\"model_version\"}.
  --model NAME        the model, e.g. anomaly (required)
  --input JSON        rows of numbers, e.g. '[[21.5,40,0.02,1.3]]' (required)
  --version V         a pinned model version (default: the server's newest)
  --deadline-ms N     the answer is wanted within N ms, 1..=600000 (default: the server's,
                      2000; the server caps it at 30000)
  --timeout-s N       give up after N s without an answer, connecting included (default 10)

Exit status: 0 clean stop, 1 a device gave up (revoked, bad key), 2 usage error.
With ml: 0 answer ok:true, 1 answer ok:false (its error also on stderr) or the device gave up
  (revoked, bad key), 2 usage error, 3 no answer (--timeout-s passed, the device stopped
  waiting a little after the deadline, or Ctrl-C / SIGTERM).
";

#[derive(Debug, Clone)]
pub enum Credential {
    ApiKey(Secret),
    Token(Jwt),
}

#[derive(Debug, Clone)]
pub struct DeviceArgs {
    pub id: String,
    pub credential: Credential,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub devices: Vec<DeviceArgs>,
    pub ca: Option<PathBuf>,
    pub webpki_roots: bool,
    pub heartbeat_s: Option<u32>,
    pub telemetry_s: u32,
    pub keepalive_s: u16,
    pub duration_s: Option<u64>,
    pub stats_s: u64,
    pub log_level: Level,
    pub ota: OtaOptions,
    /// `ml ...`: one inference request instead of running until stopped.
    pub ml: Option<MlOptions>,
}

/// The `ml` flags; see `USAGE`.
#[derive(Debug, Clone, PartialEq)]
pub struct MlOptions {
    pub ask: MlAsk,
    pub timeout: Duration,
}

/// Default `--timeout-s` of `ml`.
pub const DEFAULT_ML_TIMEOUT: Duration = Duration::from_secs(10);

/// The arguments after `ml`.
fn parse_ml(args: impl Iterator<Item = String>) -> Result<MlOptions, String> {
    let mut args = args.peekable();
    let (mut model, mut input, mut version, mut deadline_ms) = (None, None, None, None);
    let mut timeout = DEFAULT_ML_TIMEOUT;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            inline.clone().or_else(|| args.next()).ok_or_else(|| format!("ml {flag} needs a value"))
        };
        match flag.as_str() {
            "--model" => model = Some(value()?),
            "--input" => {
                let v = value()?;
                let rows: Vec<Vec<f32>> = serde_json::from_str(&v).map_err(|e| {
                    format!("ml --input: expected a JSON array of rows of numbers like [[21.5,40,0.02,1.3]] ({e})")
                })?;
                input = Some(rows);
            }
            "--version" => version = Some(value()?),
            "--deadline-ms" => deadline_ms = Some(number("ml --deadline-ms", &value()?)?),
            "--timeout-s" => timeout = Duration::from_secs(number("ml --timeout-s", &value()?)?),
            other => return Err(format!("unknown ml argument {other:?} (options of the device go before `ml`)")),
        }
    }
    let model = model.ok_or("ml needs --model NAME")?;
    let input = input.ok_or("ml needs --input JSON, e.g. --input '[[21.5,40,0.02,1.3]]'")?;
    if timeout.is_zero() {
        return Err("ml --timeout-s must be at least 1".into());
    }
    let ask = MlAsk { model, version, input, deadline_ms };
    ask.check().map_err(|e| format!("ml: {e}"))?;
    Ok(MlOptions { ask, timeout })
}

/// The OTA flags; see `USAGE`.
#[derive(Debug, Clone)]
pub struct OtaOptions {
    pub fw_version: String,
    pub chip: String,
    pub partition_size: u64,
    pub public_key: Option<[u8; 32]>,
    /// `None`: a temporary directory for this run.
    pub state_dir: Option<PathBuf>,
    pub fail_boot_versions: Vec<String>,
    pub confirm_timeout: Duration,
}

impl Default for OtaOptions {
    fn default() -> Self {
        OtaOptions {
            fw_version: "1.0.0".into(),
            chip: "esp32".into(),
            partition_size: DEFAULT_PARTITION_SIZE,
            public_key: None,
            state_dir: None,
            fail_boot_versions: Vec::new(),
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
        }
    }
}

/// A version the core can compare (the anti-downgrade check needs it), at most 64 chars.
fn version(flag: &str, v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.is_empty() || v.len() > 64 || compare_versions(v, v).is_err() {
        return Err(format!("{flag}: {v:?} is not a version like 1.2.3 or 1.2.3-rc.1"));
    }
    Ok(v.to_owned())
}

#[derive(Debug)]
pub enum Parsed {
    /// Boxed: `Options` is large and `Help` is nothing.
    Run(Box<Options>),
    Help,
}

/// Parse `device_id api_key` lines.
pub fn parse_keys(text: &str) -> Result<Vec<DeviceArgs>, String> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(id), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
            // Never echo the line: it holds a key.
            return Err(format!("--keys-file line {}: expected `device_id api_key`", n + 1));
        };
        if !is_valid_device_id(id) {
            return Err(format!("--keys-file line {}: invalid device id {id:?}", n + 1));
        }
        if !seen.insert(id.to_owned()) {
            // Two connections with one client id would take each other over forever.
            return Err(format!("--keys-file line {}: device {id} listed twice", n + 1));
        }
        out.push(DeviceArgs { id: id.to_owned(), credential: Credential::ApiKey(Secret::new(key)) });
    }
    Ok(out)
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag}: {v:?} is not a valid number"))
}

/// Parse arguments (without the program name). `env` supplies the credential fallbacks.
pub fn parse(args: impl IntoIterator<Item = String>, env: impl Fn(&str) -> Option<String>) -> Result<Parsed, String> {
    let mut url = None;
    let mut device_id: Option<String> = None;
    let mut api_key = None;
    let mut token = None;
    let mut keys_file: Option<PathBuf> = None;
    let mut count: Option<usize> = None;
    let mut ota_key: Option<String> = None;
    let mut o = Options {
        url: String::new(),
        devices: Vec::new(),
        ca: None,
        webpki_roots: true,
        heartbeat_s: None,
        telemetry_s: 60,
        keepalive_s: 60,
        duration_s: None,
        stats_s: 10,
        log_level: Level::Info,
        ota: OtaOptions::default(),
        ml: None,
    };

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            // Everything after it belongs to the request.
            "ml" => {
                o.ml = Some(parse_ml(args.by_ref())?);
                break;
            }
            "--url" => url = Some(value()?),
            "--device-id" => device_id = Some(value()?),
            "--api-key" => api_key = Some(Secret::new(value()?)),
            "--token" => token = Some(Jwt::new(value()?)),
            "--keys-file" => keys_file = Some(PathBuf::from(value()?)),
            "--devices" => count = Some(number("--devices", &value()?)?),
            "--ca" => o.ca = Some(PathBuf::from(value()?)),
            "--no-webpki-roots" => o.webpki_roots = false,
            "--heartbeat-s" => o.heartbeat_s = Some(number("--heartbeat-s", &value()?)?),
            "--telemetry-s" => o.telemetry_s = number("--telemetry-s", &value()?)?,
            "--keepalive-s" => o.keepalive_s = number("--keepalive-s", &value()?)?,
            "--duration-s" => o.duration_s = Some(number("--duration-s", &value()?)?),
            "--stats-s" => o.stats_s = number("--stats-s", &value()?)?,
            "--log" => {
                let v = value()?;
                o.log_level = Level::parse(&v).ok_or_else(|| format!("--log: unknown level {v:?}"))?;
            }
            "--fw-version" => o.ota.fw_version = version("--fw-version", &value()?)?,
            "--chip" => {
                let v = value()?;
                if !is_valid_chip(&v) {
                    return Err(format!("--chip: {v:?} is not a chip name like esp32 or esp32-s3"));
                }
                o.ota.chip = v;
            }
            "--partition-size" => o.ota.partition_size = number("--partition-size", &value()?)?,
            "--ota-public-key" => ota_key = Some(value()?),
            "--state-dir" => o.ota.state_dir = Some(PathBuf::from(value()?)),
            "--fail-boot-version" => {
                for v in value()?.split(',').filter(|v| !v.trim().is_empty()) {
                    o.ota.fail_boot_versions.push(version("--fail-boot-version", v)?);
                }
            }
            "--ota-confirm-timeout-s" => {
                o.ota.confirm_timeout = Duration::from_secs(number("--ota-confirm-timeout-s", &value()?)?)
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }

    o.url = url.ok_or("--url is required")?;
    if let Some(s) = o.heartbeat_s {
        if !(MIN_INTERVAL_S..=MAX_INTERVAL_S).contains(&s) {
            return Err(format!("--heartbeat-s must be within {MIN_INTERVAL_S}..={MAX_INTERVAL_S}"));
        }
    }
    if o.stats_s == 0 {
        return Err("--stats-s must be at least 1".into());
    }
    if !o.webpki_roots && o.ca.is_none() {
        return Err("--no-webpki-roots needs --ca FILE".into());
    }
    if o.ota.partition_size == 0 {
        return Err("--partition-size must be at least 1".into());
    }
    if o.ota.confirm_timeout.is_zero() {
        return Err("--ota-confirm-timeout-s must be at least 1".into());
    }
    if let Some(hex) = ota_key.or_else(|| env("FLEETWIRE_OTA_PUBLIC_KEY")) {
        // Not secret, but the message does not repeat it: it is key material all the same.
        let key = parse_public_key_hex(&hex)
            .map_err(|_| "--ota-public-key: expected 64 hex digits of a valid Ed25519 public key".to_owned())?;
        o.ota.public_key = Some(key);
    }
    if o.ml.is_some() && keys_file.is_some() {
        return Err("ml runs one device: use --device-id, not --keys-file".into());
    }
    o.devices = match (device_id, keys_file) {
        (Some(_), Some(_)) => return Err("use either --device-id or --keys-file, not both".into()),
        (None, None) => return Err("--device-id or --keys-file is required".into()),
        (Some(id), None) => {
            if count.is_some_and(|n| n != 1) {
                return Err("--devices N needs --keys-file".into());
            }
            if !is_valid_device_id(&id) {
                return Err(format!("invalid device id {id:?} (expected ^[a-z0-9][a-z0-9-]{{2,63}}$)"));
            }
            let api_key = api_key.or_else(|| env("FLEETWIRE_API_KEY").map(Secret::new));
            let token = token.or_else(|| env("FLEETWIRE_TOKEN").map(Jwt::new));
            let credential = match (api_key, token) {
                (Some(_), Some(_)) => return Err("use either --api-key or --token, not both".into()),
                (Some(k), None) => Credential::ApiKey(k),
                (None, Some(t)) => Credential::Token(t),
                (None, None) => return Err("--api-key or --token is required with --device-id".into()),
            };
            vec![DeviceArgs { id, credential }]
        }
        (None, Some(path)) => {
            if api_key.is_some() || token.is_some() {
                return Err("--api-key/--token cannot be combined with --keys-file".into());
            }
            let text = std::fs::read_to_string(&path).map_err(|e| format!("--keys-file {}: {e}", path.display()))?;
            let mut all = parse_keys(&text)?;
            match count {
                Some(0) => return Err("--devices must be at least 1".into()),
                Some(n) if n > all.len() => {
                    return Err(format!("--devices {n}, but {} has only {} devices", path.display(), all.len()))
                }
                Some(n) => all.truncate(n),
                None if all.is_empty() => return Err(format!("{} lists no devices", path.display())),
                None => {}
            }
            all
        }
    };
    Ok(Parsed::Run(Box::new(o)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }
    fn no_env(_: &str) -> Option<String> {
        None
    }
    fn run(s: &str) -> Result<Options, String> {
        match parse(args(s), no_env)? {
            Parsed::Run(o) => Ok(*o),
            Parsed::Help => Err("help".into()),
        }
    }

    #[test]
    fn single_device_with_api_key_and_defaults() {
        let o = run("--url ws://127.0.0.1:8080 --device-id esp-01 --api-key fwk_abc").unwrap();
        assert_eq!(o.url, "ws://127.0.0.1:8080");
        assert_eq!(o.devices.len(), 1);
        assert_eq!(o.devices[0].id, "esp-01");
        assert!(matches!(&o.devices[0].credential, Credential::ApiKey(k) if k.expose() == "fwk_abc"));
        assert_eq!((o.keepalive_s, o.telemetry_s, o.stats_s, o.heartbeat_s), (60, 60, 10, None));
        assert!(o.webpki_roots);
    }

    #[test]
    fn options_take_separate_or_inline_values() {
        let o = run("--url=wss://h --device-id=esp-01 --token a.b.c --ca ca.pem --no-webpki-roots --heartbeat-s=10 \
                     --duration-s 5 --log warn")
        .unwrap();
        assert!(matches!(o.devices[0].credential, Credential::Token(_)));
        assert_eq!(o.ca.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!((o.heartbeat_s, o.duration_s, o.log_level, o.webpki_roots), (Some(10), Some(5), Level::Warn, false));
    }

    #[test]
    fn credentials_fall_back_to_the_environment() {
        let env = |k: &str| (k == "FLEETWIRE_API_KEY").then(|| "fwk_env".to_owned());
        let Parsed::Run(o) = parse(args("--url ws://h --device-id esp-01"), env).unwrap() else { panic!() };
        assert!(matches!(&o.devices[0].credential, Credential::ApiKey(k) if k.expose() == "fwk_env"));
    }

    #[test]
    fn usage_errors_are_reported() {
        for bad in [
            "--device-id esp-01 --api-key k",
            "--url ws://h",
            "--url ws://h --device-id esp-01",
            "--url ws://h --device-id esp-01 --api-key k --token a.b.c",
            "--url ws://h --device-id ESP --api-key k",
            "--url ws://h --device-id esp-01 --api-key k --heartbeat-s 1",
            "--url ws://h --device-id esp-01 --api-key k --devices 3",
            "--url ws://h --device-id esp-01 --api-key k --no-webpki-roots",
            "--url ws://h --device-id esp-01 --api-key k --stats-s x",
            "--url ws://h --device-id esp-01 --api-key k --bogus",
            "--url ws://h --device-id esp-01 --api-key",
        ] {
            assert!(run(bad).is_err(), "{bad}");
        }
        assert!(matches!(parse(args("--help"), no_env), Ok(Parsed::Help)));
    }

    const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    #[test]
    fn ota_flags_have_defaults_and_take_values() {
        let o = run("--url ws://h --device-id esp-01 --api-key k").unwrap().ota;
        assert_eq!((o.fw_version.as_str(), o.chip.as_str(), o.partition_size), ("1.0.0", "esp32", 1_572_864));
        assert_eq!((o.public_key, o.state_dir, o.confirm_timeout), (None, None, Duration::from_secs(120)));
        assert!(o.fail_boot_versions.is_empty());

        let o = run(&format!(
            "--url ws://h --device-id esp-01 --api-key k --fw-version 1.4.2 --chip esp32-s3 --partition-size 2048 \
             --ota-public-key {KEY} --state-dir /tmp/s --fail-boot-version 2.0.0,2.0.1 --fail-boot-version=3.0.0 \
             --ota-confirm-timeout-s 30"
        ))
        .unwrap()
        .ota;
        assert_eq!((o.fw_version.as_str(), o.chip.as_str(), o.partition_size), ("1.4.2", "esp32-s3", 2048));
        assert_eq!(o.public_key.map(|k| k[0]), Some(0xd7));
        assert_eq!(o.state_dir.as_deref(), Some(std::path::Path::new("/tmp/s")));
        assert_eq!(o.fail_boot_versions, ["2.0.0", "2.0.1", "3.0.0"]);
        assert_eq!(o.confirm_timeout, Duration::from_secs(30));
    }

    #[test]
    fn the_ota_key_falls_back_to_the_environment_and_bad_values_are_refused_without_echo() {
        let env = |k: &str| (k == "FLEETWIRE_OTA_PUBLIC_KEY").then(|| KEY.to_owned());
        let Parsed::Run(o) = parse(args("--url ws://h --device-id esp-01 --api-key k"), env).unwrap() else { panic!() };
        assert!(o.ota.public_key.is_some());
        let bad_key = "ab".repeat(31) + "zz";
        let err = run(&format!("--url ws://h --device-id esp-01 --api-key k --ota-public-key {bad_key}")).unwrap_err();
        assert!(!err.contains(&bad_key), "{err}");
        for bad in [
            "--fw-version sim-1",
            "--fw-version 1.x",
            "--chip ESP32",
            "--partition-size 0",
            "--fail-boot-version nope",
            "--ota-confirm-timeout-s 0",
            "--ota-public-key 00",
        ] {
            assert!(run(&format!("--url ws://h --device-id esp-01 --api-key k {bad}")).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_file_lines_are_parsed_and_checked_without_echoing_keys() {
        let keys = parse_keys("# fleet\nesp-01 fwk_a\n\n  esp-02\tfwk_b  \n").unwrap();
        assert_eq!(keys.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["esp-01", "esp-02"]);
        let err = parse_keys("esp-01 fwk_secret extra").unwrap_err();
        assert!(!err.contains("fwk_secret"), "{err}");
        assert!(parse_keys("esp-01 a\nesp-01 b").unwrap_err().contains("twice"));
        assert!(parse_keys("Bad! k").is_err());
    }

    #[test]
    fn devices_n_takes_the_first_n_lines_of_the_keys_file() {
        let path = std::env::temp_dir().join(format!("fleetwire-sim-keys-{}.txt", std::process::id()));
        std::fs::write(&path, "dev-1 k1\ndev-2 k2\ndev-3 k3\n").unwrap();
        let p = path.display();
        let o = run(&format!("--url ws://h --keys-file {p} --devices 2")).unwrap();
        assert_eq!(o.devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["dev-1", "dev-2"]);
        assert_eq!(run(&format!("--url ws://h --keys-file {p}")).unwrap().devices.len(), 3);
        assert!(run(&format!("--url ws://h --keys-file {p} --devices 4")).is_err());
        assert!(run(&format!("--url ws://h --keys-file {p} --api-key k")).is_err());
        std::fs::remove_file(path).unwrap();
    }

    /// `ml` arguments: a JSON value is one argument, as a shell passes it.
    fn ml(extra: &[&str]) -> Result<Options, String> {
        let mut a = args("--url ws://h --device-id esp-01 --api-key k --log warn ml");
        a.extend(extra.iter().map(|s| s.to_string()));
        match parse(a, no_env)? {
            Parsed::Run(o) => Ok(*o),
            Parsed::Help => Err("help".into()),
        }
    }

    #[test]
    fn ml_takes_a_model_and_rows_of_readings_with_defaults() {
        let o = ml(&["--model", "anomaly", "--input", "[[21.5, 40, 0.02, 1.3], [20, 41, 0.5, 2]]"]).unwrap();
        assert_eq!(o.log_level, Level::Warn, "options before `ml` still apply");
        let m = o.ml.unwrap();
        assert_eq!(m.ask.model, "anomaly");
        assert_eq!(m.ask.input, [vec![21.5, 40.0, 0.02, 1.3], vec![20.0, 41.0, 0.5, 2.0]]);
        assert_eq!((m.ask.version, m.ask.deadline_ms, m.timeout), (None, None, DEFAULT_ML_TIMEOUT));

        let o =
            ml(&["--model=anomaly", "--input=[[1,2,3,4]]", "--version", "1", "--deadline-ms", "500", "--timeout-s=3"]);
        let m = o.unwrap().ml.unwrap();
        assert_eq!(
            (m.ask.version.as_deref(), m.ask.deadline_ms, m.timeout),
            (Some("1"), Some(500), Duration::from_secs(3))
        );
        assert!(run("--url ws://h --device-id esp-01 --api-key k").unwrap().ml.is_none());
    }

    #[test]
    fn ml_usage_errors_say_what_is_wrong() {
        let cases: [(&[&str], &str); 10] = [
            (&["--input", "[[1]]"], "--model"),
            (&["--model", "anomaly"], "--input"),
            (&["--model", "anomaly", "--input", "[[1,2"], "JSON array of rows"),
            (&["--model", "anomaly", "--input", "[1, 2]"], "JSON array of rows"),
            (&["--model", "anomaly", "--input", "[[\"a\"]]"], "JSON array of rows"),
            (&["--model", "anomaly", "--input", "[[1e39]]"], "finite"),
            (&["--model", "", "--input", "[[1]]"], "model"),
            (&["--model", "anomaly", "--input", "[[1]]", "--deadline-ms", "0"], "deadline_ms"),
            (&["--model", "anomaly", "--input", "[[1]]", "--timeout-s", "0"], "--timeout-s"),
            (&["--model", "anomaly", "--input", "[[1]]", "--heartbeat-s", "10"], "before `ml`"),
        ];
        for (extra, says) in cases {
            let err = ml(extra).unwrap_err();
            assert!(err.contains(says), "{extra:?}: {err}");
        }
        let path = std::env::temp_dir().join(format!("fleetwire-sim-ml-keys-{}.txt", std::process::id()));
        std::fs::write(&path, "dev-1 k1\n").unwrap();
        let err = run(&format!("--url ws://h --keys-file {} ml --model m --input [[1]]", path.display())).unwrap_err();
        assert!(err.contains("--device-id"), "{err}");
        std::fs::remove_file(path).unwrap();
    }
}
