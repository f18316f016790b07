//! GET of VMs, NICs, subnets, NSGs and their rules, and the lists of NSGs and rules.

use serde_json::{Value, json};

use super::defaults::default_rules;
use super::errors::ArmError;
use super::ids::{self, NIC_TYPE, NSG_TYPE, Route, Scope, VM_TYPE, VNET_TYPE};
use super::render;
use super::reply::Reply;
use super::state::{Model, Nsg};

/// Answers a GET of `route` (operation polls excepted).
pub(crate) fn get(model: &Model, route: &Route) -> Result<Reply, ArmError> {
    let body = match route {
        Route::Vm(scope, name) => {
            let vm = model
                .vms
                .get(&ids::key(&scope.id(VM_TYPE, name)))
                .ok_or_else(|| ArmError::resource_not_found(VM_TYPE, name, &scope.rg))?;
            render::vm(vm)
        }
        Route::Nic(scope, name) => {
            let nic = model
                .nics
                .get(&ids::key(&scope.id(NIC_TYPE, name)))
                .ok_or_else(|| ArmError::resource_not_found(NIC_TYPE, name, &scope.rg))?;
            super::listing::decorate_nic(model, render::nic(nic))
        }
        Route::Subnet(scope, vnet, name) => {
            let vnet = model
                .vnets
                .get(&ids::key(&scope.id(VNET_TYPE, vnet)))
                .ok_or_else(|| ArmError::resource_not_found(VNET_TYPE, vnet, &scope.rg))?;
            let id = format!("{}/subnets/{name}", vnet.id);
            let subnet = model
                .subnets
                .get(&ids::key(&id))
                .ok_or_else(|| ArmError::child_not_found(&id))?;
            render::subnet(model, subnet)
        }
        Route::NsgsInGroup(scope) => {
            let group = format!(
                "/subscriptions/{}/resourceGroups/{}/providers/{NSG_TYPE}",
                scope.sub, scope.rg
            );
            list(model, &format!("{}/", ids::key(&group)))
        }
        Route::NsgsInSubscription(sub) => list(
            model,
            &format!("{}/", ids::key(&format!("/subscriptions/{sub}"))),
        ),
        Route::Nsg(scope, name) => render::nsg(model, nsg(model, scope, name)?),
        Route::Rules(scope, name) => {
            let rules: Vec<Value> = nsg(model, scope, name)?
                .rules
                .iter()
                .map(render::rule)
                .collect();
            json!({ "value": rules })
        }
        Route::Rule(scope, nsg_name, name) => {
            let nsg = nsg(model, scope, nsg_name)?;
            let rule = nsg.rule(name).ok_or_else(|| {
                ArmError::child_not_found(&format!("{}/securityRules/{name}", nsg.id))
            })?;
            render::rule(rule)
        }
        Route::DefaultRules(scope, name) => {
            let nsg = nsg(model, scope, name)?;
            json!({ "value": default_rules(&nsg.id, &nsg.etag) })
        }
        Route::DefaultRule(scope, nsg_name, name) => {
            let nsg = nsg(model, scope, nsg_name)?;
            default_rules(&nsg.id, &nsg.etag)
                .into_iter()
                .find(|r| {
                    r["name"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
                })
                .ok_or_else(|| {
                    ArmError::child_not_found(&format!("{}/defaultSecurityRules/{name}", nsg.id))
                })?
        }
        Route::Operation(..) | Route::OperationResult(..) | Route::Firewall(..) => {
            unreachable!("operation polls and firewalls are answered by the dispatcher")
        }
    };
    Ok(Reply::json(200, body))
}

fn nsg<'a>(model: &'a Model, scope: &Scope, name: &str) -> Result<&'a Nsg, ArmError> {
    model
        .nsg(&scope.id(NSG_TYPE, name))
        .ok_or_else(|| ArmError::resource_not_found(NSG_TYPE, name, &scope.rg))
}

/// The NSGs whose keys start with `prefix`, as a list answer (one page, no `nextLink`).
fn list(model: &Model, prefix: &str) -> Value {
    let value: Vec<Value> = model
        .nsgs
        .iter()
        .filter(|(key, _)| key.starts_with(prefix))
        .map(|(_, nsg)| render::nsg(model, nsg))
        .collect();
    json!({ "value": value })
}
