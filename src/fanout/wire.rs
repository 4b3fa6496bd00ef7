//! The wire form of `SubscribeOccupancyResponse`, hand-written so an
//! event's body is encoded once and shared by every subscriber.
//!
//! Every subscriber of a channel receives the same channel, name,
//! timestamp and metrics; only the `id` (which carries the subscriber's own
//! resume position) differs. Protobuf fields may appear in any order, so a
//! response is the event's shared body (fields 2 to 5, encoded once per
//! event) with the subscriber's `id` field written in front of it: one
//! small copy instead of a full encode per subscriber. Decoding (for
//! clients built from this crate) reads a normal `OccupancyEvent`. The
//! stream's other messages (`live`, `heartbeat`) are rare and encoded as
//! usual.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::domain::events::{put_varint, TOKEN_VERSION};
use crate::domain::Pos;
use crate::proto::v1::{OccupancyEvent, StreamHeartbeat, StreamLive};

fn put_hex16(buf: &mut BytesMut, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, d) in out.iter_mut().enumerate() {
        *d = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    buf.put_slice(&out);
}

/// Writes `raw` as unpadded URL-safe base64 (the same text as the base64
/// crate's `URL_SAFE_NO_PAD`), a group of three bytes at a time, into
/// `buf`'s spare room sized up front.
fn put_base64url(buf: &mut BytesMut, raw: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let sym = |v: u32| ALPHABET[(v & 63) as usize];
    let at = buf.len();
    buf.resize(at + (raw.len() * 4).div_ceil(3), 0);
    let out = &mut buf[at..];
    let mut chunks = raw.chunks_exact(3);
    let mut outs = out.chunks_exact_mut(4);
    for (c, o) in chunks.by_ref().zip(outs.by_ref()) {
        let v = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        o.copy_from_slice(&[sym(v >> 18), sym(v >> 12), sym(v >> 6), sym(v)]);
    }
    let tail = outs.into_remainder();
    match *chunks.remainder() {
        [a] => {
            let v = u32::from(a) << 16;
            tail.copy_from_slice(&[sym(v >> 18), sym(v >> 12)]);
        }
        [a, b] => {
            let v = (u32::from(a) << 16) | (u32::from(b) << 8);
            tail.copy_from_slice(&[sym(v >> 18), sym(v >> 12), sym(v >> 6)]);
        }
        _ => {}
    }
}

/// Builds a subscriber's responses: the same bytes as
/// [`SubscribeOccupancyResponse::from_parts`] with the id of
/// [`crate::domain::events::event_id`], written straight into the response
/// buffer (no intermediate strings), reusing its scratch space from one
/// event to the next.
#[derive(Debug, Default)]
pub struct Encoder {
    raw: Vec<u8>,
}

impl Encoder {
    /// The response for the event at `own` whose resume token holds
    /// `positions`, around the event's [`shared_body`].
    pub fn response(&mut self, own: Pos, positions: &[Pos], body: &[u8]) -> SubscribeOccupancyResponse {
        self.raw.clear();
        self.raw.push(TOKEN_VERSION);
        put_varint(&mut self.raw, positions.len() as u64);
        for p in positions {
            put_varint(&mut self.raw, p.ms);
            put_varint(&mut self.raw, p.seq);
        }
        let b64_len = (self.raw.len() * 4).div_ceil(3);
        let id_len = 32 + 1 + b64_len;
        let event_len = 1 + encoding::encoded_len_varint(id_len as u64) + id_len + body.len();
        let mut buf = BytesMut::with_capacity(1 + encoding::encoded_len_varint(event_len as u64) + event_len);
        encoding::encode_key(1, WireType::LengthDelimited, &mut buf);
        encoding::encode_varint(event_len as u64, &mut buf);
        encoding::encode_key(1, WireType::LengthDelimited, &mut buf);
        encoding::encode_varint(id_len as u64, &mut buf);
        put_hex16(&mut buf, own.ms);
        put_hex16(&mut buf, own.seq);
        buf.put_u8(b'.');
        put_base64url(&mut buf, &self.raw);
        buf.put_slice(body);
        SubscribeOccupancyResponse {
            encoded: Some(buf.freeze()),
            ..Default::default()
        }
    }
}

/// One message of the SubscribeOccupancy stream.
#[derive(Clone, Default, PartialEq)]
pub struct SubscribeOccupancyResponse {
    /// The event, when decoded (or built) as a message.
    pub event: Option<OccupancyEvent>,
    /// The stream is live from here (after the snapshot or replay).
    pub live: Option<StreamLive>,
    /// The stream was quiet for the heartbeat interval.
    pub heartbeat: Option<StreamHeartbeat>,
    /// The pre-encoded event, when built by the server.
    encoded: Option<Bytes>,
}

impl std::fmt::Debug for SubscribeOccupancyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscribeOccupancyResponse")
            .field("event", &self.event)
            .field("live", &self.live)
            .field("heartbeat", &self.heartbeat)
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
            ..Default::default()
        }
    }

    /// The message that says the stream is live from here.
    pub fn live(timestamp_ms: i64) -> Self {
        Self {
            live: Some(StreamLive { timestamp_ms }),
            ..Default::default()
        }
    }

    /// A heartbeat of a quiet stream.
    pub fn heartbeat(timestamp_ms: i64) -> Self {
        Self {
            heartbeat: Some(StreamHeartbeat { timestamp_ms }),
            ..Default::default()
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
            encoded: Some(buf.freeze()),
            ..Default::default()
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
        if let Some(live) = &self.live {
            encoding::message::encode(2, live, buf);
        }
        if let Some(heartbeat) = &self.heartbeat {
            encoding::message::encode(3, heartbeat, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => {
                self.encoded = None;
                encoding::message::merge(wire_type, self.event.get_or_insert_with(Default::default), buf, ctx)
            }
            2 => encoding::message::merge(wire_type, self.live.get_or_insert_with(Default::default), buf, ctx),
            3 => encoding::message::merge(wire_type, self.heartbeat.get_or_insert_with(Default::default), buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let event = match (&self.encoded, &self.event) {
            (Some(bytes), _) => bytes.len(),
            (None, Some(event)) => encoding::message::encoded_len(1, event),
            (None, None) => 0,
        };
        event
            + self.live.as_ref().map_or(0, |m| encoding::message::encoded_len(2, m))
            + self
                .heartbeat
                .as_ref()
                .map_or(0, |m| encoding::message::encoded_len(3, m))
    }

    fn clear(&mut self) {
        *self = Self::default();
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

    #[test]
    fn live_and_heartbeat_messages_round_trip_and_carry_no_event() {
        for msg in [
            SubscribeOccupancyResponse::live(1_700_000_000_000),
            SubscribeOccupancyResponse::heartbeat(1_700_000_000_001),
        ] {
            let bytes = msg.encode_to_vec();
            assert_eq!(bytes.len(), msg.encoded_len());
            let back = SubscribeOccupancyResponse::decode(bytes.as_slice()).unwrap();
            assert_eq!(back, msg);
            assert_eq!(back.into_event().unwrap(), None);
        }
    }

    #[test]
    fn base64url_matches_the_base64_crate() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let data: Vec<u8> = (0..=255u8).rev().chain(0..=255u8).collect();
        for len in 0..data.len() {
            for start in [0, 1, 2, 100] {
                let raw = &data[start..(start + len).min(data.len())];
                let mut buf = BytesMut::new();
                put_base64url(&mut buf, raw);
                assert_eq!(&buf[..], URL_SAFE_NO_PAD.encode(raw).as_bytes());
            }
        }
    }

    #[test]
    fn encoder_writes_the_same_bytes_as_event_id_and_from_parts() {
        use crate::domain::events::{event_id, ResumeToken};
        let body = shared_body(&OccupancyEvent {
            name: "[meta]occupancy".into(),
            channel: "rooms:lobby".into(),
            timestamp_ms: 1_700_000_000_000,
            metrics: Some(Metrics {
                connections: 300,
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut enc = Encoder::default();
        let values = [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            1_700_000_000_000,
            u64::MAX - 1,
            u64::MAX,
        ];
        for shards in [0usize, 1, 2, 8, 100, 256] {
            for (k, &ms) in values.iter().enumerate() {
                let seq = values[(k * 7 + shards) % values.len()];
                let own = Pos { ms, seq };
                let positions: Vec<Pos> = (0..shards)
                    .map(|i| Pos {
                        ms: values[(i + k) % values.len()],
                        seq: values[(i * 3 + k) % values.len()],
                    })
                    .collect();
                let id = event_id(
                    own,
                    &ResumeToken {
                        positions: positions.clone(),
                    },
                );
                let want = SubscribeOccupancyResponse::from_parts(&id, &body).encode_to_vec();
                let got = enc.response(own, &positions, &body);
                assert_eq!(got.encoded_len(), want.len());
                assert_eq!(got.encode_to_vec(), want, "shards {shards}, own {own:?}");
            }
        }
    }
}
