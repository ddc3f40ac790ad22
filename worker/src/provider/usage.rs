//! A provider's `usage` object read into [`Usage`], and the call's cost: the provider's
//! own figure when it sends one (OpenRouter's `usage.cost`, in US dollars), else what the
//! provider's configured prices make of the tokens, else unknown.
//!
//! Providers word the cached part of the prompt differently: OpenAI and most compatible
//! servers as `prompt_tokens_details.cached_tokens`, DeepSeek as `prompt_cache_hit_tokens`.
//! Both are read; a field that is missing or not a count is 0, never a failed answer
//! (usage is bookkeeping, the answer is what the user waits for).

use hermes_protocol::{Prices, Usage};
use serde_json::Value;

/// The `usage` of a completion or of a stream's usage chunk, if it has one.
pub fn read(usage: Option<&Value>) -> Option<Usage> {
    let usage = usage.filter(|u| u.is_object())?;
    let count = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    let prompt_tokens = count(usage.get("prompt_tokens"));
    let cached_tokens = count(usage.pointer("/prompt_tokens_details/cached_tokens"))
        .max(count(usage.get("prompt_cache_hit_tokens")));
    let cost_micros = usage
        .get("cost")
        .and_then(Value::as_f64)
        .filter(|c| c.is_finite() && *c >= 0.0)
        // Saturating: `as` caps a value past u64::MAX.
        .map(|c| (c * 1e6).round() as u64);
    Some(Usage {
        prompt_tokens,
        completion_tokens: count(usage.get("completion_tokens")),
        cached_tokens: cached_tokens.min(prompt_tokens),
        cost_micros,
    })
}

/// `usage` with its cost filled in from `prices` when the provider sent none.
pub fn priced(mut usage: Usage, prices: Option<&Prices>) -> Usage {
    if usage.cost_micros.is_none() {
        usage.cost_micros = prices.map(|p| p.cost_micros(&usage));
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_deepseek_and_openrouter_usage_read_the_same() {
        let openai = json!({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 40}});
        let deepseek = json!({"prompt_tokens": 100, "completion_tokens": 20,
            "prompt_cache_hit_tokens": 40, "prompt_cache_miss_tokens": 60});
        let expected = Usage {
            prompt_tokens: 100,
            completion_tokens: 20,
            cached_tokens: 40,
            cost_micros: None,
        };
        assert_eq!(read(Some(&openai)), Some(expected));
        assert_eq!(read(Some(&deepseek)), Some(expected));
        let openrouter = json!({"prompt_tokens": 100, "completion_tokens": 20, "cost": 0.0015});
        assert_eq!(read(Some(&openrouter)).unwrap().cost_micros, Some(1500));
        assert_eq!(read(None), None);
        assert_eq!(read(Some(&Value::Null)), None);
        let odd = json!({"prompt_tokens": "many", "cost": -1});
        assert_eq!(read(Some(&odd)), Some(Usage::default()));
    }

    #[test]
    fn the_providers_cost_wins_over_the_configured_prices() {
        let prices = Prices {
            input_micros_per_mtok: 1_000_000,
            output_micros_per_mtok: 1_000_000,
            cached_micros_per_mtok: 1_000_000,
        };
        let tokens = Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            ..Usage::default()
        };
        assert_eq!(priced(tokens, Some(&prices)).cost_micros, Some(15));
        assert_eq!(priced(tokens, None).cost_micros, None);
        let said = Usage {
            cost_micros: Some(7),
            ..tokens
        };
        assert_eq!(priced(said, Some(&prices)).cost_micros, Some(7));
    }
}
