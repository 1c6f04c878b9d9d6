//! OTA, verification side: offer parsing, signature / downgrade / size checks, streaming
//! SHA-256 of the image, and the OTA slot state machine.
//!
//! # Signed bytes (contract with the server)
//!
//! `manifest.sig` is the standard base64 (RFC 4648 §4, with padding) encoding of a
//! 64-byte Ed25519 signature over the **canonical JSON of the manifest without `sig`**:
//! the `manifest` object exactly as received, with the `sig` member removed, serialised
//! with object keys sorted by byte order (recursively), no insignificant whitespace,
//! integers in plain decimal, strings in UTF-8 with only `"`, `\` and control characters
//! escaped (the output of `JSON.stringify` on a key-sorted object). Example:
//!
//! ```text
//! {"sha256":"<64 hex>","size":1048576,"url":"https://…/fw-1.5.0.bin","version":"1.5.0"}
//! ```
//!
//! Every member other than `sig` is covered, including ones this firmware does not know.
//! `firmware-esp32/README.md` spells the rule out for other languages (with a Node
//! implementation); the golden offer fixture is signed by Node and verified here.
//! Numbers in the manifest must be integers: a float has no single canonical spelling
//! across languages, so an offer with one is refused as malformed.
//!
//! # Optional members
//!
//! `chip` (e.g. `esp32`, `esp32-s3`): the SoC the image is built for. A device refuses an
//! image whose `chip` differs from its own; an absent `chip` means "any".

use std::cmp::Ordering;
use std::fmt;

use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::platform::Storage;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtaError {
    MalformedOffer(String),
    BadPublicKey,
    BadSignatureEncoding,
    SignatureMismatch,
    BadVersion(String),
    /// Offered version is older than (or equal to) the running one.
    NotNewer {
        current: String,
        offered: String,
    },
    TooLarge {
        size: u64,
        partition: u64,
    },
    /// The image is built for another SoC.
    WrongChip {
        device: String,
        image: String,
    },
    ImageOverrun {
        expected: u64,
    },
    SizeMismatch {
        expected: u64,
        got: u64,
    },
    HashMismatch,
    /// The manifest's `url` cannot be fetched by this device (see
    /// [`crate::ota_download::resolve_image_url`]); `reason` says why.
    BadUrl {
        url: String,
        reason: String,
    },
    InvalidTransition {
        from: SlotState,
        event: SlotEvent,
    },
}

/// Human-readable; these texts go into `ota/status` `error` fields.
impl fmt::Display for OtaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtaError::MalformedOffer(m) => write!(f, "malformed offer: {m}"),
            OtaError::BadPublicKey => f.write_str("the OTA public key is not a valid Ed25519 public key"),
            OtaError::BadSignatureEncoding => f.write_str("manifest sig is not standard base64 of 64 bytes"),
            OtaError::SignatureMismatch => f.write_str("manifest signature does not verify with the device's OTA key"),
            OtaError::BadVersion(v) => write!(f, "unparseable version {v:?}"),
            OtaError::NotNewer { current, offered } => {
                write!(f, "version {offered} is not newer than the running {current} (downgrade refused)")
            }
            OtaError::TooLarge { size, partition } => {
                write!(f, "image of {size} bytes does not fit the {partition}-byte OTA partition")
            }
            OtaError::WrongChip { device, image } => {
                write!(f, "image is built for chip {image}, this device is {device}")
            }
            OtaError::ImageOverrun { expected } => write!(f, "server sent more than the manifest's {expected} bytes"),
            OtaError::SizeMismatch { expected, got } => write!(f, "image is {got} bytes, the manifest says {expected}"),
            OtaError::HashMismatch => f.write_str("SHA-256 of the downloaded image does not match the manifest"),
            OtaError::BadUrl { url, reason } => write!(f, "manifest url {url:?} refused: {reason}"),
            OtaError::InvalidTransition { from, event } => write!(f, "OTA state {from:?} does not allow {event:?}"),
        }
    }
}

impl std::error::Error for OtaError {}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Manifest {
    pub version: String,
    pub size: u64,
    pub sha256: String,
    pub url: String,
    pub sig: String,
    /// SoC the image is built for; `None`: not stated (any chip).
    #[serde(default)]
    pub chip: Option<String>,
}

/// `^[a-z0-9][a-z0-9-]{0,31}$`, the schema's `chip` pattern (checked by hand: no regex crate).
pub fn is_valid_chip(chip: &str) -> bool {
    let b = chip.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Any non-integer number inside `v` (see the module docs on canonical numbers).
fn has_non_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => !(n.is_i64() || n.is_u64()),
        Value::Array(a) => a.iter().any(has_non_integer),
        Value::Object(m) => m.values().any(has_non_integer),
        _ => false,
    }
}

/// The firmware's OTA public key from 64 hex digits (how it is configured and embedded).
pub fn parse_public_key_hex(hex: &str) -> Result<[u8; 32], OtaError> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(OtaError::BadPublicKey);
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| OtaError::BadPublicKey)?;
    }
    VerifyingKey::from_bytes(&key).map_err(|_| OtaError::BadPublicKey)?;
    Ok(key)
}

/// A parsed offer `{rollout, manifest{version,size,sha256,url,sig}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub rollout: String,
    pub manifest: Manifest,
    /// The manifest object as received (used to rebuild the signed bytes).
    raw_manifest: serde_json::Map<String, Value>,
}

impl Offer {
    pub fn parse(bytes: &[u8]) -> Result<Self, OtaError> {
        let bad = |m: &str| OtaError::MalformedOffer(m.to_string());
        let v: Value = serde_json::from_slice(bytes).map_err(|e| OtaError::MalformedOffer(e.to_string()))?;
        let rollout = v.get("rollout").and_then(Value::as_str).ok_or_else(|| bad("rollout"))?;
        if rollout.is_empty() || rollout.len() > 128 {
            return Err(bad("rollout length"));
        }
        let raw = v.get("manifest").and_then(Value::as_object).ok_or_else(|| bad("manifest"))?.clone();
        let manifest: Manifest =
            serde_json::from_value(Value::Object(raw.clone())).map_err(|e| OtaError::MalformedOffer(e.to_string()))?;
        if manifest.size == 0 {
            return Err(bad("size"));
        }
        if manifest.sha256.len() != 64 || !manifest.sha256.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("sha256"));
        }
        if manifest.version.is_empty() || manifest.version.len() > 64 || manifest.url.is_empty() {
            return Err(bad("version/url"));
        }
        if manifest.chip.as_deref().is_some_and(|c| !is_valid_chip(c)) {
            return Err(bad("chip"));
        }
        if raw.values().any(has_non_integer) {
            return Err(bad("non-integer number in manifest"));
        }
        Ok(Offer { rollout: rollout.to_string(), manifest, raw_manifest: raw })
    }

    /// The bytes the server signed (see the module documentation).
    pub fn signed_bytes(&self) -> Vec<u8> {
        canonical_manifest_bytes(&self.raw_manifest)
    }
}

/// Canonical JSON of `manifest` without `sig`: keys sorted, no whitespace.
pub fn canonical_manifest_bytes(manifest: &serde_json::Map<String, Value>) -> Vec<u8> {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: std::collections::BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    let mut m = manifest.clone();
    m.remove("sig");
    // serde_json's Map is a BTreeMap without the `preserve_order` feature; sort anyway
    // so the contract does not depend on a feature flag.
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    let mut out = Vec::from(&b"{"[..]);
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend(serde_json::to_vec(k).expect("string"));
        out.push(b':');
        out.extend(serde_json::to_vec(&sort(&m[k.as_str()])).expect("value"));
    }
    out.push(b'}');
    out
}

/// Semver-ish comparison: optional leading `v`, dot-separated numeric core (missing parts
/// are 0), `-pre.release` sorts before the release, `+build` is ignored.
pub fn compare_versions(a: &str, b: &str) -> Result<Ordering, OtaError> {
    fn split(v: &str) -> Result<(Vec<u64>, Option<Vec<&str>>), OtaError> {
        let v = v.strip_prefix('v').unwrap_or(v);
        let v = v.split('+').next().unwrap_or("");
        let (core, pre) = match v.split_once('-') {
            Some((c, p)) => (c, Some(p.split('.').collect::<Vec<_>>())),
            None => (v, None),
        };
        let nums = core
            .split('.')
            .map(|p| p.parse::<u64>().map_err(|_| OtaError::BadVersion(v.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(p) = &pre {
            if p.iter().any(|s| s.is_empty()) {
                return Err(OtaError::BadVersion(v.to_string()));
            }
        }
        Ok((nums, pre))
    }
    let (ca, pa) = split(a)?;
    let (cb, pb) = split(b)?;
    for i in 0..ca.len().max(cb.len()) {
        let o = ca.get(i).unwrap_or(&0).cmp(cb.get(i).unwrap_or(&0));
        if o != Ordering::Equal {
            return Ok(o);
        }
    }
    Ok(match (pa, pb) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => {
            for (p, q) in x.iter().zip(y.iter()) {
                let o = match (p.parse::<u64>(), q.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => p.cmp(q),
                };
                if o != Ordering::Equal {
                    return Ok(o);
                }
            }
            x.len().cmp(&y.len())
        }
    })
}

/// Checks offers against the firmware's signing key, running version, partition size
/// and chip.
pub struct OtaVerifier {
    key: VerifyingKey,
    current_version: String,
    partition_size: u64,
    chip: String,
}

impl OtaVerifier {
    pub fn new(
        public_key: &[u8; 32],
        current_version: &str,
        partition_size: u64,
        chip: &str,
    ) -> Result<Self, OtaError> {
        let key = VerifyingKey::from_bytes(public_key).map_err(|_| OtaError::BadPublicKey)?;
        Ok(OtaVerifier { key, current_version: current_version.into(), partition_size, chip: chip.into() })
    }

    pub fn verify_signature(&self, offer: &Offer) -> Result<(), OtaError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(offer.manifest.sig.as_bytes())
            .map_err(|_| OtaError::BadSignatureEncoding)?;
        let sig = Signature::from_slice(&raw).map_err(|_| OtaError::BadSignatureEncoding)?;
        self.key.verify_strict(&offer.signed_bytes(), &sig).map_err(|_| OtaError::SignatureMismatch)
    }

    /// Full acceptance check: signature first (nothing unsigned is acted on), then chip,
    /// version (strictly newer), size.
    pub fn check(&self, offer: &Offer) -> Result<ImageHasher, OtaError> {
        self.verify_signature(offer)?;
        let m = &offer.manifest;
        if let Some(chip) = m.chip.as_deref().filter(|c| *c != self.chip) {
            return Err(OtaError::WrongChip { device: self.chip.clone(), image: chip.to_owned() });
        }
        if compare_versions(&m.version, &self.current_version)? != Ordering::Greater {
            return Err(OtaError::NotNewer { current: self.current_version.clone(), offered: m.version.clone() });
        }
        if m.size > self.partition_size {
            return Err(OtaError::TooLarge { size: m.size, partition: self.partition_size });
        }
        Ok(ImageHasher::new(&m.sha256, m.size))
    }
}

/// Streaming SHA-256 over image chunks with a final size + digest check.
pub struct ImageHasher {
    hasher: Sha256,
    expected_hex: String,
    expected_size: u64,
    received: u64,
}

impl ImageHasher {
    pub fn new(expected_sha256_hex: &str, expected_size: u64) -> Self {
        ImageHasher {
            hasher: Sha256::new(),
            expected_hex: expected_sha256_hex.to_ascii_lowercase(),
            expected_size,
            received: 0,
        }
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Progress in percent (0..=100).
    pub fn progress(&self) -> u8 {
        ((self.received.min(self.expected_size) * 100) / self.expected_size.max(1)) as u8
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), OtaError> {
        let n = self.received + chunk.len() as u64;
        if n > self.expected_size {
            return Err(OtaError::ImageOverrun { expected: self.expected_size });
        }
        self.hasher.update(chunk);
        self.received = n;
        Ok(())
    }

    pub fn finish(self) -> Result<(), OtaError> {
        if self.received != self.expected_size {
            return Err(OtaError::SizeMismatch { expected: self.expected_size, got: self.received });
        }
        let hex: String = self.hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if hex != self.expected_hex {
            return Err(OtaError::HashMismatch);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotState {
    Idle,
    Downloading,
    Verifying,
    PendingReboot,
    PendingVerify,
    Valid,
    RolledBack,
}

impl SlotState {
    /// The serialised (kebab-case) name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Idle => "idle",
            SlotState::Downloading => "downloading",
            SlotState::Verifying => "verifying",
            SlotState::PendingReboot => "pending-reboot",
            SlotState::PendingVerify => "pending-verify",
            SlotState::Valid => "valid",
            SlotState::RolledBack => "rolled-back",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotEvent {
    /// An accepted offer starts downloading.
    Start,
    /// All bytes written to the inactive slot.
    DownloadComplete,
    /// Download aborted or failed.
    Abort,
    /// Size + SHA-256 check passed; boot partition switched.
    VerifyOk,
    VerifyFailed,
    /// Booted into the new image (first boot, not yet confirmed).
    Rebooted,
    /// Self-test passed (e.g. stable connection reached): mark the app valid.
    MarkValid,
    /// Self-test failed or the watchdog fired: roll back to the previous slot.
    Rollback,
}

/// OTA slot state machine: Idle → Downloading → Verifying → PendingReboot →
/// PendingVerify → Valid | RolledBack. Abort/verify failure return to Idle; a new
/// offer may start from Idle, Valid or RolledBack. Anything else is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtaSlot {
    state: SlotState,
}

impl Default for OtaSlot {
    fn default() -> Self {
        OtaSlot { state: SlotState::Idle }
    }
}

const STORAGE_KEY: &str = "ota.slot";

impl OtaSlot {
    /// A machine already in `state` (restored from persistent storage, see `ota_store`).
    pub fn at(state: SlotState) -> Self {
        OtaSlot { state }
    }

    pub fn state(&self) -> SlotState {
        self.state
    }

    pub fn apply(&mut self, event: SlotEvent) -> Result<SlotState, OtaError> {
        use SlotEvent as E;
        use SlotState as S;
        let next = match (self.state, event) {
            (S::Idle | S::Valid | S::RolledBack, E::Start) => S::Downloading,
            (S::Downloading, E::DownloadComplete) => S::Verifying,
            (S::Downloading, E::Abort) => S::Idle,
            (S::Verifying, E::VerifyOk) => S::PendingReboot,
            (S::Verifying, E::VerifyFailed) => S::Idle,
            (S::PendingReboot, E::Rebooted) => S::PendingVerify,
            (S::PendingVerify, E::MarkValid) => S::Valid,
            (S::PendingVerify, E::Rollback) => S::RolledBack,
            (from, event) => return Err(OtaError::InvalidTransition { from, event }),
        };
        self.state = next;
        Ok(next)
    }

    fn code(s: SlotState) -> u8 {
        s as u8
    }

    /// Persist the state alone (only states that must survive a reboot matter; all are
    /// stored). [`crate::ota_store::OtaRecord`] keeps the whole update, resumable.
    pub fn save(&self, storage: &mut dyn Storage) {
        storage.set(STORAGE_KEY, &[Self::code(self.state)]);
    }

    /// Restore after boot. With the state alone a half-written slot cannot be resumed,
    /// so a reboot during download/verify restarts from Idle.
    pub fn load(storage: &dyn Storage) -> Self {
        use SlotState as S;
        let state = match storage.get(STORAGE_KEY).as_deref() {
            Some([3]) => S::PendingReboot,
            Some([4]) => S::PendingVerify,
            Some([5]) => S::Valid,
            Some([6]) => S::RolledBack,
            _ => S::Idle,
        };
        OtaSlot { state }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::MemStorage;
    use ed25519_dalek::{Signer, SigningKey};
    use serde_json::json;

    const CURRENT: &str = "1.4.2";
    const PARTITION: u64 = 1_920 * 1024;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn image() -> Vec<u8> {
        (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn sha_hex(b: &[u8]) -> String {
        Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
    }

    fn manifest(version: &str, size: u64, sha: &str) -> serde_json::Map<String, Value> {
        json!({ "version": version, "size": size, "sha256": sha, "url": "https://fw.example/fw.bin" })
            .as_object()
            .unwrap()
            .clone()
    }

    fn signed_offer(signer: &SigningKey, mut m: serde_json::Map<String, Value>) -> Vec<u8> {
        let sig = signer.sign(&canonical_manifest_bytes(&m));
        m.insert("sig".into(), json!(base64::engine::general_purpose::STANDARD.encode(sig.to_bytes())));
        serde_json::to_vec(&json!({ "rollout": "r-1", "manifest": m })).unwrap()
    }

    fn verifier() -> OtaVerifier {
        OtaVerifier::new(&key(1).verifying_key().to_bytes(), CURRENT, PARTITION, "esp32-s3").unwrap()
    }

    #[test]
    fn canonical_bytes_are_sorted_compact_and_exclude_sig() {
        let mut m = manifest("1.5.0", 3, &"a".repeat(64));
        m.insert("sig".into(), json!("xyz"));
        let s = String::from_utf8(canonical_manifest_bytes(&m)).unwrap();
        assert_eq!(
            s,
            format!(
                r#"{{"sha256":"{}","size":3,"url":"https://fw.example/fw.bin","version":"1.5.0"}}"#,
                "a".repeat(64)
            )
        );
    }

    #[test]
    fn good_manifest_is_accepted_and_good_image_verifies() {
        let img = image();
        let offer = Offer::parse(&signed_offer(&key(1), manifest("1.5.0", img.len() as u64, &sha_hex(&img)))).unwrap();
        assert_eq!(offer.rollout, "r-1");
        let mut h = verifier().check(&offer).unwrap();
        for chunk in img.chunks(997) {
            h.update(chunk).unwrap();
        }
        assert_eq!(h.progress(), 100);
        h.finish().unwrap();
    }

    #[test]
    fn tampered_manifest_is_refused() {
        let img = image();
        let bytes = signed_offer(&key(1), manifest("1.5.0", img.len() as u64, &sha_hex(&img)));
        let tampered = String::from_utf8(bytes).unwrap().replace("fw.example", "evil.example");
        let offer = Offer::parse(tampered.as_bytes()).unwrap();
        assert_eq!(verifier().check(&offer).err(), Some(OtaError::SignatureMismatch));
    }

    #[test]
    fn extra_manifest_member_is_covered_by_the_signature() {
        let img = image();
        let bytes = signed_offer(&key(1), manifest("1.5.0", img.len() as u64, &sha_hex(&img)));
        let mut v: Value = serde_json::from_slice(&bytes).unwrap();
        v["manifest"]["force"] = json!(true);
        let offer = Offer::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(verifier().check(&offer).err(), Some(OtaError::SignatureMismatch));
    }

    #[test]
    fn wrong_key_is_refused() {
        let img = image();
        let offer = Offer::parse(&signed_offer(&key(2), manifest("1.5.0", img.len() as u64, &sha_hex(&img)))).unwrap();
        assert_eq!(verifier().check(&offer).err(), Some(OtaError::SignatureMismatch));
    }

    #[test]
    fn undecodable_signature_is_refused() {
        let img = image();
        let mut m = manifest("1.5.0", img.len() as u64, &sha_hex(&img));
        m.insert("sig".into(), json!("!!notbase64!!"));
        let offer = Offer::parse(&serde_json::to_vec(&json!({"rollout":"r","manifest":m})).unwrap()).unwrap();
        assert_eq!(verifier().check(&offer).err(), Some(OtaError::BadSignatureEncoding));
        m.insert("sig".into(), json!("AAAA"));
        let offer = Offer::parse(&serde_json::to_vec(&json!({"rollout":"r","manifest":m})).unwrap()).unwrap();
        assert_eq!(verifier().check(&offer).err(), Some(OtaError::BadSignatureEncoding));
    }

    #[test]
    fn tampered_image_fails_the_final_check() {
        let img = image();
        let offer = Offer::parse(&signed_offer(&key(1), manifest("1.5.0", img.len() as u64, &sha_hex(&img)))).unwrap();
        let mut h = verifier().check(&offer).unwrap();
        let mut bad = img.clone();
        bad[5000] ^= 1;
        h.update(&bad).unwrap();
        assert_eq!(h.finish(), Err(OtaError::HashMismatch));
    }

    #[test]
    fn short_or_overlong_image_is_refused() {
        let img = image();
        let mut h = ImageHasher::new(&sha_hex(&img), img.len() as u64);
        h.update(&img[..100]).unwrap();
        assert!(matches!(h.finish(), Err(OtaError::SizeMismatch { .. })));
        let mut h = ImageHasher::new(&sha_hex(&img), img.len() as u64);
        h.update(&img).unwrap();
        assert!(matches!(h.update(&[0]), Err(OtaError::ImageOverrun { .. })));
    }

    #[test]
    fn downgrade_and_same_version_are_refused() {
        let img = image();
        for v in ["1.4.1", "1.4.2", "v1.4.2", "1.4.2-rc.1", "0.9"] {
            let offer = Offer::parse(&signed_offer(&key(1), manifest(v, img.len() as u64, &sha_hex(&img)))).unwrap();
            assert!(matches!(verifier().check(&offer), Err(OtaError::NotNewer { .. })), "{v}");
        }
    }

    #[test]
    fn too_large_image_is_refused() {
        let offer = Offer::parse(&signed_offer(&key(1), manifest("2.0.0", PARTITION + 1, &"0".repeat(64)))).unwrap();
        assert_eq!(
            verifier().check(&offer).err(),
            Some(OtaError::TooLarge { size: PARTITION + 1, partition: PARTITION })
        );
    }

    #[test]
    fn malformed_offers_are_refused() {
        for bad in [
            &b"nope"[..],
            br#"{"manifest":{}}"#,
            br#"{"rollout":"r","manifest":{"version":"1","size":1,"sha256":"xyz","url":"u","sig":"s"}}"#,
            br#"{"rollout":"r","manifest":{"version":"1","size":0,"sha256":"0000000000000000000000000000000000000000000000000000000000000000","url":"u","sig":"s"}}"#,
        ] {
            assert!(matches!(Offer::parse(bad), Err(OtaError::MalformedOffer(_))));
        }
    }

    #[test]
    fn semverish_ordering() {
        use Ordering::*;
        for (a, b, o) in [
            ("1.10.0", "1.9.9", Greater),
            ("1.0", "1.0.0", Equal),
            ("v2.0.0", "1.99.99", Greater),
            ("1.0.0-rc.1", "1.0.0", Less),
            ("1.0.0-rc.2", "1.0.0-rc.10", Less),
            ("1.0.0-alpha", "1.0.0-beta", Less),
            ("1.0.0-alpha", "1.0.0-alpha.1", Less),
            ("1.0.0+build5", "1.0.0", Equal),
        ] {
            assert_eq!(compare_versions(a, b).unwrap(), o, "{a} vs {b}");
        }
        assert!(compare_versions("1.x", "1.0").is_err());
        assert!(compare_versions("", "1.0").is_err());
    }

    #[test]
    fn slot_state_machine_happy_path_and_rollback() {
        let mut s = OtaSlot::default();
        for (e, want) in [
            (SlotEvent::Start, SlotState::Downloading),
            (SlotEvent::DownloadComplete, SlotState::Verifying),
            (SlotEvent::VerifyOk, SlotState::PendingReboot),
            (SlotEvent::Rebooted, SlotState::PendingVerify),
            (SlotEvent::MarkValid, SlotState::Valid),
        ] {
            assert_eq!(s.apply(e), Ok(want));
        }
        let mut s = OtaSlot { state: SlotState::PendingVerify };
        assert_eq!(s.apply(SlotEvent::Rollback), Ok(SlotState::RolledBack));
        assert_eq!(s.apply(SlotEvent::Start), Ok(SlotState::Downloading));
        assert_eq!(s.apply(SlotEvent::Abort), Ok(SlotState::Idle));
    }

    #[test]
    fn slot_refuses_invalid_transitions() {
        use SlotEvent as E;
        use SlotState as S;
        let all = [
            E::Start,
            E::DownloadComplete,
            E::Abort,
            E::VerifyOk,
            E::VerifyFailed,
            E::Rebooted,
            E::MarkValid,
            E::Rollback,
        ];
        let allowed = |s: S, e: E| {
            matches!(
                (s, e),
                (S::Idle | S::Valid | S::RolledBack, E::Start)
                    | (S::Downloading, E::DownloadComplete | E::Abort)
                    | (S::Verifying, E::VerifyOk | E::VerifyFailed)
                    | (S::PendingReboot, E::Rebooted)
                    | (S::PendingVerify, E::MarkValid | E::Rollback)
            )
        };
        for st in [S::Idle, S::Downloading, S::Verifying, S::PendingReboot, S::PendingVerify, S::Valid, S::RolledBack] {
            for e in all {
                let mut s = OtaSlot { state: st };
                let r = s.apply(e);
                assert_eq!(r.is_ok(), allowed(st, e), "{st:?} + {e:?}");
                if r.is_err() {
                    assert_eq!(s.state(), st, "refused transition must not change state");
                    assert_eq!(r, Err(OtaError::InvalidTransition { from: st, event: e }));
                }
            }
        }
    }

    /// RFC 8032 §7.1 test 1 key pair: the golden offer fixture is signed with it (by
    /// Node's `crypto.sign`, so this also checks both sides build the same bytes).
    const FIXTURE_PUBLIC_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    #[test]
    fn golden_offer_fixture_verifies_and_its_chip_is_enforced() {
        use crate::contracts::{INVALID_OTA_OFFER_JSON, OTA_OFFER_SCHEMA_JSON, VALID_OTA_OFFER_JSON};
        let key = parse_public_key_hex(FIXTURE_PUBLIC_KEY).unwrap();
        let offer = Offer::parse(VALID_OTA_OFFER_JSON.trim().as_bytes()).unwrap();
        assert_eq!((offer.rollout.as_str(), offer.manifest.chip.as_deref()), ("r-42", Some("esp32-s3")));
        let s3 = OtaVerifier::new(&key, "1.4.2", PARTITION, "esp32-s3").unwrap();
        assert!(s3.check(&offer).is_ok());
        let plain = OtaVerifier::new(&key, "1.4.2", PARTITION, "esp32").unwrap();
        assert!(matches!(plain.check(&offer), Err(OtaError::WrongChip { .. })));
        assert!(Offer::parse(INVALID_OTA_OFFER_JSON.as_bytes()).is_err());
        // The schema describes the optional chip with the pattern implemented here.
        let schema: Value = serde_json::from_str(OTA_OFFER_SCHEMA_JSON).unwrap();
        let chip = &schema["properties"]["manifest"]["properties"]["chip"];
        assert_eq!(chip["pattern"], "^[a-z0-9][a-z0-9-]{0,31}$");
        let required = schema["properties"]["manifest"]["required"].as_array().unwrap();
        assert!(!required.contains(&json!("chip")));
    }

    #[test]
    fn image_for_another_chip_is_refused_and_an_unstated_chip_is_accepted() {
        let img = image();
        let mut m = manifest("1.5.0", img.len() as u64, &sha_hex(&img));
        m.insert("chip".into(), json!("esp32"));
        let offer = Offer::parse(&signed_offer(&key(1), m.clone())).unwrap();
        assert_eq!(offer.manifest.chip.as_deref(), Some("esp32"));
        assert_eq!(
            verifier().check(&offer).err(),
            Some(OtaError::WrongChip { device: "esp32-s3".into(), image: "esp32".into() })
        );
        m.insert("chip".into(), json!("esp32-s3"));
        assert!(verifier().check(&Offer::parse(&signed_offer(&key(1), m)).unwrap()).is_ok());
        let unstated = Offer::parse(&signed_offer(&key(1), manifest("1.5.0", 1, &sha_hex(&img)))).unwrap();
        assert_eq!(unstated.manifest.chip, None);
        assert!(verifier().check(&unstated).is_ok());
    }

    #[test]
    fn chip_is_covered_by_the_signature() {
        let img = image();
        let mut m = manifest("1.5.0", img.len() as u64, &sha_hex(&img));
        m.insert("chip".into(), json!("esp32"));
        let bytes = String::from_utf8(signed_offer(&key(1), m)).unwrap();
        let forged = bytes.replace(r#""chip":"esp32""#, r#""chip":"esp32-s3""#);
        assert_ne!(forged, bytes);
        let offer = Offer::parse(forged.as_bytes()).unwrap();
        assert_eq!(verifier().check(&offer).err(), Some(OtaError::SignatureMismatch));
    }

    #[test]
    fn signature_is_checked_before_anything_else() {
        // An unsigned downgrade for another chip reports the signature, not what it claims.
        let mut m = manifest("0.1.0", PARTITION + 1, &"0".repeat(64));
        m.insert("chip".into(), json!("esp32"));
        let offer = Offer::parse(&signed_offer(&key(9), m)).unwrap();
        assert_eq!(verifier().check(&offer).err(), Some(OtaError::SignatureMismatch));
    }

    #[test]
    fn chip_and_numbers_are_validated_at_parse_time() {
        let sha = "0".repeat(64);
        for (chip, ok) in [("esp32", true), ("esp32-s3", true), ("", false), ("ESP32", false), ("-x", false)] {
            let m = json!({"version":"1","size":1,"sha256":sha,"url":"u","sig":"s","chip":chip});
            let r = Offer::parse(&serde_json::to_vec(&json!({"rollout":"r","manifest":m})).unwrap());
            assert_eq!(r.is_ok(), ok, "{chip:?}");
        }
        let m = json!({"version":"1","size":1,"sha256":sha,"url":"u","sig":"s","chip":7});
        assert!(Offer::parse(&serde_json::to_vec(&json!({"rollout":"r","manifest":m})).unwrap()).is_err());
        let m = json!({"version":"1","size":1,"sha256":sha,"url":"u","sig":"s","extra":{"ratio":0.5}});
        assert!(matches!(
            Offer::parse(&serde_json::to_vec(&json!({"rollout":"r","manifest":m})).unwrap()),
            Err(OtaError::MalformedOffer(_))
        ));
        assert!(!is_valid_chip(&"a".repeat(33)) && is_valid_chip(&"a".repeat(32)));
    }

    #[test]
    fn public_key_hex_is_parsed_and_checked() {
        let pk = key(1).verifying_key().to_bytes();
        let hex: String = pk.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_public_key_hex(&hex), Ok(pk));
        assert_eq!(parse_public_key_hex(&hex.to_uppercase()), Ok(pk));
        for bad in ["", "00", &hex[..62], &format!("{}zz", &hex[..62]), &format!("{hex}00")] {
            assert_eq!(parse_public_key_hex(bad), Err(OtaError::BadPublicKey), "{bad}");
        }
    }

    #[test]
    fn errors_read_as_sentences_for_status_reports() {
        let e = OtaError::NotNewer { current: "1.4.2".into(), offered: "1.4.1".into() };
        assert_eq!(e.to_string(), "version 1.4.1 is not newer than the running 1.4.2 (downgrade refused)");
        let e = OtaError::WrongChip { device: "esp32".into(), image: "esp32-s3".into() };
        assert_eq!(e.to_string(), "image is built for chip esp32-s3, this device is esp32");
    }

    #[test]
    fn canonical_json_matches_json_stringify_for_escapes_and_nesting() {
        // Expected strings are what `JSON.stringify` prints for the key-sorted object.
        let m = json!({
            "version": "1.0.0", "sig": "x", "url": "https://h/a?b=1&c=\"d\"\\e/é\u{1}\n",
            "z": [3, {"b": -1, "a": null}], "a": true
        });
        let s = String::from_utf8(canonical_manifest_bytes(m.as_object().unwrap())).unwrap();
        assert_eq!(
            s,
            r#"{"a":true,"url":"https://h/a?b=1&c=\"d\"\\e/é\u0001\n","version":"1.0.0","z":[3,{"a":null,"b":-1}]}"#
        );
    }

    #[test]
    fn slot_persists_across_reboot_and_interrupted_download_restarts() {
        let mut st = MemStorage::default();
        let s = OtaSlot { state: SlotState::PendingReboot };
        s.save(&mut st);
        assert_eq!(OtaSlot::load(&st).state(), SlotState::PendingReboot);
        OtaSlot { state: SlotState::Downloading }.save(&mut st);
        assert_eq!(OtaSlot::load(&st).state(), SlotState::Idle);
        assert_eq!(OtaSlot::load(&MemStorage::default()).state(), SlotState::Idle);
    }

    #[test]
    fn slot_state_names_are_their_serialised_names() {
        use SlotState as S;
        for s in [S::Idle, S::Downloading, S::Verifying, S::PendingReboot, S::PendingVerify, S::Valid, S::RolledBack] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
