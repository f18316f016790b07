//! The test's handle on Azure Firewalls: seed them, read them back as GET shows them,
//! change them behind clients' backs, and count the writes they received.

use serde_json::{Map, Value, json};

use super::emulator::ArmEmulator;
use super::firewall::{FIREWALL_TYPE, Firewall, render, writable};
use super::ids;
use super::state::{Provisioning, new_etag};

/// Ids of a firewall seeded by [`ArmEmulator::seed_firewall`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeededFirewall {
    /// The firewall.
    pub id: String,
    /// The subnet of its first IP configuration (`AzureFirewallSubnet`).
    pub subnet_id: String,
    /// The private address of its first IP configuration.
    pub private_ip: String,
}

impl ArmEmulator {
    /// Creates firewall `name` with `properties` (as a PUT body's `properties`: rule
    /// collections, `firewallPolicy`, `sku`, …), checked as ARM checks a PUT (panics with
    /// ARM's message when ARM would refuse it). Without `ipConfigurations` it gets one on
    /// a seeded subnet `AzureFirewallSubnet` (10.250.0.0/26) of vnet `{name}-vnet`.
    pub fn seed_firewall(
        &self,
        resource_group: &str,
        name: &str,
        properties: Value,
    ) -> SeededFirewall {
        let scope = self.scope(resource_group);
        let id = scope.id(FIREWALL_TYPE, name);
        let mut props = match properties {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => panic!("seed_firewall: properties must be an object, not {other}"),
        };
        if !props.contains_key("ipConfigurations") {
            let subnet_id = self.seed_vnet_subnet(
                resource_group,
                &format!("{name}-vnet"),
                "AzureFirewallSubnet",
                "10.250.0.0/26",
                None,
            );
            let public_ip = scope.id(
                "Microsoft.Network/publicIPAddresses",
                &format!("{name}-pip"),
            );
            props.insert(
                "ipConfigurations".into(),
                json!([{
                    "name": "azureFirewallIpConfiguration",
                    "properties": {
                        "subnet": { "id": subnet_id },
                        "publicIPAddress": { "id": public_ip },
                    }
                }]),
            );
        }
        let props =
            writable(&id, &props, None).unwrap_or_else(|e| panic!("seed_firewall: {}", e.message));
        let mut state = self.state();
        assert!(
            state.model.firewall(&id).is_none(),
            "seed_firewall: {id} is already seeded"
        );
        let config = props["ipConfigurations"][0].clone();
        state.model.firewalls.insert(
            ids::key(&id),
            Firewall {
                id: id.clone(),
                name: name.to_string(),
                location: self.shared.options.location.clone(),
                tags: None,
                zones: json!([]),
                etag: new_etag(),
                state: Provisioning::Succeeded,
                props,
                busy: None,
                after_read: None,
                before_write: None,
            },
        );
        SeededFirewall {
            id,
            subnet_id: config
                .pointer("/properties/subnet/id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            private_ip: config
                .pointer("/properties/privateIPAddress")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        }
    }

    /// The firewall `id` as GET shows it, if it exists.
    pub fn firewall(&self, id: &str) -> Option<Value> {
        self.state().model.firewall(id).map(render)
    }

    /// Changes the firewall's `properties` behind clients' backs (drift, another team's
    /// edit): the result is checked as a PUT would be, and the etag changes.
    pub fn edit_firewall(&self, id: &str, edit: impl FnOnce(&mut Map<String, Value>)) {
        let mut state = self.state();
        let fw = state
            .model
            .firewall_mut(id)
            .unwrap_or_else(|| panic!("edit_firewall: no firewall {id}"));
        let mut props = fw.props.clone();
        edit(&mut props);
        fw.props = writable(&fw.id, &props, Some(&fw.props))
            .unwrap_or_else(|e| panic!("edit_firewall: {}", e.message));
        fw.etag = new_etag();
    }

    /// Queues a change to the firewall's `properties` made right after the next GET of it
    /// is answered: a client that read it and now writes with that ETag gets 412.
    pub fn on_next_firewall_read(
        &self,
        id: &str,
        edit: impl FnOnce(&mut Map<String, Value>) + Send + 'static,
    ) {
        let mut state = self.state();
        let fw = state
            .model
            .firewall_mut(id)
            .unwrap_or_else(|| panic!("on_next_firewall_read: no firewall {id}"));
        fw.after_read = Some(Box::new(edit));
    }

    /// Queues a change to the firewall's `properties` made when the next PUT of it
    /// arrives, before its ETag is checked: that PUT loses the race (412) whenever it
    /// carries `If-Match`, whoever sent it and whenever.
    pub fn on_next_firewall_write(
        &self,
        id: &str,
        edit: impl FnOnce(&mut Map<String, Value>) + Send + 'static,
    ) {
        let mut state = self.state();
        let fw = state
            .model
            .firewall_mut(id)
            .unwrap_or_else(|| panic!("on_next_firewall_write: no firewall {id}"));
        fw.before_write = Some(Box::new(edit));
    }

    /// The writes (PUT, PATCH, DELETE, POST) that reached the firewall `id`, whatever
    /// their answer.
    pub fn firewall_writes(&self, id: &str) -> usize {
        self.writes()
            .iter()
            .filter(|c| c.path.trim_end_matches('/').eq_ignore_ascii_case(id))
            .count()
    }
}
