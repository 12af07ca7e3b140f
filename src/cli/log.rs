//! The logger behind library diagnostics. Library code (the mount's error
//! paths, the daemon's watches) reports through the `log` macros instead of
//! printing; this prints each record to stderr as `dagfs: <message>`, the
//! form users and the daemon's log file have always seen. Warnings and
//! errors are prefixed with their level so a reader can grep for them.

use std::io::Write;

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level() && m.target().starts_with("dagfs")
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = match r.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warning: ",
            _ => "",
        };
        // One write per record so lines from threads never interleave.
        let line = format!("dagfs: {level}{}\n", r.args());
        write_stderr(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Write to descriptor 2 directly, not through `std::io::stderr()`: an
/// embedded command holds std's stderr lock for as long as it runs
/// (`cli::embedded`), so a record from any other thread (a watch, a
/// worker) would wait for that lock until the command ended, or forever.
fn write_stderr(bytes: &[u8]) {
    use std::os::fd::FromRawFd;
    // SAFETY: descriptor 2 is borrowed for one write, never closed
    // (ManuallyDrop).
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(2) });
    let _ = f.write_all(bytes);
}

/// Install the logger (info and above). Called once, first thing in
/// `main`; a second call changes nothing.
pub fn init() {
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record logged by another thread while this one holds std's stderr
    /// lock (as an embedded command does) is written at once.
    #[test]
    fn a_record_from_another_thread_does_not_wait_for_the_stderr_lock() {
        init();
        let held = std::io::stderr().lock();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            log::Log::log(
                &Stderr,
                &log::Record::builder()
                    .target("dagfs::test")
                    .level(log::Level::Warn)
                    .args(format_args!("logged while the stderr lock is held"))
                    .build(),
            );
            let _ = tx.send(());
        });
        let done = rx.recv_timeout(std::time::Duration::from_secs(10));
        drop(held);
        assert!(done.is_ok(), "the record waited for the stderr lock");
    }
}
