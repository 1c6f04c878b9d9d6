//! The image download against [`ImageServer`] on a real loopback socket (real time).

use std::time::Duration;

use fleetwire_core::backoff::BackoffConfig;
use fleetwire_core::ota::{ImageHasher, OtaError};
use fleetwire_core::secret::Secret;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{run, Download, DownloadPolicy, Event, Failure};
use crate::flash::TempDir;
use crate::http::HttpClient;
use crate::testkit::{ImageBehaviour, ImageServer};

fn image() -> Vec<u8> {
    (0..100_000u32).map(|i| (i * 7 % 253) as u8).collect()
}

fn sha_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn http() -> HttpClient {
    let tls = crate::tls::client_config(&crate::tls::Trust { ca_file: None, webpki_roots: true }).unwrap();
    HttpClient::new(tls, Duration::from_secs(5))
}

fn policy() -> DownloadPolicy {
    DownloadPolicy {
        max_fruitless_attempts: 3,
        retry: BackoffConfig { base_ms: 5, cap_ms: 20, max_stretch: 1.0, ..BackoffConfig::default() },
        idle_timeout: Duration::from_millis(500),
    }
}

struct Outcome {
    progress: Vec<u64>,
    done: Result<(), Failure>,
    slot: Vec<u8>,
}

/// Download `url` into a fresh slot that already holds `prefix`.
async fn fetch(url: &str, img: &[u8], sha: &str, prefix: &[u8]) -> Outcome {
    fetch_with(url, img, sha, prefix, None).await
}

/// [`fetch`], sending `bearer` as the device's token.
async fn fetch_with(url: &str, img: &[u8], sha: &str, prefix: &[u8], bearer: Option<&str>) -> Outcome {
    let dir = TempDir::new("fleetwire-dl-test").unwrap();
    let slot = dir.path().join("ota_1.bin");
    std::fs::write(&slot, prefix).unwrap();
    let mut hasher = ImageHasher::new(sha, img.len() as u64);
    hasher.update(prefix).unwrap();
    let dl = Download {
        url: url.to_owned(),
        size: img.len() as u64,
        sha256: sha.to_owned(),
        slot: slot.clone(),
        received: prefix.len() as u64,
        hasher,
        bearer: bearer.map(Secret::new),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(run(dl, http(), policy(), "esp-01".into(), 1, tx));
    let mut progress = Vec::new();
    let done = loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("download hangs").unwrap() {
            Event::Progress(n) => progress.push(n),
            Event::Done(r) => break r,
        }
    };
    Outcome { progress, done, slot: std::fs::read(&slot).unwrap() }
}

#[tokio::test]
async fn a_good_image_streams_into_the_slot_with_increasing_progress() {
    let img = image();
    let server = ImageServer::start(img.clone(), ImageBehaviour::default()).await;
    let o = fetch(&server.url, &img, &sha_hex(&img), &[]).await;
    assert_eq!(o.done, Ok(()));
    assert_eq!(o.slot, img);
    assert!(o.progress.windows(2).all(|w| w[0] < w[1]), "{:?}", o.progress);
    assert_eq!(o.progress.last(), Some(&(img.len() as u64)));
    assert_eq!(server.ranges(), [None]);
}

#[tokio::test]
async fn a_cut_connection_resumes_with_a_range_request() {
    let img = image();
    let server =
        ImageServer::start(img.clone(), ImageBehaviour { cut_once_after: Some(30_000), ..Default::default() }).await;
    let o = fetch(&server.url, &img, &sha_hex(&img), &[]).await;
    assert_eq!(o.done, Ok(()));
    assert_eq!(o.slot, img);
    assert_eq!(server.ranges(), [None, Some("bytes=30000-".into())]);
}

#[tokio::test]
async fn a_server_answering_200_to_a_range_restarts_from_zero() {
    let img = image();
    let behaviour = ImageBehaviour { cut_once_after: Some(30_000), ignore_range: true, ..Default::default() };
    let server = ImageServer::start(img.clone(), behaviour).await;
    let o = fetch(&server.url, &img, &sha_hex(&img), &[]).await;
    assert_eq!(o.done, Ok(()));
    assert_eq!(o.slot, img, "no bytes of the first attempt are left in front");
    assert_eq!(server.ranges(), [None, Some("bytes=30000-".into())]);
    assert!(o.progress.contains(&0), "the restart is reported");
}

#[tokio::test]
async fn a_partly_filled_slot_is_resumed_where_it_ends() {
    let img = image();
    let server = ImageServer::start(img.clone(), ImageBehaviour::default()).await;
    let o = fetch(&server.url, &img, &sha_hex(&img), &img[..12_345]).await;
    assert_eq!(o.done, Ok(()));
    assert_eq!(o.slot, img);
    assert_eq!(server.ranges(), [Some("bytes=12345-".into())]);
}

#[tokio::test]
async fn a_corrupted_image_fails_the_hash_check() {
    let img = image();
    let mut bad = img.clone();
    bad[50_000] ^= 0xff;
    let server = ImageServer::start(bad, ImageBehaviour::default()).await;
    let o = fetch(&server.url, &img, &sha_hex(&img), &[]).await;
    assert_eq!(o.done, Err(Failure::Verify(OtaError::HashMismatch)));
}

#[tokio::test]
async fn a_longer_image_is_refused_before_it_overruns_the_slot() {
    let img = image();
    let mut long = img.clone();
    long.extend_from_slice(b"trailing");
    let server = ImageServer::start(long, ImageBehaviour::default()).await;
    let o = fetch(&server.url, &img, &sha_hex(&img), &[]).await;
    assert!(matches!(o.done, Err(Failure::Fetch(ref e)) if e.contains("more than")), "{:?}", o.done);
    assert!(o.slot.len() <= img.len());
}

#[tokio::test]
async fn client_errors_fail_at_once_and_dead_servers_after_bounded_attempts() {
    let img = image();
    let server = ImageServer::start(img.clone(), ImageBehaviour { status: Some(404), ..Default::default() }).await;
    let o = fetch(&server.url, &img, &sha_hex(&img), &[]).await;
    assert_eq!(o.done, Err(Failure::Fetch("HTTP 404".into())));
    assert_eq!(server.ranges().len(), 1);

    let server = ImageServer::start(img.clone(), ImageBehaviour { status: Some(503), ..Default::default() }).await;
    let o = fetch(&server.url, &img, &sha_hex(&img), &[]).await;
    assert!(matches!(o.done, Err(Failure::Fetch(ref e)) if e.contains("gave up after 3")), "{:?}", o.done);
    assert_eq!(server.ranges().len(), 3);
}

#[tokio::test]
async fn a_stalled_body_counts_as_interrupted() {
    let img = image();
    let server = ImageServer::start(img.clone(), ImageBehaviour { stall_at: Some(10_000), ..Default::default() }).await;
    let o = fetch(&server.url, &img, &sha_hex(&img), &[]).await;
    assert!(matches!(o.done, Err(Failure::Fetch(ref e)) if e.contains("no data")), "{:?}", o.done);
    // Progress on the first attempt, then two fruitless ones from the same offset.
    assert_eq!(server.ranges(), [None, Some("bytes=10000-".into()), Some("bytes=10000-".into())]);
}

#[tokio::test]
async fn the_token_goes_with_every_request_when_given_and_never_otherwise() {
    let img = image();
    let server =
        ImageServer::start(img.clone(), ImageBehaviour { cut_once_after: Some(30_000), ..Default::default() }).await;
    let o = fetch_with(&server.url, &img, &sha_hex(&img), &[], Some("h.p.s")).await;
    assert_eq!(o.done, Ok(()));
    assert_eq!(server.ranges(), [None, Some("bytes=30000-".into())]);
    let bearer = Some("Bearer h.p.s".to_owned());
    assert_eq!(server.authorizations(), [bearer.clone(), bearer], "the Range resume carries it too");

    let server = ImageServer::start(img.clone(), ImageBehaviour::default()).await;
    assert_eq!(fetch(&server.url, &img, &sha_hex(&img), &[]).await.done, Ok(()));
    assert_eq!(server.authorizations(), [None]);
}

#[tokio::test]
async fn a_refused_download_fails_at_once_naming_the_status() {
    let img = image();
    for status in [401u16, 403] {
        let server =
            ImageServer::start(img.clone(), ImageBehaviour { status: Some(status), ..Default::default() }).await;
        let o = fetch_with(&server.url, &img, &sha_hex(&img), &[], Some("h.p.s")).await;
        assert!(
            matches!(o.done, Err(Failure::Fetch(ref e)) if e.starts_with(&format!("HTTP {status}: "))),
            "{:?}",
            o.done
        );
        assert_eq!(server.ranges().len(), 1, "not retried");
    }
}
