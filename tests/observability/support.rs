//! What every test here shares: the serial lock, the captured log lines, telemetry set-up
//! (`eventually` and the request bodies come from `tests/api/helpers.rs`).

use std::io::Write;
use std::sync::Mutex;

use analytics_service::settings::Settings;
use analytics_service::telemetry::LogFormat;
use analytics_service::telemetry::{self, TelemetryGuard};
use tokio::sync::MutexGuard;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static LOG_LINES: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Held for a whole test: one test at a time owns the process-global telemetry.
pub async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// As `serial`, for a plain `#[test]` that builds its own runtimes.
pub fn serial_blocking() -> MutexGuard<'static, ()> {
    SERIAL.blocking_lock()
}

/// Writes log output into `LOG_LINES`.
struct CapturedLogs;

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG_LINES
            .lock()
            .expect("no test panics while writing logs")
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts telemetry as `main` does, with JSON log lines captured in memory.
pub fn start_telemetry(settings: &Settings) -> TelemetryGuard {
    let mut settings = settings.clone();
    settings.telemetry.log.format = LogFormat::Json;
    // Access lines are at DEBUG; the log tests read them.
    settings.telemetry.log.filter = "info,analytics_service::access=debug".to_owned();
    telemetry::init_with_writer(&settings.telemetry, settings.secrets(), || CapturedLogs)
}

/// Every log line captured so far.
pub fn log_lines() -> Vec<String> {
    let bytes = LOG_LINES.lock().expect("log buffer").clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_owned)
        .collect()
}
