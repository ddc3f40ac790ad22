//! `[agent]`: what each job asks of the model: the system prompt, how much of the
//! conversation goes with it, and how many tool-calling rounds it may take.

use crate::section::{Doc, Section, Table};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Sent first in every job when set.
    pub system_prompt: Option<String>,
    /// Turns of the conversation (user and assistant messages) sent with each job.
    pub max_history_messages: usize,
    /// Provider round trips with tool calls per job before the agent stops.
    pub max_steps: u32,
}

impl Doc<'_> {
    pub(crate) fn agent(&mut self, table: Option<&Table>) -> AgentConfig {
        let mut s = Section::new("agent", table.cloned());
        let system_prompt: Option<String> = s.take("system_prompt", self);
        let max_history_messages = s.take_in("max_history_messages", 20, 0..=1000, self);
        let max_steps = s.take_in("max_steps", 8, 1..=100, self);
        s.finish(self);
        AgentConfig {
            system_prompt: system_prompt.filter(|p| !p.trim().is_empty()),
            max_history_messages,
            max_steps,
        }
    }
}
