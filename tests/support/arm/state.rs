//! The emulator's in-memory state: the resources it serves, the long-running
//! operations in flight and the call record, all behind one mutex.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Map, Value};

use super::ids;
use super::lro::Operation;
use super::options::ArmOptions;
use super::record::Recorder;

/// `provisioningState` of a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Provisioning {
    Succeeded,
    Updating,
    Deleting,
}

impl Provisioning {
    pub fn as_str(self) -> &'static str {
        match self {
            Provisioning::Succeeded => "Succeeded",
            Provisioning::Updating => "Updating",
            Provisioning::Deleting => "Deleting",
        }
    }
}

/// A security rule; `props` holds its validated properties without `provisioningState`.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    pub id: String,
    pub name: String,
    pub etag: String,
    pub props: Map<String, Value>,
    pub state: Provisioning,
}

impl Rule {
    pub fn priority(&self) -> Option<i64> {
        self.props.get("priority").and_then(Value::as_i64)
    }

    pub fn direction(&self) -> Option<&str> {
        self.props.get("direction").and_then(Value::as_str)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Nsg {
    pub id: String,
    pub name: String,
    pub location: String,
    pub tags: Option<Value>,
    pub etag: String,
    pub guid: String,
    pub state: Provisioning,
    pub flush_connection: bool,
    pub rules: Vec<Rule>,
    /// The long-running operation holding this NSG, if one is in flight.
    pub busy: Option<String>,
}

impl Nsg {
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.name.eq_ignore_ascii_case(name))
    }

    pub fn rule_mut(&mut self, name: &str) -> Option<&mut Rule> {
        self.rules
            .iter_mut()
            .find(|r| r.name.eq_ignore_ascii_case(name))
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Vnet {
    pub id: String,
    pub name: String,
    pub location: String,
}

#[derive(Clone, Debug)]
pub(crate) struct Subnet {
    pub id: String,
    pub name: String,
    pub etag: String,
    pub address_prefix: String,
    pub nsg: Option<String>,
}

#[derive(Clone, Debug)]
pub(crate) struct IpConfig {
    pub name: String,
    pub private_ip: String,
    pub subnet: String,
    pub primary: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct Nic {
    pub id: String,
    pub name: String,
    pub location: String,
    pub etag: String,
    pub guid: String,
    pub mac: String,
    pub ip_configs: Vec<IpConfig>,
    pub nsg: Option<String>,
    pub vm: Option<String>,
}

#[derive(Clone, Debug)]
pub(crate) struct Vm {
    pub id: String,
    pub name: String,
    pub resource_group: String,
    pub subscription: String,
    pub location: String,
    pub vm_uuid: String,
    pub nics: Vec<String>,
}

/// The resources, keyed by [`ids::key`] of their ids.
#[derive(Default)]
pub(crate) struct Model {
    pub nsgs: BTreeMap<String, Nsg>,
    pub vnets: BTreeMap<String, Vnet>,
    pub subnets: BTreeMap<String, Subnet>,
    pub nics: BTreeMap<String, Nic>,
    pub vms: BTreeMap<String, Vm>,
    /// What only list operations need (public IPs, firewalls, power states, …).
    pub extra: super::listing::Extra,
    pub firewalls: BTreeMap<String, super::firewall::Firewall>,
}

impl Model {
    pub fn nsg(&self, id: &str) -> Option<&Nsg> {
        self.nsgs.get(&ids::key(id))
    }

    pub fn nsg_mut(&mut self, id: &str) -> Option<&mut Nsg> {
        self.nsgs.get_mut(&ids::key(id))
    }

    /// Ids of the NICs and of the subnets that use the NSG `nsg_id`.
    pub fn nsg_users(&self, nsg_id: &str) -> (Vec<String>, Vec<String>) {
        let k = ids::key(nsg_id);
        let uses = |nsg: &Option<String>| nsg.as_deref().is_some_and(|n| ids::key(n) == k);
        let nics = self
            .nics
            .values()
            .filter(|n| uses(&n.nsg))
            .map(|n| n.id.clone())
            .collect();
        let subnets = self
            .subnets
            .values()
            .filter(|s| uses(&s.nsg))
            .map(|s| s.id.clone())
            .collect();
        (nics, subnets)
    }
}

/// Everything behind the mutex.
#[derive(Default)]
pub(crate) struct State {
    pub model: Model,
    pub ops: BTreeMap<String, Operation>,
    pub recorder: Recorder,
    /// Which answer [`super::options::BusyAnswer::Alternate`] gives next.
    pub busy_turn: u64,
    /// Writes refused on purpose: (path fragment, error code).
    pub refused_writes: Vec<(String, String)>,
    /// A hook run after a chosen write is done (see `ArmEmulator::after_write`).
    pub trip: Trip,
}

/// Runs a hook once the `at`-th accepted write (counted from when it was set) is done,
/// before its answer goes back.
#[derive(Default)]
pub(crate) struct Trip {
    pub at: u64,
    pub done: u64,
    pub hook: Option<Box<dyn FnOnce() + Send>>,
    /// `METHOD path` of the write the hook ran after.
    pub tripped: Option<String>,
}

/// What the server and the handle share.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub options: ArmOptions,
    /// `https://127.0.0.1:PORT`, the base of operation URLs.
    pub base_url: String,
    pub token: String,
}

/// A random version-4 UUID, lower case.
pub(crate) fn uuid() -> String {
    let n: u128 = rand::random();
    let n = (n & !(0xf << 76)) | (0x4 << 76);
    let n = (n & !(0x3 << 62)) | (0x2 << 62);
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A fresh weak etag in the network resource provider's form, `W/"<uuid>"`.
pub(crate) fn new_etag() -> String {
    format!("W/\"{}\"", uuid())
}
