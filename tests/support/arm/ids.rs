//! ARM resource ids and the request paths the emulator serves.
//!
//! ARM treats ids case-insensitively: literal segments match in any case, captured
//! names keep the case the client sent, and state is keyed by the lowercased id while
//! answers echo the id as it was stored.

/// The key state is stored under for `id`.
pub(crate) fn key(id: &str) -> String {
    id.trim_end_matches('/').to_ascii_lowercase()
}

/// `/subscriptions/{sub}/resourceGroups/{rg}/providers/{provider_type}/{name}`.
pub(crate) fn resource_id(sub: &str, rg: &str, provider_type: &str, name: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/{provider_type}/{name}")
}

pub(crate) const NSG_TYPE: &str = "Microsoft.Network/networkSecurityGroups";
pub(crate) const RULE_TYPE: &str = "Microsoft.Network/networkSecurityGroups/securityRules";
pub(crate) const DEFAULT_RULE_TYPE: &str =
    "Microsoft.Network/networkSecurityGroups/defaultSecurityRules";
pub(crate) const NIC_TYPE: &str = "Microsoft.Network/networkInterfaces";
pub(crate) const VNET_TYPE: &str = "Microsoft.Network/virtualNetworks";
pub(crate) const SUBNET_TYPE: &str = "Microsoft.Network/virtualNetworks/subnets";
pub(crate) const VM_TYPE: &str = "Microsoft.Compute/virtualMachines";

/// Subscription and resource group of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Scope {
    pub sub: String,
    pub rg: String,
}

impl Scope {
    /// The id of resource `name` of type `provider_type` in this scope.
    pub fn id(&self, provider_type: &str, name: &str) -> String {
        resource_id(&self.sub, &self.rg, provider_type, name)
    }
}

/// What a request path addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Vm(Scope, String),
    Nic(Scope, String),
    Subnet(Scope, String, String),
    NsgsInGroup(Scope),
    NsgsInSubscription(String),
    Nsg(Scope, String),
    Rules(Scope, String),
    Rule(Scope, String, String),
    DefaultRules(Scope, String),
    DefaultRule(Scope, String, String),
    /// An Azure Firewall.
    Firewall(Scope, String),
    /// `Azure-AsyncOperation` polling: `(subscription, location, operation id)`.
    Operation(String, String, String),
    /// `Location` polling: `(subscription, location, operation id)`.
    OperationResult(String, String, String),
}

/// The route for `path` (without query), if the emulator serves it.
pub(crate) fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    let is = |i: usize, lit: &str| segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(lit));
    let at = |i: usize| segs[i].to_string();
    if !is(0, "subscriptions") {
        return None;
    }
    if is(2, "providers") && is(3, "Microsoft.Network") {
        return match segs.len() {
            5 if is(4, "networkSecurityGroups") => Some(Route::NsgsInSubscription(at(1))),
            8 if is(4, "locations") && is(6, "operations") => {
                Some(Route::Operation(at(1), at(5), at(7)))
            }
            8 if is(4, "locations") && is(6, "operationResults") => {
                Some(Route::OperationResult(at(1), at(5), at(7)))
            }
            _ => None,
        };
    }
    if !(is(2, "resourceGroups") && is(4, "providers") && segs.len() >= 7) {
        return None;
    }
    let scope = Scope {
        sub: at(1),
        rg: at(3),
    };
    let network = is(5, "Microsoft.Network");
    let compute = is(5, "Microsoft.Compute");
    let nsgs = network && is(6, "networkSecurityGroups");
    match segs.len() {
        7 if nsgs => Some(Route::NsgsInGroup(scope)),
        8 if nsgs => Some(Route::Nsg(scope, at(7))),
        8 if network && is(6, "azureFirewalls") => Some(Route::Firewall(scope, at(7))),
        8 if network && is(6, "networkInterfaces") => Some(Route::Nic(scope, at(7))),
        8 if compute && is(6, "virtualMachines") => Some(Route::Vm(scope, at(7))),
        9 if nsgs && is(8, "securityRules") => Some(Route::Rules(scope, at(7))),
        9 if nsgs && is(8, "defaultSecurityRules") => Some(Route::DefaultRules(scope, at(7))),
        10 if nsgs && is(8, "securityRules") => Some(Route::Rule(scope, at(7), at(9))),
        10 if nsgs && is(8, "defaultSecurityRules") => {
            Some(Route::DefaultRule(scope, at(7), at(9)))
        }
        10 if network && is(6, "virtualNetworks") && is(8, "subnets") => {
            Some(Route::Subnet(scope, at(7), at(9)))
        }
        _ => None,
    }
}
