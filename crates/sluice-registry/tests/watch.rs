//! The repository watcher, on a real filesystem with real timers.

use std::fs;
use std::time::{Duration, Instant};

use sluice_registry::{RegistryError, Repository, Wake, verify, watch};
use tokio::time::timeout;

/// The bound on every wait for a wake-up that must come.
const LIMIT: Duration = Duration::from_secs(10);
/// No periodic rescan during the test.
const NEVER: Duration = Duration::from_secs(3600);

fn setup() -> (tempfile::TempDir, Repository, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    fs::create_dir(&root).unwrap();
    let src = dir.path().join("model.onnx");
    fs::write(&src, b"not really onnx").unwrap();
    let repo = Repository::open(&root).unwrap();
    (dir, repo, src)
}

#[tokio::test]
async fn fires_after_a_publish() {
    let (_dir, repo, src) = setup();
    let mut watcher = repo.watch(NEVER).unwrap();
    assert!(
        watcher.is_watching_files(),
        "the notify watcher could not be created on this system"
    );
    assert_eq!(watcher.try_changed(), None);

    repo.publish("iris", &src, None, Default::default())
        .unwrap();
    let wake = timeout(LIMIT, watcher.changed())
        .await
        .expect("no wake-up within 10 s of a publish");
    assert_eq!(wake, Wake::Changed);

    // After the burst settles, a second publish into the now-existing model
    // directory is seen too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = watcher.try_changed();
    repo.publish("iris", &src, None, Default::default())
        .unwrap();
    let wake = timeout(LIMIT, watcher.changed())
        .await
        .expect("no wake-up within 10 s of the second publish");
    assert_eq!(wake, Wake::Changed);
    assert_eq!(
        repo.scan().unwrap().models["iris"].available_versions(),
        [1, 2].into()
    );
}

#[tokio::test]
async fn fires_when_a_file_is_modified_in_place() {
    let (_dir, repo, src) = setup();
    let published = repo
        .publish("iris", &src, None, Default::default())
        .unwrap();
    let mut watcher = repo.watch(NEVER).unwrap();
    fs::write(published.dir.join("model.onnx"), b"changed").unwrap();
    let wake = timeout(LIMIT, watcher.changed())
        .await
        .expect("no wake-up within 10 s of a write");
    assert_eq!(wake, Wake::Changed);
}

#[tokio::test]
async fn a_burst_of_changes_is_coalesced() {
    let (_dir, repo, _src) = setup();
    let mut watcher = repo.watch(NEVER).unwrap();
    for i in 0..20 {
        fs::write(repo.root().join(format!("file-{i}")), b"x").unwrap();
    }
    assert_eq!(
        timeout(LIMIT, watcher.changed()).await.unwrap(),
        Wake::Changed
    );
    // Everything above happened well within one debounce window, so no
    // second wake-up follows.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(watcher.try_changed(), None);
}

#[tokio::test]
async fn fires_on_the_periodic_tick_without_changes() {
    let (_dir, repo, _src) = setup();
    let mut watcher = watch(repo.root(), Duration::from_millis(300)).unwrap();
    let started = Instant::now();
    for _ in 0..2 {
        let wake = timeout(LIMIT, watcher.changed())
            .await
            .expect("no periodic wake-up within 10 s");
        assert_eq!(wake, Wake::Rescan);
    }
    assert!(started.elapsed() >= Duration::from_millis(550));
}

#[tokio::test]
async fn reading_the_repository_is_not_a_change() {
    let (_dir, repo, src) = setup();
    repo.publish("iris", &src, None, Default::default())
        .unwrap();
    fs::write(repo.root().join("iris/model.toml"), "instances = 2\n").unwrap();
    let mut watcher = repo.watch(NEVER).unwrap();
    // What a serving loop does on every wake-up: scan, read configs, verify.
    for _ in 0..3 {
        let scan = repo.scan().unwrap();
        let entry = &scan.models["iris"].versions[&1];
        verify(entry, "iris").unwrap();
    }
    assert!(
        timeout(Duration::from_secs(1), watcher.changed())
            .await
            .is_err(),
        "scanning and verifying woke the watcher"
    );
}

#[test]
fn works_without_a_runtime_and_drops_promptly() {
    let (_dir, repo, _src) = setup();
    let mut watcher = repo.watch(Duration::from_millis(50)).unwrap();
    let deadline = Instant::now() + LIMIT;
    while watcher.try_changed().is_none() {
        assert!(Instant::now() < deadline, "no periodic wake-up");
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    drop(watcher);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn refuses_a_bad_root_or_interval() {
    let (dir, repo, _src) = setup();
    let err = watch(&dir.path().join("missing"), NEVER).unwrap_err();
    assert!(matches!(err, RegistryError::RootMissing { .. }), "{err:?}");
    let err = watch(repo.root(), Duration::ZERO).unwrap_err();
    assert!(matches!(err, RegistryError::ZeroRescanInterval), "{err:?}");
}

#[test]
fn the_watcher_and_its_future_can_move_across_threads() {
    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RegistryError>();
    let (_dir, repo, _src) = setup();
    let mut watcher = repo.watch(NEVER).unwrap();
    assert_send(&watcher);
    let future = watcher.changed();
    assert_send(&future);
}
