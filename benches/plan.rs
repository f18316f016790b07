//! `cargo bench --bench plan`: how `desired()` and `plan()` scale with the number of
//! requests and of foreign rules in a target's NSGs. Prints numbers; asserts nothing
//! (shared machines are noisy: compare the ratios within one run).

use std::hint::black_box;
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use portcullis::domain::*;

fn ssh() -> PortSpec {
    PortSpec {
        port: NonZeroU16::new(22).unwrap(),
        protocol: Proto::Tcp,
    }
}

fn policy(azure: bool) -> Policy {
    Policy {
        key: ObjectKey::new("ns", "p"),
        targets: vec![PolicyTarget {
            name: "vm".into(),
            locator: if azure {
                Locator::Azure {
                    vm_id: "vm".into(),
                    firewall: None,
                }
            } else {
                Locator::Aws {
                    region: "eu-west-1".into(),
                    instance_id: "i-01234567".into(),
                }
            },
        }],
        ports: vec![PolicyPort {
            spec: ssh(),
            allowed: vec![AllowedSource::Any],
            max_duration: Duration::from_secs(3600),
        }],
        bands: Bands::default(),
        shared_groups: SharedGroups::default(),
        deleting: false,
        hold: false,
    }
}

fn requests(n: usize) -> Vec<Request> {
    (0..n)
        .map(|i| Request {
            key: ObjectKey::new("ns", format!("r{i}")),
            policy: "p".into(),
            target: "vm".into(),
            ports: vec![RequestedPort {
                spec: ssh(),
                source: format!("10.{}.{}.{}/32", i / 65536 % 256, i / 256 % 256, i % 256)
                    .parse()
                    .unwrap(),
                duration: Duration::from_secs(1800),
            }],
            created: Timestamp::from_second(i as i64).unwrap(),
            revoked: false,
            recorded: vec![Some(PortState::Active)],
        })
        .collect()
}

fn foreign(m: usize) -> Vec<ForeignRule> {
    (0..m)
        .map(|i| ForeignRule {
            cloud_id: format!("f{i}"),
            spec: ForeignRuleSpec {
                container: "nsg".into(),
                protocol: "Tcp".into(),
                ports: Some((1000 + i as u16, 1000 + i as u16)),
                source: ForeignSource::Tag("*".into()),
                description: None,
            },
            access: Access::Allow,
            priority: Some(100 + i as u16),
        })
        .collect()
}

/// Median time of `f` over `runs` runs.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed()
        })
        .collect();
    v.sort();
    v[runs / 2]
}

fn main() {
    let now = Timestamp::from_second(1_100).unwrap();
    println!(
        "{:<8} {:>9} {:>9} {:>14} {:>14}",
        "cloud", "requests", "foreign", "desired()", "plan() cold"
    );
    for azure in [false, true] {
        let mut base = None;
        for (n, m) in [(10, 10), (100, 100), (1000, 800)] {
            let p = policy(azure);
            let rs = requests(n);
            let d = time(21, || desired(&p, &rs, now));
            let want = desired(&p, &rs, now);
            let target = want.targets.values().next().unwrap().clone();
            let observed = Observed {
                locations: vec!["nsg".into()],
                foreign: foreign(m),
                addresses: vec!["10.0.0.4".parse().unwrap()],
                ..Observed::default()
            };
            let pl = time(21, || plan(&target, &observed, &[]));
            let per = pl.as_secs_f64() / n as f64;
            let ratio = base.map(|b: f64| per / b).unwrap_or(1.0);
            base.get_or_insert(per);
            println!(
                "{:<8} {:>9} {:>9} {:>11.3} ms {:>11.3} ms   per grant x{ratio:.1} vs 10",
                if azure { "azure" } else { "aws" },
                n,
                m,
                d.as_secs_f64() * 1e3,
                pl.as_secs_f64() * 1e3
            );
        }
    }
}
