//! The `kubectl jit` plugin end to end: the real binary, run as the test bed's ordinary
//! token users against the real kube-apiserver, with the operator (and its admission
//! webhook) in front of moto.

use std::time::Duration;

use k8s_openapi::api::rbac::v1::{ClusterRole, Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use portcullis::api::{AccessRequest, JitPolicy, Phase};
use portcullis::cli::progress::SPINNER;

use crate::aws::{MINUTE, World};
use crate::support::ec2_proxy::Faults;
use crate::support::ip_echo::IpEcho;
use crate::support::kube_helpers::namespace;
use crate::support::kubectl_jit::{Run, command, on_terminal, piped};
use crate::support::testbed::{ADMIN, ALICE, BOB, Testbed, User};

/// Longest a plugin run may take before the test calls it hung.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// In `ns`: everyone in `devs` may file, follow and revoke requests and read policies;
/// only Alice has the verb `request` on policy `jit`.
async fn grant_rbac(ns: &str) {
    let client = Testbed::shared().client(ADMIN).await;
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "portcullis-cli-e2e"},
        "rules": [
            {"apiGroups": ["jit.portcullis.dev"], "resources": ["accessrequests"],
             "verbs": ["create", "get", "list", "watch", "patch"]},
            {"apiGroups": ["jit.portcullis.dev"], "resources": ["jitpolicies"],
             "verbs": ["get", "list", "watch"]}
        ]
    }))
    .unwrap();
    match Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("cannot create the ClusterRole: {e}"),
    }
    let may_request: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "may-request-jit"},
        "rules": [{"apiGroups": ["jit.portcullis.dev"], "resources": ["jitpolicies"],
                   "resourceNames": ["jit"], "verbs": ["request"]}]
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &may_request)
        .await
        .unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(client, ns);
    for (name, subject, role) in [
        (
            "devs-use-the-cli",
            serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "devs"}),
            serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "portcullis-cli-e2e"}),
        ),
        (
            "alice-may-request-jit",
            serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": ALICE.name}),
            serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "may-request-jit"}),
        ),
    ] {
        let b: RoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name}, "subjects": [subject], "roleRef": role
        }))
        .unwrap();
        bindings.create(&PostParams::default(), &b).await.unwrap();
    }
}

/// Runs `kubectl jit ARGS` as `user` in `ns`, output in pipes.
async fn jit(user: User, ns: &str, args: &[&str]) -> Run {
    piped(command(Testbed::shared(), user, ns, args), RUN_LIMIT).await
}

/// `kubectl jit request jit web --port 22 --from SOURCE --for DURATION --reason …`.
fn request_args<'a>(source: &'a str, duration: &'a str) -> Vec<&'a str> {
    vec![
        "request", "jit", "web", "--port", "22", "--from", source, "--for", duration, "--reason",
        "x",
    ]
}

/// The table row that starts with `name`.
fn row<'a>(table: &'a str, name: &str) -> Option<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
}

/// Whether `text` has an SGR (colour or style) escape sequence: ESC [ digits/; m.
fn has_sgr(text: &str) -> bool {
    text.split('\x1b').skip(1).any(|s| {
        s.strip_prefix('[').is_some_and(|rest| {
            let params: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == ';')
                .collect();
            rest[params.len()..].starts_with('m')
        })
    })
}

/// Where the plugin should say to connect: the VM's public address, else its private one.
fn vm_address(p: &JitPolicy) -> String {
    let t = &p.status.as_ref().expect("policy status").targets[0];
    t.public_ips
        .first()
        .or(t.private_ips.first())
        .cloned()
        .expect("the policy's status has the VM's address")
}

#[tokio::test]
async fn cli_request_ls_revoke_and_policies_as_alice_and_bob() {
    let w = World::new("cli", Faults::None).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    grant_rbac(&w.ns).await;
    let ns = w.ns.as_str();

    // 1. Alice may: exit 0 once Active; the output names the expiry and the address.
    let run = jit(ALICE, ns, &request_args("203.0.113.7/32", "15m")).await;
    assert_eq!(run.code, Some(0), "{run}\n{}", w.dump());
    eprintln!(
        "METRIC kubectl jit request: {:.3}s from start to exit 0 (created, Active, printed)",
        run.took.as_secs_f64()
    );
    let filed = w.requests.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(filed.len(), 1, "{filed:?}");
    let r = &filed[0];
    let status = r.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Active));
    assert_eq!(status.requester.unwrap().username, "alice");
    assert!(
        r.name_any().starts_with("web-"),
        "generated name {}",
        r.name_any()
    );
    let expires = status.expires_at.unwrap().0;
    let shown = format!("{} UTC", expires.strftime("%Y-%m-%d %H:%M:%S"));
    assert!(
        run.stdout.contains(&shown),
        "expiry {shown} not shown:\n{run}"
    );
    assert!(
        run.stdout.contains("(in 15m)") || run.stdout.contains("(in 14m)"),
        "{run}"
    );
    let address = vm_address(&w.policies.get("jit").await.unwrap());
    assert!(
        run.stdout.contains(&format!("ssh {address}")),
        "no `ssh {address}` in:\n{run}"
    );
    assert!(
        w.owned_rules()
            .await
            .iter()
            .any(|x| (x.1, x.3.as_str()) == (22, "203.0.113.7/32")),
        "the port is not open at moto"
    );

    // 3b. A local refusal says exactly what the webhook says for the same request.
    let local = jit(ALICE, ns, &request_args("203.0.113.7/32", "2h")).await;
    assert_eq!(local.code, Some(1), "{local}");
    let said = local
        .stderr
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("{local}"))
        .to_string();
    assert!(said.starts_with("spec.ports[0].duration"), "{local}");
    let mut same = r.clone();
    same.metadata = kube::api::ObjectMeta {
        name: Some("same-as-cli".into()),
        ..Default::default()
    };
    same.status = None;
    same.spec.ports[0].duration = "2h".into();
    let as_alice: Api<AccessRequest> = Api::namespaced(Testbed::shared().client(ALICE).await, ns);
    let webhook = as_alice
        .create(&PostParams::default(), &same)
        .await
        .expect_err("the webhook refuses it too")
        .to_string();
    assert!(
        webhook.contains(&said),
        "the webhook said {webhook:?}, the plugin {said:?}"
    );

    // 2. Bob may not `request` through jit: exit 1 with the webhook's message, which
    //    names the verb and the policy; nothing reaches the cloud.
    w.proxy.clear();
    let run = jit(BOB, ns, &request_args("203.0.113.8/32", "15m")).await;
    assert_eq!(run.code, Some(1), "{run}");
    for part in ["denied the request", "\"request\"", "\"jit\"", "bob"] {
        assert!(run.stderr.contains(part), "{part:?} missing:\n{run}");
    }
    tokio::time::sleep(Duration::from_millis(2500)).await; // a resync passes
    assert_eq!(
        w.proxy.writes(),
        Vec::<String>::new(),
        "bob reached the cloud"
    );
    assert_eq!(
        w.requests
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // 4. `policies`: Alice yes, Bob no (a SelfSubjectAccessReview each).
    let alice_sees = jit(ALICE, ns, &["policies"]).await;
    assert_eq!(alice_sees.code, Some(0), "{alice_sees}");
    let line = row(&alice_sees.stdout, "jit").unwrap_or_else(|| panic!("{alice_sees}"));
    assert!(
        line.contains(" yes ") && line.contains("web (aws)"),
        "{line}"
    );
    let bob_sees = jit(BOB, ns, &["policies"]).await;
    assert_eq!(bob_sees.code, Some(0), "{bob_sees}");
    let line = row(&bob_sees.stdout, "jit").unwrap_or_else(|| panic!("{bob_sees}"));
    assert!(line.contains(" no "), "{line}");
    // The same through kubectl itself, which finds the plugin on PATH (it looks a plugin
    // up by the words before the first flag; the plugin reads $KUBECONFIG as kubectl does).
    let plugin_dir = crate::support::kubectl_jit::binary()
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let tb = Testbed::shared();
    let via_kubectl = crate::support::testbed::run(
        std::process::Command::new(&tb.bins.kubectl)
            .args(["jit", "policies", "-n", ns])
            .env("KUBECONFIG", tb.kubeconfig(ALICE))
            .env("PATH", path),
    )
    .expect("kubectl jit policies");
    let line = row(&via_kubectl, "jit").unwrap_or_else(|| panic!("{via_kubectl}"));
    assert!(line.contains(" yes "), "{line}");
    for (user, may) in [(ALICE, true), (BOB, false)] {
        let run = jit(user, ns, &["policies", "-o", "json"]).await;
        let v: serde_json::Value =
            serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run}"));
        assert_eq!(v[0]["name"], "jit");
        assert_eq!(v[0]["mayRequest"], may, "{}", user.name);
    }

    // 4. `--from auto`: the caller's address from the echo URL, and the plugin says so.
    let echo = IpEcho::start("203.0.113.9").await;
    let mut args = request_args("auto", "15m");
    args.extend(["--ip-echo-url", &echo.url, "--name", "from-auto"]);
    let run = jit(ALICE, ns, &args).await;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(echo.calls(), 1);
    assert!(
        run.stderr.contains("203.0.113.9/32") && run.stderr.contains(&echo.url),
        "{run}"
    );
    let auto = w.requests.get("from-auto").await.unwrap();
    assert_eq!(auto.spec.ports[0].source_prefix, "203.0.113.9/32");
    assert!(
        w.owned_rules()
            .await
            .iter()
            .any(|x| (x.1, x.3.as_str()) == (22, "203.0.113.9/32")),
        "--from auto did not open for the echoed address"
    );

    // 4. `ls`: Alice's requests with their time left; not the admin's.
    w.create_request("admins", 22, "203.0.113.10/32", "15m")
        .await;
    w.phase("admins", Phase::Active, MINUTE).await;
    let ls = jit(ALICE, ns, &["ls"]).await;
    assert_eq!(ls.code, Some(0), "{ls}");
    for name in [r.name_any().as_str(), "from-auto"] {
        let line = row(&ls.stdout, name).unwrap_or_else(|| panic!("no {name}:\n{ls}"));
        assert!(
            line.contains("Active") && line.contains("m left") && line.ends_with("alice"),
            "{line}"
        );
    }
    assert!(
        row(&ls.stdout, "admins").is_none(),
        "alice sees the admin's:\n{ls}"
    );
    // The admin is refused nothing on Kubernetes 1.20, so nothing names them: every request.
    let ls_admin = jit(ADMIN, ns, &["ls"]).await;
    assert_eq!(ls_admin.code, Some(0), "{ls_admin}");
    assert!(
        ls_admin.stderr.contains("could not learn who you are"),
        "{ls_admin}"
    );
    assert!(row(&ls_admin.stdout, "admins").is_some(), "{ls_admin}");
    let json = jit(ALICE, ns, &["ls", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["kind"], "List");
    assert_eq!(v["items"].as_array().unwrap().len(), 2, "{json}");

    // 4. `revoke`: Revoked, and the port is closed at moto when the command returns.
    let run = jit(ALICE, ns, &["revoke", "from-auto"]).await;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("closed (Revoked)"), "{run}");
    let open: Vec<String> = w.owned_rules().await.into_iter().map(|x| x.3).collect();
    assert!(
        !open.contains(&"203.0.113.9/32".to_string()),
        "still open at moto: {open:?}"
    );
    assert!(open.contains(&"203.0.113.7/32".to_string()), "{open:?}");
    let ls = jit(ALICE, ns, &["ls"]).await;
    assert!(row(&ls.stdout, "from-auto").is_none(), "{ls}");
    let ls_all = jit(ALICE, ns, &["ls", "--all"]).await;
    let line = row(&ls_all.stdout, "from-auto").unwrap_or_else(|| panic!("{ls_all}"));
    assert!(line.contains("Revoked"), "{line}");
}

#[tokio::test]
async fn cli_local_validation_sends_nothing_timeout_and_denial() {
    // No operator and no webhook here (until the end): whatever the plugin sent, the API
    // server would store, so an empty namespace shows that nothing was sent.
    let tb = Testbed::shared();
    tb.install_crds().expect("CRDs install");
    let client = tb.client(ADMIN).await;
    let ns = namespace(&client, "cli-local").await;
    let policy: JitPolicy = serde_saphyr::from_str(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {name: jit}\nspec:\n  targets:\n    - name: web\n      aws: {region: eu-west-1, instanceId: i-0123456789abcdef0}\n  ports:\n    - {port: 22, protocol: TCP, allowedSourcePrefixes: [\"203.0.113.0/24\"], maxDuration: 1h}\n",
    )
    .unwrap();
    Api::<JitPolicy>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    grant_rbac(&ns).await;
    let requests: Api<AccessRequest> = Api::namespaced(client.clone(), &ns);

    // Malformed flags: refused by the command line (exit 2) before any API call.
    for (flag, value) in [
        ("--for", "10min"),
        ("--from", "203.0.113.7/33"),
        ("--port", "ssh"),
    ] {
        let mut args = request_args("203.0.113.7/32", "15m");
        let i = args.iter().position(|a| *a == flag).unwrap();
        args[i + 1] = value;
        let run = jit(ALICE, &ns, &args).await;
        assert_eq!(run.code, Some(2), "{flag} {value}: {run}");
        assert!(run.stderr.contains(flag), "{run}");
    }
    assert_eq!(
        tb.audit_events(ALICE, &ns),
        Vec::<serde_json::Value>::new(),
        "a malformed command line reached the API server"
    );

    // Against the policy: the field-naming messages, with nothing created.
    let over = jit(ALICE, &ns, &request_args("203.0.113.7/32", "2h")).await;
    assert_eq!(over.code, Some(1), "{over}");
    assert!(
        over.stderr
            .contains("spec.ports[0].duration: 2h is longer than the policy's maxDuration 1h"),
        "{over}"
    );
    let outside = jit(ALICE, &ns, &request_args("198.51.100.7/32", "15m")).await;
    assert_eq!(outside.code, Some(1), "{outside}");
    assert!(
        outside
            .stderr
            .contains("spec.ports[0].sourcePrefix: 198.51.100.7/32 is not inside the prefixes policy \"jit\" allows"),
        "{outside}"
    );
    for run in [&over, &outside] {
        assert!(!run.stderr.contains("admission webhook"), "{run}");
        assert!(run.stderr.contains("nothing was created"), "{run}");
    }
    let calls: Vec<String> = tb
        .audit_events(ALICE, &ns)
        .iter()
        .map(|e| {
            format!(
                "{} {}/{}",
                e["verb"].as_str().unwrap_or("?"),
                e["objectRef"]["resource"].as_str().unwrap_or("?"),
                e["objectRef"]["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        calls,
        vec!["get jitpolicies/jit", "get jitpolicies/jit"],
        "each refused run read the policy and nothing else"
    );
    assert!(
        requests
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // The control: a fitting request is sent, and stored, here.
    let mut args = request_args("203.0.113.7/32", "15m");
    args.extend(["--no-wait", "--name", "filed"]);
    let ok = jit(ALICE, &ns, &args).await;
    assert_eq!(ok.code, Some(0), "{ok}");
    assert!(ok.stdout.contains("accessrequest/filed filed"), "{ok}");
    assert!(requests.get_opt("filed").await.unwrap().is_some());
    assert!(
        tb.audit_events(ALICE, &ns)
            .iter()
            .any(|e| e["verb"] == "create" && e["objectRef"]["resource"] == "accessrequests"),
        "the audit log misses the create"
    );

    // No operator answers here: the wait times out, exit 1, saying where the request is.
    let mut args = request_args("203.0.113.8/32", "15m");
    args.extend(["--timeout", "3s", "--name", "unanswered"]);
    let late = jit(ALICE, &ns, &args).await;
    assert_eq!(late.code, Some(1), "{late}");
    assert!(
        late.stderr
            .contains("timed out after 3s waiting for unanswered, which is Pending"),
        "{late}"
    );

    // An operator without its webhook denies the unstamped request: the plugin prints the
    // operator's message and exits 1.
    let ec2 = crate::support::aws::client(&tb.moto_url);
    let vm = crate::support::aws::instance(&ec2).await;
    let spec = serde_json::json!({"spec": {"targets": [{"name": "web", "aws": {"region": crate::support::aws::REGION, "instanceId": vm.instance_id}}]}});
    Api::<JitPolicy>::namespaced(client.clone(), &ns)
        .patch(
            "jit",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&spec),
        )
        .await
        .unwrap();
    let _operator =
        crate::support::operator::Operator::start_without_webhook(tb, &ns, &tb.moto_url, "2s");
    let denied = jit(ALICE, &ns, &request_args("203.0.113.9/32", "15m")).await;
    assert_eq!(denied.code, Some(1), "{denied}");
    assert!(
        denied.stderr.contains("is Denied: ")
            && denied.stderr.contains("jit.portcullis.dev/requester"),
        "{denied}"
    );
}

#[tokio::test]
async fn cli_progress_line_on_a_terminal_plain_in_a_pipe() {
    let w = World::new("cli-tty", Faults::None).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    grant_rbac(&w.ns).await;
    let tb = Testbed::shared();
    let ns = w.ns.clone();
    // The frames but the last, which only a finished spinner shows.
    let spinner: Vec<char> = SPINNER.chars().rev().skip(1).collect();

    // On a terminal: a spinner redrawn in place, phase changes, colours.
    let mut cmd = command(tb, ALICE, &ns, &request_args("203.0.113.21/32", "15m"));
    cmd.env("TERM", "xterm-256color");
    let tty = tokio::task::spawn_blocking(move || on_terminal(cmd, RUN_LIMIT))
        .await
        .unwrap();
    assert_eq!(tty.code, Some(0), "{tty}\n{}", w.dump());
    let screen = &tty.stdout;
    assert!(
        screen.contains("waiting for accessrequest/web-"),
        "{screen:?}"
    );
    assert!(
        screen.chars().any(|c| spinner.contains(&c)),
        "no spinner: {screen:?}"
    );
    assert!(
        screen.contains('\r'),
        "the line is not redrawn in place: {screen:?}"
    );
    assert!(
        screen.contains("Pending") && screen.contains("Active"),
        "{screen:?}"
    );
    assert!(has_sgr(screen), "no colours on a terminal: {screen:?}");

    // NO_COLOR: the same live line, no colours.
    let mut cmd = command(tb, ALICE, &ns, &request_args("203.0.113.22/32", "15m"));
    cmd.env("TERM", "xterm-256color").env("NO_COLOR", "1");
    let plain_tty = tokio::task::spawn_blocking(move || on_terminal(cmd, RUN_LIMIT))
        .await
        .unwrap();
    assert_eq!(plain_tty.code, Some(0), "{plain_tty}");
    assert!(
        plain_tty.stdout.chars().any(|c| spinner.contains(&c)),
        "{plain_tty}"
    );
    assert!(
        !has_sgr(&plain_tty.stdout),
        "colours despite NO_COLOR: {:?}",
        plain_tty.stdout
    );

    // In a pipe: plain lines, one per phase, no escape codes, no carriage returns.
    let run = jit(ALICE, &ns, &request_args("203.0.113.23/32", "15m")).await;
    assert_eq!(run.code, Some(0), "{run}");
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains('\x1b') && !text.contains('\r'), "{run}");
        assert!(!text.chars().any(|c| spinner.contains(&c)), "{run}");
    }
    let phases: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with('[') && l.contains("] accessrequest/web-"))
        .collect();
    assert!(
        phases.first().is_some_and(|l| l.contains(" Pending"))
            && phases.last().is_some_and(|l| l.contains(" Active")),
        "{run}"
    );
    assert!(run.stdout.contains("is Active"), "{run}");

    // -o json: the Active object on stdout.
    let mut args = request_args("203.0.113.24/32", "15m");
    args.extend(["-o", "json"]);
    let run = jit(ALICE, &ns, &args).await;
    assert_eq!(run.code, Some(0), "{run}");
    let r: AccessRequest =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run}"));
    assert_eq!(r.status.unwrap().phase, Some(Phase::Active));
}
