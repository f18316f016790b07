use super::*;
use crate::domain::exposure::{Governing, OpenPort, Reach, ScannedVm, parse_port};
use crate::domain::{ObjectKey, validate};
use kube::ResourceExt;

fn settings() -> Settings {
    Settings {
        allow: vec!["203.0.113.0/24".into()],
        max_duration: "3h".into(),
        namespace: Some("ops".into()),
    }
}

fn open(port: &str) -> OpenPort {
    OpenPort {
        port: parse_port(port).unwrap(),
        reach: Reach::Internet,
        sources: vec!["0.0.0.0/0".into()],
        rules: vec!["r".into()],
    }
}

fn aws(name: &str, id: &str, region: &str, ports: &[&str], governing: &[Governing]) -> Finding {
    Finding::new(
        ScannedVm {
            cloud: Cloud::Aws,
            id: id.into(),
            name: name.into(),
            region: region.into(),
            resource_group: None,
            public_ips: Vec::new(),
            open_ports: ports.iter().map(|p| open(p)).collect(),
            not_applicable: None,
            note: None,
        },
        governing,
    )
}

fn azure(sub: &str, rg: &str, name: &str, ports: &[&str]) -> Finding {
    Finding::new(
        ScannedVm {
            cloud: Cloud::Azure,
            id: format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"
            ),
            name: name.into(),
            region: "westus".into(),
            resource_group: Some(rg.into()),
            public_ips: Vec::new(),
            open_ports: ports.iter().map(|p| open(p)).collect(),
            not_applicable: None,
            note: None,
        },
        &[],
    )
}

fn ports_of(p: &JitPolicy) -> Vec<i32> {
    p.spec.ports.iter().map(|x| x.port).collect()
}

/// Every emitted policy passes the operator's own validation.
fn valid(policies: &[JitPolicy]) {
    for p in policies {
        let key = ObjectKey::new(p.namespace().unwrap_or_default(), p.name_any());
        if let Err(e) = validate::policy(key, &p.spec, false) {
            panic!("{} is invalid: {}", p.name_any(), validate::join(&e));
        }
    }
}

#[test]
fn one_policy_per_region_and_resource_group() {
    let findings = [
        aws("Web 1", "i-00000000000000001", "eu-west-1", &["22"], &[]),
        aws("web_1", "i-00000000000000002", "eu-west-1", &["3389"], &[]),
        aws("db", "i-00000000000000003", "us-east-1", &["22"], &[]),
        aws("fine", "i-00000000000000004", "us-east-1", &[], &[]),
        azure("s1", "RG-App", "vm1", &["3389"]),
    ];
    let out = policies(&findings, &settings());
    valid(&out);
    let names: Vec<String> = out.iter().map(|p| p.name_any()).collect();
    assert_eq!(
        names,
        ["jit-aws-eu-west-1", "jit-aws-us-east-1", "jit-azure-rg-app"]
    );
    let eu = &out[0];
    assert_eq!(ports_of(eu), [22, 3389]);
    let targets: Vec<&str> = eu.spec.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(targets, ["web-1", "web-1-2"]);
    assert_eq!(eu.namespace().as_deref(), Some("ops"));
    assert_eq!(
        eu.labels().get(CREATED_BY.0).map(String::as_str),
        Some(CREATED_BY.1)
    );
    let p = &eu.spec.ports[0];
    assert_eq!(
        (
            p.allowed_source_prefixes.clone(),
            p.max_duration.as_str(),
            p.protocol
        ),
        (vec!["203.0.113.0/24".to_string()], "3h", Protocol::Tcp)
    );
    assert_eq!(out[1].spec.targets.len(), 1, "healthy VMs get no policy");
    match &out[2].spec.targets[0].cloud {
        TargetCloud::Azure(a) => assert!(a.vm_id.ends_with("/virtualMachines/vm1")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn big_groups_split_and_names_stay_unique() {
    let findings: Vec<Finding> = (0..130)
        .map(|i| aws("same", &format!("i-{i:017}"), "eu-west-1", &["22"], &[]))
        .collect();
    let out = policies(&findings, &settings());
    valid(&out);
    let sizes: Vec<usize> = out.iter().map(|p| p.spec.targets.len()).collect();
    assert_eq!(sizes, [64, 64, 2]);
    let names: Vec<String> = out.iter().map(|p| p.name_any()).collect();
    assert_eq!(
        names,
        [
            "jit-aws-eu-west-1",
            "jit-aws-eu-west-1-2",
            "jit-aws-eu-west-1-3"
        ]
    );
    // One resource group name in two subscriptions: two policies, told apart.
    let out = policies(
        &[
            azure("s1", "rg", "a", &["22"]),
            azure("s2", "rg", "b", &["22"]),
        ],
        &settings(),
    );
    assert_eq!(out.len(), 2);
    assert_ne!(out[0].name_any(), out[1].name_any());
    assert!(out[0].name_any().starts_with("jit-azure-rg-"));
}

#[test]
fn a_vm_already_named_on_a_port_gets_its_own_policy() {
    let ssh_policy = Governing {
        policy: "team/ssh".into(),
        ports: vec![parse_port("22").unwrap()],
        ready: true,
    };
    let findings = [
        aws("a", "i-00000000000000001", "eu-west-1", &["22"], &[]),
        // 22 is governed; 3389 is not: it must not be put under a policy that also has 22.
        aws(
            "b",
            "i-00000000000000002",
            "eu-west-1",
            &["22", "3389"],
            std::slice::from_ref(&ssh_policy),
        ),
    ];
    let out = policies(&findings, &settings());
    valid(&out);
    let summary: Vec<(String, Vec<i32>, usize)> = out
        .iter()
        .map(|p| (p.name_any(), ports_of(p), p.spec.targets.len()))
        .collect();
    assert_eq!(
        summary,
        [
            ("jit-aws-eu-west-1".to_string(), vec![22], 1),
            ("jit-aws-eu-west-1-b".to_string(), vec![3389], 1),
        ]
    );
}

#[test]
fn yaml_reads_back() {
    let out = policies(
        &[aws("web", "i-00000000000000001", "eu-west-1", &["22"], &[])],
        &settings(),
    );
    let text = yaml(&out).unwrap();
    assert!(
        text.starts_with("# portcullis scan: 1 JitPolicies for 1 unhealthy VMs\n---\n"),
        "{text}"
    );
    assert!(!text.contains("status"), "{text}");
    let back: JitPolicy = serde_saphyr::from_str(text.split("---\n").nth(1).unwrap()).unwrap();
    assert_eq!(back.spec, out[0].spec);
}

#[test]
fn labels() {
    assert_eq!(label("Web Server_01", 63), "web-server-01");
    assert_eq!(label("--x--", 63), "x");
    assert_eq!(label("", 63), "vm");
    assert_eq!(label(&"a".repeat(80), 63).len(), 63);
    let mut taken = BTreeSet::new();
    assert_eq!(unique("a".repeat(63), &mut taken, 63), "a".repeat(63));
    assert_eq!(
        unique("a".repeat(63), &mut taken, 63),
        format!("{}-2", "a".repeat(61))
    );
}
