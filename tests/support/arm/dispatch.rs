//! One request in, one answer out: authentication, `api-version`, injected faults,
//! routing, and the record of the call. Everything happens under the state mutex, so
//! requests are answered one at a time, as if ARM serialized them.

use std::sync::PoisonError;
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use hyper::{HeaderMap, Method};
use serde_json::json;

use super::errors::ArmError;
use super::firewall;
use super::ids::{self, Route};
use super::listing;
use super::lro::{self, OpKind, Poll};
use super::reads;
use super::record::{Call, Injected};
use super::render;
use super::reply::Reply;
use super::state::{Shared, State, uuid};
use super::writes;

/// A request as the server read it.
pub(crate) struct Incoming {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What a write handler needs besides the state.
pub(crate) struct Ctx<'a> {
    pub shared: &'a Shared,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub api_version: &'a str,
}

/// Answers `request` and records the call.
pub(crate) fn handle(shared: &Shared, request: &Incoming) -> Reply {
    let arrived = Instant::now();
    let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    state
        .recorder
        .arrived(request.method.as_str(), &request.path, arrived);
    lro::complete_expired(shared, &mut state);
    let reply = answer(shared, &mut state, request).unwrap_or_else(Reply::from);
    let retry_after = reply
        .header_value("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    let call = Call {
        method: request.method.to_string(),
        path: request.path.clone(),
        status: reply.status,
        at: arrived,
    };
    state.recorder.answered(call, retry_after, Instant::now());
    reply
}

fn answer(shared: &Shared, state: &mut State, request: &Incoming) -> Result<Reply, ArmError> {
    authenticate(shared, &request.headers)?;
    let api_version = api_version(request.query.as_deref())?;
    if let Some(fault) = state.recorder.next_fault() {
        return Err(injected(fault, &request.path));
    }
    if request.method == Method::GET
        && let Some(answer) = listing::get(shared, state, request)
    {
        return answer;
    }
    let route = ids::route(&request.path).ok_or_else(|| {
        ArmError::front_door(
            404,
            "InvalidResourceType",
            format!("The ARM emulator does not serve '{}'.", request.path),
        )
    })?;
    if request.method != Method::GET
        && let Some((_, code)) = state
            .refused_writes
            .iter()
            .find(|(fragment, _)| request.path.contains(fragment.as_str()))
    {
        return Err(ArmError::front_door(
            400,
            code,
            format!(
                "The ARM emulator refuses writes to '{}' (test fault).",
                request.path
            ),
        ));
    }
    let cx = Ctx {
        shared,
        headers: &request.headers,
        body: &request.body,
        api_version: &api_version,
    };
    match (&request.method, &route) {
        (&Method::GET, Route::Operation(_, _, id)) => poll_async_operation(shared, state, id),
        (&Method::GET, Route::OperationResult(_, _, id)) => poll_location(shared, state, id),
        (&Method::GET, Route::Firewall(scope, name)) => firewall::get(state, scope, name),
        (&Method::PUT, Route::Firewall(scope, name)) => firewall::put(&cx, state, scope, name),
        (&Method::DELETE, Route::Firewall(scope, name)) => {
            firewall::delete(&cx, state, scope, name)
        }
        (&Method::GET, route) => reads::get(&state.model, route),
        (&Method::PUT, Route::Nsg(scope, name)) => writes::put_nsg(&cx, state, scope, name),
        (&Method::DELETE, Route::Nsg(scope, name)) => writes::delete_nsg(&cx, state, scope, name),
        (&Method::PUT, Route::Rule(scope, nsg, name)) => {
            writes::put_rule(&cx, state, scope, nsg, name)
        }
        (&Method::DELETE, Route::Rule(scope, nsg, name)) => {
            writes::delete_rule(&cx, state, scope, nsg, name)
        }
        (method, _) => Err(ArmError::front_door(
            405,
            "MethodNotAllowed",
            format!("The requested resource does not support http method '{method}'."),
        )),
    }
}

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<(), ArmError> {
    let challenge = |description: &str| {
        format!(
            "Bearer authorization_uri=\"https://login.microsoftonline.com/common\", error=\"invalid_token\", error_description=\"{description}\""
        )
    };
    let Some(value) = headers.get(hyper::header::AUTHORIZATION) else {
        let description = "The authentication failed because of missing 'Authorization' header.";
        return Err(ArmError::front_door(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        )
        .with_header("WWW-Authenticate", challenge(description)));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, token)| token.trim());
    let Some(token) = token else {
        return Err(ArmError::front_door(
            401,
            "AuthenticationFailedInvalidHeader",
            "Authentication failed. The 'Authorization' header is provided in an invalid format.",
        )
        .with_header(
            "WWW-Authenticate",
            challenge("Invalid 'Authorization' header."),
        ));
    };
    if token != shared.token {
        return Err(ArmError::front_door(
            401,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        )
        .with_header(
            "WWW-Authenticate",
            challenge("The access token is invalid."),
        ));
    }
    Ok(())
}

fn api_version(query: Option<&str>) -> Result<String, ArmError> {
    let version = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("api-version"))
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty());
    let Some(version) = version else {
        return Err(ArmError::front_door(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ));
    };
    let date = version.strip_suffix("-preview").unwrap_or(&version);
    let well_formed = date.len() == 10
        && date.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            _ => c.is_ascii_digit(),
        });
    if !well_formed {
        return Err(ArmError::front_door(
            400,
            "InvalidApiVersionParameter",
            format!(
                "The api-version '{version}' is invalid. The supported versions are dates of the form 'yyyy-mm-dd', optionally with '-preview'."
            ),
        ));
    }
    Ok(version)
}

fn injected(fault: Injected, path: &str) -> ArmError {
    match fault {
        Injected::Throttle { retry_after_secs } => {
            let subscription = path.split('/').nth(2).unwrap_or_default();
            ArmError::front_door(
                429,
                "SubscriptionRequestsThrottled",
                format!(
                    "Number of requests for subscription '{subscription}' exceeded the limit. Please try again after '{retry_after_secs}' seconds."
                ),
            )
            .with_header("Retry-After", retry_after_secs.to_string())
        }
        Injected::ServerError => ArmError::front_door(
            500,
            "InternalServerError",
            format!(
                "Encountered internal server error. Diagnostic information: tracking id '{}'.",
                uuid()
            ),
        ),
    }
}

fn unknown_operation(id: &str) -> ArmError {
    ArmError::provider(404, "NotFound", format!("Operation {id} not found."))
}

/// `Azure-AsyncOperation` polling: `InProgress` until the operation completes.
fn poll_async_operation(shared: &Shared, state: &mut State, id: &str) -> Result<Reply, ArmError> {
    match lro::poll(state, id).ok_or_else(|| unknown_operation(id))? {
        Poll::InProgress => Ok(Reply::json(200, json!({ "status": "InProgress" }))
            .header("Retry-After", shared.options.retry_after_secs.to_string())),
        Poll::Done => Ok(Reply::json(200, json!({ "status": "Succeeded" }))),
    }
}

/// `Location` polling: 202 until the operation completes, then the final answer (204
/// for a delete, the resource for a put).
fn poll_location(shared: &Shared, state: &mut State, id: &str) -> Result<Reply, ArmError> {
    let poll = lro::poll(state, id).ok_or_else(|| unknown_operation(id))?;
    let op = state.ops.get(id).expect("polled above").clone();
    match poll {
        Poll::InProgress => Ok(Reply::empty(202)
            .header("Location", op.location_url(&shared.base_url))
            .header("Retry-After", shared.options.retry_after_secs.to_string())),
        Poll::Done => {
            let nsg = state.model.nsg(&op.nsg);
            let body = match (&op.kind, nsg) {
                (OpKind::PutNsg, Some(nsg)) => render::nsg(&state.model, nsg),
                (OpKind::PutRule(name), Some(nsg)) => match nsg.rule(name) {
                    Some(rule) => render::rule(rule),
                    None => return Ok(Reply::empty(204)),
                },
                _ => return Ok(Reply::empty(204)),
            };
            Ok(Reply::json(200, body))
        }
    }
}
