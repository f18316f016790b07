//! `kubectl jit request`: validate locally, file the AccessRequest, wait until it opens,
//! and say until when and where to connect.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};

use super::connect;
use super::output::{self, Format, Palette};
use super::progress::Progress;
use super::source::{self, FromArg};
use super::summary;
use super::wait;
use super::{Error, Global};
use crate::api::{
    AccessRequest, AccessRequestSpec, JitPolicy, Phase, PolicyRef, Protocol, RequestPort,
};
use crate::domain::{ObjectKey, duration, validate};

const EXAMPLES: &str = "\
Examples:
  # SSH to target `web` of policy `build-hosts` for 15 minutes from one address
  kubectl jit request build-hosts web --port 22 --from 203.0.113.7/32 --for 15m --reason \"disk full\"

  # RDP and WinRM from your public address (found through --ip-echo-url), for an hour
  kubectl jit request jump-hosts jump --port 3389 --port 5986 --from auto --for 1h --reason \"patching\"

  # A UDP port, a chosen name, and no waiting
  kubectl jit request p vm --port 3389/UDP --for 30m --reason x --name rdp-udp --no-wait

Without --from, the policy's only allowed address is used when it allows exactly one.
The request is checked against its policy before it is sent, with the admission
webhook's own messages. Exit codes: 0 Active, 1 denied, failed or timed out, 2 usage.";

/// `kubectl jit request POLICY TARGET --port … --for … --reason …`.
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct RequestArgs {
    /// The JitPolicy to request through.
    pub policy: String,
    /// The policy's target: the VM whose ports to open.
    pub target: String,
    /// A port to open, as PORT or PORT/PROTOCOL (TCP, UDP, Any); repeat for several.
    #[arg(short = 'p', long = "port", value_name = "PORT[/PROTOCOL]", required = true, value_parser = parse_port)]
    pub ports: Vec<(i32, Option<Protocol>)>,
    /// How long the ports stay open: 30s, 15m, 1h30m (at most the policy's maxDuration).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration_text)]
    pub duration: String,
    /// Why you need access; kept in the audit trail.
    #[arg(short = 'r', long)]
    pub reason: String,
    /// Where you connect from: a CIDR or an address, or "auto" for your public address.
    #[arg(long, value_name = "CIDR|auto", value_parser = source::parse_from)]
    pub from: Option<FromArg>,
    /// Where --from auto asks for your public address (it answers with the address alone).
    #[arg(long, value_name = "URL", default_value = source::DEFAULT_ECHO_URL, env = "KUBECTL_JIT_IP_ECHO_URL")]
    pub ip_echo_url: String,
    /// The request's name (default: the target's name and a random suffix).
    #[arg(long)]
    pub name: Option<String>,
    /// File the request and return at once.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the request to open.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// Parses `22`, `3389/UDP`, `5986/tcp`.
pub fn parse_port(text: &str) -> Result<(i32, Option<Protocol>), String> {
    let (port, protocol) = match text.split_once('/') {
        Some((p, proto)) => (p, Some(proto)),
        None => (text, None),
    };
    let port: i32 = port
        .parse()
        .ok()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| format!("{port:?} is not a port (1-65535)"))?;
    let protocol = match protocol.map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("tcp") => Some(Protocol::Tcp),
        Some("udp") => Some(Protocol::Udp),
        Some("any") => Some(Protocol::Any),
        Some(other) => return Err(format!("{other:?} is not a protocol (TCP, UDP or Any)")),
    };
    Ok((port, protocol))
}

fn parse_duration_text(text: &str) -> Result<String, String> {
    duration::parse(text).map(|_| text.to_string())
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    duration::parse(text)
}

/// What reading the policy told.
enum Looked {
    Found(Box<JitPolicy>),
    /// The policy does not exist.
    Missing,
    /// The caller may not read it; the admission webhook will judge.
    Hidden,
}

async fn look_up(api: &Api<JitPolicy>, name: &str) -> Result<Looked, Error> {
    match api.get_opt(name).await {
        Ok(Some(p)) => Ok(Looked::Found(Box::new(p))),
        Ok(None) => Ok(Looked::Missing),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(Looked::Hidden),
        Err(e) => Err(Error::kube(format!("cannot read JitPolicy {name:?}"))(e)),
    }
}

/// Runs `request`.
pub async fn run(global: &Global, args: RequestArgs) -> Result<(), Error> {
    let session = connect::session(global).await?;
    let ns = session.namespace.clone();
    let policies: Api<JitPolicy> = Api::namespaced(session.client.clone(), &ns);
    let requests: Api<AccessRequest> = Api::namespaced(session.client.clone(), &ns);
    let policy = look_up(&policies, &args.policy).await?;

    let mut ports: Vec<RequestPort> = args
        .ports
        .iter()
        .map(|&(port, protocol)| RequestPort {
            port,
            protocol,
            source_prefix: String::new(),
            duration: args.duration.clone(),
        })
        .collect();
    let source = match &args.from {
        Some(FromArg::Cidr(net)) => *net,
        Some(FromArg::Auto) => {
            let net = source::public_address(&args.ip_echo_url).await?;
            eprintln!(
                "--from auto: your public address is {net} (as {} sees it)",
                args.ip_echo_url
            );
            net
        }
        None => match &policy {
            Looked::Found(p) => {
                source::from_policy(&args.policy, &p.spec, &ports).map_err(Error::Usage)?
            }
            Looked::Missing | Looked::Hidden => {
                return Err(Error::Usage(
                    "say where you connect from: --from CIDR, or --from auto for your public address".into(),
                ));
            }
        },
    };
    for p in &mut ports {
        p.source_prefix = source.to_string();
    }
    let spec = AccessRequestSpec {
        policy_ref: PolicyRef {
            name: args.policy.clone(),
        },
        target: args.target.clone(),
        ports,
        justification: args.reason.clone(),
        revoke: false,
    };
    check_locally(&ns, args.name.as_deref(), &spec, &policy)?;

    let object = AccessRequest {
        metadata: ObjectMeta {
            name: args.name.clone(),
            generate_name: args.name.is_none().then(|| format!("{}-", args.target)),
            namespace: Some(ns.clone()),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    };
    let created = requests
        .create(&PostParams::default(), &object)
        .await
        .map_err(|e| {
            Error::Failed(format!(
                "the request was refused: {}",
                super::kube_message(&e)
            ))
        })?;
    let name = created.name_any();
    let what = format!("accessrequest/{name}");
    if args.no_wait {
        return match global.output {
            Format::Text => {
                println!("{what} filed in namespace {ns}; follow it with: kubectl jit ls -n {ns}");
                Ok(())
            }
            f => output::print(f, &created),
        };
    }

    let mut progress = Progress::start(&what);
    let waited = tokio::select! {
        r = wait::until(&requests, &name, args.timeout, &mut progress, wait::settled) => r,
        _ = tokio::signal::ctrl_c() => Err(Error::Failed(format!(
            "stopped waiting; {what} stays filed: see it with `kubectl jit ls`, close it with `kubectl jit revoke {name}`"
        ))),
    };
    let took = progress.elapsed();
    progress.finish();
    let r = waited?;
    let phase = r.status.as_ref().and_then(|s| s.phase);
    if global.output != Format::Text {
        output::print(global.output, &r)?;
    }
    if phase != Some(Phase::Active) {
        return Err(Error::Failed(format!(
            "{what} is {}: {}",
            wait::phase_name(&r),
            wait::message(&r)
        )));
    }
    if global.output == Format::Text {
        // The policy again: its status now names the addresses the operator resolved.
        let policy = match look_up(&policies, &args.policy).await {
            Ok(Looked::Found(p)) => Some(p),
            _ => None,
        };
        print!(
            "{}",
            summary::active(&r, policy.as_deref(), took, Palette::stdout())
        );
    }
    Ok(())
}

/// Checks the request against its policy with the admission webhook's own rules and
/// messages, so obvious mistakes cost no round trip and create nothing.
fn check_locally(
    ns: &str,
    name: Option<&str>,
    spec: &AccessRequestSpec,
    policy: &Looked,
) -> Result<(), Error> {
    let policy_name = &spec.policy_ref.name;
    let parsed = match policy {
        Looked::Hidden => return Ok(()),
        Looked::Missing => None,
        Looked::Found(p) => Some(
            validate::policy(ObjectKey::new(ns, policy_name), &p.spec, false).map_err(|e| {
                Error::Failed(format!(
                    "spec.policyRef.name: JitPolicy {policy_name:?} is invalid: {}",
                    validate::join(&e)
                ))
            })?,
        ),
    };
    validate::request(
        ObjectKey::new(ns, name.unwrap_or_default()),
        spec,
        parsed.as_ref(),
        jiff::Timestamp::now(),
        false,
        Default::default(),
    )
    .map(|_| ())
    .map_err(|errors| {
        Error::Failed(format!(
            "{}\n(checked against JitPolicy {policy_name:?} in namespace {ns:?} before sending: nothing was created)",
            validate::join(&errors)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_protocols_parse() {
        assert_eq!(parse_port("22"), Ok((22, None)));
        assert_eq!(parse_port("3389/UDP"), Ok((3389, Some(Protocol::Udp))));
        assert_eq!(parse_port("5986/tcp"), Ok((5986, Some(Protocol::Tcp))));
        assert_eq!(parse_port("53/Any"), Ok((53, Some(Protocol::Any))));
        assert!(parse_port("0").is_err());
        assert!(parse_port("65536").is_err());
        assert!(parse_port("ssh").is_err());
        assert!(parse_port("22/sctp").unwrap_err().contains("protocol"));
    }
}
