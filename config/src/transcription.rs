//! `[transcription]`: turning voice notes and audio into text before the agent sees them,
//! through a provider the file already names, so no second key is configured. Optional:
//! without it, voice notes get a reply saying voice is not enabled.

use crate::providers::ProviderConfig;
use crate::report::Problem;
use crate::section::{Doc, Section, Table};

/// `[transcription]`: voice notes and audio, transcribed by an OpenAI-compatible
/// `POST {base_url}/audio/transcriptions` of one `[[providers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptionConfig {
    /// The `[[providers]]` entry whose base URL and key are used.
    pub provider: String,
    pub model: String,
    /// Longer recordings (as Telegram states their length) are refused before download.
    pub max_seconds: u32,
    /// Show the transcript as a quoted line above the answer.
    pub show_transcript: bool,
    pub line: Option<usize>,
}

impl Doc<'_> {
    /// `[transcription]`, whose `provider` must name a `[[providers]]` entry.
    pub(crate) fn transcription(
        &mut self,
        table: &Table,
        providers: &[ProviderConfig],
    ) -> Option<TranscriptionConfig> {
        let mut s = Section::new("transcription", Some(table.clone()));
        let line = s.line(self);
        let provider: Option<String> = s.require("provider", self);
        let provider_line = s.raw_line("provider", self);
        let model = s.take_or("model", "whisper-1".to_string(), self);
        let max_seconds = s.take_in("max_seconds", 600, 1..=86_400, self);
        let show_transcript = s.take_or("show_transcript", true, self);
        s.finish(self);
        let provider = provider?;
        if !providers.iter().any(|p| p.name == provider) {
            let names: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
            self.problems.push(Problem {
                line: provider_line,
                key: "transcription.provider".into(),
                message: format!(
                    "{provider:?} names no [[providers]] entry (known: {})",
                    names.join(", ")
                ),
            });
            return None;
        }
        Some(TranscriptionConfig {
            provider,
            model,
            max_seconds,
            show_transcript,
            line,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::{MINIMAL, parse};

    /// The example's `[transcription]`, uncommented, is valid as it stands; one naming no
    /// provider is refused with the names it could use.
    #[test]
    fn transcription_names_a_provider_and_has_defaults() {
        let example = include_str!("../../deploy/hermes.example.toml");
        let uncommented = example
            .replace("# [transcription]", "[transcription]")
            .replace("# provider = \"main\"", "provider = \"main\"");
        let config = parse(&uncommented).unwrap_or_else(|p| panic!("{p:#?}"));
        let t = config.transcription.expect("[transcription]");
        assert_eq!(
            (
                t.provider.as_str(),
                t.model.as_str(),
                t.max_seconds,
                t.show_transcript
            ),
            ("main", "whisper-1", 600, true)
        );
        assert!(!config.providers[0].vision);
        assert_eq!(config.telegram.max_file_mb, 20);
        let wrong = format!("{MINIMAL}\n[transcription]\nprovider = \"whisper\"\n");
        let problems = parse(&wrong).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.key == "transcription.provider" && p.message.contains("names no")),
            "{problems:#?}"
        );
        let too_big = MINIMAL.replace("[telegram]", "[telegram]\nmax_file_mb = 50");
        assert!(parse(&too_big).is_err(), "over the Bot API's 20 MB");
    }
}
