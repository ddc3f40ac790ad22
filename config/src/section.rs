//! Reading the file key by key. The file is parsed into a spanned tree, not handed to serde
//! in one piece (which stops at the first error): every key is taken and type-checked on
//! its own by [`Section::take`], each problem is recorded in the [`Doc`] with its key and
//! line, and [`Section::finish`] names every key nobody took as unknown. The section
//! modules (`telegram`, `providers`, …) read their tables through this.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::report::{Problem, line_of};

/// The file being validated and the problems found so far.
pub(crate) struct Doc<'t> {
    pub(crate) text: &'t str,
    pub(crate) base: &'t Path,
    pub(crate) problems: Vec<Problem>,
}

pub(crate) type Table<'a, 'i> = (&'a DeTable<'i>, Range<usize>);

/// One table of the file. Every key read goes through [`Section::take`], which records it
/// as known, so [`Section::finish`] can name everything else as unknown.
pub(crate) struct Section<'a, 'i> {
    path: String,
    table: Option<Table<'a, 'i>>,
    known: Vec<&'static str>,
}

impl<'a, 'i> Section<'a, 'i> {
    pub(crate) fn new(path: &str, table: Option<Table<'a, 'i>>) -> Self {
        Section {
            path: path.to_string(),
            table,
            known: Vec::new(),
        }
    }

    pub(crate) fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(crate) fn line(&self, doc: &Doc) -> Option<usize> {
        self.table
            .as_ref()
            .map(|(_, span)| line_of(doc.text, span.start))
    }

    pub(crate) fn raw(&mut self, key: &'static str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.known.push(key);
        self.table.as_ref().and_then(|(t, _)| t.get(key))
    }

    /// The value of `key` as a `T`, or None when absent or of the wrong type (a problem).
    pub(crate) fn take<T: DeserializeOwned>(
        &mut self,
        key: &'static str,
        doc: &mut Doc,
    ) -> Option<T> {
        let value = self.raw(key)?;
        match T::deserialize(value.clone().into_deserializer()) {
            Ok(v) => Some(v),
            Err(e) => {
                let span = e.span().unwrap_or_else(|| value.span());
                doc.problems.push(Problem {
                    line: Some(line_of(doc.text, span.start)),
                    key: self.key_path(key),
                    message: e.message().trim().to_string(),
                });
                None
            }
        }
    }

    pub(crate) fn take_or<T: DeserializeOwned>(
        &mut self,
        key: &'static str,
        default: T,
        doc: &mut Doc,
    ) -> T {
        self.take(key, doc).unwrap_or(default)
    }

    pub(crate) fn require<T: DeserializeOwned>(
        &mut self,
        key: &'static str,
        doc: &mut Doc,
    ) -> Option<T> {
        let present = self
            .table
            .as_ref()
            .is_some_and(|(t, _)| t.get(key).is_some());
        if !present {
            self.known.push(key);
            doc.problems.push(Problem {
                line: self.line(doc),
                key: self.key_path(key),
                message: "missing; this key has no default".into(),
            });
            return None;
        }
        self.take(key, doc)
    }

    /// A number that must lie in `range`.
    pub(crate) fn take_in<T>(
        &mut self,
        key: &'static str,
        default: T,
        range: std::ops::RangeInclusive<T>,
        doc: &mut Doc,
    ) -> T
    where
        T: DeserializeOwned + PartialOrd + Copy + fmt::Display,
    {
        let line = self.raw_line(key, doc);
        match self.take(key, doc) {
            Some(v) if range.contains(&v) => v,
            Some(v) => {
                doc.problems.push(Problem {
                    line,
                    key: self.key_path(key),
                    message: format!("{v} is out of range ({}..={})", range.start(), range.end()),
                });
                default
            }
            None => default,
        }
    }

    pub(crate) fn raw_line(&self, key: &str, doc: &Doc) -> Option<usize> {
        self.table
            .as_ref()
            .and_then(|(t, _)| t.get(key))
            .map(|v| line_of(doc.text, v.span().start))
    }

    /// A sub-table; a value of another type is a problem.
    pub(crate) fn table(&mut self, key: &'static str, doc: &mut Doc) -> Option<Table<'a, 'i>> {
        let value = self.raw(key)?;
        match value.get_ref() {
            DeValue::Table(t) => Some((t, value.span())),
            _ => {
                doc.problems.push(Problem {
                    line: Some(line_of(doc.text, value.span().start)),
                    key: self.key_path(key),
                    message: "must be a table".into(),
                });
                None
            }
        }
    }

    pub(crate) fn finish(self, doc: &mut Doc) {
        let Some((table, _)) = self.table else {
            return;
        };
        for (key, value) in table.iter() {
            if !self.known.contains(&key.get_ref().as_ref()) {
                doc.problems.push(Problem {
                    line: Some(line_of(doc.text, key.span().start.min(value.span().start))),
                    key: self.key_path(key.get_ref()),
                    message: format!("unknown key (known here: {})", self.known.join(", ")),
                });
            }
        }
    }
}

impl Doc<'_> {
    pub(crate) fn url(
        &mut self,
        section: &mut Section,
        key: &'static str,
        value: Option<String>,
    ) -> String {
        let Some(url) = value else {
            return String::new();
        };
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        let ok = rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'));
        if !ok {
            let line = section.raw_line(key, self);
            self.problems.push(Problem {
                line,
                key: section.key_path(key),
                message: format!("{url:?} is not an http:// or https:// URL"),
            });
        }
        url
    }

    /// The tables of an array of tables (`[[key]]`) under `section`, each with its dotted
    /// path; anything else there is a problem. `required` makes an absent or empty array
    /// one too, with `hint` saying what to add.
    pub(crate) fn array_of_tables<'a, 'i>(
        &mut self,
        section: &mut Section<'a, 'i>,
        key: &'static str,
        required: Option<&str>,
    ) -> Vec<(String, Table<'a, 'i>)> {
        let path = section.key_path(key);
        let Some(value) = section.raw(key) else {
            if let Some(hint) = required {
                self.problems.push(Problem {
                    line: None,
                    key: path,
                    message: format!("missing: add at least one {hint}"),
                });
            }
            return Vec::new();
        };
        let DeValue::Array(entries) = value.get_ref() else {
            self.problems.push(Problem {
                line: Some(line_of(self.text, value.span().start)),
                key: path.clone(),
                message: format!("must be an array of tables: write each one as [[{path}]]"),
            });
            return Vec::new();
        };
        if let (true, Some(hint)) = (entries.is_empty(), required) {
            self.problems.push(Problem {
                line: Some(line_of(self.text, value.span().start)),
                key: path.clone(),
                message: format!("empty: add at least one {hint}"),
            });
        }
        let mut tables = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let entry_path = format!("{path}[{i}]");
            match entry.get_ref() {
                DeValue::Table(table) => tables.push((entry_path, (table, entry.span()))),
                _ => self.problems.push(Problem {
                    line: Some(line_of(self.text, entry.span().start)),
                    key: entry_path,
                    message: "must be a table".into(),
                }),
            }
        }
        tables
    }

    /// A `name` key that must be non-empty and unique among `taken`.
    pub(crate) fn unique_name(&mut self, s: &mut Section, name: &Option<String>, taken: &[&str]) {
        let Some(name) = name else { return };
        let message = if name.trim().is_empty() {
            "must not be empty".to_string()
        } else if taken.contains(&name.as_str()) {
            format!("{name:?} is used by another entry")
        } else {
            return;
        };
        self.problems.push(Problem {
            line: s.raw_line("name", self),
            key: s.key_path("name"),
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::{MINIMAL, problem_lines};

    #[test]
    fn unknown_top_level_section_is_reported() {
        let text = format!("{MINIMAL}\n[telegrm]\nx = 1\n");
        let lines = problem_lines(&text);
        assert!(
            lines.iter().any(|l| l.contains("telegrm: unknown key")),
            "{lines:#?}"
        );
    }
}
