//! `[[providers]]`: the OpenAI-compatible endpoints a job calls, tried in order (the first
//! is the primary, the rest are fallbacks). At least one is required; each entry is checked
//! on its own, and names are unique because `[transcription]` and `/model` refer to them.

use hermes_protocol::{Prices, ProviderPlan};

use crate::report::Problem;
use crate::secrets::SecretSource;
use crate::section::{Doc, Section};

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub base_url: String,
    pub model: String,
    /// None: no `Authorization` header (a local server).
    pub api_key: Option<SecretSource>,
    pub request_timeout_secs: u64,
    pub max_retries: u32,
    /// After this provider answers "quota exhausted", jobs skip it this long, then one job
    /// probes it again.
    pub quota_cooldown_secs: u64,
    /// The model reads images (OpenAI-compatible `image_url` content parts).
    pub vision: bool,
    /// What its calls cost, for a provider that does not report the cost itself.
    pub prices: Option<Prices>,
}

impl ProviderConfig {
    /// The provider as a job carries it, key resolved.
    pub fn plan(&self) -> Result<ProviderPlan, Problem> {
        let api_key = match &self.api_key {
            Some(source) => Some(source.resolve()?),
            None => None,
        };
        Ok(ProviderPlan {
            name: self.name.clone(),
            base_url: self.base_url.trim_end_matches('/').to_string(),
            model: self.model.clone(),
            api_key,
            request_timeout_ms: self.request_timeout_secs.saturating_mul(1000),
            max_retries: self.max_retries,
            vision: self.vision,
            prices: self.prices,
        })
    }
}

impl Doc<'_> {
    /// `input_price_per_mtok` and `output_price_per_mtok` (both or neither), and
    /// `cached_price_per_mtok` (the input price when absent): per million tokens.
    fn prices(&mut self, s: &mut Section) -> Option<Prices> {
        let input = self.money(s, "input_price_per_mtok");
        let output = self.money(s, "output_price_per_mtok");
        let cached = self.money(s, "cached_price_per_mtok");
        match (input, output) {
            (Some(input), Some(output)) => Some(Prices {
                input_micros_per_mtok: input,
                output_micros_per_mtok: output,
                cached_micros_per_mtok: cached.unwrap_or(input),
            }),
            (None, None) if cached.is_none() => None,
            (input, _) => {
                let missing = if input.is_none() {
                    "input_price_per_mtok"
                } else {
                    "output_price_per_mtok"
                };
                self.problems.push(Problem {
                    line: s.line(self),
                    key: s.key_path(missing),
                    message:
                        "missing: prices need both input_price_per_mtok and output_price_per_mtok"
                            .into(),
                });
                None
            }
        }
    }

    pub(crate) fn providers(&mut self, top: &mut Section) -> Vec<ProviderConfig> {
        let entries = self.array_of_tables(
            top,
            "providers",
            Some("[[providers]] entry (name, base_url, model)"),
        );
        let mut providers: Vec<ProviderConfig> = Vec::new();
        for (path, (table, span)) in entries {
            let mut s = Section::new(&path, Some((table, span)));
            let name: Option<String> = s.require("name", self);
            let base_url = s.require("base_url", self);
            let base_url = self.url(&mut s, "base_url", base_url);
            let model: Option<String> = s.require("model", self);
            let api_key = self.secret(&mut s, "api_key_env", "api_key_file");
            let request_timeout_secs = s.take_in("request_timeout_secs", 60, 1..=3600, self);
            let max_retries = s.take_in("max_retries", 2, 0..=10, self);
            let quota_cooldown_secs = s.take_in("quota_cooldown_secs", 600, 0..=86_400, self);
            let vision = s.take_or("vision", false, self);
            let prices = self.prices(&mut s);
            let taken: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
            self.unique_name(&mut s, &name, &taken);
            s.finish(self);
            if let (Some(name), Some(model)) = (name, model) {
                providers.push(ProviderConfig {
                    name,
                    base_url,
                    model,
                    api_key,
                    request_timeout_secs,
                    max_retries,
                    quota_cooldown_secs,
                    vision,
                    prices,
                });
            }
        }
        providers
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::problem_lines;

    #[test]
    fn provider_entries_are_checked_one_by_one() {
        let text = r#"
[[providers]]
name = "a"
base_url = "ftp://nope"
model = "m"

[[providers]]
name = "a"
model = "m"
timeout = 3
"#;
        let lines = problem_lines(text);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("providers[0].base_url") && l.contains("not an http")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("providers[1].base_url: missing")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("providers[1].name") && l.contains("used by another")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("providers[1].timeout: unknown key")),
            "{lines:#?}"
        );
    }
}
