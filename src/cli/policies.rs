//! `kubectl jit policies`: the policies, their targets and ports, and whether the caller
//! may request through each (a SelfSubjectAccessReview for the verb `request`).

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde::Serialize;

use super::connect;
use super::output::{self, Format, Palette, Table};
use super::{Error, Global};
use crate::api::{GROUP, JitPolicy, PolicyPort, Protocol, TargetCloud};
use crate::webhook::admission::VERB;

const EXAMPLES: &str = "\
Examples:
  # The policies here, and which of them you may request through
  kubectl jit policies

  # In every namespace, as JSON
  kubectl jit policies -A -o json

MAY REQUEST is the API server's answer for you: the RBAC verb `request` on the policy.";

/// `kubectl jit policies [-A]`.
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct PoliciesArgs {
    /// List policies in every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// One policy as `policies` shows it (and prints with `-o json|yaml`).
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub name: String,
    /// Its targets' names.
    pub targets: Vec<TargetSummary>,
    /// Its ports.
    pub ports: Vec<PolicyPort>,
    /// Whether the caller may request through it.
    pub may_request: bool,
    /// The API server's reason, when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One target as `policies` shows it.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetSummary {
    /// The name requests use.
    pub name: String,
    /// `aws` or `azure`.
    pub cloud: String,
}

/// Runs `policies`.
pub async fn run(global: &Global, args: PoliciesArgs) -> Result<(), Error> {
    let session = connect::session(global).await?;
    let api: Api<JitPolicy> = if args.all_namespaces {
        Api::all(session.client.clone())
    } else {
        Api::namespaced(session.client.clone(), &session.namespace)
    };
    let mut policies = api
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("cannot list JitPolicies"))?
        .items;
    policies.sort_by_key(|p| (p.namespace(), p.name_any()));
    let reviews: Api<SelfSubjectAccessReview> = Api::all(session.client.clone());
    let mut out = Vec::new();
    for p in &policies {
        let ns = p.namespace().unwrap_or_default();
        let name = p.name_any();
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(ns.clone()),
                    verb: Some(VERB.into()),
                    group: Some(GROUP.into()),
                    resource: Some("jitpolicies".into()),
                    name: Some(name.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(Error::kube(format!(
                "cannot ask whether you may request through {ns}/{name}"
            )))?;
        let status = answer.status.unwrap_or_default();
        out.push(Summary {
            namespace: ns,
            name,
            targets: p
                .spec
                .targets
                .iter()
                .map(|t| TargetSummary {
                    name: t.name.clone(),
                    cloud: match t.cloud {
                        TargetCloud::Aws(_) => "aws".into(),
                        TargetCloud::Azure(_) => "azure".into(),
                    },
                })
                .collect(),
            ports: p.spec.ports.clone(),
            may_request: status.allowed,
            reason: status.reason.filter(|r| !r.is_empty()),
        });
    }
    if global.output != Format::Text {
        return output::print(global.output, &out);
    }
    if out.is_empty() {
        let scope = if args.all_namespaces {
            "any namespace".to_string()
        } else {
            format!("namespace {}", session.namespace)
        };
        eprintln!("no JitPolicies in {scope}");
        return Ok(());
    }
    print!("{}", table(&out, args.all_namespaces, Palette::stdout()));
    Ok(())
}

/// A port as people read it: `22/TCP ≤1h from 203.0.113.0/24`.
fn port_text(p: &PolicyPort) -> String {
    let proto = match p.protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Any => "Any",
    };
    format!(
        "{}/{proto} ≤{} from {}",
        p.port,
        p.max_duration,
        p.allowed_source_prefixes.join(",")
    )
}

/// The summaries as an aligned table.
pub fn table(items: &[Summary], namespaces: bool, palette: Palette) -> String {
    let mut header = vec!["NAME", "TARGETS", "MAY REQUEST", "PORTS"];
    if namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut t = Table::new(&header);
    for s in items {
        let targets: Vec<String> = s
            .targets
            .iter()
            .map(|t| format!("{} ({})", t.name, t.cloud))
            .collect();
        let ports: Vec<String> = s.ports.iter().map(port_text).collect();
        let mut row = vec![
            s.name.clone(),
            targets.join(", "),
            if s.may_request { "yes" } else { "no" }.to_string(),
            ports.join("; "),
        ];
        if namespaces {
            row.insert(0, s.namespace.clone());
        }
        t.row(row);
    }
    let column = if namespaces { 3 } else { 2 };
    t.render(|i, cell| match (i == column, cell.trim()) {
        (true, "yes") => palette.good(cell),
        (true, _) => palette.bad(cell),
        _ => cell.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_says_yes_or_no() {
        let port: PolicyPort = serde_json::from_value(serde_json::json!(
            {"port": 22, "allowedSourcePrefixes": ["203.0.113.0/24"], "maxDuration": "1h"}
        ))
        .unwrap();
        let s = |name: &str, may| Summary {
            namespace: "team".into(),
            name: name.into(),
            targets: vec![TargetSummary {
                name: "web".into(),
                cloud: "aws".into(),
            }],
            ports: vec![port.clone()],
            may_request: may,
            reason: None,
        };
        let text = table(
            &[s("build", true), s("prod", false)],
            false,
            Palette::plain(),
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].starts_with("build") && lines[1].contains(" yes "),
            "{text}"
        );
        assert!(
            lines[2].starts_with("prod") && lines[2].contains(" no "),
            "{text}"
        );
        assert!(
            lines[1].contains("22/TCP ≤1h from 203.0.113.0/24"),
            "{text}"
        );
    }
}
