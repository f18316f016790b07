//! Runs the `kubectl-jit` plugin as a user of the test bed: with its output in pipes, or
//! on a pseudo-terminal (as a person at a terminal would see it).

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::testbed::{Testbed, User};

/// The `kubectl-jit` binary: Cargo names it for tests; examples find it beside themselves.
pub fn binary() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_kubectl-jit") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.parent()?.join("kubectl-jit")))
            .expect("cannot locate the kubectl-jit binary"),
    }
}

/// What one run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    /// The exit code (None: killed after the time limit).
    pub code: Option<i32>,
    /// Standard output (on a terminal: everything the terminal showed).
    pub stdout: String,
    /// Standard error (empty on a terminal, where it shares the screen with stdout).
    pub stderr: String,
    /// How long the process ran.
    pub took: Duration,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} after {:.1}s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.took.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

/// The command for `user` in `namespace`, with a clean environment for colours: no
/// `NO_COLOR`, `CLICOLOR*` or `KUBECONFIG` from the caller, times in UTC.
pub fn command(tb: &Testbed, user: User, namespace: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.arg("--kubeconfig")
        .arg(tb.kubeconfig(user))
        .arg("-n")
        .arg(namespace)
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("KUBECONFIG")
        .env("TZ", "UTC");
    cmd
}

/// Runs `cmd` with stdout and stderr in pipes; kills it after `limit`.
pub async fn piped(mut cmd: Command, limit: Duration) -> Run {
    let started = Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let child = cmd.spawn().expect("start kubectl-jit");
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: started.elapsed(),
        },
        Ok(Err(e)) => panic!("kubectl-jit: {e}"),
        Err(_) => Run {
            code: None,
            stdout: String::new(),
            stderr: format!("killed after {limit:?}"),
            took: started.elapsed(),
        },
    }
}

/// Runs `cmd` with stdin, stdout and stderr on a new pseudo-terminal and returns what
/// the terminal received. Blocking: call it from `spawn_blocking`.
pub fn on_terminal(mut cmd: Command, limit: Duration) -> Run {
    let (mut master, slave) = open_pty();
    let started = Instant::now();
    let mut child = {
        // The parent must hold no copy of the slave side once the child runs, or reading
        // the master never ends.
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty"));
        cmd.stdin(stdio(&slave))
            .stdout(stdio(&slave))
            .stderr(stdio(&slave));
        let child = cmd.spawn().expect("start kubectl-jit on a pty");
        drop(cmd);
        drop(slave);
        child
    };
    let mut seen = Vec::new();
    let code = loop {
        drain(&mut master, &mut seen);
        if let Some(status) = child.try_wait().expect("wait for kubectl-jit") {
            break status.code();
        }
        if started.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drain(&mut master, &mut seen);
    Run {
        code,
        stdout: String::from_utf8_lossy(&seen).into_owned(),
        stderr: String::new(),
        took: started.elapsed(),
    }
}

/// Reads what the terminal has received so far (the master side is non-blocking).
fn drain(master: &mut std::fs::File, seen: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    // EAGAIN: nothing more for now; EIO: the child side is closed.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
}

/// A new pseudo-terminal, 120 columns wide: (master as a non-blocking file, slave).
/// Both sides are close-on-exec, so processes other tests start never hold them.
fn open_pty() -> (std::fs::File, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two new descriptors into the given integers; we own them.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: fcntl on descriptors we own.
    unsafe {
        for fd in [master, slave] {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        let flags = libc::fcntl(master, libc::F_GETFL);
        libc::fcntl(master, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    unsafe {
        (
            std::fs::File::from(OwnedFd::from_raw_fd(master)),
            OwnedFd::from_raw_fd(slave),
        )
    }
}
