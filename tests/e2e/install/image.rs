//! The OCI image built here without a container engine, run from its unpacked rootfs.

use super::*;

/// Builds the image with `scripts/image` from the binary under test and unpacks it
/// (`umoci unpack`): the bundle directory, holding `rootfs/` and the runtime `config.json`
/// made from the image's config.
fn build_and_unpack_image(out: &Path) -> (PathBuf, Value) {
    let printed = run(Command::new(repo_root().join("scripts/image"))
        .arg("--binary")
        .arg(binary())
        .arg("--out")
        .arg(out))
    .expect("scripts/image");
    let layout = printed
        .lines()
        .find_map(|l| l.strip_prefix("PORTCULLIS_IMAGE_LAYOUT="))
        .expect("the layout");
    let archive = printed
        .lines()
        .find_map(|l| l.strip_prefix("PORTCULLIS_IMAGE_ARCHIVE="))
        .expect("the archive");
    let size = std::fs::metadata(archive).unwrap().len();
    eprintln!("OCI archive {archive}: {:.1} MiB", size as f64 / 1048576.0);
    // The archive is a valid OCI layout: unpack from a copy extracted from it.
    let from_archive = out.join("from-archive");
    std::fs::create_dir_all(&from_archive).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&from_archive))
    .unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(from_archive.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(index["imageLayoutVersion"], "1.0.0");
    let tag = layout.rsplit(':').next().unwrap();
    let bundle = out.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:{tag}", from_archive.display()))
        .arg(&bundle))
    .expect("umoci unpack");
    let config: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    (bundle, config)
}

#[tokio::test]
async fn the_image_builds_here_and_its_entrypoint_runs_from_the_unpacked_rootfs() {
    let tb = Testbed::shared();
    tb.install_crds().expect("CRDs install");
    let client = tb.client(ADMIN).await;
    let ns = crate::support::kube_helpers::namespace(&client, "image").await;
    let started = Instant::now();
    let (bundle, config) = build_and_unpack_image(&tb.dir.join(format!("image-{ns}")));
    eprintln!(
        "image built and unpacked in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let rootfs = bundle.join("rootfs");
    let process = &config["process"];
    assert_eq!(process["user"]["uid"], 65532, "non-root");
    assert_eq!(process["user"]["gid"], 65532);
    let entry: Vec<String> = process["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        entry,
        ["/usr/local/bin/portcullis", "run"],
        "entrypoint and default command"
    );
    assert!(!rootfs.join("bin/sh").exists(), "no shell in the image");
    let files: Vec<String> = walk(&rootfs);
    eprintln!("rootfs files: {files:?}");
    let rootfs_size: u64 = files
        .iter()
        .map(|f| {
            std::fs::metadata(rootfs.join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    eprintln!(
        "rootfs: {} files, {:.1} MiB",
        files.len(),
        rootfs_size as f64 / 1048576.0
    );
    let env: Vec<String> = process["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();

    // Run it as the image says, inside the rootfs: only what the image holds is there.
    let in_rootfs = |args: &[String]| {
        let mut cmd = Command::new("chroot");
        cmd.arg("--userspec=65532:65532")
            .arg(&rootfs)
            .arg(&entry[0])
            .args(args)
            .env_clear();
        for e in &env {
            let (k, v) = e.split_once('=').unwrap();
            cmd.env(k, v);
        }
        cmd
    };
    let version = run(&mut in_rootfs(&["--version".into()])).expect("--version from the rootfs");
    assert_eq!(
        version.trim(),
        format!("portcullis {}", env!("CARGO_PKG_VERSION"))
    );

    // `run` against the test bed, until /readyz answers.
    let kubeconfig = rootfs.join("tmp/kubeconfig");
    std::fs::copy(tb.kubeconfig(ADMIN), &kubeconfig).unwrap();
    std::fs::set_permissions(
        &kubeconfig,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let args: Vec<String> = [
        "run".to_string(),
        "--kubeconfig=/tmp/kubeconfig".into(),
        format!("--namespace={ns}"),
        format!("--operator-namespace={ns}"),
        format!("--cluster-name={ns}"),
        "--webhook-listen=127.0.0.1:0".into(),
        "--webhook-url=https://127.0.0.1:0".into(),
        format!("--webhook-config-name=portcullis-{ns}"),
        "--metrics-listen=127.0.0.1:0".into(),
    ]
    .into();
    let log = tb.dir.join(format!("operator-image-{ns}.log"));
    crate::support::process::watch_log("portcullis (image)", &log);
    let mut child = crate::support::process::spawn_bound(&mut in_rootfs(&args), &log)
        .expect("start from the rootfs");
    // Port 0: the operator names the port it bound in its log.
    let metrics = eventually("the operator's metrics address", MINUTE, || async {
        crate::support::process::logged_addr(&log, "serving /metrics, /healthz and /readyz")
    })
    .await;
    let readyz = format!("http://{metrics}/readyz");
    eventually(
        "/readyz of the operator run from the image",
        MINUTE,
        || async { matches!(http_get(&readyz).await, Ok((200, _))).then_some(()) },
    )
    .await;
    wait_for_webhook(&client, &ns).await;
    child.kill().ok();
    child.wait().ok();
    eprintln!(
        "ready from the image's rootfs after {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// The files (not directories) under `dir`, relative to it.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}
