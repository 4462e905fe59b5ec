//! The OpenAPI document served at `/api/v1/openapi.json` matches the router: no database needed.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

const DOC: &str = include_str!("../src/api/openapi.json");

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn doc() -> Value {
    serde_json::from_str(DOC).expect("src/api/openapi.json is valid JSON")
}

fn router_source() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs"))
        .expect("read src/api/mod.rs")
}

/// The text of a call's arguments: from just after its `(` to the matching `)`.
fn call_args(src: &str) -> &str {
    let mut depth = 1usize;
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in src.char_indices() {
        if in_str {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &src[..i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced .route( call in src/api/mod.rs");
}

/// Every `.route("<path>", <method router>)` in `src/api/mod.rs`, with the HTTP methods its
/// method router names (`get(..)`, `post(..).get(..)`, ...).
fn registered_routes() -> BTreeMap<String, BTreeSet<String>> {
    let src = router_source();
    let mut routes = BTreeMap::new();
    for (at, _) in src.match_indices(".route(") {
        let args = call_args(&src[at + ".route(".len()..]);
        let rest = args.trim_start();
        let rest = rest
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("route path is not a string literal: {args}"));
        let end = rest.find('"').expect("unterminated route path");
        let path = rest[..end].to_owned();
        let router = &rest[end + 1..];
        let methods: BTreeSet<String> = HTTP_METHODS
            .iter()
            .filter(|m| {
                router.match_indices(&format!("{m}(")).any(|(i, _)| {
                    let before = router[..i].chars().next_back();
                    !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
                })
            })
            .map(|m| (*m).to_owned())
            .collect();
        assert!(!methods.is_empty(), "no method found for route {path}");
        assert!(
            routes.insert(path.clone(), methods).is_none(),
            "route {path} registered twice"
        );
    }
    routes
}

/// The document's paths with their operation methods.
fn documented_routes(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    doc["paths"]
        .as_object()
        .expect("paths is an object")
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .expect("path item is an object")
                .keys()
                .filter(|k| HTTP_METHODS.contains(&k.as_str()))
                .cloned()
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// `(path, method, operation)` for every operation in the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for (method, op) in item.as_object().expect("path item is an object") {
            if HTTP_METHODS.contains(&method.as_str()) {
                ops.push((path.clone(), method.clone(), op.clone()));
            }
        }
    }
    ops
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.push(v.as_str().expect("$ref is a string").to_owned());
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn is_openapi_3_1() {
    let doc = doc();
    let version = doc["openapi"].as_str().expect("openapi is a string");
    assert!(version.starts_with("3.1"), "openapi is {version}");
    assert!(doc["info"]["title"].is_string());
    assert!(doc["info"]["version"].is_string());
}

#[test]
fn paths_match_the_router_exactly() {
    let registered = registered_routes();
    assert!(
        registered.contains_key("/api/v1/jobs") && registered.contains_key("/healthz"),
        "parsing src/api/mod.rs found too little: {registered:?}"
    );
    let documented = documented_routes(&doc());
    let reg_paths: BTreeSet<_> = registered.keys().collect();
    let doc_paths: BTreeSet<_> = documented.keys().collect();
    assert_eq!(
        doc_paths,
        reg_paths,
        "undocumented routes: {:?}; documented but not routed: {:?}",
        reg_paths.difference(&doc_paths).collect::<Vec<_>>(),
        doc_paths.difference(&reg_paths).collect::<Vec<_>>()
    );
    for (path, methods) in &registered {
        assert_eq!(
            &documented[path], methods,
            "methods of {path} differ between the router and the document"
        );
    }
}

#[test]
fn job_and_session_routes_need_a_bearer_token_and_declare_401() {
    let doc = doc();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    let (mut jobs, mut sessions) = (0, 0);
    for (path, method, op) in operations(&doc) {
        let is_jobs = path.starts_with("/api/v1/jobs");
        let is_sessions = path.starts_with("/api/v1/sessions")
            || path.starts_with("/api/v1/traces")
            || path.starts_with("/api/v1/workflow");
        if is_jobs || is_sessions {
            if is_jobs {
                jobs += 1;
            } else {
                sessions += 1;
            }
            assert!(
                op["responses"].get("401").is_some(),
                "{method} {path} declares no 401 response"
            );
            let security = op["security"].as_array().unwrap_or_else(|| {
                panic!("{method} {path} declares no security");
            });
            assert!(
                security.iter().any(|s| s.get("bearerAuth").is_some()),
                "{method} {path} does not require bearerAuth"
            );
        } else {
            assert_eq!(
                op["security"],
                serde_json::json!([]),
                "{method} {path} should be unauthenticated"
            );
        }
    }
    assert!(jobs >= 7, "only {jobs} job operations documented");
    assert!(
        sessions >= 8,
        "only {sessions} session operations documented"
    );
}

#[test]
fn every_ref_resolves_to_a_component() {
    let doc = doc();
    for name in ["Job", "JobList", "Event", "EventPage", "Error", "CreateJob"] {
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "components/schemas/{name} is missing"
        );
    }
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty(), "the document uses no $ref at all");
    for r in refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("$ref {r} is not local"));
        assert!(
            pointer.starts_with("/components/"),
            "$ref {r} does not point into components"
        );
        assert!(doc.pointer(pointer).is_some(), "$ref {r} does not resolve");
    }
}
