//! ARM list operations: the first page and every page its `nextLink` leads to.

use std::collections::BTreeSet;

use azure_core::http::Method;
use serde_json::Value;

use super::arm::ArmClient;
use crate::cloud::CloudError;

impl ArmClient {
    /// GETs `{endpoint}{path}?api-version=…` with the extra `query` pairs and every page
    /// after it, and returns the `value` items of all pages. A `nextLink` must point at
    /// the endpoint (the bearer token goes nowhere else); each page gets the client's
    /// retries and throttling. `on_page` hears the running item count after each page.
    pub async fn list(
        &self,
        op: &'static str,
        path: &str,
        api_version: &str,
        query: &[(&str, &str)],
        on_page: &(dyn Fn(usize) + Send + Sync),
    ) -> Result<Vec<Value>, CloudError> {
        let mut url = self.url(op, path, api_version)?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        let mut items = Vec::new();
        let mut seen = BTreeSet::new();
        loop {
            if !seen.insert(url.to_string()) {
                return Err(CloudError::Fatal {
                    op,
                    code: "NextLinkLoop".into(),
                    message: format!(
                        "the list of {path} sent a nextLink it had sent before: {url}"
                    ),
                });
            }
            let reply = self.call(op, path, Method::Get, &url, None, None).await?;
            let page: Value =
                serde_json::from_slice(reply.body()).map_err(|e| CloudError::Retryable {
                    op,
                    code: "InvalidResponseBody".into(),
                    message: format!("a page of {path} is not JSON: {e}"),
                })?;
            if let Some(values) = page.get("value").and_then(Value::as_array) {
                items.extend(values.iter().cloned());
            }
            on_page(items.len());
            match page.get("nextLink").and_then(Value::as_str) {
                Some(next) if !next.is_empty() => url = self.poll_url(op, next)?,
                _ => return Ok(items),
            }
        }
    }
}
