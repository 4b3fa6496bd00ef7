//! The wire form of `SubscribeOccupancyResponse`, hand-written so an
//! event's body is encoded once and shared by every subscriber.
//!
//! Every subscriber of a channel receives the same channel, name,
//! timestamp and metrics; only the `id` (which carries the subscriber's own
//! resume position) differs. Protobuf fields may appear in any order, so a
//! response is the event's shared body (fields 2 to 5, encoded once per
//! event) with the subscriber's `id` field written in front of it: one
//! small copy instead of a full encode per subscriber. Decoding (for
//! clients built from this crate) reads a normal `OccupancyEvent`.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::proto::v1::OccupancyEvent;

/// One message of the SubscribeOccupancy stream.
#[derive(Clone, Default, PartialEq)]
pub struct SubscribeOccupancyResponse {
    /// The event, when decoded (or built) as a message.
    pub event: Option<OccupancyEvent>,
    /// The pre-encoded message body, when built by the server.
    encoded: Option<Bytes>,
}

impl std::fmt::Debug for SubscribeOccupancyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscribeOccupancyResponse")
            .field("event", &self.event)
            .field("encoded_len", &self.encoded.as_ref().map(Bytes::len))
            .finish()
    }
}

/// Encodes the part of an event every subscriber shares: an
/// `OccupancyEvent` with an empty `id` (proto3 leaves it out).
pub fn shared_body(event: &OccupancyEvent) -> Bytes {
    debug_assert!(event.id.is_empty());
    Bytes::from(event.encode_to_vec())
}

impl SubscribeOccupancyResponse {
    /// A response around a decoded event.
    pub fn from_event(event: OccupancyEvent) -> Self {
        Self {
            event: Some(event),
            encoded: None,
        }
    }

    /// A response from a subscriber's `id` and an event's [`shared_body`].
    pub fn from_parts(id: &str, body: &[u8]) -> Self {
        let id_len = encoding::string::encoded_len(1, &id.to_string());
        let event_len = id_len + body.len();
        let mut buf = BytesMut::with_capacity(event_len + 12);
        encoding::encode_key(1, WireType::LengthDelimited, &mut buf);
        encoding::encode_varint(event_len as u64, &mut buf);
        encoding::encode_key(1, WireType::LengthDelimited, &mut buf);
        encoding::encode_varint(id.len() as u64, &mut buf);
        buf.put_slice(id.as_bytes());
        buf.put_slice(body);
        Self {
            event: None,
            encoded: Some(buf.freeze()),
        }
    }

    /// The event, decoding the pre-encoded form if needed.
    ///
    /// # Errors
    /// A decode error if the encoded form is corrupt.
    pub fn into_event(self) -> Result<Option<OccupancyEvent>, DecodeError> {
        match (self.event, self.encoded) {
            (Some(e), _) => Ok(Some(e)),
            (None, Some(bytes)) => Ok(SubscribeOccupancyResponse::decode(bytes)?.event),
            (None, None) => Ok(None),
        }
    }
}

impl Message for SubscribeOccupancyResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(bytes) = &self.encoded {
            buf.put_slice(bytes);
        } else if let Some(event) = &self.event {
            encoding::message::encode(1, event, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == 1 {
            self.encoded = None;
            encoding::message::merge(wire_type, self.event.get_or_insert_with(Default::default), buf, ctx)
        } else {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        match (&self.encoded, &self.event) {
            (Some(bytes), _) => bytes.len(),
            (None, Some(event)) => encoding::message::encoded_len(1, event),
            (None, None) => 0,
        }
    }

    fn clear(&mut self) {
        self.event = None;
        self.encoded = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::Metrics;

    #[test]
    fn shared_body_plus_id_decodes_as_the_whole_event() {
        let full = OccupancyEvent {
            id: "0000000000000001.abc".into(),
            name: "[meta]occupancy".into(),
            channel: "room".into(),
            timestamp_ms: 1_700_000_000_000,
            metrics: Some(Metrics {
                connections: 3,
                presence_clients: 1,
                ..Default::default()
            }),
        };
        let body = shared_body(&OccupancyEvent {
            id: String::new(),
            ..full.clone()
        });
        let resp = SubscribeOccupancyResponse::from_parts(&full.id, &body);
        let bytes = resp.encode_to_vec();
        assert_eq!(bytes.len(), resp.encoded_len());
        let back = SubscribeOccupancyResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.event.as_ref(), Some(&full));
        // the same bytes as a normal encode of the same message (up to
        // field order), so any protobuf decoder reads it
        let normal = SubscribeOccupancyResponse::from_event(full.clone()).encode_to_vec();
        assert_eq!(
            SubscribeOccupancyResponse::decode(normal.as_slice()).unwrap().event,
            Some(full)
        );
        assert_eq!(resp.into_event().unwrap(), back.event);
    }
}
