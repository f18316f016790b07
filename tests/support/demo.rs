//! `cargo run --example demo`: Portcullis on the local test bed.
//!
//! Starts etcd, a real kube-apiserver and moto on loopback, installs the CRDs and the
//! examples, and says what to try next. Runs until Ctrl-C (or exits at once with
//! `--exit`, for scripts); everything it started stops with it.

#[path = "mod.rs"]
mod support;

use support::kube_helpers::namespace_named;
use support::testbed::{ADMIN, ALICE, Testbed, repo_root, run};

#[tokio::main]
async fn main() -> Result<(), String> {
    let exit_at_once = std::env::args().any(|a| a == "--exit");
    let tb = Testbed::start()?;
    tb.install_crds()?;
    println!("CRDs installed and Established:");
    print!(
        "{}",
        run(tb.kubectl(ADMIN).args(["get", "crd", "-o", "name"]))?
    );

    let ns = "demo";
    namespace_named(&tb.client(ADMIN).await, ns).await;
    print!(
        "{}",
        run(tb
            .kubectl(ADMIN)
            .args(["apply", "-n", ns, "-f"])
            .arg(repo_root().join("examples")))?
    );

    // A stable path for the kubeconfig, so the commands below can be pasted as they are.
    let local = repo_root().join(".testbed");
    std::fs::create_dir_all(&local).map_err(|e| e.to_string())?;
    for (user, file) in [(ADMIN, "kubeconfig"), (ALICE, "kubeconfig-alice")] {
        std::fs::copy(tb.kubeconfig(user), local.join(file)).map_err(|e| e.to_string())?;
    }
    let kc = local.join("kubeconfig");
    println!();
    print!(
        "{}",
        run(tb.kubectl(ADMIN).args(["get", "jitp,jitreq", "-n", ns]))?
    );
    println!(
        "\nThe test bed is up:\n\
         \x20 API server  {api}  (kube-apiserver 1.20, etcd; users admin, alice, bob)\n\
         \x20 AWS (moto)  {moto}\n\
         \x20 logs        {dir}\n\n\
         Try:\n\
         \x20 export KUBECONFIG={kc}\n\
         \x20 kubectl get jitpolicies,accessrequests -n {ns}\n\
         \x20 kubectl explain jitpolicy.spec.ports      # the schema, from the CRD\n\
         \x20 kubectl apply -n {ns} -f examples/accessrequest.yaml\n\n\
         The operator itself (`portcullis run`) is not wired up yet: the next issues make\n\
         this command start it, open the port and close it again.\n",
        api = tb.apiserver_url,
        moto = tb.moto_url,
        dir = tb.dir.display(),
        kc = kc.display(),
    );
    if exit_at_once {
        tb.stop();
        return Ok(());
    }
    println!("Press Ctrl-C to stop the test bed.");
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    tb.stop();
    Ok(())
}
