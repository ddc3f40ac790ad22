//! `[state]`: where the gateway keeps what must outlive a process (updates, conversations,
//! the outbox); by default the directory systemd gives the unit.

use std::path::PathBuf;

use crate::section::{Doc, Section, Table};

#[derive(Debug, Clone)]
pub struct StateConfig {
    /// None: `$STATE_DIRECTORY`, else `./state`.
    pub dir: Option<PathBuf>,
}

impl Doc<'_> {
    pub(crate) fn state(&mut self, table: Option<&Table>) -> StateConfig {
        let mut s = Section::new("state", table.cloned());
        let config = StateConfig {
            dir: s.take("dir", self),
        };
        s.finish(self);
        config
    }
}
