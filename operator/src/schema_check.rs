//! Test support: checks an object against the CRD's OpenAPI schema the way the API server does,
//! as far as tests need it.
//!
//! Covered: types (with `nullable`, `x-kubernetes-int-or-string`, date-time strings), `required`,
//! `enum`, `minimum`/`maximum`, `minLength`, `minItems`, `pattern`, and unknown fields (which the API server
//! would silently prune: in an example that is a typo). Schema defaults and CEL rules are applied
//! and evaluated by `kube::core::cel` (see [`defaults`] and [`cel_errors`]).
//! Not covered: `format` checks beyond the above, `maxItems`/`maxProperties`, `oneOf`/`anyOf`
//! (the CRD has none), and the CEL cost budget.

use kube::CustomResourceExt;
use serde_json::Value;

use crate::crd::MqttCluster;

/// The CRD's `openAPIV3Schema` as JSON.
pub fn schema() -> Value {
    let crd = MqttCluster::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the CRD has a schema");
    serde_json::to_value(schema).expect("schema serializes")
}

/// The object with the schema's defaults filled in, as the API server stores it.
pub fn defaults(object: &Value) -> Value {
    kube::core::cel::apply_defaults(&schema(), object)
}

/// Messages of the CEL rules the object breaks (after defaulting).
pub fn cel_errors(object: &Value) -> Vec<String> {
    update_cel_errors(object, None)
}

/// Messages of the CEL rules an update from `old` to `object` breaks, transition rules
/// (`oldSelf`) included; with no `old`, a create.
pub fn update_cel_errors(object: &Value, old: Option<&Value>) -> Vec<String> {
    match kube::core::cel::Validator::new().validate(&schema(), object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

/// Structural problems of the object (after defaulting), each as `path: problem`.
pub fn structural_errors(object: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let schema = schema();
    // apiVersion, kind and metadata are checked by the API server itself, not by the CRD
    // schema.
    let mut object = defaults(object);
    if let Some(map) = object.as_object_mut() {
        for key in ["apiVersion", "kind", "metadata"] {
            map.remove(key);
        }
    }
    check(&schema, &object, "", &mut errors);
    errors
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let here = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(format!("{here}: null is not allowed"));
        }
        return;
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !matches!(type_name(value), "integer" | "string") {
            errors.push(format!("{here}: must be an integer or a string"));
        }
        return;
    }
    let actual = type_name(value);
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let ok = expected == actual || (expected == "number" && actual == "integer");
        if !ok {
            errors.push(format!("{here}: is {actual}, the schema wants {expected}"));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            errors.push(format!("{here}: {value} is not one of {options:?}"));
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                errors.push(format!("{here}: {n} is below the minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                errors.push(format!("{here}: {n} is above the maximum {max}"));
            }
        }
    }
    if let Some(s) = value.as_str() {
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
            if (s.chars().count() as u64) < min {
                errors.push(format!("{here}: shorter than {min}"));
            }
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            let re = regex::Regex::new(pattern).expect("schema pattern compiles");
            if !re.is_match(s) {
                errors.push(format!("{here}: {s:?} does not match {pattern}"));
            }
        }
    }
    if let (Some(items), Some(min)) = (
        value.as_array(),
        schema.get("minItems").and_then(Value::as_u64),
    ) {
        if (items.len() as u64) < min {
            errors.push(format!("{here}: should have at least {min} items"));
        }
    }
    match value {
        Value::Object(map) => {
            for key in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !map.contains_key(key) {
                    errors.push(format!("{path}.{key}: Required value"));
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let preserve =
                schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            for (key, child) in map {
                let child_path = format!("{path}.{key}");
                if let Some(sub) = properties.and_then(|p| p.get(key)) {
                    check(sub, child, &child_path, errors);
                } else if let Some(sub) = additional.filter(|a| a.is_object()) {
                    check(sub, child, &child_path, errors);
                } else if !preserve && additional != Some(&Value::Bool(true)) {
                    errors.push(format!(
                        "{child_path}: unknown field (the API server would drop it)"
                    ));
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(sub, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

/// The `format`s kube-apiserver knows for CRD schemas (kube-openapi's string formats and the
/// OpenAPI number formats); it warns "unrecognized format" about any other.
const KNOWN_FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "binary",
    "password",
    "date",
    "date-time",
    "datetime",
    "duration",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "bsonobjectid",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
];

/// Problems that would make the API server refuse the CRD itself: a schema node without a
/// type (structural schemas need one everywhere, except int-or-string and preserve-unknown
/// nodes), `$ref`s, CEL rules that do not compile, and defaults that do not satisfy their own
/// schema; and formats it does not know, which it accepts with a warning.
pub fn crd_schema_problems() -> Vec<String> {
    let schema = schema();
    let mut problems = Vec::new();
    walk_schema(&schema, "", &mut problems);
    fn collect_compile_errors(c: &kube::core::cel::CompiledSchema, out: &mut Vec<String>) {
        out.extend(c.compilation_errors().iter().map(|e| e.to_string()));
        for child in c.properties.values() {
            collect_compile_errors(child, out);
        }
        if let Some(items) = &c.items {
            collect_compile_errors(items, out);
        }
        if let Some(values) = &c.additional_properties {
            collect_compile_errors(values, out);
        }
    }
    collect_compile_errors(&kube::core::cel::compile_schema(&schema), &mut problems);
    problems
}

fn walk_schema(schema: &Value, path: &str, problems: &mut Vec<String>) {
    let here = if path.is_empty() { "<root>" } else { path };
    let flag = |key: &str| schema.get(key) == Some(&Value::Bool(true));
    if schema.get("$ref").is_some() {
        problems.push(format!("{here}: $ref is not allowed"));
    }
    if schema.get("type").is_none()
        && !flag("x-kubernetes-int-or-string")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        problems.push(format!("{here}: no type"));
    }
    if let Some(format) = schema.get("format").and_then(Value::as_str) {
        if !KNOWN_FORMATS.contains(&format) {
            problems.push(format!(
                "{here}: format {format:?} is unknown to the API server (it warns on every apply)"
            ));
        }
    }
    if let Some(default) = schema.get("default") {
        let mut errors = Vec::new();
        check(schema, default, &format!("{path}(default)"), &mut errors);
        problems.extend(errors);
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (key, child) in properties {
            walk_schema(child, &format!("{path}.{key}"), problems);
        }
    }
    if let Some(items) = schema.get("items") {
        walk_schema(items, &format!("{path}[]"), problems);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        walk_schema(values, &format!("{path}{{}}"), problems);
    }
}
