//! What a provider call used: its tokens as the provider counted them, and its cost when
//! the provider said it or the provider's configured prices tell it. The worker sends one
//! [`Usage`] per answered call (`Event::Usage`); the gateway keeps them per user, chat,
//! provider and day, and checks its budgets against them before a job starts.
//!
//! Money is whole millionths of the currency unit (`micros`): sums of many small calls
//! stay exact, and a cap compares integers.

use serde::{Deserialize, Serialize};

/// One provider call's usage (OpenAI's `usage`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the request, the cached ones included.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of `prompt_tokens`, those the provider served from its prompt cache
    /// (`prompt_tokens_details.cached_tokens`).
    pub cached_tokens: u64,
    /// What the call cost, in millionths of the currency unit; `None`: unknown (the
    /// provider said nothing and no prices are configured).
    pub cost_micros: Option<u64>,
}

impl Usage {
    /// Prompt and completion tokens: what a token budget counts.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// A provider's prices, per million tokens, in millionths of the currency unit (a price
/// of 0.15 a million tokens is 150 000): from `[[providers]]`, for providers that do not
/// send the cost themselves.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prices {
    pub input_micros_per_mtok: u64,
    pub output_micros_per_mtok: u64,
    /// Prompt tokens served from the cache; usually cheaper than `input`.
    pub cached_micros_per_mtok: u64,
}

impl Prices {
    /// What `usage` costs at these prices, rounded to the nearest micro.
    pub fn cost_micros(&self, usage: &Usage) -> u64 {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let uncached = usage.prompt_tokens - cached;
        let total = u128::from(uncached) * u128::from(self.input_micros_per_mtok)
            + u128::from(cached) * u128::from(self.cached_micros_per_mtok)
            + u128::from(usage.completion_tokens) * u128::from(self.output_micros_per_mtok);
        u64::try_from((total + 500_000) / 1_000_000).unwrap_or(u64::MAX)
    }
}

/// Millionths of a dollar as people read them: `$0.00012`, `$1.50` (at least two places,
/// none of the zeros after them).
pub fn format_money(micros: u64) -> String {
    let fraction = format!("{:06}", micros % 1_000_000);
    let fraction = fraction.trim_end_matches('0');
    format!("${}.{fraction:0<2}", micros / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_reads_as_dollars_and_cents_and_no_more() {
        assert_eq!(format_money(120), "$0.00012");
        assert_eq!(format_money(1_500_000), "$1.50");
        assert_eq!(format_money(0), "$0.00");
        assert_eq!(format_money(12_345_678), "$12.345678");
    }

    #[test]
    fn cached_tokens_are_part_of_the_prompt_and_priced_apart() {
        let prices = Prices {
            input_micros_per_mtok: 1_000_000,
            output_micros_per_mtok: 2_000_000,
            cached_micros_per_mtok: 500_000,
        };
        let usage = Usage {
            prompt_tokens: 100,
            completion_tokens: 20,
            cached_tokens: 40,
            cost_micros: None,
        };
        // 60 × 1 + 40 × 0.5 + 20 × 2 micros.
        assert_eq!(prices.cost_micros(&usage), 120);
        assert_eq!(usage.tokens(), 120);
        // A provider that counts more cached than prompt tokens is not trusted past the prompt.
        let odd = Usage {
            cached_tokens: 1000,
            ..usage
        };
        assert_eq!(prices.cost_micros(&odd), 50 + 40);
        let huge = Usage {
            prompt_tokens: u64::MAX,
            completion_tokens: u64::MAX,
            cached_tokens: 0,
            cost_micros: None,
        };
        assert_eq!(prices.cost_micros(&huge), u64::MAX);
    }
}
