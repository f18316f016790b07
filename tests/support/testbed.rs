//! The local test bed: etcd, a real kube-apiserver and moto's EC2 server on loopback.
//!
//! `scripts/testbed-setup` installs and caches the binaries (it is quick once cached);
//! this module starts them on free ports, waits until they are ready and makes sure they
//! die with the test process. One test bed serves every test of a test binary
//! ([`Testbed::shared`]); each test works in its own namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use super::process::{
    NotListening, free_port, log_tail, spawn_bound, start_listening, wait_listening,
};

/// A user the API server knows by bearer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct User {
    /// The user name.
    pub name: &'static str,
    /// The bearer token.
    pub token: &'static str,
    /// The user's groups.
    pub groups: &'static [&'static str],
}

/// The cluster admin (`system:masters`).
pub const ADMIN: User = User {
    name: "admin",
    token: "admin-token",
    groups: &["system:masters"],
};
/// An ordinary user in group `devs`.
pub const ALICE: User = User {
    name: "alice",
    token: "alice-token",
    groups: &["devs"],
};
/// Another ordinary user in group `devs`.
pub const BOB: User = User {
    name: "bob",
    token: "bob-token",
    groups: &["devs"],
};
/// Every user of the test bed.
pub const USERS: [User; 3] = [ADMIN, ALICE, BOB];

/// The API server's audit log, in the test bed's directory.
const AUDIT_LOG: &str = "audit.log";

/// Audits the ordinary users' calls (tests check which calls a client made) and nothing
/// else, so the operator's traffic costs nothing.
const AUDIT_POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: [alice, bob]
  - level: None
";

/// Where the test bed's binaries are.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub kube_apiserver: PathBuf,
    pub etcd: PathBuf,
    pub kubectl: PathBuf,
    pub moto_server: PathBuf,
}

impl Binaries {
    /// Runs `scripts/testbed-setup` (installs and builds what is missing, then prints the
    /// paths) and reads its answer.
    pub fn locate() -> Result<Self, String> {
        let script = repo_root().join("scripts/testbed-setup");
        let out = Command::new(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed ({})", script.display(), out.status));
        }
        let vars: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = |k: &str| {
            vars.get(k)
                .map(PathBuf::from)
                .ok_or_else(|| format!("{} did not print {k}", script.display()))
        };
        Ok(Binaries {
            kube_apiserver: get("PORTCULLIS_KUBE_APISERVER")?,
            etcd: get("PORTCULLIS_ETCD")?,
            kubectl: get("PORTCULLIS_KUBECTL")?,
            moto_server: get("PORTCULLIS_MOTO_SERVER")?,
        })
    }
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running test bed. Its processes are killed when the thread that started it ends.
pub struct Testbed {
    /// Scratch directory: logs, certificates, kubeconfigs.
    pub dir: PathBuf,
    /// The API server's URL.
    pub apiserver_url: String,
    /// moto's URL (what `AWS_ENDPOINT_URL` should be).
    pub moto_url: String,
    /// The binaries in use.
    pub bins: Binaries,
    children: Mutex<Vec<(String, Child)>>,
    crds_installed: OnceLock<Result<(), String>>,
}

static SHARED: OnceLock<Testbed> = OnceLock::new();

const WEBHOOK_CLIENT_CA: &str = "webhook-client-ca.crt";

impl Testbed {
    /// The test bed shared by all tests of this process, started on first use.
    ///
    /// It is started on a thread that never ends, because the kernel kills the children
    /// when the thread that spawned them exits (and test threads do exit).
    pub fn shared() -> &'static Testbed {
        SHARED.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name("testbed-keeper".into())
                .spawn(move || {
                    tx.send(Testbed::start()).ok();
                    loop {
                        std::thread::park();
                    }
                })
                .expect("cannot spawn the test bed's keeper thread");
            match rx.recv() {
                Ok(Ok(tb)) => tb,
                Ok(Err(e)) => panic!("the test bed did not start: {e}"),
                Err(_) => panic!("the test bed's keeper thread died"),
            }
        })
    }

    /// Starts a new test bed whose processes live as long as the calling thread.
    pub fn start() -> Result<Testbed, String> {
        let bins = Binaries::locate()?;
        let dir = scratch_dir()?;
        let started = Instant::now();
        let tb = Testbed {
            dir: dir.clone(),
            apiserver_url: String::new(),
            moto_url: String::new(),
            bins,
            children: Mutex::new(Vec::new()),
            crds_installed: OnceLock::new(),
        };
        let tb = tb.start_moto()?.start_kubernetes()?;
        eprintln!(
            "test bed ready in {:.1}s: API server {}, moto {}, files in {}",
            started.elapsed().as_secs_f64(),
            tb.apiserver_url,
            tb.moto_url,
            tb.dir.display()
        );
        Ok(tb)
    }

    /// Keeps `child` to stop with the test bed.
    fn keep(&self, name: &str, child: std::process::Child) {
        self.children
            .lock()
            .unwrap()
            .push((name.to_string(), child));
    }

    fn start_moto(mut self) -> Result<Self, String> {
        // Port 0: moto binds whatever port is free, and /proc tells which it took.
        let log = self.dir.join("moto.log");
        let mut child = spawn_bound(
            Command::new(&self.bins.moto_server)
                .args(["-H", "127.0.0.1", "-p", "0"])
                .env("MOTO_ALLOW_NONEXISTENT_REGION", "true"),
            &log,
        )
        .map_err(|e| format!("cannot start moto: {e}"))?;
        let port = wait_listening("moto", &mut child, None, Duration::from_secs(30), &log);
        self.keep("moto", child);
        let port = port.map_err(|e| match e {
            NotListening::Exited(why) | NotListening::TimedOut(why) => why,
        })?;
        self.moto_url = format!("http://127.0.0.1:{port}");
        Ok(self)
    }

    fn start_kubernetes(mut self) -> Result<Self, String> {
        let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
        // etcd keeps its data in memory-backed storage when the machine has it: fsync on
        // a shared disk is what makes a test API server slow.
        let etcd_data = match Path::new("/dev/shm").is_dir() {
            // One per test bed (named as its scratch directory): a test process may run
            // several, and each etcd locks its own.
            true => PathBuf::from(format!(
                "/dev/shm/portcullis-etcd-{}",
                self.dir.file_name().unwrap_or_default().to_string_lossy()
            )),
            false => self.dir.join("etcd-data"),
        };
        // etcd must be told its ports: a free one, checked to be etcd's own once it listens.
        let etcd_log = self.dir.join("etcd.log");
        let (etcd, client_port) =
            start_listening("etcd", &etcd_log, Duration::from_secs(30), |client_port| {
                let client_url = format!("http://127.0.0.1:{client_port}");
                let peer_url = format!("http://127.0.0.1:{}", free_port());
                let mut cmd = Command::new(&self.bins.etcd);
                cmd.args([
                    "--name=testbed",
                    &format!("--data-dir={}", etcd_data.display()),
                    &format!("--listen-client-urls={client_url}"),
                    &format!("--advertise-client-urls={client_url}"),
                    &format!("--listen-peer-urls={peer_url}"),
                    &format!("--initial-advertise-peer-urls={peer_url}"),
                    &format!("--initial-cluster=testbed={peer_url}"),
                    "--log-level=warn",
                ]);
                cmd
            })?;
        self.keep("etcd", etcd);
        let client_url = format!("http://127.0.0.1:{client_port}");

        let serving =
            portcullis::certs::serving_cert("kube-apiserver", &["127.0.0.1", "localhost"])
                .map_err(|e| err("cannot make the API server's certificate", &e))?;
        let (sa_key, sa_pub) =
            portcullis::certs::signing_key().map_err(|e| err("cannot make a key", &e))?;
        let write = |name: &str, text: &str| -> Result<PathBuf, String> {
            let p = self.dir.join(name);
            std::fs::write(&p, text)
                .map_err(|e| err(&format!("cannot write {}", p.display()), &e))?;
            Ok(p)
        };
        write("ca.crt", &serving.ca_pem)?;
        let cert = write("apiserver.crt", &serving.cert_pem)?;
        let key = write("apiserver.key", &serving.key_pem)?;
        let sa_key = write("sa.key", &sa_key)?;
        let sa_pub = write("sa.pub", &sa_pub)?;
        let tokens: String = USERS
            .iter()
            .map(|u| {
                format!(
                    "{},{},uid-{},\"{}\"\n",
                    u.token,
                    u.name,
                    u.name,
                    u.groups.join(",")
                )
            })
            .collect();
        let tokens = write("tokens.csv", &tokens)?;
        let audit_policy = write("audit-policy.yaml", AUDIT_POLICY)?;
        // The API server presents a client certificate to every webhook that asks for one
        // (Portcullis's --webhook-client-ca); webhooks that do not ask never see it.
        let admission = {
            use base64::Engine;
            let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
            let client = portcullis::certs::client_cert("kube-apiserver-webhook-client")
                .map_err(|e| err("cannot make the webhook client certificate", &e))?;
            write(WEBHOOK_CLIENT_CA, &client.ca_pem)?;
            let kubeconfig = write(
                "webhook-client.kubeconfig",
                &format!(
                    "apiVersion: v1\nkind: Config\nusers:\n- name: '*'\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
                    b64(&client.cert_pem),
                    b64(&client.key_pem)
                ),
            )?;
            let plugin = |name: &str| {
                format!(
                    "- name: {name}\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {}\n",
                    kubeconfig.display()
                )
            };
            write(
                "admission.yaml",
                &format!(
                    "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n{}{}",
                    plugin("ValidatingAdmissionWebhook"),
                    plugin("MutatingAdmissionWebhook")
                ),
            )?
        };

        // The API server must be told its port: a free one, checked to be its own.
        let log = self.dir.join("kube-apiserver.log");
        let (apiserver, port) =
            start_listening("kube-apiserver", &log, Duration::from_secs(60), |port| {
                let mut cmd = Command::new(&self.bins.kube_apiserver);
                cmd.args([
                    &format!("--etcd-servers={client_url}"),
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    &format!("--secure-port={port}"),
                    "--insecure-port=0",
                    &format!("--cert-dir={}", self.dir.join("certs").display()),
                    &format!("--tls-cert-file={}", cert.display()),
                    &format!("--tls-private-key-file={}", key.display()),
                    &format!("--token-auth-file={}", tokens.display()),
                    &format!("--service-account-key-file={}", sa_pub.display()),
                    &format!("--service-account-signing-key-file={}", sa_key.display()),
                    "--service-account-issuer=https://kubernetes.default.svc",
                    "--authorization-mode=RBAC",
                    &format!("--admission-control-config-file={}", admission.display()),
                    "--service-cluster-ip-range=10.96.0.0/24",
                    &format!("--audit-policy-file={}", audit_policy.display()),
                    &format!("--audit-log-path={}", self.dir.join(AUDIT_LOG).display()),
                    "--audit-log-mode=blocking",
                    "--v=1",
                ]);
                cmd
            })?;
        self.keep("kube-apiserver", apiserver);
        self.apiserver_url = format!("https://127.0.0.1:{port}");
        for user in USERS {
            write(
                &format!("kubeconfig-{}", user.name),
                &kubeconfig(&self.apiserver_url, &serving.ca_pem, user),
            )?;
        }
        self.wait_ready(&log, Duration::from_secs(90))?;
        Ok(self)
    }

    /// Polls `/readyz` with kubectl until the API server says it is ready.
    fn wait_ready(&self, log: &Path, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            let out = self
                .kubectl(ADMIN)
                .args(["get", "--raw", "/readyz"])
                .output()
                .map_err(|e| format!("cannot run kubectl: {e}"))?;
            if out.status.success() {
                return Ok(());
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!(
            "kube-apiserver not ready within {timeout:?} (last answer: {last}); its log ends with:\n{}",
            log_tail(log, 30)
        ))
    }

    /// What the API server's audit log says `user` did in `namespace`: one JSON object
    /// per call (`verb`, `objectRef`, `requestURI`, `responseStatus`, …). The log is
    /// written before each response is sent (`--audit-log-mode=blocking`), so a call a
    /// client has finished is in it.
    pub fn audit_events(&self, user: User, namespace: &str) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join(AUDIT_LOG)).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| {
                e.pointer("/user/username").and_then(|v| v.as_str()) == Some(user.name)
                    && e.pointer("/objectRef/namespace").and_then(|v| v.as_str()) == Some(namespace)
            })
            .collect()
    }

    /// The CA that signed the client certificate the API server presents to webhooks.
    pub fn webhook_client_ca(&self) -> PathBuf {
        self.dir.join(WEBHOOK_CLIENT_CA)
    }

    /// The kubeconfig file for `user`.
    pub fn kubeconfig(&self, user: User) -> PathBuf {
        self.dir.join(format!("kubeconfig-{}", user.name))
    }

    /// A kubectl command acting as `user`.
    pub fn kubectl(&self, user: User) -> Command {
        let mut cmd = Command::new(&self.bins.kubectl);
        cmd.arg("--kubeconfig").arg(self.kubeconfig(user));
        cmd
    }

    /// A kube client acting as `user`. Make one per test: a client belongs to the tokio
    /// runtime it was made on.
    pub async fn client(&self, user: User) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig(user))
            .expect("the test bed's kubeconfig is readable");
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("the test bed's kubeconfig is valid");
        kube::Client::try_from(config).expect("a kube client")
    }

    /// Installs the CRDs from `crds/` with `kubectl apply` (default validation) and waits
    /// until they are Established. Done once per test bed.
    pub fn install_crds(&self) -> Result<(), String> {
        self.crds_installed
            .get_or_init(|| {
                let crds = repo_root().join("crds");
                run(self.kubectl(ADMIN).arg("apply").arg("-f").arg(&crds))?;
                run(self
                    .kubectl(ADMIN)
                    .args(["wait", "--for=condition=Established", "--timeout=60s", "-f"])
                    .arg(&crds))?;
                Ok(())
            })
            .clone()
    }

    /// Stops every process of this test bed (they also die with their thread).
    pub fn stop(&self) {
        for (_, child) in self.children.lock().unwrap().iter_mut() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Drop for Testbed {
    /// A private test bed stops with its test (the shared one lives as long as the
    /// process; its children die with it).
    fn drop(&mut self) {
        self.stop();
        if let Some(name) = self.dir.file_name() {
            let shm = format!("/dev/shm/portcullis-etcd-{}", name.to_string_lossy());
            std::fs::remove_dir_all(shm).ok();
        }
    }
}

/// Runs a command; on failure returns its output as the error.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn kubeconfig(server: &str, ca_pem: &str, user: User) -> String {
    use base64::Engine;
    use std::fmt::Write;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut s = String::new();
    writeln!(s, "apiVersion: v1\nkind: Config").unwrap();
    writeln!(s, "clusters:\n- name: testbed\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}").unwrap();
    writeln!(
        s,
        "users:\n- name: {0}\n  user:\n    token: {1}",
        user.name, user.token
    )
    .unwrap();
    writeln!(
        s,
        "contexts:\n- name: {0}@testbed\n  context:\n    cluster: testbed\n    user: {0}",
        user.name
    )
    .unwrap();
    writeln!(s, "current-context: {}@testbed", user.name).unwrap();
    s
}

/// A fresh scratch directory for a test bed of this process (a process may run several);
/// leftovers of dead runs are removed.
fn scratch_dir() -> Result<PathBuf, String> {
    static BEDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = std::env::temp_dir().join("portcullis-testbed");
    std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    let dead = |name: &str| {
        name.split('-')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if dead(&name) {
            std::fs::remove_dir_all(e.path()).ok();
        }
    }
    for e in std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        if name.strip_prefix("portcullis-etcd-").is_some_and(dead) {
            std::fs::remove_dir_all(e.path()).ok();
        }
    }
    let n = BEDS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = base.join(format!("{}-{n}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}
