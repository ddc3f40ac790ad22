//! What the configuration lets a file be, and the refusal of one that it does not, judged
//! from what Telegram said about the file before anything is fetched: a voice note without
//! `[transcription]` or longer than its bound, an image without a provider with vision,
//! a document of a kind the model cannot read, a file over `telegram.max_file_mb`.

use std::time::Duration;

use hermes_protocol::{MediaKind, MediaProblem};

use super::{DocumentKind, MediaRef};

/// What the configuration allows a file to be.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_bytes: u64,
    pub download_timeout: Duration,
    /// `Some(max_seconds)` when `[transcription]` is configured.
    pub voice_max_secs: Option<u32>,
    /// Some provider has `vision = true`.
    pub vision: bool,
}

/// Why `media` cannot be given to the model, judged from what Telegram said about it,
/// before anything is fetched.
pub fn refuse(media: &MediaRef, limits: &Limits) -> Option<MediaProblem> {
    match media.media_kind() {
        MediaKind::Voice | MediaKind::Audio => {
            let Some(max) = limits.voice_max_secs else {
                return Some(MediaProblem::VoiceNotEnabled);
            };
            if let Some(seconds) = media.duration_secs.filter(|&s| s > max) {
                return Some(MediaProblem::TooLong { seconds, max });
            }
        }
        MediaKind::Image if !limits.vision => return Some(MediaProblem::NoVision),
        MediaKind::Document if media.document_kind() == DocumentKind::Other => {
            return Some(MediaProblem::UnsupportedFile {
                file_name: media.name(),
            });
        }
        _ => {}
    }
    match media.size {
        Some(size) if size > limits.max_bytes => Some(MediaProblem::TooBig {
            size,
            max: limits.max_bytes,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::RefKind;
    use crate::media::reference::tests::document;

    fn limits() -> Limits {
        Limits {
            max_bytes: 1000,
            download_timeout: Duration::from_secs(1),
            voice_max_secs: Some(60),
            vision: true,
        }
    }

    #[test]
    fn a_file_is_refused_before_any_byte_by_what_telegram_said() {
        let l = limits();
        let mut big = document("a.txt", Some("text/plain"));
        big.size = Some(1001);
        assert_eq!(
            refuse(&big, &l),
            Some(MediaProblem::TooBig {
                size: 1001,
                max: 1000
            })
        );
        assert_eq!(
            refuse(&document("x.zip", None), &l),
            Some(MediaProblem::UnsupportedFile {
                file_name: "x.zip".into()
            })
        );
        let voice = MediaRef {
            kind: RefKind::Voice,
            file_id: "v".into(),
            size: Some(10),
            mime_type: None,
            file_name: None,
            duration_secs: Some(61),
        };
        assert_eq!(
            refuse(&voice, &l),
            Some(MediaProblem::TooLong {
                seconds: 61,
                max: 60
            })
        );
        let no_voice = Limits {
            voice_max_secs: None,
            ..limits()
        };
        assert_eq!(
            refuse(&voice, &no_voice),
            Some(MediaProblem::VoiceNotEnabled)
        );
        assert_eq!(refuse(&document("a.txt", None), &l), None);
    }
}
