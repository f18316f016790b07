//! The operator as a real process, started, killed with SIGKILL and restarted by tests.

use std::path::PathBuf;
use std::process::{Child, Command};

use super::process::spawn_bound;
use super::testbed::{ADMIN, Testbed};

/// The `portcullis` binary: Cargo names it for tests; examples find it beside themselves
/// (`scripts/demo` builds it first).
pub fn binary() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_portcullis") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.parent()?.join("portcullis")))
            .expect("cannot locate the portcullis binary"),
    }
}

/// A running `portcullis run` watching one namespace.
pub struct Operator {
    child: Option<Child>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    starts: u32,
    /// Where the operator serves /metrics, /healthz and /readyz.
    pub metrics_url: String,
}

impl Operator {
    /// Starts the operator for `namespace` with its AWS endpoint at `aws_url`, serving and
    /// registering its admission webhook for that namespace.
    pub fn start(tb: &Testbed, namespace: &str, aws_url: &str, resync: &str) -> Operator {
        Self::start_env(tb, namespace, aws_url, resync, &[])
    }

    /// Like [`Operator::start`], with more environment variables (e.g. the ARM endpoint).
    pub fn start_env(
        tb: &Testbed,
        namespace: &str,
        aws_url: &str,
        resync: &str,
        env: &[(&str, &str)],
    ) -> Operator {
        let port = super::process::free_port();
        let webhook = vec![
            "--webhook-listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--webhook-url".into(),
            format!("https://127.0.0.1:{port}"),
            "--webhook-config-name".into(),
            format!("portcullis-{namespace}"),
        ];
        Self::start_with(tb, namespace, aws_url, resync, webhook, env)
    }

    /// Like [`Operator::start_without_webhook`], with more environment variables.
    pub fn start_env_without_webhook(
        tb: &Testbed,
        namespace: &str,
        aws_url: &str,
        resync: &str,
        env: &[(&str, &str)],
    ) -> Operator {
        Self::start_with(
            tb,
            namespace,
            aws_url,
            resync,
            vec!["--no-webhook".into()],
            env,
        )
    }

    /// Starts the operator without its admission webhook.
    pub fn start_without_webhook(
        tb: &Testbed,
        namespace: &str,
        aws_url: &str,
        resync: &str,
    ) -> Operator {
        Self::start_env_without_webhook(tb, namespace, aws_url, resync, &[])
    }

    /// Starts the operator with extra command-line arguments and environment variables.
    pub fn start_with(
        tb: &Testbed,
        namespace: &str,
        aws_url: &str,
        resync: &str,
        extra: Vec<String>,
        env: &[(&str, &str)],
    ) -> Operator {
        let metrics_port = super::process::free_port();
        let mut args = vec![
            "run".to_string(),
            "--kubeconfig".into(),
            tb.kubeconfig(ADMIN).display().to_string(),
            "--namespace".into(),
            namespace.into(),
            "--resync".into(),
            resync.into(),
            "--cluster-name".into(),
            namespace.into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics_port}"),
            "--operator-namespace".into(),
            namespace.into(),
            "--lease-duration".into(),
            "3s".into(),
        ];
        // A flag given in `extra` replaces the default above (clap refuses a repeated one).
        for flag in extra.iter().filter(|a| a.starts_with("--")) {
            if let Some(i) = args.iter().position(|a| a == flag) {
                args.drain(i..i + 2);
            }
        }
        args.extend(extra);
        // `--all-namespaces` (tests only): watch every namespace, as a cluster-wide install.
        if let Some(i) = args.iter().position(|a| a == "--all-namespaces") {
            args.remove(i);
            if let Some(j) = args.iter().position(|a| a == "--namespace") {
                args.drain(j..j + 2);
            }
        }
        let mut envs = vec![
            ("AWS_ENDPOINT_URL".to_string(), aws_url.to_string()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_REGION".into(), super::aws::REGION.into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            (
                "RUST_LOG".into(),
                "info,portcullis=debug,kube_runtime=warn,aws=warn".into(),
            ),
        ];
        // A restarted container keeps its pod's name, so it takes its own Lease back at once.
        envs.push(("POD_NAME".into(), format!("portcullis-{namespace}")));
        envs.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut op = Operator {
            child: None,
            args,
            envs,
            log: tb.dir.join(format!("operator-{namespace}-{}.log", {
                static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            })),
            starts: 0,
            metrics_url: format!("http://127.0.0.1:{metrics_port}"),
        };
        op.restart();
        op
    }

    /// Starts the process again (after [`Operator::kill`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "operator still running");
        self.starts += 1;
        let log = self.log.with_extension(format!("{}.log", self.starts));
        let mut cmd = Command::new(binary());
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)));
        super::process::watch_log("portcullis", &log);
        self.child = Some(spawn_bound(&mut cmd, &log).expect("start portcullis"));
    }

    /// Kills the process with SIGKILL: no cleanup, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// Sends SIGTERM, as Kubernetes does to a pod it stops, and waits up to `timeout` for
    /// the process to exit; its exit status, or `None` if it is still running.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    /// The process id while the operator runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if the process has exited (without waiting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// The log of the current (or last) run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.with_extension(format!("{}.log", self.starts)))
            .unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Operator {
    /// How many target runs the operator has finished (its `/metrics`).
    pub async fn target_runs(&self) -> f64 {
        let metrics = http_get(&format!("{}/metrics", self.metrics_url))
            .await
            .map(|(_, body)| body)
            .unwrap_or_default();
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("portcullis_reconciles_total") && l.contains("resource=\"target\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `n` more target runs than now have finished: a check of "nothing
    /// happened" waits for runs that could have done something, not for a fixed time.
    pub async fn wait_for_runs(&self, n: u32) {
        let start = self.target_runs().await;
        super::kube_helpers::eventually(
            &format!("{n} more target runs"),
            std::time::Duration::from_secs(60),
            || async { (self.target_runs().await >= start + f64::from(n)).then_some(()) },
        )
        .await;
    }
}

/// GETs a plain-HTTP URL; status and body.
pub async fn http_get(url: &str) -> Result<(u16, String), String> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let resp = client.get(uri).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
