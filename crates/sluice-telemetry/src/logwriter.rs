//! Where log lines go: a buffer that a background thread flushes to stderr.
//!
//! A request's log line is formatted on the request's thread and appended to
//! a shared buffer (a mutex held only for the copy); a writer thread flushes
//! the buffer to stderr every few milliseconds, or sooner when it fills. So a
//! request never waits on stderr (a full pipe, a slow terminal), and, unlike
//! a channel with a line per message, writing a line wakes no thread: at low
//! request rates that wake-up cost more than the line itself. When stderr
//! falls so far behind that the buffer reaches its cap, lines are dropped and
//! the next flush says how many.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the writer thread flushes.
const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// A buffer this full wakes the writer at once.
const WAKE_AT: usize = 256 * 1024;
/// Lines beyond this much unflushed output are dropped.
const CAP: usize = 16 * 1024 * 1024;

struct Shared {
    buffer: Mutex<Vec<u8>>,
    wake: Condvar,
    dropped: AtomicU64,
    closed: AtomicBool,
}

/// The `MakeWriter` handed to the `fmt` layer. Cheap to clone.
#[derive(Clone)]
pub struct BufferedStderr {
    shared: Arc<Shared>,
}

/// Owns the writer thread; dropping it flushes what is left and stops it.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FlushGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushGuard").finish_non_exhaustive()
    }
}

fn flush(shared: &Shared, out: &mut impl Write) {
    let pending = std::mem::take(&mut *shared.buffer.lock().unwrap_or_else(|e| e.into_inner()));
    if !pending.is_empty() {
        let _ = out.write_all(&pending);
    }
    let dropped = shared.dropped.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let _ = writeln!(
            out,
            "sluice: {dropped} log lines dropped: stderr could not keep up"
        );
    }
    let _ = out.flush();
}

/// Starts the writer thread over `out` (stderr in the server).
pub fn buffered(out: impl Write + Send + 'static) -> (BufferedStderr, FlushGuard) {
    let shared = Arc::new(Shared {
        buffer: Mutex::new(Vec::with_capacity(64 * 1024)),
        wake: Condvar::new(),
        dropped: AtomicU64::new(0),
        closed: AtomicBool::new(false),
    });
    let for_thread = shared.clone();
    let thread = std::thread::Builder::new()
        .name("sluice-log".into())
        .spawn(move || {
            let mut out = out;
            loop {
                let closed = {
                    let buffer = for_thread.buffer.lock().unwrap_or_else(|e| e.into_inner());
                    let (buffer, _) = for_thread
                        .wake
                        .wait_timeout_while(buffer, FLUSH_EVERY, |b| {
                            b.len() < WAKE_AT && !for_thread.closed.load(Ordering::Relaxed)
                        })
                        .unwrap_or_else(|e| e.into_inner());
                    drop(buffer);
                    for_thread.closed.load(Ordering::Relaxed)
                };
                flush(&for_thread, &mut out);
                if closed {
                    break;
                }
            }
        })
        .expect("cannot start the log writer thread");
    (
        BufferedStderr {
            shared: shared.clone(),
        },
        FlushGuard {
            shared,
            thread: Some(thread),
        },
    )
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One log line's writer: appends to the shared buffer.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self.shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.len() + data.len() > CAP {
            drop(buffer);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            buffer.extend_from_slice(data);
            if buffer.len() >= WAKE_AT {
                self.shared.wake.notify_one();
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_in_order_and_all_are_flushed_on_drop() {
        use tracing_subscriber::fmt::MakeWriter;
        let sink = Sink::default();
        let (writer, guard) = buffered(sink.clone());
        for i in 0..1000 {
            writeln!(writer.make_writer(), "line {i}").unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[0], "line 0");
        assert_eq!(lines[999], "line 999");
    }

    #[test]
    fn lines_are_flushed_without_waiting_for_the_end() {
        use tracing_subscriber::fmt::MakeWriter;
        let sink = Sink::default();
        let (writer, _guard) = buffered(sink.clone());
        writeln!(writer.make_writer(), "hello").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never flushed");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
