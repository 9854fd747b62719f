//! The JSON Schema subset validator of docs/bench-report.schema.json, shared by the bench and
//! replay tests.

use serde_json::Value;

/// A small validator for the subset of JSON Schema that docs/bench-report.schema.json uses
/// (type, const, enum, required, properties, additionalProperties, items, $ref to $defs).
pub fn validate(schema: &Value, root: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => &root["$defs"][r.trim_start_matches("#/$defs/")],
        None => schema,
    };
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            errors.push(format!("{path}: {v} is not {types:?}"));
            return;
        }
    }
    if let Some(c) = schema.get("const") {
        if c != v {
            errors.push(format!("{path}: {v} != {c}"));
        }
    }
    if let Some(Value::Array(options)) = schema.get("enum") {
        if !options.contains(v) {
            errors.push(format!("{path}: {v} not in {options:?}"));
        }
    }
    if let Value::Object(obj) = v {
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(key.as_str().unwrap_or("")) {
                errors.push(format!("{path}: missing {key}"));
            }
        }
        for (k, child) in obj {
            if let Some(s) = schema.get("properties").and_then(|p| p.get(k)) {
                validate(s, root, child, &format!("{path}.{k}"), errors);
            } else if let Some(s) = schema.get("additionalProperties") {
                validate(s, root, child, &format!("{path}.{k}"), errors);
            }
        }
    }
    if let (Value::Array(items), Some(s)) = (v, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            validate(s, root, item, &format!("{path}[{i}]"), errors);
        }
    }
}

pub fn check_report(path: &std::path::Path) -> Value {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string("docs/bench-report.schema.json").unwrap())
            .unwrap();
    let report: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut errors = Vec::new();
    validate(&schema, &schema, &report, "$", &mut errors);
    assert!(
        errors.is_empty(),
        "report does not match its schema: {errors:#?}"
    );
    report
}
