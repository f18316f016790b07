//! The handle a test holds: start the emulator, seed resources, read state back, watch
//! the calls and inject failures.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ipnet::IpNet;
use portcullis::certs::serving_cert;
use serde_json::Value;
use tokio::net::TcpListener;

use super::ids::{self, NIC_TYPE, NSG_TYPE, Scope, VM_TYPE, VNET_TYPE};
use super::lro;
use super::options::{ArmOptions, Faults};
use super::record::{Call, ThrottleWait};
use super::render;
use super::rules;
use super::server;
use super::state::{
    IpConfig, Nic, Nsg, Provisioning, Rule, Shared, State, Subnet, Vm, Vnet, new_etag, uuid,
};

/// A running emulator. Clones share the same instance; it serves until the test's
/// tokio runtime ends.
#[derive(Clone)]
pub struct ArmEmulator {
    /// `https://127.0.0.1:PORT`: the ARM endpoint to give clients.
    pub url: String,
    /// PEM of the CA that signed the serving certificate: what clients must trust.
    pub ca_pem: String,
    /// The bearer token the emulator accepts; any other is refused with 401.
    pub token: String,
    /// Subscription of the resources seeded through this handle.
    pub subscription: String,
    pub(super) shared: Arc<Shared>,
}

/// Ids of a VM seeded with its network by [`ArmEmulator::seed_vm_with_network`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeededVm {
    /// The VM.
    pub vm_id: String,
    /// Its only NIC.
    pub nic_id: String,
    /// The NIC's private address.
    pub private_ip: String,
    /// The virtual network holding the subnet.
    pub vnet_id: String,
    /// The NIC's subnet.
    pub subnet_id: String,
    /// The NSG on the NIC.
    pub nic_nsg_id: String,
    /// The NSG on the subnet.
    pub subnet_nsg_id: String,
}

impl ArmEmulator {
    /// Starts an emulator with default options on a free loopback port.
    pub async fn start() -> ArmEmulator {
        ArmEmulator::start_with(ArmOptions::default()).await
    }

    /// Starts an emulator with `options` on a free loopback port.
    pub async fn start_with(options: ArmOptions) -> ArmEmulator {
        let cert = serving_cert("portcullis-arm-emulator", &["127.0.0.1", "localhost"])
            .expect("TLS material for the ARM emulator");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the ARM emulator");
        let port = listener.local_addr().expect("bound address").port();
        let url = format!("https://127.0.0.1:{port}");
        let token = format!("arm-emulator-{}", uuid());
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            options: options.clone(),
            base_url: url.clone(),
            token: token.clone(),
        });
        server::spawn(listener, server::acceptor(&cert), shared.clone());
        ArmEmulator {
            url,
            ca_pem: cert.ca_pem,
            token,
            subscription: options.subscription,
            shared,
        }
    }

    /// The options the emulator was started with.
    pub fn options(&self) -> &ArmOptions {
        &self.shared.options
    }

    /// The state, with operations that outlived `complete_after` completed first, so
    /// that reads through the handle see what a GET would.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        lro::complete_expired(&self.shared, &mut state);
        state
    }

    pub(crate) fn scope(&self, resource_group: &str) -> Scope {
        Scope {
            sub: self.subscription.clone(),
            rg: resource_group.to_string(),
        }
    }

    // ----- seeding: resources as they would be after their creation completed -----

    /// Creates an NSG with no rules of its own (the six default rules are implied) and
    /// returns its id.
    pub fn seed_nsg(&self, resource_group: &str, name: &str) -> String {
        rules::validate_name(name).unwrap_or_else(|e| panic!("seed_nsg: {}", e.message));
        let id = self.scope(resource_group).id(NSG_TYPE, name);
        let mut state = self.state();
        assert!(
            state.model.nsg(&id).is_none(),
            "seed_nsg: {id} is already seeded"
        );
        let nsg = Nsg {
            id: id.clone(),
            name: name.to_string(),
            location: self.shared.options.location.clone(),
            tags: None,
            etag: new_etag(),
            guid: uuid(),
            state: Provisioning::Succeeded,
            flush_connection: false,
            rules: Vec::new(),
            busy: None,
        };
        state.model.nsgs.insert(ids::key(&id), nsg);
        id
    }

    /// Creates or replaces rule `name` in the NSG `nsg_id`; `properties` is the ARM
    /// `properties` object. The rule goes through ARM's validation (panics with ARM's
    /// message when ARM would refuse it). Returns the rule id.
    pub fn seed_rule(&self, nsg_id: &str, name: &str, properties: Value) -> String {
        let mut state = self.state();
        let limit = self.shared.options.rule_limit;
        let nsg = state
            .model
            .nsg_mut(nsg_id)
            .unwrap_or_else(|| panic!("seed_rule: no NSG {nsg_id}"));
        let check = || -> Result<Rule, String> {
            rules::validate_name(name).map_err(|e| e.message)?;
            let id = format!("{}/securityRules/{name}", nsg.id);
            let props = rules::validate_rule(&id, Some(&properties)).map_err(|e| e.message)?;
            rules::conflict(&nsg.rules, name, &props).map_err(|e| e.message)?;
            if nsg.rule(name).is_none() {
                rules::check_count(nsg.rules.len() + 1, limit).map_err(|e| e.message)?;
            }
            Ok(Rule {
                id,
                name: name.to_string(),
                etag: new_etag(),
                props,
                state: Provisioning::Succeeded,
            })
        };
        let rule = check().unwrap_or_else(|message| panic!("seed_rule: {message}"));
        let id = rule.id.clone();
        match nsg.rule_mut(name) {
            Some(stored) => *stored = rule,
            None => nsg.rules.push(rule),
        }
        nsg.etag = new_etag();
        id
    }

    /// Removes rule `name` from the NSG `nsg_id` behind the clients' backs (drift);
    /// whether it was there.
    pub fn remove_rule(&self, nsg_id: &str, name: &str) -> bool {
        let mut state = self.state();
        let Some(nsg) = state.model.nsg_mut(nsg_id) else {
            return false;
        };
        let before = nsg.rules.len();
        nsg.rules.retain(|r| !r.name.eq_ignore_ascii_case(name));
        let removed = nsg.rules.len() != before;
        if removed {
            nsg.etag = new_etag();
        }
        removed
    }

    /// Creates subnet `subnet` (and its virtual network `vnet` if new) with
    /// `address_prefix`, optionally associated with the NSG `nsg_id`; returns its id.
    pub fn seed_vnet_subnet(
        &self,
        resource_group: &str,
        vnet: &str,
        subnet: &str,
        address_prefix: &str,
        nsg_id: Option<&str>,
    ) -> String {
        let vnet_id = self.scope(resource_group).id(VNET_TYPE, vnet);
        let mut state = self.state();
        let nsg = nsg_id.map(|id| stored_nsg_id(&state, id));
        let vnet_id = state
            .model
            .vnets
            .entry(ids::key(&vnet_id))
            .or_insert_with(|| Vnet {
                id: vnet_id.clone(),
                name: vnet.to_string(),
                location: self.shared.options.location.clone(),
            })
            .id
            .clone();
        let id = format!("{vnet_id}/subnets/{subnet}");
        assert!(
            !state.model.subnets.contains_key(&ids::key(&id)),
            "seed_vnet_subnet: {id} is already seeded"
        );
        state.model.subnets.insert(
            ids::key(&id),
            Subnet {
                id: id.clone(),
                name: subnet.to_string(),
                etag: new_etag(),
                address_prefix: address_prefix.to_string(),
                nsg,
            },
        );
        id
    }

    /// Creates NIC `name` in the subnet `subnet_id` with one IP configuration per
    /// address (the first primary), optionally with the NSG `nsg_id`; returns its id.
    pub fn seed_nic(
        &self,
        resource_group: &str,
        name: &str,
        subnet_id: &str,
        private_ips: &[&str],
        nsg_id: Option<&str>,
    ) -> String {
        assert!(!private_ips.is_empty(), "seed_nic: a NIC needs an address");
        let id = self.scope(resource_group).id(NIC_TYPE, name);
        let mut state = self.state();
        let subnet = state
            .model
            .subnets
            .get(&ids::key(subnet_id))
            .unwrap_or_else(|| panic!("seed_nic: no subnet {subnet_id}"))
            .id
            .clone();
        let nsg = nsg_id.map(|n| stored_nsg_id(&state, n));
        assert!(
            !state.model.nics.contains_key(&ids::key(&id)),
            "seed_nic: {id} is already seeded"
        );
        let ip_configs = private_ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                assert!(
                    ip.parse::<IpAddr>().is_ok(),
                    "seed_nic: {ip} is not an IP address"
                );
                IpConfig {
                    name: format!("ipconfig{}", i + 1),
                    private_ip: ip.to_string(),
                    subnet: subnet.clone(),
                    primary: i == 0,
                }
            })
            .collect();
        let mac = uuid().replace('-', "")[..12]
            .to_ascii_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|pair| String::from_utf8_lossy(pair).into_owned())
            .collect::<Vec<_>>()
            .join("-");
        state.model.nics.insert(
            ids::key(&id),
            Nic {
                id: id.clone(),
                name: name.to_string(),
                location: self.shared.options.location.clone(),
                etag: new_etag(),
                guid: uuid(),
                mac,
                ip_configs,
                nsg,
                vm: None,
            },
        );
        id
    }

    /// Creates VM `name` with the NICs `nic_ids` (the first primary); returns its id.
    pub fn seed_vm(&self, resource_group: &str, name: &str, nic_ids: &[&str]) -> String {
        assert!(!nic_ids.is_empty(), "seed_vm: a VM needs a NIC");
        let id = self.scope(resource_group).id(VM_TYPE, name);
        let mut state = self.state();
        assert!(
            !state.model.vms.contains_key(&ids::key(&id)),
            "seed_vm: {id} is already seeded"
        );
        let mut nics = Vec::new();
        for nic_id in nic_ids {
            let nic = state
                .model
                .nics
                .get_mut(&ids::key(nic_id))
                .unwrap_or_else(|| panic!("seed_vm: no NIC {nic_id}"));
            assert!(
                nic.vm.is_none(),
                "seed_vm: NIC {nic_id} already belongs to a VM"
            );
            nic.vm = Some(id.clone());
            nics.push(nic.id.clone());
        }
        state.model.vms.insert(
            ids::key(&id),
            Vm {
                id: id.clone(),
                name: name.to_string(),
                resource_group: resource_group.to_string(),
                subscription: self.subscription.clone(),
                location: self.shared.options.location.clone(),
                vm_uuid: uuid(),
                nics,
            },
        );
        id
    }

    /// Seeds VM `vm` with one NIC at `private_ip`, an NSG on the NIC
    /// (`{vm}-nic-nsg`) and one on its subnet (`{vm}-subnet-nsg`, subnet `default` of
    /// vnet `{vm}-vnet`, the address's /24 or /64).
    pub fn seed_vm_with_network(
        &self,
        resource_group: &str,
        vm: &str,
        private_ip: &str,
    ) -> SeededVm {
        let ip: IpAddr = private_ip
            .parse()
            .unwrap_or_else(|_| panic!("seed_vm_with_network: {private_ip} is not an IP address"));
        let length = if ip.is_ipv4() { 24 } else { 64 };
        let prefix = IpNet::new(ip, length).expect("valid prefix length").trunc();
        let nic_nsg_id = self.seed_nsg(resource_group, &format!("{vm}-nic-nsg"));
        let subnet_nsg_id = self.seed_nsg(resource_group, &format!("{vm}-subnet-nsg"));
        let vnet = format!("{vm}-vnet");
        let subnet_id = self.seed_vnet_subnet(
            resource_group,
            &vnet,
            "default",
            &prefix.to_string(),
            Some(&subnet_nsg_id),
        );
        let nic_id = self.seed_nic(
            resource_group,
            &format!("{vm}-nic"),
            &subnet_id,
            &[private_ip],
            Some(&nic_nsg_id),
        );
        let vm_id = self.seed_vm(resource_group, vm, &[&nic_id]);
        SeededVm {
            vm_id,
            nic_id,
            private_ip: private_ip.to_string(),
            vnet_id: self.scope(resource_group).id(VNET_TYPE, &vnet),
            subnet_id,
            nic_nsg_id,
            subnet_nsg_id,
        }
    }

    /// Associates the NIC `nic_id` with the NSG `nsg_id`, or with none.
    pub fn set_nic_nsg(&self, nic_id: &str, nsg_id: Option<&str>) {
        let mut state = self.state();
        let nsg = nsg_id.map(|n| stored_nsg_id(&state, n));
        state
            .model
            .nics
            .get_mut(&ids::key(nic_id))
            .unwrap_or_else(|| panic!("set_nic_nsg: no NIC {nic_id}"))
            .nsg = nsg;
    }

    /// Associates the subnet `subnet_id` with the NSG `nsg_id`, or with none.
    pub fn set_subnet_nsg(&self, subnet_id: &str, nsg_id: Option<&str>) {
        let mut state = self.state();
        let nsg = nsg_id.map(|n| stored_nsg_id(&state, n));
        state
            .model
            .subnets
            .get_mut(&ids::key(subnet_id))
            .unwrap_or_else(|| panic!("set_subnet_nsg: no subnet {subnet_id}"))
            .nsg = nsg;
    }

    /// Gives the NIC `nic_id` new private addresses (one IP configuration each), as
    /// re-addressing a VM does.
    pub fn set_nic_ips(&self, nic_id: &str, private_ips: &[&str]) {
        let mut state = self.state();
        let nic = state
            .model
            .nics
            .get_mut(&ids::key(nic_id))
            .unwrap_or_else(|| panic!("set_nic_ips: no NIC {nic_id}"));
        let subnet = nic.ip_configs[0].subnet.clone();
        nic.ip_configs = private_ips
            .iter()
            .enumerate()
            .map(|(i, ip)| IpConfig {
                name: format!("ipconfig{}", i + 1),
                private_ip: ip.to_string(),
                subnet: subnet.clone(),
                primary: i == 0,
            })
            .collect();
    }

    /// Deletes the VM `vm_id` (its NICs stay, detached), as deleting a VM does.
    pub fn remove_vm(&self, vm_id: &str) {
        let mut state = self.state();
        state.model.vms.remove(&ids::key(vm_id));
        for nic in state.model.nics.values_mut() {
            if nic
                .vm
                .as_deref()
                .is_some_and(|v| v.eq_ignore_ascii_case(vm_id))
            {
                nic.vm = None;
            }
        }
    }

    /// Refuses every write (PUT, DELETE) whose path contains `fragment` with 400 `code`.
    pub fn refuse_writes_to(&self, fragment: &str, code: &str) {
        self.state()
            .refused_writes
            .push((fragment.to_string(), code.to_string()));
    }

    // ----- reading state back, as a GET would show it -----

    /// The NSG `id` as GET shows it, if it exists.
    pub fn nsg(&self, id: &str) -> Option<Value> {
        let state = self.state();
        state
            .model
            .nsg(id)
            .map(|nsg| render::nsg(&state.model, nsg))
    }

    /// The security rules of the NSG `nsg_id` (not the default rules) as GET shows them;
    /// empty when there is no such NSG.
    pub fn rules(&self, nsg_id: &str) -> Vec<Value> {
        let state = self.state();
        state
            .model
            .nsg(nsg_id)
            .map(|nsg| nsg.rules.iter().map(render::rule).collect())
            .unwrap_or_default()
    }

    /// Rule `name` of the NSG `nsg_id` as GET shows it, if it exists.
    pub fn rule(&self, nsg_id: &str, name: &str) -> Option<Value> {
        let state = self.state();
        state
            .model
            .nsg(nsg_id)
            .and_then(|nsg| nsg.rule(name))
            .map(render::rule)
    }

    // ----- the call record -----

    /// Every call so far, in arrival order (refused and injected ones included).
    pub fn calls(&self) -> Vec<Call> {
        self.state().recorder.calls()
    }

    /// The calls that asked for a change (PUT, PATCH, DELETE, POST).
    pub fn writes(&self) -> Vec<Call> {
        self.calls().into_iter().filter(Call::is_write).collect()
    }

    /// Forgets the calls so far.
    pub fn clear_calls(&self) {
        self.state().recorder.clear_calls();
    }

    // ----- faults and throttling -----

    /// Sets which calls fail from now on; calls are counted from here.
    pub fn set_faults(&self, faults: Faults) {
        self.state().recorder.set_faults(faults);
    }

    /// How many calls were failed on purpose by [`Faults`].
    pub fn injected(&self) -> u64 {
        self.state().recorder.injected()
    }

    /// For every 429 answered (injected or `RetryableError`) that a request followed:
    /// the `Retry-After` given and how long the next request took to come.
    pub fn throttle_waits(&self) -> Vec<ThrottleWait> {
        self.state().recorder.waits()
    }

    /// The shortest pause a client made after a 429 before its next call.
    pub fn min_wait_after_429(&self) -> Option<Duration> {
        self.throttle_waits().iter().map(|w| w.waited).min()
    }

    // ----- crashes -----

    /// Runs `hook` once, right after the `n`-th write accepted from now on (2xx) has
    /// changed the emulator's state and before its answer goes back: a test kills its
    /// operator there, so Azure has changed and the operator never learns it.
    pub fn after_write(&self, n: u64, hook: impl FnOnce() + Send + 'static) {
        let mut state = self.state();
        state.trip = super::state::Trip {
            at: n,
            done: 0,
            hook: Some(Box::new(hook)),
            tripped: None,
        };
    }

    /// The writes accepted since [`ArmEmulator::after_write`] was set.
    pub fn writes_done(&self) -> u64 {
        self.state().trip.done
    }

    /// The write (`METHOD path`) after which the [`ArmEmulator::after_write`] hook ran.
    pub fn tripped(&self) -> Option<String> {
        self.state().trip.tripped.clone()
    }

    // ----- long-running operations -----

    /// How many long-running operations have not completed.
    pub fn pending_operations(&self) -> usize {
        self.state().ops.values().filter(|op| !op.done).count()
    }

    /// Completes every long-running operation in flight, as time passing would.
    pub fn complete_operations(&self) {
        lro::complete_all(&mut self.state());
    }
}

/// The NSG id as stored, for an association; panics when the NSG was never seeded.
fn stored_nsg_id(state: &State, nsg_id: &str) -> String {
    state
        .model
        .nsg(nsg_id)
        .unwrap_or_else(|| panic!("no NSG {nsg_id}; seed it first"))
        .id
        .clone()
}
