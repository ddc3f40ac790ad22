//! `/start` and `/help`: what the bot is, and the commands.

pub const TEXT: &str = "👋 I'm an AI assistant. Send me a message and I'll answer; I remember \
the conversation until you start a new one. In a group, mention me or reply to one of my \
messages.\n\n\
/new – start a new conversation (I forget the earlier messages)\n\
/stop – stop the answer I'm working on\n\
/retry – ask your last message again\n\
/model – which AI model answers here (admins can switch it)\n\
/status – how the bot is doing right now\n\
/help – this message";
