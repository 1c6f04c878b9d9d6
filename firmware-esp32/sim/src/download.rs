//! Streams an OTA image over HTTP(S) into the inactive slot file, through the core's
//! SHA-256 [`ImageHasher`]. An interrupted transfer (connection drop, short body, stall)
//! resumes with `Range: bytes=<received>-`; a server that answers 200 instead of 206
//! makes it start over from byte 0. Retries are spaced by the core's full-jitter
//! backoff and bounded by the core's [`AttemptBudget`]; the decisions themselves
//! (range header, meaning of an answer) come from `fleetwire_core::ota_download`.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use fleetwire_core::backoff::{Backoff, BackoffConfig};
use fleetwire_core::ota::{ImageHasher, OtaError};
use fleetwire_core::ota_download::{plan_response, range_header, AttemptBudget, AttemptError, Plan};
use fleetwire_core::platform::XorShiftRng;
use fleetwire_core::secret::Secret;
use tokio::sync::mpsc;

use crate::http::HttpClient;
use crate::log::Level;
use crate::sim_log;

#[derive(Debug, Clone)]
pub struct DownloadPolicy {
    /// Give up after this many failed attempts in a row that brought no new bytes.
    pub max_fruitless_attempts: u32,
    /// Spacing of retries (full jitter, reset when an attempt made progress).
    pub retry: BackoffConfig,
    /// A body that delivers nothing for this long counts as interrupted.
    pub idle_timeout: Duration,
}

impl Default for DownloadPolicy {
    fn default() -> Self {
        DownloadPolicy {
            max_fruitless_attempts: 6,
            retry: BackoffConfig { base_ms: 1_000, cap_ms: 30_000, max_stretch: 1.0, ..BackoffConfig::default() },
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// One image to fetch into `slot`, possibly already partly there.
pub struct Download {
    pub url: String,
    pub size: u64,
    pub sha256: String,
    pub slot: PathBuf,
    /// Bytes already in the slot, and already fed to `hasher`.
    pub received: u64,
    pub hasher: ImageHasher,
    /// Sent as `Authorization: Bearer …` with every request (Range resumes too): the
    /// device's token, set by the core only for the server's own origin.
    pub bearer: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// All bytes arrived but the size or SHA-256 check failed.
    Verify(OtaError),
    /// The image could not be fetched.
    Fetch(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bytes written to the slot so far.
    Progress(u64),
    /// The last event of a download.
    Done(Result<(), Failure>),
}

/// Fetch `dl`, reporting on `events`; ends with exactly one [`Event::Done`].
pub async fn run(
    mut dl: Download,
    http: HttpClient,
    policy: DownloadPolicy,
    device: String,
    seed: u64,
    events: mpsc::UnboundedSender<Event>,
) {
    let result = fetch(&mut dl, &http, &policy, &device, seed, &events).await;
    let done = match result {
        Ok(()) => dl.hasher.finish().map_err(Failure::Verify),
        Err(e) => Err(Failure::Fetch(e)),
    };
    let _ = events.send(Event::Done(done));
}

async fn fetch(
    dl: &mut Download,
    http: &HttpClient,
    policy: &DownloadPolicy,
    device: &str,
    seed: u64,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<(), String> {
    // Plain std::fs: chunk writes land in the page cache in microseconds, less than a
    // blocking-pool round trip would cost.
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&dl.slot)
        .map_err(|e| format!("slot {}: {e}", dl.slot.display()))?;
    let mut budget = AttemptBudget::new(policy.max_fruitless_attempts);
    let mut backoff = Backoff::new(policy.retry);
    let mut rng = XorShiftRng::new(seed);
    loop {
        let before = dl.received;
        let error = match attempt(dl, http, &mut file, policy, events).await {
            Ok(()) => return file.sync_data().map_err(|e| format!("slot write: {e}")),
            Err(AttemptError::Fatal(e)) => return Err(e),
            Err(AttemptError::Retry(e)) => e,
        };
        let progressed = dl.received.saturating_sub(before);
        if !budget.failed(progressed) {
            return Err(format!("{error} (gave up after {} attempts without progress)", budget.fruitless()));
        }
        if progressed > 0 {
            backoff = Backoff::new(policy.retry);
        }
        let delay = Duration::from_millis(backoff.next_delay_ms(&mut rng));
        sim_log!(
            Level::Warn,
            device,
            "ota-download-retry",
            error = error,
            received = dl.received,
            size = dl.size,
            in_ms = delay.as_millis()
        );
        tokio::time::sleep(delay).await;
    }
}

/// One GET. `Ok` once all `size` bytes are in the slot.
async fn attempt(
    dl: &mut Download,
    http: &HttpClient,
    file: &mut File,
    policy: &DownloadPolicy,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<(), AttemptError> {
    let range = range_header(dl.received);
    let authorization = dl.bearer.as_ref().map(|t| Secret::new(format!("Bearer {}", t.expose())));
    let mut resp = http.get(&dl.url, range.as_deref(), authorization.as_ref()).await.map_err(AttemptError::Retry)?;
    let io = |e: std::io::Error| AttemptError::Fatal(format!("slot write: {e}"));
    if plan_response(dl.received, resp.status, resp.content_range.as_deref(), dl.size)? == Plan::Restart {
        dl.received = 0;
        dl.hasher = ImageHasher::new(&dl.sha256, dl.size);
        file.set_len(0).map_err(io)?;
        let _ = events.send(Event::Progress(0));
    }
    file.seek(SeekFrom::Start(dl.received)).map_err(io)?;
    loop {
        let chunk = match tokio::time::timeout(policy.idle_timeout, resp.chunk()).await {
            Err(_) => {
                return Err(AttemptError::Retry(format!("no data for {} s", policy.idle_timeout.as_secs())));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(AttemptError::Retry(format!("interrupted: {e}"))),
            Ok(Some(Ok(chunk))) => chunk,
        };
        // Hash first: it refuses bytes past the manifest's size before they are written.
        dl.hasher.update(&chunk).map_err(|e| AttemptError::Fatal(e.to_string()))?;
        file.write_all(&chunk).map_err(io)?;
        dl.received += chunk.len() as u64;
        let _ = events.send(Event::Progress(dl.received));
    }
    if dl.received < dl.size {
        return Err(AttemptError::Retry(format!("body ended at byte {} of {}", dl.received, dl.size)));
    }
    Ok(())
}

#[cfg(test)]
#[path = "download_tests.rs"]
mod tests;
