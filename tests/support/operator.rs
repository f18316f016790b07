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
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    starts: u32,
    /// Where the operator serves /metrics, /healthz and /readyz (learned from its log
    /// at each start; empty if it never served).
    pub metrics_url: String,
    /// The port its admission webhook bound, when it serves one.
    pub webhook_port: Option<u16>,
}

/// What the operator logs when it has bound its metrics server and its webhook (with
/// `addr=` the address it bound).
const METRICS_LINE: &str = "serving /metrics, /healthz and /readyz";
const WEBHOOK_LINE: &str = "admission webhook listening";

/// The arguments that serve and register the admission webhook on a loopback port the
/// operator picks when it binds (port 0, also in the URL it registers): nothing can take
/// the port between choosing and binding.
pub fn webhook_args(config_name: &str) -> Vec<String> {
    vec![
        "--webhook-listen".to_string(),
        "127.0.0.1:0".into(),
        "--webhook-url".into(),
        "https://127.0.0.1:0".into(),
        "--webhook-config-name".into(),
        config_name.into(),
    ]
}

/// Sets `flag`'s value in `args` (`--flag value` or `--flag=value`), if it is there.
fn set_flag(args: &mut [String], flag: &str, value: &str) {
    let eq = format!("{flag}=");
    if let Some(i) = args.iter().position(|a| a == flag) {
        if let Some(v) = args.get_mut(i + 1) {
            *v = value.to_string();
        }
    } else if let Some(a) = args.iter_mut().find(|a| a.starts_with(&eq)) {
        *a = format!("{eq}{value}");
    }
}

/// `flag`'s value in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let eq = format!("{flag}=");
    match args.iter().position(|a| a == flag) {
        Some(i) => args.get(i + 1).map(String::as_str),
        None => args.iter().find_map(|a| a.strip_prefix(eq.as_str())),
    }
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
        let webhook = webhook_args(&format!("portcullis-{namespace}"));
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
            "127.0.0.1:0".into(),
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
            program: binary(),
            args,
            envs,
            log: tb.dir.join(format!("operator-{namespace}-{}.log", {
                static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            })),
            starts: 0,
            metrics_url: String::new(),
            webhook_port: None,
        };
        op.restart();
        op
    }

    /// Starts `program` with exactly `args` and `envs` (e.g. the container of a rendered
    /// Deployment; give its listen addresses port 0, see [`Operator::restart`]).
    pub fn start_exact(
        tb: &Testbed,
        label: &str,
        program: PathBuf,
        args: Vec<String>,
        envs: Vec<(String, String)>,
    ) -> Operator {
        let mut op = Operator {
            child: None,
            program,
            args,
            envs,
            log: tb.dir.join(format!("operator-{label}.log")),
            starts: 0,
            metrics_url: String::new(),
            webhook_port: None,
        };
        op.restart();
        op
    }

    /// Starts the process again (after [`Operator::kill`]), and waits until it has bound
    /// its ports (or exited). Listen addresses given with port 0 get whatever port is
    /// free, learned from the log; a restart binds the same ports again, as a pod keeps
    /// its address, and falls back to port 0 if another process took one meanwhile.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "operator still running");
        for _ in 0..3 {
            self.starts += 1;
            let log = self.log.with_extension(format!("{}.log", self.starts));
            let mut cmd = Command::new(&self.program);
            cmd.args(&self.args)
                .envs(self.envs.iter().map(|(k, v)| (k, v)));
            super::process::watch_log("portcullis", &log);
            self.child = Some(spawn_bound(&mut cmd, &log).expect("start portcullis"));
            if !self.learn_ports(&log) {
                return;
            }
        }
    }

    /// Waits for the lines naming the bound ports, and keeps them for restarts. True when
    /// the process exited because a port it was told to bind was taken (the listen
    /// addresses are then back at port 0, to start again).
    fn learn_ports(&mut self, log: &std::path::Path) -> bool {
        use super::process::logged_addr;
        let webhook = flag_value(&self.args, "--webhook-listen").is_some()
            && !self.args.iter().any(|a| a == "--no-webhook");
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(60) {
            let metrics = logged_addr(log, METRICS_LINE);
            let hook = logged_addr(log, WEBHOOK_LINE);
            if let Some(m) = metrics
                && (!webhook || hook.is_some())
            {
                self.pin_ports(m.port(), hook.map(|w| w.port()));
                return false;
            }
            if self.exited().is_some() {
                let taken = std::fs::read_to_string(log)
                    .unwrap_or_default()
                    .contains("Address already in use");
                if taken {
                    self.unpin_ports();
                }
                return taken;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }

    /// Remembers the ports bound, and binds them again on a restart.
    fn pin_ports(&mut self, metrics: u16, webhook: Option<u16>) {
        self.metrics_url = format!("http://127.0.0.1:{metrics}");
        set_flag(
            &mut self.args,
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
        );
        let Some(w) = webhook else { return };
        self.webhook_port = Some(w);
        set_flag(
            &mut self.args,
            "--webhook-listen",
            &format!("127.0.0.1:{w}"),
        );
        if flag_value(&self.args, "--webhook-url") == Some("https://127.0.0.1:0") {
            set_flag(
                &mut self.args,
                "--webhook-url",
                &format!("https://127.0.0.1:{w}"),
            );
        }
    }

    /// Back to port 0 for what [`Operator::pin_ports`] pinned.
    fn unpin_ports(&mut self) {
        set_flag(&mut self.args, "--metrics-listen", "127.0.0.1:0");
        if let Some(w) = self.webhook_port.take() {
            set_flag(&mut self.args, "--webhook-listen", "127.0.0.1:0");
            if flag_value(&self.args, "--webhook-url")
                == Some(format!("https://127.0.0.1:{w}").as_str())
            {
                set_flag(&mut self.args, "--webhook-url", "https://127.0.0.1:0");
            }
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
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
