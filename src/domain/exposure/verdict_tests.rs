use proptest::prelude::*;

use super::*;
use crate::domain::exposure::{Cloud, parse_port};

fn port(p: &str) -> PortSpec {
    parse_port(p).unwrap()
}

fn open(p: &str, reach: Reach, source: &str, rule: &str) -> OpenPort {
    OpenPort {
        port: port(p),
        reach,
        sources: vec![source.into()],
        rules: vec![rule.into()],
    }
}

fn vm(open_ports: Vec<OpenPort>) -> ScannedVm {
    ScannedVm {
        cloud: Cloud::Aws,
        id: "i-1".into(),
        name: "web".into(),
        region: "eu-west-1".into(),
        resource_group: None,
        public_ips: Vec::new(),
        open_ports,
        not_applicable: None,
        note: None,
    }
}

fn policy(name: &str, ports: &[&str], ready: bool) -> Governing {
    Governing {
        policy: name.into(),
        ports: ports.iter().map(|p| port(p)).collect(),
        ready,
    }
}

#[test]
fn open_to_the_world_without_a_policy_is_unhealthy() {
    let v = verdict(
        &vm(vec![
            open("22", Reach::Internet, "0.0.0.0/0", "sg-1/sgr-1"),
            open("3389", Reach::Internal, "10.0.0.0/8", "sg-1/sgr-2"),
        ]),
        &[],
    );
    assert_eq!(v.category, Category::Unhealthy);
    assert_eq!(
        v.reason,
        "open to the internet and governed by no JitPolicy: 22/tcp from 0.0.0.0/0 via sg-1/sgr-1"
    );
    assert_eq!(v.to_govern, vec![port("22")]);
}

#[test]
fn internal_only_is_healthy() {
    let v = verdict(
        &vm(vec![open(
            "3389",
            Reach::Internal,
            "10.0.0.0/8",
            "sg-1/sgr-2",
        )]),
        &[],
    );
    assert_eq!(v.category, Category::Healthy);
    assert_eq!(
        v.reason,
        "no management port is open to the internet; reachable from internal sources: 3389/tcp"
    );
    let v = verdict(&vm(Vec::new()), &[]);
    assert_eq!(v.reason, "no management port is open to the internet");
}

#[test]
fn a_ready_policy_governs() {
    let v = verdict(
        &vm(Vec::new()),
        &[policy("team/jit", &["22", "3389"], true)],
    );
    assert_eq!(v.category, Category::Healthy);
    assert_eq!(
        v.reason,
        "no management port is open to the internet; governed by JitPolicy team/jit (22/tcp, 3389/tcp)"
    );
    assert_eq!(v.policies, vec!["team/jit".to_string()]);

    // Open through a rule the policy does not override (an Azure allow above the deny).
    let v = verdict(
        &vm(vec![open("22", Reach::Internet, "Internet", "nsg/allow")]),
        &[policy("team/jit", &["22"], true)],
    );
    assert_eq!(v.category, Category::Healthy);
    assert_eq!(
        v.reason,
        "governed by JitPolicy team/jit (22/tcp); still open to the internet through rules the policy's deny does not override: 22/tcp from Internet via nsg/allow"
    );
    assert!(v.to_govern.is_empty());
}

#[test]
fn a_policy_that_is_not_ready_does_not_protect_yet() {
    let v = verdict(
        &vm(vec![open("22", Reach::Internet, "0.0.0.0/0", "sg-1/sgr-1")]),
        &[policy("team/jit", &["22"], false)],
    );
    assert_eq!(v.category, Category::Unhealthy);
    assert_eq!(
        v.reason,
        "open to the internet while JitPolicy team/jit is not Ready: 22/tcp from 0.0.0.0/0 via sg-1/sgr-1"
    );
    // It is named already: no new policy should be written for it.
    assert!(v.to_govern.is_empty());
}

#[test]
fn a_policy_for_other_ports_leaves_the_rest_unhealthy() {
    let v = verdict(
        &vm(vec![
            open("22", Reach::Internet, "0.0.0.0/0", "sg-1/sgr-1"),
            open("3389", Reach::Internet, "0.0.0.0/0", "sg-1/sgr-1"),
        ]),
        &[policy("team/ssh", &["22"], true)],
    );
    assert_eq!(v.category, Category::Unhealthy);
    assert_eq!(v.to_govern, vec![port("3389")]);
    assert!(v.reason.contains("3389/tcp from 0.0.0.0/0"), "{}", v.reason);
    assert!(!v.reason.contains("22/tcp from"), "{}", v.reason);
}

#[test]
fn not_applicable_wins_and_says_why() {
    let mut stopped = vm(vec![open("22", Reach::Internet, "0.0.0.0/0", "sg-1/sgr-1")]);
    stopped.not_applicable = Some(NotApplicable::NotRunning {
        state: "stopped".into(),
    });
    let v = verdict(&stopped, &[]);
    assert_eq!(v.category, Category::NotApplicable);
    assert_eq!(
        v.reason,
        "not running (stopped); JIT applies to running VMs"
    );
    assert!(v.to_govern.is_empty());

    let mut fm = vm(Vec::new());
    fm.not_applicable = Some(NotApplicable::FirewallManager {
        firewall: "fw1".into(),
        policy: "fwp".into(),
    });
    assert!(
        verdict(&fm, &[])
            .reason
            .contains("Firewall Manager policy fwp")
    );
    let mut none = vm(Vec::new());
    none.not_applicable = Some(NotApplicable::NoNsg);
    assert!(verdict(&none, &[]).reason.starts_with("JIT needs an NSG"));
}

#[test]
fn notes_close_the_reason() {
    let mut v = vm(Vec::new());
    v.note = Some("behind Azure Firewall fw (classic rules)".into());
    assert_eq!(
        verdict(&v, &[]).reason,
        "no management port is open to the internet; behind Azure Firewall fw (classic rules)"
    );
}

fn reach() -> impl Strategy<Value = Reach> {
    prop_oneof![Just(Reach::Internet), Just(Reach::Internal)]
}

proptest! {
    /// Unhealthy exactly when a port is open to the internet and no Ready policy governs
    /// it; what is left to govern is exactly the internet ports no policy names.
    #[test]
    fn categories_follow_governance(
        opens in prop::collection::vec((prop::sample::select(vec!["22", "3389", "5985"]), reach()), 0..4),
        pols in prop::collection::vec((prop::collection::vec(prop::sample::select(vec!["22", "3389", "5985"]), 1..3), any::<bool>()), 0..3),
    ) {
        let ports: Vec<OpenPort> = opens
            .iter()
            .map(|(p, r)| open(p, *r, "0.0.0.0/0", "sg-1/sgr-1"))
            .collect();
        let ports = crate::domain::exposure::merge(ports);
        let governing: Vec<Governing> = pols
            .iter()
            .enumerate()
            .map(|(i, (ps, ready))| policy(&format!("ns/p{i}"), ps, *ready))
            .collect();
        let v = verdict(&vm(ports.clone()), &governing);
        let internet: Vec<&OpenPort> = ports.iter().filter(|o| o.reach == Reach::Internet).collect();
        let unprotected = internet
            .iter()
            .any(|o| !governing.iter().any(|g| g.ready && g.governs(o.port)));
        prop_assert_eq!(v.category == Category::Unhealthy, unprotected);
        let unnamed: Vec<PortSpec> = internet
            .iter()
            .filter(|o| !governing.iter().any(|g| g.governs(o.port)))
            .map(|o| o.port)
            .collect();
        prop_assert_eq!(v.to_govern, unnamed);
    }
}
