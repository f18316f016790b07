//! `crds/` must hold exactly what the Rust types generate.

use portcullis::api::crds;

#[test]
fn committed_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut stale = Vec::new();
    for crd in crds::all() {
        let path = dir.join(crds::file_name(&crd));
        let want = crds::to_yaml(&crd).expect("CRD serializes");
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            stale.push(path.display().to_string());
        }
    }
    let expected: Vec<String> = crds::all().iter().map(crds::file_name).collect();
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    present.retain(|f| !expected.contains(f));
    assert!(
        stale.is_empty() && present.is_empty(),
        "crds/ is stale (changed: {stale:?}; not generated: {present:?}); \
         regenerate with `cargo run -- crds --out-dir crds`"
    );
}

#[test]
fn crds_carry_no_cel_rules() {
    // CEL needs Kubernetes 1.25+; the CRDs must apply on 1.20.
    let yaml = crds::all_yaml().unwrap();
    assert!(!yaml.contains("x-kubernetes-validations"));
}
