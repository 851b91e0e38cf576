//! Sane ranges for the numbers of a model's config files, checked before anything is built
//! from them: a damaged or hostile config (`num_train_timesteps: 1e15`, a channel count of a
//! billion) would otherwise ask for an allocation that aborts the process. The bounds are far
//! beyond any real model's, so only nonsense is refused.

use serde_json::Value;

/// The range a key's integers (or each integer of its array) must lie in, if it has one.
fn range_of(key: &str) -> Option<(u64, u64)> {
    const WIDTH: u64 = 1 << 16;
    const DEPTH: u64 = 1 << 10;
    let range = match key {
        "num_train_timesteps" => (1, 100_000),
        "vocab_size" | "max_position_embeddings" => (1, 1 << 20),
        "norm_num_groups"
        | "num_attention_heads"
        | "num_key_value_heads"
        | "num_heads"
        | "patch_size" => (1, WIDTH),
        "d_model" | "d_ff" | "d_kv" => (0, WIDTH),
        "layers_per_block"
        | "num_hidden_layers"
        | "num_layers"
        | "num_single_layers"
        | "num_decoder_layers"
        | "transformer_layers_per_block" => (0, DEPTH),
        "sample_size" | "hidden_size" | "intermediate_size" => (0, WIDTH),
        _ if key.contains("channels") || key.ends_with("_dim") || key.ends_with("_dims") => {
            (0, WIDTH)
        }
        _ => return None,
    };
    Some(range)
}

/// The first number of `config` (at any depth) outside its key's range, as a message naming
/// the key, the value and the range.
pub fn first_out_of_range(config: &Value) -> Option<String> {
    match config {
        Value::Object(fields) => fields.iter().find_map(|(key, value)| {
            let found = range_of(key).and_then(|(low, high)| {
                let numbers: Vec<&Value> = match value {
                    Value::Array(items) => items.iter().collect(),
                    other => vec![other],
                };
                numbers.into_iter().find_map(|number| {
                    let fits = match (number.as_u64(), number.as_f64()) {
                        (Some(n), _) => (low..=high).contains(&n),
                        // Negative, fractional or huge: never a count.
                        (None, Some(_)) => false,
                        (None, None) => true,
                    };
                    (!fits).then(|| format!("{key} = {number} is outside {low}..={high}"))
                })
            });
            found.or_else(|| first_out_of_range(value))
        }),
        Value::Array(items) => items.iter().find_map(first_out_of_range),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonsense_counts_are_found_and_real_configs_pass() {
        let real = serde_json::json!({
            "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768,
            "attention_head_dim": 8, "layers_per_block": 2, "norm_num_groups": 32,
            "sample_size": 64, "in_channels": 4, "num_train_timesteps": 1000,
            "beta_start": 0.00085, "vocab_size": 151936, "rope_theta": 1000000.0,
            "axes_dims_rope": [16, 56, 56], "text_config": {"hidden_size": 2560},
            "metadata": {"total_size": 23_800_000_000u64}
        });
        assert_eq!(first_out_of_range(&real), None);
        for (bad, key) in [
            (
                serde_json::json!({"num_train_timesteps": 0}),
                "num_train_timesteps",
            ),
            (
                serde_json::json!({"num_train_timesteps": 1_000_000_000_000_000u64}),
                "num_train_timesteps",
            ),
            (
                serde_json::json!({"block_out_channels": [32, 1_000_000_000]}),
                "block_out_channels",
            ),
            (serde_json::json!({"in_channels": -4}), "in_channels"),
            (
                serde_json::json!({"text_config": {"hidden_size": 1e12}}),
                "hidden_size",
            ),
            (serde_json::json!({"norm_num_groups": 0}), "norm_num_groups"),
        ] {
            let found = first_out_of_range(&bad).unwrap_or_default();
            assert!(found.starts_with(key), "{bad}: {found}");
        }
    }
}
