//! The occupancy domain: identifiers, modes, metrics, operations, channel
//! enumeration and the rules that tie them together. Free of tonic and
//! Redis, so every rule is tested without IO.

pub mod events;
pub mod ids;
pub mod limits;
pub mod list;
pub mod metrics;
pub mod mode;
pub mod ops;
pub mod partition;
pub mod state;

pub use events::{ChangeEvent, Pos, ResumeToken};
pub use ids::{ChannelName, ClientId, ConnectionId, InvalidInput, SessionId};
pub use list::{ListOrder, ListPage, ListQuery, ListedChannel};
pub use metrics::{Category, Metrics, Totals};
pub use mode::{Mode, ModeSet};
pub use ops::{Applied, Batch, HeldAttachment, KeepAliveOutcome, OpResult, OpStatus, Operation};
pub use state::{Change, OccupancyState};
