//! Child processes that die with the test run, and small helpers around them.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Spawns `cmd` with its output sent to `log` and asks the kernel to kill it when the
/// thread that spawned it ends, so nothing outlives the test run, even on a panic or a
/// SIGKILL of the test process.
pub fn spawn_bound(cmd: &mut Command, log: &Path) -> std::io::Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Waits until something accepts TCP connections on `port`, or fails after `timeout`,
/// naming `what` and the tail of its log.
pub fn wait_for_port(what: &str, port: u16, timeout: Duration, log: &Path) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "{what} did not listen on port {port} within {timeout:?}; its log ends with:\n{}",
        log_tail(log, 30)
    ))
}

thread_local! {
    /// The logs of the processes this test started (each `#[tokio::test]` runs on its own
    /// thread), printed when one of its waits times out.
    static LOGS: std::cell::RefCell<Vec<(String, std::path::PathBuf)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Remembers `log` as the log of `what`, to print when a wait of this test times out.
pub fn watch_log(what: &str, log: &Path) {
    LOGS.with(|l| l.borrow_mut().push((what.to_string(), log.to_path_buf())));
}

/// The tails of the logs this test's processes wrote (see [`watch_log`]).
pub fn watched_logs(lines: usize) -> String {
    LOGS.with(|l| {
        l.borrow()
            .iter()
            .map(|(what, log)| {
                format!(
                    "--- {what} ({}), last {lines} lines:\n{}",
                    log.display(),
                    log_tail(log, lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// The last `lines` lines of a log file.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
