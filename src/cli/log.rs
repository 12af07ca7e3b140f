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
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Install the logger (info and above). Called once, first thing in
/// `main`; a second call changes nothing.
pub fn init() {
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
