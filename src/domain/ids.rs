//! Validated identifiers: channel names, session, connection and client ids.
//!
//! Every string that reaches a store has passed through one of these types,
//! so the stores never see empty, over-long or control-character input.

use std::fmt;

/// A request field that failed validation; maps to INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidInput {
    /// The request field, as a path (`operations[3].channel`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidInput {
    /// An error naming `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error with its field path nested under `parent`.
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

pub use super::limits::{MAX_CHANNEL_LEN, MAX_ID_LEN};

fn check_text(field: &str, value: &str, max: usize) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(InvalidInput::new(
            field,
            format!("must be at most {max} bytes, got {}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidInput::new(field, "must not contain control characters"));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $max:expr, $extra:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates `value`, naming `field` in the error.
            ///
            /// # Errors
            /// [`InvalidInput`] when the value is empty, too long, holds a
            /// control character or breaks a rule of its own.
            pub fn parse(field: &str, value: impl Into<String>) -> Result<Self, InvalidInput> {
                let value = value.into();
                check_text(field, &value, $max)?;
                let extra: fn(&str, &str) -> Result<(), InvalidInput> = $extra;
                extra(field, &value)?;
                Ok(Self(value))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A channel name: 1 to 1,024 bytes, no control characters, not starting
    /// with `[` (reserved for qualifiers such as `[meta]`).
    ChannelName,
    MAX_CHANNEL_LEN,
    |field, value| {
        if value.starts_with('[') {
            Err(InvalidInput::new(
                field,
                "must not start with '[' (reserved for channel qualifiers)",
            ))
        } else {
            Ok(())
        }
    }
);
id_type!(
    /// A front end's session (lease) id: 1 to 256 bytes, no control characters.
    SessionId,
    MAX_ID_LEN,
    |_, _| Ok(())
);
id_type!(
    /// An end user's connection id: 1 to 256 bytes, no control characters.
    ConnectionId,
    MAX_ID_LEN,
    |_, _| Ok(())
);
id_type!(
    /// A presence member's client id: 1 to 256 bytes, no control characters.
    ClientId,
    MAX_ID_LEN,
    |_, _| Ok(())
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_rules() {
        assert!(ChannelName::parse("channel", "rooms:lobby").is_ok());
        assert!(ChannelName::parse("channel", "é😀 spaces ok").is_ok());
        let e = ChannelName::parse("channel", "").unwrap_err();
        assert_eq!(e.field, "channel");
        assert!(ChannelName::parse("channel", "[meta]x").is_err());
        assert!(ChannelName::parse("channel", "a\nb").is_err());
        assert!(ChannelName::parse("channel", "a\u{7f}").is_err());
        assert!(ChannelName::parse("channel", "a\u{85}").is_err());
        assert!(ChannelName::parse("channel", "x".repeat(1024)).is_ok());
        assert!(ChannelName::parse("channel", "x".repeat(1025)).is_err());
        // a multi-byte character counts by bytes
        assert!(ChannelName::parse("channel", "é".repeat(513)).is_err());
    }

    #[test]
    fn id_rules() {
        assert!(SessionId::parse("session_id", "s".repeat(256)).is_ok());
        assert!(SessionId::parse("session_id", "s".repeat(257)).is_err());
        assert!(ClientId::parse("client_id", "[ok]").is_ok());
        assert!(ConnectionId::parse("connection_id", "\0").is_err());
        let e = ConnectionId::parse("connection_id", "").unwrap_err();
        assert_eq!(e.within("operations[2]").field, "operations[2].connection_id");
    }
}
