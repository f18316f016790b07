//! The CRDs install on a real API server with kubectl's default validation, the examples
//! apply, and the server itself rejects malformed objects with a message naming the field.

use crate::support::kube_helpers::{create, namespace, object};
use crate::support::testbed::{ADMIN, Testbed, repo_root, run};

#[tokio::test]
async fn crds_install_and_examples_apply() {
    let tb = Testbed::shared();
    tb.install_crds()
        .expect("CRDs install and become Established");
    let client = tb.client(ADMIN).await;
    let ns = namespace(&client, "examples").await;
    let out = run(tb
        .kubectl(ADMIN)
        .args(["apply", "-n", &ns, "-f"])
        .arg(repo_root().join("examples")))
    .expect("the examples apply");
    for name in [
        "jitpolicy.jit.portcullis.dev/build-hosts",
        "jitpolicy.jit.portcullis.dev/jump-hosts",
        "accessrequest.jit.portcullis.dev/fix-the-build",
    ] {
        assert!(out.contains(name), "{name} not created: {out}");
    }
    // Short names and printer columns work.
    let table = run(tb.kubectl(ADMIN).args(["get", "jitreq", "-n", &ns])).unwrap();
    for column in ["TARGET", "PORTS", "PHASE", "EXPIRES", "REQUESTER", "AGE"] {
        assert!(table.contains(column), "column {column} missing:\n{table}");
    }
    assert!(table.contains("builder") && table.contains("22"), "{table}");
    let table = run(tb.kubectl(ADMIN).args(["get", "jitp", "-n", &ns])).unwrap();
    for column in ["TARGETS", "READY", "AGE"] {
        assert!(table.contains(column), "column {column} missing:\n{table}");
    }
    assert!(table.contains("jump"), "{table}");
}

const POLICY: &str = r#"
apiVersion: jit.portcullis.dev/v1alpha1
kind: JitPolicy
metadata: {name: bad}
spec:
  targets:
    - name: web
      aws: {region: eu-west-1, instanceId: i-0123456789abcdef0}
  ports:
    - port: 22
      protocol: TCP
      allowedSourcePrefixes: ["10.0.0.0/8"]
      maxDuration: 1h
"#;

const REQUEST: &str = r#"
apiVersion: jit.portcullis.dev/v1alpha1
kind: AccessRequest
metadata: {name: bad}
spec:
  policyRef: {name: p}
  target: web
  ports:
    - {port: 22, sourcePrefix: 10.1.2.3/32, duration: 30m}
  justification: testing
"#;

/// One malformed object: its YAML, and what the server's message must contain.
struct Case {
    what: &'static str,
    yaml: String,
    field: &'static str,
    says: &'static str,
}

fn case(
    what: &'static str,
    base: &str,
    from: &str,
    to: &str,
    field: &'static str,
    says: &'static str,
) -> Case {
    assert!(
        base.contains(from),
        "{what}: fixture does not contain {from:?}"
    );
    Case {
        what,
        yaml: base.replacen(from, to, 1),
        field,
        says,
    }
}

fn invalid_objects() -> Vec<Case> {
    let nine_ports = (0..9)
        .map(|i| {
            format!(
                "\n    - {{port: {}, sourcePrefix: 10.1.2.3/32, duration: 30m}}",
                22 + i
            )
        })
        .collect::<String>();
    vec![
        case(
            "port 0",
            POLICY,
            "port: 22",
            "port: 0",
            "spec.ports",
            "greater than or equal to 1",
        ),
        case(
            "port 70000",
            POLICY,
            "port: 22",
            "port: 70000",
            "spec.ports",
            "less than or equal to 65535",
        ),
        case(
            "unknown protocol",
            POLICY,
            "protocol: TCP",
            "protocol: SCTP",
            "spec.ports",
            "Unsupported value: \"SCTP\"",
        ),
        case(
            "malformed CIDR",
            POLICY,
            "10.0.0.0/8",
            "10.0.0.300/8",
            "spec.ports",
            "allowedSourcePrefixes",
        ),
        case(
            "CIDR without a length",
            POLICY,
            "10.0.0.0/8",
            "10.0.0.0",
            "spec.ports",
            "allowedSourcePrefixes",
        ),
        case(
            "malformed duration",
            POLICY,
            "maxDuration: 1h",
            "maxDuration: 1 hour",
            "spec.ports",
            "maxDuration",
        ),
        case(
            "empty ports",
            POLICY,
            "  ports:\n    - port: 22\n      protocol: TCP\n      allowedSourcePrefixes: [\"10.0.0.0/8\"]\n      maxDuration: 1h\n",
            "  ports: []\n",
            "spec.ports",
            "at least 1 items",
        ),
        case(
            "no targets",
            POLICY,
            "  targets:\n    - name: web\n      aws: {region: eu-west-1, instanceId: i-0123456789abcdef0}\n",
            "  targets: []\n",
            "spec.targets",
            "at least 1 items",
        ),
        case(
            "target on two clouds",
            POLICY,
            "aws: {region",
            "azure: {vmId: /subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/v}\n      aws: {region",
            "spec.targets",
            "oneOf",
        ),
        case(
            "target on no cloud",
            POLICY,
            "      aws: {region: eu-west-1, instanceId: i-0123456789abcdef0}\n",
            "",
            "spec.targets",
            "oneOf",
        ),
        case(
            "malformed instance id",
            POLICY,
            "i-0123456789abcdef0",
            "vm-17",
            "spec.targets",
            "instanceId",
        ),
        case(
            "missing justification",
            REQUEST,
            "  justification: testing\n",
            "",
            "spec.justification",
            "Required value",
        ),
        case(
            "empty justification",
            REQUEST,
            "justification: testing",
            "justification: \"\"",
            "spec.justification",
            "at least 1 chars long",
        ),
        case(
            "too many ports",
            REQUEST,
            "  ports:\n    - {port: 22, sourcePrefix: 10.1.2.3/32, duration: 30m}",
            &format!("  ports:{nine_ports}"),
            "spec.ports",
            "at most 8 items",
        ),
        case(
            "empty request ports",
            REQUEST,
            "  ports:\n    - {port: 22, sourcePrefix: 10.1.2.3/32, duration: 30m}",
            "  ports: []",
            "spec.ports",
            "at least 1 items",
        ),
        case(
            "source without a length",
            REQUEST,
            "10.1.2.3/32",
            "10.1.2.3",
            "spec.ports",
            "sourcePrefix",
        ),
        case(
            "wildcard source in a request",
            REQUEST,
            "10.1.2.3/32",
            "\"*\"",
            "spec.ports",
            "sourcePrefix",
        ),
        case(
            "malformed request duration",
            REQUEST,
            "duration: 30m",
            "duration: 30minutes",
            "spec.ports",
            "duration",
        ),
        case(
            "request port 65536",
            REQUEST,
            "port: 22",
            "port: 65536",
            "spec.ports",
            "less than or equal to 65535",
        ),
        case(
            "missing policyRef",
            REQUEST,
            "  policyRef: {name: p}\n",
            "",
            "spec.policyRef",
            "Required value",
        ),
    ]
}

#[tokio::test]
async fn api_server_rejects_malformed_objects_naming_the_field() {
    let tb = Testbed::shared();
    tb.install_crds().expect("CRDs install");
    let client = tb.client(ADMIN).await;
    let ns = namespace(&client, "invalid").await;

    // The fixtures themselves are valid: each case breaks exactly one thing.
    for base in [POLICY, REQUEST] {
        create(&client, &ns, &object(base))
            .await
            .unwrap_or_else(|e| panic!("valid fixture rejected: {e}\n{base}"));
    }

    let cases = invalid_objects();
    assert!(cases.len() >= 8);
    let mut failures = Vec::new();
    for c in &cases {
        let mut obj = object(&c.yaml);
        obj.metadata.name = Some(format!(
            "case-{}",
            c.what
                .replace(' ', "-")
                .to_lowercase()
                .replace(|ch: char| !ch.is_ascii_alphanumeric() && ch != '-', "")
        ));
        match create(&client, &ns, &obj).await {
            Ok(_) => failures.push(format!("{}: accepted", c.what)),
            Err(kube::Error::Api(status)) => {
                let msg = status.message.clone();
                if status.code != 422 || !msg.contains(c.field) || !msg.contains(c.says) {
                    failures.push(format!(
                        "{}: code {} message {msg:?} lacks {:?} or {:?}",
                        c.what, status.code, c.field, c.says
                    ));
                } else {
                    eprintln!("rejected {:<30} {}", c.what, first_line(&msg));
                }
            }
            Err(e) => failures.push(format!("{}: unexpected error {e}", c.what)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| l.contains("spec.")).unwrap_or(s)
}
