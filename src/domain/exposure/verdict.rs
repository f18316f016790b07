//! The recommendation for one VM: healthy, unhealthy or not applicable, and why.

use std::fmt;

use super::{NotApplicable, OpenPort, Reach, ScannedVm};
use crate::domain::PortSpec;

/// Where a VM stands, as Defender for Cloud sorts VMs for JIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    /// Every management port open to the internet is governed by a Ready JitPolicy, or
    /// none is open to the internet.
    Healthy,
    /// A management port is open to the internet and no Ready JitPolicy governs it.
    Unhealthy,
    /// JIT does not apply (not running, no NSG, Firewall Manager, classic).
    NotApplicable,
}

impl Category {
    /// Every category, in report order.
    pub const ALL: [Category; 3] = [
        Category::Healthy,
        Category::Unhealthy,
        Category::NotApplicable,
    ];

    /// The category's name as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Healthy => "Healthy",
            Category::Unhealthy => "Unhealthy",
            Category::NotApplicable => "NotApplicable",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A JitPolicy that names the VM as a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Governing {
    /// `namespace/name`.
    pub policy: String,
    /// The ports it governs.
    pub ports: Vec<PortSpec>,
    /// Whether the operator reports it Ready for its current generation: only then does it
    /// hold the ports closed.
    pub ready: bool,
}

impl Governing {
    fn governs(&self, port: PortSpec) -> bool {
        self.ports
            .iter()
            .any(|p| p.port == port.port && p.protocol.overlaps(port.protocol))
    }
}

/// The recommendation for one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The category.
    pub category: Category,
    /// One sentence (or a few joined by `; `) saying why.
    pub reason: String,
    /// The policies that name the VM, Ready or not.
    pub policies: Vec<String>,
    /// The ports open to the internet that no policy names at all: what a new policy
    /// should govern.
    pub to_govern: Vec<PortSpec>,
}

fn describe(o: &OpenPort) -> String {
    format!(
        "{} from {} via {}",
        o.port,
        o.sources.join(", "),
        o.rules.join(", ")
    )
}

fn join_ports<'a>(ports: impl IntoIterator<Item = &'a OpenPort>) -> String {
    ports
        .into_iter()
        .map(describe)
        .collect::<Vec<_>>()
        .join("; ")
}

fn names(policies: &[&Governing]) -> String {
    let list: Vec<&str> = policies.iter().map(|g| g.policy.as_str()).collect();
    match list.as_slice() {
        [one] => format!("JitPolicy {one}"),
        many => format!("JitPolicies {}", many.join(", ")),
    }
}

fn not_applicable(why: &NotApplicable) -> String {
    match why {
        NotApplicable::NotRunning { state } => {
            format!("not running ({state}); JIT applies to running VMs")
        }
        NotApplicable::NoNsg => {
            "JIT needs an NSG: neither the VM's network interfaces nor their subnets have one"
                .into()
        }
        NotApplicable::FirewallManager { firewall, policy } => format!(
            "behind Azure Firewall {firewall}, whose rules Firewall Manager policy {policy} governs; JIT does not manage Firewall Manager rules"
        ),
        NotApplicable::Classic => {
            "classic (Azure Service Manager) VM; JIT needs an Azure Resource Manager VM".into()
        }
    }
}

/// Sorts `vm` given the policies that name it.
pub fn verdict(vm: &ScannedVm, governing: &[Governing]) -> Verdict {
    let policies: Vec<String> = governing.iter().map(|g| g.policy.clone()).collect();
    let with_note = |reason: String| match &vm.note {
        Some(note) => format!("{reason}; {note}"),
        None => reason,
    };
    if let Some(why) = &vm.not_applicable {
        return Verdict {
            category: Category::NotApplicable,
            reason: with_note(not_applicable(why)),
            policies,
            to_govern: Vec::new(),
        };
    }
    let internet: Vec<&OpenPort> = vm
        .open_ports
        .iter()
        .filter(|o| o.reach == Reach::Internet)
        .collect();
    let ready: Vec<&Governing> = governing.iter().filter(|g| g.ready).collect();
    let waiting: Vec<&Governing> = governing.iter().filter(|g| !g.ready).collect();
    let is_ready = |o: &&&OpenPort| ready.iter().any(|g| g.governs(o.port));
    let unnamed: Vec<&OpenPort> = internet
        .iter()
        .filter(|o| !governing.iter().any(|g| g.governs(o.port)))
        .copied()
        .collect();
    let pending: Vec<&OpenPort> = internet
        .iter()
        .filter(|o| !is_ready(o) && governing.iter().any(|g| g.governs(o.port)))
        .copied()
        .collect();
    let to_govern = unnamed.iter().map(|o| o.port).collect();

    if !unnamed.is_empty() || !pending.is_empty() {
        let mut parts = Vec::new();
        if !unnamed.is_empty() {
            parts.push(format!(
                "open to the internet and governed by no JitPolicy: {}",
                join_ports(unnamed.iter().copied())
            ));
        }
        if !pending.is_empty() {
            let named: Vec<&Governing> = waiting
                .iter()
                .filter(|g| pending.iter().any(|o| g.governs(o.port)))
                .copied()
                .collect();
            parts.push(format!(
                "open to the internet while {} {} not Ready: {}",
                names(&named),
                if named.len() == 1 { "is" } else { "are" },
                join_ports(pending.iter().copied())
            ));
        }
        return Verdict {
            category: Category::Unhealthy,
            reason: with_note(parts.join("; ")),
            policies,
            to_govern,
        };
    }

    let mut parts = Vec::new();
    if internet.is_empty() {
        parts.push("no management port is open to the internet".to_string());
    }
    if !ready.is_empty() {
        let governed: Vec<String> = ready
            .iter()
            .flat_map(|g| g.ports.iter().map(|p| p.to_string()))
            .fold(Vec::new(), |mut acc, p| {
                if !acc.contains(&p) {
                    acc.push(p);
                }
                acc
            });
        parts.push(format!(
            "governed by {} ({})",
            names(&ready),
            governed.join(", ")
        ));
    }
    if !internet.is_empty() {
        parts.push(format!(
            "still open to the internet through rules the policy's deny does not override: {}",
            join_ports(internet.iter().copied())
        ));
    }
    if !waiting.is_empty() {
        parts.push(format!(
            "{} {} not Ready",
            names(&waiting),
            if waiting.len() == 1 { "is" } else { "are" }
        ));
    }
    let internal: Vec<String> = vm
        .open_ports
        .iter()
        .filter(|o| o.reach == Reach::Internal)
        .map(|o| o.port.to_string())
        .collect();
    if !internal.is_empty() {
        parts.push(format!(
            "reachable from internal sources: {}",
            internal.join(", ")
        ));
    }
    Verdict {
        category: Category::Healthy,
        reason: with_note(parts.join("; ")),
        policies,
        to_govern,
    }
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
