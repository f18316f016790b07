//! `Microsoft.Network/azureFirewalls`: GET, PUT (the whole firewall, a long-running
//! operation guarded by ETags) and DELETE, shaped like Microsoft's examples
//! (`AzureFirewallGet/Put/Delete`).
//!
//! Classic rule collections are properties of the firewall, so every change rewrites the
//! whole resource. A firewall governed by Azure Firewall Manager (`firewallPolicy`, or a
//! secured virtual hub) refuses classic collections. A PUT while another one is in
//! flight gets 429 `RetryableError` or 409 `AnotherOperationInProgress`, like a busy NSG.
//! Tests can change the firewall behind a client's back right after it reads it
//! ([`super::ArmEmulator::on_next_firewall_read`]) or right before its next write lands
//! ([`super::ArmEmulator::on_next_firewall_write`]) to provoke a 412.

use serde_json::{Map, Value, json};

use super::dispatch::Ctx;
use super::errors::ArmError;
use super::firewall_rules::{KINDS, validate_collections};
use super::ids::{self, Scope};
use super::lro::{OpKind, Operation};
use super::options::BusyAnswer;
use super::preconditions;
use super::reply::Reply;
use super::state::{Model, Provisioning, Shared, State, new_etag, uuid};

/// The resource type.
pub(crate) const FIREWALL_TYPE: &str = "Microsoft.Network/azureFirewalls";

/// A change made to a firewall's `properties` (and a fresh etag) behind clients' backs.
pub(crate) type Edit = Box<dyn FnOnce(&mut Map<String, Value>) + Send>;

/// An Azure Firewall. `props` holds its writable properties, collections validated.
pub(crate) struct Firewall {
    pub id: String,
    pub name: String,
    pub location: String,
    pub tags: Option<Value>,
    pub zones: Value,
    pub etag: String,
    pub state: Provisioning,
    pub props: Map<String, Value>,
    /// The long-running operation holding the firewall, if one is in flight.
    pub busy: Option<String>,
    /// Applied right after the next GET of the firewall is answered.
    pub after_read: Option<Edit>,
    /// Applied when the next PUT arrives, before its ETag is checked: whoever read the
    /// firewall before now has lost the race.
    pub before_write: Option<Edit>,
}

impl Firewall {
    /// The id of the Firewall Manager policy or virtual hub that governs it, if any.
    pub fn manager(&self) -> Option<String> {
        manager(&self.props)
    }
}

fn manager(props: &Map<String, Value>) -> Option<String> {
    let id = |key: &str| {
        props
            .get(key)
            .and_then(|v| v.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    id("firewallPolicy").or_else(|| id("virtualHub"))
}

/// The firewall as GET shows it.
pub(crate) fn render(fw: &Firewall) -> Value {
    let mut properties = Map::new();
    properties.insert("provisioningState".into(), fw.state.as_str().into());
    for (key, value) in &fw.props {
        properties.insert(key.clone(), value.clone());
    }
    if let Some(Value::Array(configs)) = properties.get_mut("ipConfigurations") {
        for config in configs.iter_mut() {
            let name = config["name"].as_str().unwrap_or_default().to_string();
            config["id"] = json!(format!("{}/ipConfigurations/{name}", fw.id));
            config["etag"] = json!(fw.etag);
            config["properties"]["provisioningState"] = json!(fw.state.as_str());
        }
    }
    properties.insert("ipGroups".into(), json!([]));
    let mut body = json!({
        "name": fw.name,
        "id": fw.id,
        "type": FIREWALL_TYPE,
        "etag": fw.etag,
        "location": fw.location,
        "zones": fw.zones,
        "properties": properties,
    });
    if let Some(tags) = &fw.tags {
        body["tags"] = tags.clone();
    }
    body
}

fn not_found(scope: &Scope, name: &str) -> ArmError {
    ArmError::resource_not_found(FIREWALL_TYPE, name, &scope.rg)
}

impl Model {
    pub(crate) fn firewall(&self, id: &str) -> Option<&Firewall> {
        self.firewalls.get(&ids::key(id))
    }

    pub(crate) fn firewall_mut(&mut self, id: &str) -> Option<&mut Firewall> {
        self.firewalls.get_mut(&ids::key(id))
    }
}

/// GET: the firewall, then whatever change a test queued for right after a read.
pub(crate) fn get(state: &mut State, scope: &Scope, name: &str) -> Result<Reply, ArmError> {
    let fw = state
        .model
        .firewall_mut(&scope.id(FIREWALL_TYPE, name))
        .ok_or_else(|| not_found(scope, name))?;
    let reply = Reply::json(200, render(fw));
    if let Some(edit) = fw.after_read.take() {
        edit(&mut fw.props);
        fw.etag = new_etag();
    }
    Ok(reply)
}

/// PUT: validates the whole firewall, stores it `Updating` and starts the operation.
pub(crate) fn put(
    cx: &Ctx,
    state: &mut State,
    scope: &Scope,
    name: &str,
) -> Result<Reply, ArmError> {
    if let Some(fw) = state.model.firewall_mut(&scope.id(FIREWALL_TYPE, name))
        && let Some(edit) = fw.before_write.take()
    {
        edit(&mut fw.props);
        fw.etag = new_etag();
    }
    let existing = state.model.firewall(&scope.id(FIREWALL_TYPE, name));
    let id = existing.map_or_else(|| scope.id(FIREWALL_TYPE, name), |f| f.id.clone());
    let old = existing.map(|f| (f.location.clone(), f.etag.clone(), f.props.clone()));
    not_busy(cx.shared, state, &id)?;
    preconditions::etag(cx.headers, old.as_ref().map(|(_, e, _)| e.as_str()), &id)?;
    let body = parse_object(cx.body)?;
    if !(1..=56).contains(&name.chars().count()) {
        return Err(ArmError::bad_request(
            "InvalidResourceName",
            format!("Resource name {name} is invalid: an Azure Firewall name has 1-56 characters."),
        ));
    }
    super::rules::validate_name(name)?;
    let location = match (&old, body.get("location").and_then(Value::as_str)) {
        (Some((location, ..)), _) => location.clone(),
        (None, Some(l)) if !l.is_empty() => l.to_string(),
        (None, _) => {
            return Err(ArmError::front_door(
                400,
                "LocationRequired",
                "The location property is required for this definition.",
            ));
        }
    };
    let given = match body.get("properties") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => {
            return Err(ArmError::invalid_request_format(
                "Unexpected value for 'properties': an object is required.",
            ));
        }
    };
    let props = writable(&id, &given, old.as_ref().map(|(_, _, p)| p))?;
    let fw = Firewall {
        id: id.clone(),
        name: existing_name(state, &id).unwrap_or_else(|| name.to_string()),
        location,
        tags: body.get("tags").filter(|t| t.is_object()).cloned(),
        zones: body
            .get("zones")
            .filter(|z| z.is_array())
            .cloned()
            .unwrap_or_else(|| json!([])),
        etag: new_etag(),
        state: Provisioning::Updating,
        props,
        busy: None,
        after_read: None,
        before_write: None,
    };
    state.model.firewalls.insert(ids::key(&id), fw);
    let op = begin(cx.shared, state, &id, OpKind::PutFirewall, cx.api_version);
    let fw = state.model.firewall(&id).expect("inserted above");
    let status = if old.is_some() { 200 } else { 201 };
    Ok(Reply::json(status, render(fw))
        .header("Azure-AsyncOperation", op.async_url(&cx.shared.base_url))
        .header(
            "Retry-After",
            cx.shared.options.retry_after_secs.to_string(),
        ))
}

fn existing_name(state: &State, id: &str) -> Option<String> {
    state.model.firewall(id).map(|f| f.name.clone())
}

/// The writable properties of a PUT: collections validated, read-only members dropped,
/// the private address of each IP configuration assigned (kept from before).
pub(crate) fn writable(
    id: &str,
    given: &Map<String, Value>,
    old: Option<&Map<String, Value>>,
) -> Result<Map<String, Value>, ArmError> {
    let mut props = Map::new();
    let collections = validate_collections(id, given)?;
    let managed_by = manager(given);
    let classic = KINDS.iter().any(|k| {
        collections[*k]
            .as_array()
            .is_some_and(|items| !items.is_empty())
    });
    if let (Some(manager), true) = (&managed_by, classic) {
        return Err(ArmError::bad_request(
            "AzureFirewallWithFirewallPolicyCannotHaveRuleCollections",
            format!(
                "Azure Firewall {id} is associated with {manager}: its rules come from the firewall policy, so classic rule collections cannot be set."
            ),
        ));
    }
    props.insert(
        "sku".into(),
        given
            .get("sku")
            .cloned()
            .unwrap_or_else(|| json!({ "name": "AZFW_VNet", "tier": "Standard" })),
    );
    props.insert(
        "threatIntelMode".into(),
        given
            .get("threatIntelMode")
            .cloned()
            .unwrap_or_else(|| json!("Alert")),
    );
    let old_configs = old
        .and_then(|o| o.get("ipConfigurations"))
        .and_then(Value::as_array);
    let mut configs = Vec::new();
    for (i, config) in given
        .get("ipConfigurations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = config
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("azureFirewallIpConfiguration");
        let p = config
            .get("properties")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let private = old_configs
            .and_then(|c| c.get(i))
            .and_then(|c| c.pointer("/properties/privateIPAddress"))
            .cloned()
            .unwrap_or_else(|| json!(format!("10.250.0.{}", 4 + i)));
        let mut out = json!({ "name": name, "properties": { "privateIPAddress": private } });
        for key in ["subnet", "publicIPAddress"] {
            if let Some(v) = p.get(key) {
                out["properties"][key] =
                    json!({ "id": v.get("id").cloned().unwrap_or(Value::Null) });
            }
        }
        configs.push(out);
    }
    props.insert("ipConfigurations".into(), Value::Array(configs));
    props.extend(collections);
    for key in [
        "firewallPolicy",
        "virtualHub",
        "hubIPAddresses",
        "managementIpConfiguration",
        "autoscaleConfiguration",
    ] {
        if let Some(v) = given.get(key).filter(|v| !v.is_null()) {
            props.insert(key.into(), v.clone());
        }
    }
    props.insert(
        "additionalProperties".into(),
        given
            .get("additionalProperties")
            .filter(|v| v.is_object())
            .cloned()
            .unwrap_or_else(|| json!({})),
    );
    Ok(props)
}

/// DELETE: 202 with a `Location` to poll, as the delete example shows; 204 when gone.
pub(crate) fn delete(
    cx: &Ctx,
    state: &mut State,
    scope: &Scope,
    name: &str,
) -> Result<Reply, ArmError> {
    let Some(fw) = state.model.firewall(&scope.id(FIREWALL_TYPE, name)) else {
        return Ok(Reply::empty(204));
    };
    let (id, etag) = (fw.id.clone(), fw.etag.clone());
    not_busy(cx.shared, state, &id)?;
    preconditions::etag(cx.headers, Some(&etag), &id)?;
    state
        .model
        .firewall_mut(&id)
        .expect("looked up above")
        .state = Provisioning::Deleting;
    let op = begin(
        cx.shared,
        state,
        &id,
        OpKind::DeleteFirewall,
        cx.api_version,
    );
    Ok(Reply::empty(202)
        .header("Location", op.location_url(&cx.shared.base_url))
        .header(
            "Retry-After",
            cx.shared.options.retry_after_secs.to_string(),
        ))
}

/// Starts an operation on the firewall `id` and marks it busy.
fn begin(
    shared: &Shared,
    state: &mut State,
    id: &str,
    kind: OpKind,
    api_version: &str,
) -> Operation {
    let fw = state
        .model
        .firewall_mut(id)
        .expect("operations start on existing firewalls");
    let op = Operation {
        id: uuid(),
        subscription: id.split('/').nth(2).unwrap_or_default().to_string(),
        // Operation URLs name the location the way ARM normalizes it (`West US` → `westus`).
        location: fw.location.to_ascii_lowercase().replace(' ', ""),
        api_version: api_version.to_string(),
        nsg: fw.id.clone(),
        kind,
        polls_left: shared.options.in_progress_polls,
        done: false,
        started: std::time::Instant::now(),
    };
    fw.busy = Some(op.id.clone());
    state.ops.insert(op.id.clone(), op.clone());
    op
}

/// Finishes a firewall operation (called by the operation machinery).
pub(crate) fn complete(model: &mut Model, op: &Operation) {
    if op.kind == OpKind::DeleteFirewall {
        model.firewalls.remove(&ids::key(&op.nsg));
        return;
    }
    if let Some(fw) = model.firewall_mut(&op.nsg) {
        fw.state = Provisioning::Succeeded;
        fw.busy = None;
    }
}

/// Refuses a write while an operation on the firewall is in flight.
fn not_busy(shared: &Shared, state: &mut State, id: &str) -> Result<(), ArmError> {
    let Some(fw) = state.model.firewall(id) else {
        return Ok(());
    };
    let Some(op) = fw.busy.as_ref().and_then(|op| state.ops.get(op)) else {
        return Ok(());
    };
    let retryable = match shared.options.busy {
        BusyAnswer::Retryable => true,
        BusyAnswer::AnotherOperationInProgress => false,
        BusyAnswer::Alternate => state.busy_turn.is_multiple_of(2),
    };
    let error = if retryable {
        let detail = format!(
            "Cannot proceed with operation because resource {} is not in Succeeded state. Resource is in {} state and the last operation that updated/is updating the resource is {}.",
            fw.id,
            fw.state.as_str(),
            op.kind.arm_name()
        );
        ArmError::provider(429, "RetryableError", "A retryable error occurred.")
            .with_details(vec![
                json!({ "code": "ReferencedResourceNotProvisioned", "message": detail }),
            ])
            .with_header("Retry-After", shared.options.retry_after_secs.to_string())
    } else {
        ArmError::provider(
            409,
            "AnotherOperationInProgress",
            format!(
                "Another operation on this or dependent resource is in progress. To retrieve status of the operation use uri: {}.",
                op.async_url(&shared.base_url)
            ),
        )
    };
    state.busy_turn += 1;
    Err(error)
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ArmError> {
    if body.is_empty() {
        return Err(ArmError::invalid_request_format(
            "The request body is empty.",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ArmError::invalid_request_format(
            "The request body must be a JSON object.",
        )),
        Err(e) => Err(ArmError::invalid_request_format(e.to_string())),
    }
}
