//! A moto server of a test's own, for tests that load moto so heavily (thousands of
//! instances) that sharing the test bed's would slow every other test down.

use std::process::{Child, Command};
use std::time::Duration;

use super::process::{free_port, spawn_bound, wait_for_port};
use super::testbed::Testbed;

/// A running moto server; killed when dropped or when the test's thread ends.
pub struct Moto {
    /// Its URL (what `AWS_ENDPOINT_URL` should be).
    pub url: String,
    child: Child,
}

impl Moto {
    /// Starts moto's EC2 server from the test bed's virtualenv on a free loopback port.
    pub fn start(tb: &Testbed, name: &str) -> Moto {
        let port = free_port();
        let log = tb.dir.join(format!("moto-{name}.log"));
        let child = spawn_bound(
            Command::new(&tb.bins.moto_server)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("MOTO_ALLOW_NONEXISTENT_REGION", "true"),
            &log,
        )
        .expect("start moto");
        wait_for_port("moto", port, Duration::from_secs(30), &log).expect("moto listens");
        Moto {
            url: format!("http://127.0.0.1:{port}"),
            child,
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
