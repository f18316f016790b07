//! What an Active request means for the person who asked: its ports and source, until
//! when, and where to connect.

use std::time::Duration;

use kube::ResourceExt;

use super::address;
use super::human;
use super::output::Palette;
use crate::api::{AccessRequest, JitPolicy, Protocol, RequestPort};

/// What an Active request means for its user: ports, source, expiry, where to connect.
pub fn active(
    r: &AccessRequest,
    policy: Option<&JitPolicy>,
    took: Duration,
    palette: Palette,
) -> String {
    let now = jiff::Timestamp::now();
    let status = r.status.clone().unwrap_or_default();
    let target = policy
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.targets.iter().find(|t| t.name == r.spec.target));
    let protocol = |port: &RequestPort| -> String {
        let p = port.protocol.or_else(|| {
            policy.and_then(|p| {
                p.spec
                    .ports
                    .iter()
                    .find(|x| x.port == port.port)
                    .map(|x| x.protocol)
            })
        });
        match p {
            Some(Protocol::Tcp) => "/TCP".into(),
            Some(Protocol::Udp) => "/UDP".into(),
            Some(Protocol::Any) => "/Any".into(),
            None => String::new(),
        }
    };
    let mut out = format!(
        "{} accessrequest/{} is {} (opened in {:.1}s)\n",
        palette.good("✔"),
        r.name_any(),
        palette.good("Active"),
        took.as_secs_f64()
    );
    out += &format!(
        "  target   {} (policy {}, namespace {})\n",
        palette.bold(&r.spec.target),
        r.spec.policy_ref.name,
        r.namespace().unwrap_or_default()
    );
    let ports: Vec<String> = r
        .spec
        .ports
        .iter()
        .map(|p| format!("{}{}", p.port, protocol(p)))
        .collect();
    let mut sources: Vec<&str> = r
        .spec
        .ports
        .iter()
        .map(|p| p.source_prefix.as_str())
        .collect();
    sources.dedup();
    out += &format!(
        "  ports    {} from {}\n",
        ports.join(", "),
        sources.join(", ")
    );
    if let Some(at) = &status.expires_at {
        out += &format!(
            "  expires  {} ({})\n",
            palette.bold(&human::local_time(at.0)),
            human::until(at.0, now)
        );
    }
    for p in &r.spec.ports {
        let connection = status
            .ports
            .iter()
            .find(|s| s.port == p.port)
            .and_then(|s| s.connection.as_ref());
        match address::endpoint(p.port, connection, target) {
            Some(e) => {
                out += &format!(
                    "  connect  {}   {}\n",
                    palette.bold(&address::hint(p.port, &e)),
                    palette.dim(&format!("({})", address::note(e.via)))
                );
            }
            None if policy.is_none() => {
                out += &format!(
                    "  connect  port {}: the address is on JitPolicy {:?}, which you may not read\n",
                    p.port, r.spec.policy_ref.name
                );
            }
            None => {
                out += &format!(
                    "  connect  port {}: the operator has not recorded the VM's address yet (kubectl get jitpolicy {} -o yaml)\n",
                    p.port, r.spec.policy_ref.name
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(yaml: &str) -> AccessRequest {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn the_summary_names_ports_source_expiry_and_where_to_connect() {
        let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(899);
        let r = request(&format!(
            "apiVersion: jit.portcullis.dev/v1alpha1\nkind: AccessRequest\nmetadata: {{name: web-abc, namespace: team}}\nspec:\n  policyRef: {{name: p}}\n  target: web\n  justification: x\n  ports: [{{port: 22, sourcePrefix: 203.0.113.7/32, duration: 15m}}]\nstatus:\n  phase: Active\n  expiresAt: '{expires}'\n"
        ));
        let policy: JitPolicy = serde_saphyr::from_str(
            "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {name: p}\nspec:\n  targets: [{name: web, aws: {region: eu-west-1, instanceId: i-0123456789abcdef0}}]\n  ports: [{port: 22, allowedSourcePrefixes: [203.0.113.0/24], maxDuration: 1h}]\nstatus:\n  targets: [{name: web, privateIps: [10.0.1.5]}]\n",
        )
        .unwrap();
        let text = active(
            &r,
            Some(&policy),
            Duration::from_millis(1500),
            Palette::plain(),
        );
        for want in [
            "accessrequest/web-abc is Active (opened in 1.5s)",
            "22/TCP from 203.0.113.7/32",
            &human::local_time(expires),
            "(in 15m)",
            "ssh 10.0.1.5",
            "private address",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        let hidden = active(&r, None, Duration::ZERO, Palette::plain());
        assert!(hidden.contains("which you may not read"), "{hidden}");
    }
}
