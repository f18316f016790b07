//! `kubectl jit ls`: the caller's requests, open ones first, with the time they have left.

use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::connect;
use super::human;
use super::output::{self, Format, Palette, Table};
use super::wait;
use super::whoami::{self, Identity};
use super::{Error, Global};
use crate::api::{AccessRequest, Phase};
use crate::domain::requester::{ANNOTATION, SignedRequester};

const EXAMPLES: &str = "\
Examples:
  # Your open and pending requests in the current namespace
  kubectl jit ls

  # In every namespace, finished ones included
  kubectl jit ls -A --all

  # As YAML, for scripts
  kubectl jit ls -o yaml

When the API server cannot say who you are (Kubernetes before 1.26 answers no
SelfSubjectReview, and a cluster admin is refused nothing that would name them), ls
shows every request in the namespace, with its requester, and says so.";

/// `kubectl jit ls [-A] [--all]`.
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct LsArgs {
    /// List requests in every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Include finished requests (expired, revoked, denied, failed).
    #[arg(long)]
    pub all: bool,
}

/// Who filed a request: the operator's `status.requester`, else the admission stamp
/// (shown, never trusted: the operator verifies the stamp before opening anything).
pub fn requester(r: &AccessRequest) -> Option<String> {
    if let Some(who) = r.status.as_ref().and_then(|s| s.requester.as_ref()) {
        return Some(who.username.clone());
    }
    let stamp = r.annotations().get(ANNOTATION)?;
    serde_json::from_str::<SignedRequester>(stamp)
        .ok()
        .map(|s| s.requester.username)
}

/// Sort rank: open first, then opening, then the rest.
fn rank(r: &AccessRequest) -> u8 {
    match r.status.as_ref().and_then(|s| s.phase) {
        Some(Phase::Active) => 0,
        None | Some(Phase::Pending) => 1,
        _ => 2,
    }
}

/// Runs `ls`.
pub async fn run(global: &Global, args: LsArgs) -> Result<(), Error> {
    let session = connect::session(global).await?;
    let api: Api<AccessRequest> = if args.all_namespaces {
        Api::all(session.client.clone())
    } else {
        Api::namespaced(session.client.clone(), &session.namespace)
    };
    let me = whoami::whoami(&session.client).await;
    let mut items = api
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("cannot list AccessRequests"))?
        .items;
    items.retain(|r| args.all || !wait::finished(r));
    if let Identity::Known(name) = &me {
        items.retain(|r| requester(r).as_deref() == Some(name.as_str()));
    }
    let now = jiff::Timestamp::now();
    items.sort_by_key(|r| {
        let expires = r
            .status
            .as_ref()
            .and_then(|s| s.expires_at.as_ref())
            .map(|t| t.0.as_second())
            .unwrap_or(i64::MAX);
        (rank(r), expires, r.namespace(), r.name_any())
    });
    if let Identity::Unknown(why) = &me {
        let scope = if args.all_namespaces {
            "every namespace".to_string()
        } else {
            format!("namespace {}", session.namespace)
        };
        eprintln!("could not learn who you are ({why}); showing every request in {scope}");
    }
    if global.output != Format::Text {
        return output::print(global.output, &output::list(&items));
    }
    if items.is_empty() {
        let scope = if args.all_namespaces {
            "any namespace".to_string()
        } else {
            format!("namespace {}", session.namespace)
        };
        let which = if args.all { "" } else { "open or pending " };
        eprintln!("no {which}requests in {scope}");
        return Ok(());
    }
    print!(
        "{}",
        table(&items, args.all_namespaces, now, Palette::stdout())
    );
    Ok(())
}

/// The listing as an aligned table.
pub fn table(
    items: &[AccessRequest],
    namespaces: bool,
    now: jiff::Timestamp,
    palette: Palette,
) -> String {
    let mut header = vec![
        "NAME",
        "POLICY",
        "TARGET",
        "PORTS",
        "SOURCE",
        "PHASE",
        "REMAINING",
        "REQUESTER",
    ];
    if namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut t = Table::new(&header);
    for r in items {
        let status = r.status.clone().unwrap_or_default();
        let phase = status.phase.unwrap_or(Phase::Pending);
        let ports: Vec<String> = r
            .spec
            .ports
            .iter()
            .map(|p| match p.protocol {
                Some(proto) => format!("{}/{}", p.port, serde_plain(&proto)),
                None => p.port.to_string(),
            })
            .collect();
        let mut sources: Vec<&str> = r
            .spec
            .ports
            .iter()
            .map(|p| p.source_prefix.as_str())
            .collect();
        sources.dedup();
        let remaining = match (phase, status.expires_at.as_ref()) {
            (Phase::Active, Some(at)) => human::left(at.0, now),
            (Phase::Expired | Phase::Revoked, Some(at)) if at.0 <= now => {
                format!("ended {}", human::ago(at.0, now))
            }
            _ => "-".to_string(),
        };
        let mut row = vec![
            r.name_any(),
            r.spec.policy_ref.name.clone(),
            r.spec.target.clone(),
            ports.join(","),
            sources.join(","),
            format!("{phase:?}"),
            remaining,
            requester(r).unwrap_or_else(|| "-".into()),
        ];
        if namespaces {
            row.insert(0, r.namespace().unwrap_or_default());
        }
        t.row(row);
    }
    let phase_column = if namespaces { 6 } else { 5 };
    t.render(|i, cell| {
        if i == phase_column {
            palette.phase(cell)
        } else {
            cell.to_string()
        }
    })
}

/// A protocol as the API writes it (`TCP`, `UDP`, `Any`).
fn serde_plain(p: &crate::api::Protocol) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, phase: &str, expires: i64, user: &str) -> AccessRequest {
        let at = jiff::Timestamp::from_second(expires).unwrap();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "jit.portcullis.dev/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": name, "namespace": "team"},
            "spec": {"policyRef": {"name": "p"}, "target": "web", "justification": "x",
                     "ports": [{"port": 22, "sourcePrefix": "203.0.113.7/32", "duration": "15m"}]},
            "status": {"phase": phase, "expiresAt": at.to_string(),
                       "requester": {"username": user}}
        }))
        .unwrap()
    }

    #[test]
    fn rows_show_time_left_and_requester() {
        let now = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let items = vec![
            req("open", "Active", 1_700_000_000 + 720, "alice"),
            req("done", "Expired", 1_700_000_000 - 180, "alice"),
        ];
        let text = table(&items, false, now, Palette::plain());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{text}");
        assert!(
            lines[1].contains("Active")
                && lines[1].contains("12m left")
                && lines[1].ends_with("alice"),
            "{text}"
        );
        assert!(lines[2].contains("ended 3m ago"), "{text}");
        assert_eq!(requester(&items[0]).as_deref(), Some("alice"));
    }

    #[test]
    fn open_requests_sort_first() {
        assert!(rank(&req("a", "Active", 0, "x")) < rank(&req("b", "Pending", 0, "x")));
        assert!(rank(&req("b", "Pending", 0, "x")) < rank(&req("c", "Revoked", 0, "x")));
    }
}
