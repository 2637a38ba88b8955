//! [`watch`]: being told when the repository may have changed.

use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tracing::{debug, warn};

use crate::RegistryError;
use crate::scan::check_root;

/// How long the filesystem must be quiet after an event before
/// [`RepositoryWatcher::changed`] resolves: a publish or a `cp -r` makes a
/// burst of events, and the caller should rescan once, after it.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// The longest a burst of events can postpone the wake-up: a slow copy that
/// writes continuously still causes a rescan every this often.
pub const MAX_DEBOUNCE_DELAY: Duration = Duration::from_secs(2);

/// Why a [`RepositoryWatcher`] woke its owner. Either way, the owner should
/// [`scan`](crate::Repository::scan) and compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wake {
    /// Something under the root changed (after [`DEBOUNCE`]).
    Changed,
    /// The periodic rescan interval elapsed with no reported change: a safety
    /// net for changes the filesystem does not report (network filesystems,
    /// overflowed event queues, no notify watcher at all).
    Rescan,
}

/// Watches a model repository; see [`watch`]. Dropping it stops the
/// filesystem watcher and the timer thread.
pub struct RepositoryWatcher {
    shared: Arc<Shared>,
    fs_watcher: Option<RecommendedWatcher>,
    control: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    root: PathBuf,
}

/// Watches `root` (recursively) for changes and ticks every `rescan_every`.
///
/// Await [`RepositoryWatcher::changed`] in a loop and rescan each time it
/// resolves. It resolves [`Wake::Changed`] once a burst of filesystem events
/// under `root` has been quiet for [`DEBOUNCE`], and [`Wake::Rescan`] when
/// `rescan_every` has passed since the last wake-up without any change.
/// Wake-ups are coalesced: however many happen between two calls, the next
/// call sees one (`Changed` if any of them was).
///
/// Events that cannot mean a change are ignored: reads and opens (scans and
/// [`verify`](crate::verify) cause those), and anything inside hidden
/// directories such as `publish`'s `.tmp-publish-*` staging directories (the
/// final rename is seen under its visible name).
///
/// If the platform watcher cannot be created (e.g. the inotify watch or
/// instance limit is reached), this logs a warning and falls back to the
/// periodic rescans alone; see [`RepositoryWatcher::is_watching_files`].
///
/// Needs no Tokio runtime to be created; `changed` can be awaited on any
/// executor. Errors if `root` is not a directory or `rescan_every` is zero.
pub fn watch(root: &Path, rescan_every: Duration) -> Result<RepositoryWatcher, RegistryError> {
    check_root(root)?;
    if rescan_every.is_zero() {
        return Err(RegistryError::ZeroRescanInterval);
    }
    let shared = Arc::new(Shared {
        pending: Mutex::new(None),
        notify: tokio::sync::Notify::new(),
    });
    let (control, rx) = mpsc::channel();

    let fs_watcher = match start_fs_watcher(root, control.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(
                root = %root.display(),
                "cannot watch model repository {} for changes ({e}); falling back to rescanning every {rescan_every:?}",
                root.display()
            );
            None
        }
    };

    let thread = {
        let shared = Arc::clone(&shared);
        let thread_root = root.to_owned();
        std::thread::Builder::new()
            .name("sluice-repo-watch".to_owned())
            .spawn(move || run_timer(&thread_root, rescan_every, &rx, &shared))
            .map_err(|e| RegistryError::io("start the watcher thread for", root, e))?
    };

    Ok(RepositoryWatcher {
        shared,
        fs_watcher,
        control,
        thread: Some(thread),
        root: root.to_owned(),
    })
}

impl crate::Repository {
    /// [`watch`]es this repository's root.
    pub fn watch(&self, rescan_every: Duration) -> Result<RepositoryWatcher, RegistryError> {
        watch(self.root(), rescan_every)
    }
}

impl RepositoryWatcher {
    /// Resolves when the repository may have changed, or when the periodic
    /// rescan is due; see [`watch`]. Cancel-safe: dropping the future (e.g. in
    /// `tokio::select!`) loses no wake-up.
    pub async fn changed(&mut self) -> Wake {
        loop {
            if let Some(wake) = self.try_changed() {
                return wake;
            }
            // A wake-up signalled between the check above and this await left
            // a permit in the Notify, so this returns at once.
            self.shared.notify.notified().await;
        }
    }

    /// The pending wake-up, if any, without waiting.
    pub fn try_changed(&mut self) -> Option<Wake> {
        self.shared.take()
    }

    /// Whether filesystem events are being watched (false after falling back
    /// to periodic rescans only).
    pub fn is_watching_files(&self) -> bool {
        self.fs_watcher.is_some()
    }

    /// The watched root.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl std::fmt::Debug for RepositoryWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryWatcher")
            .field("root", &self.root)
            .field("watching_files", &self.is_watching_files())
            .finish_non_exhaustive()
    }
}

impl Drop for RepositoryWatcher {
    fn drop(&mut self) {
        // Stop the event source first, then the timer thread; it wakes at once
        // on the message, so joining does not block.
        drop(self.fs_watcher.take());
        let _ = self.control.send(Msg::Stop);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!(root = %self.root.display(), "the repository watcher thread panicked");
        }
    }
}

enum Msg {
    Fs(notify::Result<notify::Event>),
    Stop,
}

/// The wake-up state shared by the timer thread and the owner.
struct Shared {
    pending: Mutex<Option<Wake>>,
    notify: tokio::sync::Notify,
}

impl Shared {
    fn signal(&self, wake: Wake) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            *pending = Some(match (*pending, wake) {
                (Some(Wake::Changed), _) | (_, Wake::Changed) => Wake::Changed,
                _ => Wake::Rescan,
            });
        }
        self.notify.notify_one();
    }

    fn take(&self) -> Option<Wake> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

fn start_fs_watcher(root: &Path, tx: mpsc::Sender<Msg>) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res| {
        // The receiver is gone only while the handle is being dropped.
        let _ = tx.send(Msg::Fs(res));
    })?;
    watcher.watch(root, RecursiveMode::Recursive)?;
    Ok(watcher)
}

/// The timer thread: debounces filesystem events and ticks.
fn run_timer(root: &Path, every: Duration, rx: &mpsc::Receiver<Msg>, shared: &Shared) {
    let mut next_tick = Instant::now() + every;
    // (fire at, first event of the burst)
    let mut burst: Option<(Instant, Instant)> = None;
    loop {
        let deadline = burst.map_or(next_tick, |(at, _)| at.min(next_tick));
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Msg::Fs(res)) => {
                if is_relevant(root, &res) {
                    let now = Instant::now();
                    burst = Some(match burst {
                        None => (now + DEBOUNCE, now),
                        Some((_, first)) => {
                            ((now + DEBOUNCE).min(first + MAX_DEBOUNCE_DELAY), first)
                        }
                    });
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        if let Some((at, _)) = burst
            && now >= at
        {
            burst = None;
            next_tick = now + every;
            debug!(root = %root.display(), "model repository changed");
            shared.signal(Wake::Changed);
        } else if now >= next_tick {
            next_tick = now + every;
            shared.signal(Wake::Rescan);
        }
    }
}

/// Whether a notify event may mean the repository changed.
fn is_relevant(root: &Path, res: &notify::Result<notify::Event>) -> bool {
    let event = match res {
        Ok(event) => event,
        Err(e) => {
            // E.g. the event queue overflowed: something changed, we do not
            // know what, so rescan.
            warn!(root = %root.display(), "model repository watcher error: {e}");
            return true;
        }
    };
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    event.paths.is_empty() || event.paths.iter().any(|p| !is_hidden_under(root, p))
}

/// Whether `path` is inside (or is) a hidden entry below `root`.
fn is_hidden_under(root: &Path, path: &Path) -> bool {
    path.strip_prefix(root).is_ok_and(|rel| {
        rel.components().any(|c| match c {
            Component::Normal(name) => name.as_encoded_bytes().starts_with(b"."),
            _ => false,
        })
    })
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, ModifyKind, RenameMode};

    use super::*;

    fn event(kind: EventKind, paths: &[&str]) -> notify::Result<notify::Event> {
        let mut e = notify::Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        Ok(e)
    }

    #[test]
    fn relevance_filter() {
        let root = Path::new("/r");
        let create = EventKind::Create(CreateKind::Folder);
        assert!(is_relevant(root, &event(create, &["/r/iris"])));
        assert!(is_relevant(root, &event(create, &["/r/iris/3"])));
        assert!(!is_relevant(
            root,
            &event(create, &["/r/iris/.tmp-publish-1-2"])
        ));
        assert!(!is_relevant(
            root,
            &event(create, &["/r/iris/.tmp-publish-1-2/model.onnx"])
        ));
        // The rename out of the staging directory counts.
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert!(is_relevant(
            root,
            &event(both, &["/r/iris/.tmp-publish-1-2", "/r/iris/3"])
        ));
        // Scans and verify open and read files; that is no change.
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(!is_relevant(root, &event(open, &["/r/iris/3/model.onnx"])));
        let close_read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert!(!is_relevant(
            root,
            &event(close_read, &["/r/iris/model.toml"])
        ));
        let close_write = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(is_relevant(
            root,
            &event(close_write, &["/r/iris/model.toml"])
        ));
        assert!(is_relevant(root, &Err(notify::Error::generic("overflow"))));
        assert!(is_relevant(root, &event(EventKind::Other, &[])));
    }
}
