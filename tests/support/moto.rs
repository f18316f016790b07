//! A moto server of a test's own, for tests that load moto so heavily (thousands of
//! instances) that sharing the test bed's would slow every other test down.

use std::process::{Child, Command};
use std::time::Duration;

use super::process::{NotListening, spawn_bound, wait_listening};
use super::testbed::Testbed;

/// A running moto server; killed when dropped or when the test's thread ends.
pub struct Moto {
    /// Its URL (what `AWS_ENDPOINT_URL` should be).
    pub url: String,
    child: Child,
}

impl Moto {
    /// Starts moto's EC2 server from the test bed's virtualenv on a loopback port it
    /// picks (port 0; /proc tells which).
    pub fn start(tb: &Testbed, name: &str) -> Moto {
        let log = tb.dir.join(format!("moto-{name}.log"));
        let mut child = spawn_bound(
            Command::new(&tb.bins.moto_server)
                .args(["-H", "127.0.0.1", "-p", "0"])
                .env("MOTO_ALLOW_NONEXISTENT_REGION", "true"),
            &log,
        )
        .expect("start moto");
        let port = match wait_listening("moto", &mut child, None, Duration::from_secs(30), &log) {
            Ok(port) => port,
            Err(NotListening::Exited(why) | NotListening::TimedOut(why)) => panic!("{why}"),
        };
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
