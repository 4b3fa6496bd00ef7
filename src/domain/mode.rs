//! Channel modes and the set of them a connection holds.

/// What an attached connection may do on a channel (Ably's channel modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Counted in `publishers`.
    Publish,
    /// Counted in `subscribers`.
    Subscribe,
    /// Counted in `presence_connections`; needed to enter presence.
    Presence,
    /// Counted in `presence_subscribers`.
    PresenceSubscribe,
    /// Counted in `object_publishers`.
    ObjectPublish,
    /// Counted in `object_subscribers`.
    ObjectSubscribe,
}

impl Mode {
    /// Every mode, in bit order.
    pub const ALL: [Mode; 6] = [
        Mode::Publish,
        Mode::Subscribe,
        Mode::Presence,
        Mode::PresenceSubscribe,
        Mode::ObjectPublish,
        Mode::ObjectSubscribe,
    ];

    /// The mode's bit in a [`ModeSet`] (also the stores' encoding).
    pub const fn bit(self) -> u8 {
        match self {
            Mode::Publish => 1,
            Mode::Subscribe => 2,
            Mode::Presence => 4,
            Mode::PresenceSubscribe => 8,
            Mode::ObjectPublish => 16,
            Mode::ObjectSubscribe => 32,
        }
    }
}

/// A set of modes, stored as a bit mask (the same encoding in every store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ModeSet(u8);

impl ModeSet {
    /// No modes: the connection counts in `connections` only.
    pub const EMPTY: ModeSet = ModeSet(0);
    /// Mask of every valid bit.
    pub const ALL_BITS: u8 = 63;

    /// The set from its bit mask, dropping unknown bits.
    pub const fn from_bits(bits: u8) -> Self {
        ModeSet(bits & Self::ALL_BITS)
    }

    /// The bit mask.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether `mode` is in the set.
    pub const fn contains(self, mode: Mode) -> bool {
        self.0 & mode.bit() != 0
    }

    /// The set with `mode` added.
    #[must_use]
    pub const fn with(self, mode: Mode) -> Self {
        ModeSet(self.0 | mode.bit())
    }
}

impl FromIterator<Mode> for ModeSet {
    fn from_iter<I: IntoIterator<Item = Mode>>(iter: I) -> Self {
        iter.into_iter().fold(ModeSet::EMPTY, ModeSet::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_distinct_and_round_trip() {
        let all: ModeSet = Mode::ALL.into_iter().collect();
        assert_eq!(all.bits(), ModeSet::ALL_BITS);
        for m in Mode::ALL {
            let s = ModeSet::EMPTY.with(m);
            assert!(s.contains(m));
            assert_eq!(Mode::ALL.iter().filter(|o| s.contains(**o)).count(), 1);
            assert_eq!(ModeSet::from_bits(s.bits()), s);
        }
        assert_eq!(ModeSet::from_bits(0xff).bits(), 63);
    }
}
