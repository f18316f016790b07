//! An answer before it becomes an HTTP response.

use http_body_util::Full;
use hyper::Response;
use hyper::body::Bytes;
use serde_json::Value;

use super::errors::ArmError;
use super::state::uuid;

pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Some(body),
        }
    }

    pub fn empty(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut builder = Response::builder()
            .status(self.status)
            .header("x-ms-request-id", uuid())
            .header("cache-control", "no-cache");
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        let body = match &self.body {
            Some(body) => {
                builder = builder.header("content-type", "application/json; charset=utf-8");
                Bytes::from(serde_json::to_vec(body).expect("JSON values serialize"))
            }
            None => Bytes::new(),
        };
        builder.body(Full::new(body)).expect("headers are valid")
    }
}

impl From<ArmError> for Reply {
    fn from(error: ArmError) -> Self {
        Reply {
            status: error.status,
            body: Some(error.body()),
            headers: error.headers,
        }
    }
}
