//! ARM's error answers: a status, `{"error":{"code","message"[,"details"]}}` and
//! sometimes headers (`Retry-After`).
//!
//! Errors raised by ARM's front door (authentication, api-version, missing top-level
//! resources) carry no `details`; errors from the network resource provider carry
//! `details`, usually empty. The codes and wording follow what ARM answers in public
//! bug reports; see the report of `tests/arm_emulator.rs` for which are confirmed.

use serde_json::{Value, json};

/// One error answer.
#[derive(Clone, Debug)]
pub(crate) struct ArmError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub details: Option<Vec<Value>>,
    pub headers: Vec<(String, String)>,
}

impl ArmError {
    /// An error as ARM's front door words it (no `details`).
    pub fn front_door(status: u16, code: &str, message: impl Into<String>) -> Self {
        ArmError {
            status,
            code: code.to_string(),
            message: message.into(),
            details: None,
            headers: Vec::new(),
        }
    }

    /// An error as the network resource provider words it (`details: []`).
    pub fn provider(status: u16, code: &str, message: impl Into<String>) -> Self {
        ArmError {
            details: Some(Vec::new()),
            ..ArmError::front_door(status, code, message)
        }
    }

    /// A 400 from the network resource provider.
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        ArmError::provider(400, code, message)
    }

    pub fn with_details(mut self, details: Vec<Value>) -> Self {
        self.details = Some(details);
        self
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// The response body.
    pub fn body(&self) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(details) = &self.details {
            error["details"] = Value::Array(details.clone());
        }
        json!({ "error": error })
    }

    /// A missing top-level resource (`type_name` like `Microsoft.Network/networkSecurityGroups`).
    pub fn resource_not_found(type_name: &str, name: &str, resource_group: &str) -> Self {
        ArmError::front_door(
            404,
            "ResourceNotFound",
            format!(
                "The Resource '{type_name}/{name}' under resource group '{resource_group}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
            ),
        )
    }

    /// A missing child resource (a rule, a subnet) whose parent exists.
    pub fn child_not_found(id: &str) -> Self {
        ArmError::provider(404, "NotFound", format!("Resource {id} not found."))
    }

    /// A body that is not JSON, or a property of the wrong type.
    pub fn invalid_request_format(detail: impl Into<String>) -> Self {
        ArmError::bad_request("InvalidRequestFormat", "Cannot parse the request.").with_details(
            vec![json!({ "code": "InvalidJson", "message": detail.into() })],
        )
    }
}
