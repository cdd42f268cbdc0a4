//! Fingerprints and ids derived by hashing: canonical JSON, a stage's fingerprint, default
//! prompt ids and per-row seeds. Everything is blake3; variable-length parts are length-prefixed
//! so that no two different inputs hash the same bytes.

use serde_json::Value;

use super::rows::Message;

/// `value` as JSON with object keys sorted (by their UTF-8 bytes) and no whitespace, so equal
/// settings give equal text whatever order they were written in.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (n, (key, item)) in entries.into_iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        // Scalars print the same in compact serde_json output and canonical form.
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// A blake3 hasher fed with length-prefixed fields.
struct FieldHasher(blake3::Hasher);

impl FieldHasher {
    fn new(domain: &str) -> Self {
        let mut hasher = FieldHasher(blake3::Hasher::new());
        hasher.bytes(domain.as_bytes());
        hasher
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn count(&mut self, n: usize) {
        self.0.update(&(n as u64).to_le_bytes());
    }
}

/// A stage's fingerprint: blake3 (hex) over the stage name, the schema version of its output
/// (e.g. `samples/v1`), the canonical JSON of its settings, its input files' fingerprints (in
/// the order given: inputs have positions) and the digests of its models (sorted by role, since
/// roles name them).
pub fn stage_fingerprint(
    stage: &str,
    schema_version: &str,
    config: &Value,
    input_fingerprints: &[&str],
    model_digests: &[(&str, &str)],
) -> String {
    let mut hasher = FieldHasher::new("rspo.stage-fingerprint.v1");
    hasher.bytes(stage.as_bytes());
    hasher.bytes(schema_version.as_bytes());
    hasher.bytes(canonical_json(config).as_bytes());
    hasher.count(input_fingerprints.len());
    for fingerprint in input_fingerprints {
        hasher.bytes(fingerprint.as_bytes());
    }
    let mut models = model_digests.to_vec();
    models.sort();
    hasher.count(models.len());
    for (role, digest) in models {
        hasher.bytes(role.as_bytes());
        hasher.bytes(digest.as_bytes());
    }
    hasher.0.finalize().to_hex().to_string()
}

/// The default id of a prompt given as text: the first 16 hex digits of blake3 of the text.
pub fn prompt_id_for(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex()[..16].to_string()
}

/// The default id of a prompt given as a conversation: [`prompt_id_for`] of the canonical JSON
/// of the messages (`[{"content":...,"role":...}, ...]`).
pub fn prompt_id_for_messages(messages: &[Message]) -> String {
    let value = Value::Array(
        messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect(),
    );
    prompt_id_for(&canonical_json(&value))
}

/// The seed of one sample: the first 8 bytes (little-endian) of blake3 over the run seed (u64
/// LE), the length-prefixed prompt id, the sample index and the iteration (u32 LE each). It
/// depends on nothing else, so batch size and sharding do not change which seed a row gets.
pub fn row_seed(run_seed: u64, prompt_id: &str, sample_idx: u32, iteration: u32) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&run_seed.to_le_bytes());
    hasher.update(&(prompt_id.len() as u64).to_le_bytes());
    hasher.update(prompt_id.as_bytes());
    hasher.update(&sample_idx.to_le_bytes());
    hasher.update(&iteration.to_le_bytes());
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let a = json!({"b": 1, "a": {"y": [1, {"q": 2, "p": null}], "x": "s\"t"}});
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s\"t","y":[1,{"p":null,"q":2}]},"b":1}"#)
            .expect("valid json");
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":"s\"t","y":[1,{"p":null,"q":2}]},"b":1}"#
        );
    }

    #[test]
    fn stage_fingerprint_changes_with_every_part() {
        let config = json!({"k": 5, "temperature": 0.7});
        let base = stage_fingerprint(
            "generate",
            "samples/v1",
            &config,
            &["in1"],
            &[("policy", "d1")],
        );
        assert_eq!(base.len(), 64);
        let same_config_reordered = json!({"temperature": 0.7, "k": 5});
        assert_eq!(
            base,
            stage_fingerprint(
                "generate",
                "samples/v1",
                &same_config_reordered,
                &["in1"],
                &[("policy", "d1")]
            )
        );
        let variants = [
            stage_fingerprint(
                "score",
                "samples/v1",
                &config,
                &["in1"],
                &[("policy", "d1")],
            ),
            stage_fingerprint(
                "generate",
                "samples/v2",
                &config,
                &["in1"],
                &[("policy", "d1")],
            ),
            stage_fingerprint(
                "generate",
                "samples/v1",
                &json!({"k": 4, "temperature": 0.7}),
                &["in1"],
                &[("policy", "d1")],
            ),
            stage_fingerprint(
                "generate",
                "samples/v1",
                &config,
                &["in2"],
                &[("policy", "d1")],
            ),
            stage_fingerprint(
                "generate",
                "samples/v1",
                &config,
                &["in1", "in2"],
                &[("policy", "d1")],
            ),
            stage_fingerprint(
                "generate",
                "samples/v1",
                &config,
                &["in1"],
                &[("policy", "d2")],
            ),
            stage_fingerprint(
                "generate",
                "samples/v1",
                &config,
                &["in1"],
                &[("reference", "d1")],
            ),
            stage_fingerprint("generate", "samples/v1", &config, &["in1"], &[]),
        ];
        for variant in &variants {
            assert_ne!(&base, variant);
        }
        // Boundaries cannot be confused: moving bytes between parts changes the hash.
        assert_ne!(
            stage_fingerprint("ab", "c", &config, &[], &[]),
            stage_fingerprint("a", "bc", &config, &[], &[])
        );
        assert_ne!(
            stage_fingerprint("s", "v", &config, &["ab", "c"], &[]),
            stage_fingerprint("s", "v", &config, &["a", "bc"], &[])
        );
    }

    #[test]
    fn model_order_does_not_matter_but_input_order_does() {
        let config = json!({});
        assert_eq!(
            stage_fingerprint("s", "v", &config, &[], &[("a", "1"), ("b", "2")]),
            stage_fingerprint("s", "v", &config, &[], &[("b", "2"), ("a", "1")])
        );
        assert_ne!(
            stage_fingerprint("s", "v", &config, &["x", "y"], &[]),
            stage_fingerprint("s", "v", &config, &["y", "x"], &[])
        );
    }

    #[test]
    fn prompt_ids_are_16_hex_digits_of_blake3() {
        let id = prompt_id_for("Hello");
        assert_eq!(id, blake3::hash(b"Hello").to_hex()[..16]);
        let from_messages = prompt_id_for_messages(&[Message::user("Hello")]);
        assert_eq!(
            from_messages,
            prompt_id_for(r#"[{"content":"Hello","role":"user"}]"#)
        );
    }

    #[test]
    fn row_seeds_depend_on_each_part() {
        let seed = row_seed(7, "p1", 0, 1);
        assert_eq!(seed, row_seed(7, "p1", 0, 1));
        for other in [
            row_seed(8, "p1", 0, 1),
            row_seed(7, "p2", 0, 1),
            row_seed(7, "p1", 1, 1),
            row_seed(7, "p1", 0, 2),
        ] {
            assert_ne!(seed, other);
        }
    }
}
