//! Child processes that die with the test run, and small helpers around them.

use std::net::{SocketAddr, TcpListener};
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

/// A TCP port on 127.0.0.1 that was free when asked. Only for a server that must be
/// told its port and cannot report one it bound (etcd, kube-apiserver), and only through
/// [`start_listening`], which checks that the child itself took it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// The TCP ports process `pid` listens on (read from /proc: its sockets' inodes, matched
/// against the kernel's table of listening sockets).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let mut ports: Vec<u16> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|row| {
                    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                    let cols: Vec<&str> = row.split_whitespace().collect();
                    let listening = cols.get(3) == Some(&"0A");
                    let ours = cols.get(9).is_some_and(|i| inodes.contains(*i));
                    let port = cols.get(1)?.rsplit(':').next()?;
                    (listening && ours).then(|| u16::from_str_radix(port, 16).ok())?
                })
                .collect::<Vec<_>>()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Why a child did not come to listen.
pub enum NotListening {
    /// It exited (e.g. its port was taken between choosing and binding).
    Exited(String),
    /// It runs but did not listen in time.
    TimedOut(String),
}

/// Waits until `child` itself listens on `port` (any port for `None`), not merely until
/// something accepts connections there; the port it listens on.
pub fn wait_listening(
    what: &str,
    child: &mut Child,
    port: Option<u16>,
    timeout: Duration,
    log: &Path,
) -> Result<u16, NotListening> {
    let start = Instant::now();
    loop {
        let ports = listening_ports(child.id());
        if let Some(p) = ports.iter().find(|p| port.is_none_or(|want| **p == want)) {
            return Ok(*p);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotListening::Exited(format!(
                "{what} exited ({status}) before listening; its log ends with:\n{}",
                log_tail(log, 30)
            )));
        }
        if start.elapsed() > timeout {
            return Err(NotListening::TimedOut(format!(
                "{what} did not listen{} within {timeout:?}; its log ends with:\n{}",
                port.map(|p| format!(" on port {p}")).unwrap_or_default(),
                log_tail(log, 30)
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a server that must be told its port: `command` gets a free port, and when the
/// child exits before listening on it (another process took the port in between), it is
/// started again on another, up to 5 times. The child and its port.
pub fn start_listening(
    what: &str,
    log: &Path,
    timeout: Duration,
    mut command: impl FnMut(u16) -> Command,
) -> Result<(Child, u16), String> {
    let mut last = String::new();
    for _ in 0..5 {
        let port = free_port();
        let mut child = spawn_bound(&mut command(port), log)
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        match wait_listening(what, &mut child, Some(port), timeout, log) {
            Ok(port) => return Ok((child, port)),
            Err(NotListening::Exited(why)) => last = why,
            Err(NotListening::TimedOut(why)) => {
                child.kill().ok();
                child.wait().ok();
                return Err(why);
            }
        }
    }
    Err(last)
}

/// The address a process logged on its last line containing `message`: `addr=…` in text
/// logs, `"addr":"…"` in JSON ones (how the operator names what it bound).
pub fn logged_addr(log: &Path, message: &str) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| l.contains(message))?;
    let (_, rest) = line
        .split_once("addr=")
        .or_else(|| line.split_once("\"addr\":\""))?;
    rest.split(['"', ' ', ','])
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()
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
