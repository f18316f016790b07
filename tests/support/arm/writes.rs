//! PUT and DELETE of NSGs and security rules: checked, applied at once with
//! `provisioningState` `Updating` or `Deleting`, and finished by a long-running operation.

use serde_json::Value;

use super::dispatch::Ctx;
use super::errors::ArmError;
use super::ids::{NSG_TYPE, Scope};
use super::lro::{self, OpKind, Operation};
use super::preconditions;
use super::render;
use super::reply::Reply;
use super::rules::{self, validate_name, validate_rule};
use super::state::{Nsg, Provisioning, Rule, State, new_etag, uuid};

pub(crate) fn put_rule(
    cx: &Ctx,
    state: &mut State,
    scope: &Scope,
    nsg_name: &str,
    rule_name: &str,
) -> Result<Reply, ArmError> {
    let nsg = state
        .model
        .nsg(&scope.id(NSG_TYPE, nsg_name))
        .ok_or_else(|| ArmError::resource_not_found(NSG_TYPE, nsg_name, &scope.rg))?;
    let nsg_id = nsg.id.clone();
    let existing = nsg
        .rule(rule_name)
        .map(|r| (r.name.clone(), r.etag.clone()));
    // ARM names are case-insensitive: a PUT in another case updates the stored rule.
    let name = existing
        .as_ref()
        .map_or(rule_name, |(stored, _)| stored.as_str())
        .to_string();
    let rule_id = format!("{nsg_id}/securityRules/{name}");
    preconditions::not_busy(cx.shared, state, &nsg_id, &rule_id)?;
    preconditions::etag(
        cx.headers,
        existing.as_ref().map(|(_, etag)| etag.as_str()),
        &rule_id,
    )?;
    let body = parse_body(cx.body)?;
    validate_name(&name)?;
    let props = validate_rule(&rule_id, body.get("properties"))?;

    let nsg = state.model.nsg_mut(&nsg_id).expect("looked up above");
    rules::conflict(&nsg.rules, &name, &props)?;
    if existing.is_none() {
        rules::check_count(nsg.rules.len() + 1, cx.shared.options.rule_limit)?;
    }
    let rule = Rule {
        id: rule_id,
        name: name.clone(),
        etag: new_etag(),
        props,
        state: Provisioning::Updating,
    };
    match nsg.rule_mut(&name) {
        Some(stored) => *stored = rule.clone(),
        None => nsg.rules.push(rule.clone()),
    }
    nsg.etag = new_etag();
    nsg.state = Provisioning::Updating;
    let op = lro::begin(
        cx.shared,
        state,
        &nsg_id,
        OpKind::PutRule(name),
        cx.api_version,
    );
    let status = if existing.is_some() { 200 } else { 201 };
    Ok(accepted_put(
        cx,
        Reply::json(status, render::rule(&rule)),
        &op,
    ))
}

pub(crate) fn delete_rule(
    cx: &Ctx,
    state: &mut State,
    scope: &Scope,
    nsg_name: &str,
    rule_name: &str,
) -> Result<Reply, ArmError> {
    // Deleting what is already gone succeeds, so that cleanup is idempotent.
    let Some(nsg) = state.model.nsg(&scope.id(NSG_TYPE, nsg_name)) else {
        return Ok(Reply::empty(204));
    };
    let Some(rule) = nsg.rule(rule_name) else {
        return Ok(Reply::empty(204));
    };
    let (nsg_id, rule_id, name, etag) = (
        nsg.id.clone(),
        rule.id.clone(),
        rule.name.clone(),
        rule.etag.clone(),
    );
    preconditions::not_busy(cx.shared, state, &nsg_id, &rule_id)?;
    preconditions::etag(cx.headers, Some(&etag), &rule_id)?;

    let nsg = state.model.nsg_mut(&nsg_id).expect("looked up above");
    if let Some(rule) = nsg.rule_mut(&name) {
        rule.state = Provisioning::Deleting;
    }
    nsg.etag = new_etag();
    nsg.state = Provisioning::Updating;
    let op = lro::begin(
        cx.shared,
        state,
        &nsg_id,
        OpKind::DeleteRule(name),
        cx.api_version,
    );
    Ok(accepted_delete(cx, &op))
}

pub(crate) fn put_nsg(
    cx: &Ctx,
    state: &mut State,
    scope: &Scope,
    name: &str,
) -> Result<Reply, ArmError> {
    let existing = state.model.nsg(&scope.id(NSG_TYPE, name)).cloned();
    let id = existing
        .as_ref()
        .map_or_else(|| scope.id(NSG_TYPE, name), |n| n.id.clone());
    if existing.is_some() {
        preconditions::not_busy(cx.shared, state, &id, &id)?;
    }
    preconditions::etag(cx.headers, existing.as_ref().map(|n| n.etag.as_str()), &id)?;
    let body = parse_body(cx.body)?;
    validate_name(name)?;
    let location = match (&existing, body.get("location").and_then(Value::as_str)) {
        (Some(nsg), _) => nsg.location.clone(),
        (None, Some(location)) if !location.is_empty() => location.to_string(),
        (None, _) => {
            return Err(ArmError::front_door(
                400,
                "LocationRequired",
                "The location property is required for this definition.",
            ));
        }
    };

    let given = match body.pointer("/properties/securityRules") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => {
            return Err(ArmError::invalid_request_format(format!(
                "Unexpected value {other}. Path 'properties.securityRules'."
            )));
        }
    };
    let mut rules: Vec<Rule> = Vec::new();
    for (i, item) in given.iter().enumerate() {
        let Some(rule_name) = item.get("name").and_then(Value::as_str) else {
            return Err(ArmError::invalid_request_format(format!(
                "A security rule has no name. Path 'properties.securityRules[{i}].name'."
            )));
        };
        validate_name(rule_name)?;
        if rules.iter().any(|r| r.name.eq_ignore_ascii_case(rule_name)) {
            return Err(ArmError::bad_request(
                "DuplicateResourceName",
                format!("Resource {id} has two child resources with the same name ({rule_name})."),
            ));
        }
        let rule_id = format!("{id}/securityRules/{rule_name}");
        let props = validate_rule(&rule_id, item.get("properties"))?;
        rules::conflict(&rules, rule_name, &props)?;
        // A rule the PUT leaves as it was keeps its etag.
        let etag = existing
            .as_ref()
            .and_then(|n| n.rule(rule_name))
            .filter(|old| old.props == props)
            .map_or_else(new_etag, |old| old.etag.clone());
        rules.push(Rule {
            id: rule_id,
            name: rule_name.to_string(),
            etag,
            props,
            state: Provisioning::Updating,
        });
    }
    rules::check_count(rules.len(), cx.shared.options.rule_limit)?;

    let nsg = Nsg {
        id: id.clone(),
        name: existing
            .as_ref()
            .map_or(name, |n| n.name.as_str())
            .to_string(),
        location,
        tags: body.get("tags").filter(|t| t.is_object()).cloned(),
        etag: new_etag(),
        guid: existing.as_ref().map_or_else(uuid, |n| n.guid.clone()),
        state: Provisioning::Updating,
        flush_connection: body
            .pointer("/properties/flushConnection")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        rules,
        busy: None,
    };
    state.model.nsgs.insert(super::ids::key(&id), nsg);
    let op = lro::begin(cx.shared, state, &id, OpKind::PutNsg, cx.api_version);
    let nsg = state.model.nsg(&id).expect("inserted above");
    let status = if existing.is_some() { 200 } else { 201 };
    Ok(accepted_put(
        cx,
        Reply::json(status, render::nsg(&state.model, nsg)),
        &op,
    ))
}

pub(crate) fn delete_nsg(
    cx: &Ctx,
    state: &mut State,
    scope: &Scope,
    name: &str,
) -> Result<Reply, ArmError> {
    let Some(nsg) = state.model.nsg(&scope.id(NSG_TYPE, name)) else {
        return Ok(Reply::empty(204));
    };
    let (id, etag) = (nsg.id.clone(), nsg.etag.clone());
    preconditions::not_busy(cx.shared, state, &id, &id)?;
    preconditions::etag(cx.headers, Some(&etag), &id)?;
    let (nics, subnets) = state.model.nsg_users(&id);
    if !nics.is_empty() || !subnets.is_empty() {
        let users = nics
            .into_iter()
            .chain(subnets)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ArmError::bad_request(
            "InUseNetworkSecurityGroupCannotBeDeleted",
            format!(
                "Network security group {id} cannot be deleted because it is in use by the following resources: {users}. In order to delete the Network security group, remove the association with the resource(s)."
            ),
        ));
    }
    state.model.nsg_mut(&id).expect("looked up above").state = Provisioning::Deleting;
    let op = lro::begin(cx.shared, state, &id, OpKind::DeleteNsg, cx.api_version);
    Ok(accepted_delete(cx, &op))
}

/// Headers of an accepted PUT: poll `Azure-AsyncOperation`.
fn accepted_put(cx: &Ctx, reply: Reply, op: &Operation) -> Reply {
    reply
        .header("Azure-AsyncOperation", op.async_url(&cx.shared.base_url))
        .header(
            "Retry-After",
            cx.shared.options.retry_after_secs.to_string(),
        )
}

/// An accepted DELETE: 202 with both polling URLs, as the NSG delete example shows.
fn accepted_delete(cx: &Ctx, op: &Operation) -> Reply {
    Reply::empty(202)
        .header("Location", op.location_url(&cx.shared.base_url))
        .header("Azure-AsyncOperation", op.async_url(&cx.shared.base_url))
        .header(
            "Retry-After",
            cx.shared.options.retry_after_secs.to_string(),
        )
}

fn parse_body(body: &[u8]) -> Result<Value, ArmError> {
    if body.is_empty() {
        return Err(ArmError::invalid_request_format(
            "The request body is empty.",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ArmError::invalid_request_format(e.to_string()))?;
    if !value.is_object() {
        return Err(ArmError::invalid_request_format(
            "The request body must be a JSON object.",
        ));
    }
    Ok(value)
}
