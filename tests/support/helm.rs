//! Helm v4 for the tests, through its Go SDK from PyPI (`helm-python-sdk`; no helm binary
//! comes from the registries): `scripts/helm-setup` caches the virtualenv, and
//! `tests/support/helm.py` runs one SDK call per process and answers in JSON.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::{Value, json};

use super::testbed::repo_root;

/// The chart's directory.
pub fn chart() -> PathBuf {
    repo_root().join("charts/portcullis")
}

/// The virtualenv's python with the SDK (installed on first use by `scripts/helm-setup`).
fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let script = repo_root().join("scripts/helm-setup");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(out.status.success(), "{} failed", script.display());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("PORTCULLIS_HELM_PYTHON="))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("{} printed no PORTCULLIS_HELM_PYTHON", script.display()))
    })
}

/// Runs one command of `helm.py`; its JSON answer (`{"error": …}` when Helm refused).
pub fn call(cmd: Value) -> Value {
    use std::io::Write;
    let mut child = Command::new(python())
        .arg(repo_root().join("tests/support/helm.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start helm.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cmd.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("helm.py runs");
    assert!(
        out.status.success(),
        "helm.py {cmd} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "helm.py answered no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `helm lint --strict`: the report.
pub fn lint(values: Value) -> Value {
    call(json!({"op": "lint", "chart": chart(), "values": values}))
}

/// The schema's verdict on `values`: `Err(message)` when it rejects them.
pub fn validate(values: Value) -> Result<(), String> {
    let answer = call(json!({"op": "validate", "chart": chart(), "values": values}));
    match answer.get("error") {
        Some(e) => Err(e.as_str().unwrap_or_default().to_string()),
        None => Ok(()),
    }
}

/// Renders the chart offline: every object, in template order (NOTES.txt left out).
pub fn render(values: Value, name: &str, namespace: &str) -> Result<Vec<Value>, String> {
    let answer = call(json!({
        "op": "render", "chart": chart(), "values": values, "name": name, "namespace": namespace
    }));
    if let Some(e) = answer.get("error") {
        return Err(e.as_str().unwrap_or_default().to_string());
    }
    let mut files: Vec<(&String, &Value)> = answer
        .as_object()
        .expect("a map of templates")
        .iter()
        .filter(|(k, _)| !k.ends_with("NOTES.txt"))
        .collect();
    files.sort_by_key(|(k, _)| k.as_str());
    Ok(files
        .into_iter()
        .flat_map(|(_, text)| objects(text.as_str().unwrap_or_default()))
        .collect())
}

/// The objects of a multi-document YAML manifest (empty documents left out).
pub fn objects(manifest: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(manifest)
        .unwrap_or_else(|e| panic!("bad YAML from Helm ({e}):\n{manifest}"))
        .into_iter()
        .filter(|v| v.is_object())
        .collect()
}

/// A release action against the API server of `kubeconfig`; the release, or the error.
pub fn release(
    op: &str,
    kubeconfig: &Path,
    name: &str,
    namespace: &str,
    values: Value,
) -> Result<Value, String> {
    let answer = call(json!({
        "op": op, "chart": chart(), "values": values, "name": name, "namespace": namespace,
        "kubeconfig": kubeconfig,
    }));
    match answer.get("error") {
        Some(e) => Err(e.as_str().unwrap_or_default().to_string()),
        None => Ok(answer),
    }
}

/// The first object of `kind` named `name` among `objects`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}
