//! Opening many SubscribeOccupancy streams, decoded or not.

use anyhow::Context;
use occupancy::fanout::wire::SubscribeOccupancyResponse;
use occupancy::proto::v1 as pb;
use pb::occupancy_service_client::OccupancyServiceClient;
use tonic::transport::Channel;

use crate::load::channel;

/// A SubscribeOccupancy stream whose messages are handed over undecoded.
pub(crate) type RawStream = tonic::Streaming<bytes::Bytes>;

/// The codec of [`RawStream`]: encodes the request with prost and hands
/// each response message over as its bytes, so the fan-out readers count
/// messages without paying for decoding them (the load generator shares
/// the machine with the service).
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = pb::SubscribeOccupancyRequest;
    type Decode = bytes::Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = pb::SubscribeOccupancyRequest;
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        prost::Message::encode(&item, dst).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

fn request(name: String) -> pb::SubscribeOccupancyRequest {
    pb::SubscribeOccupancyRequest {
        channels: vec![name],
        ..Default::default()
    }
}

/// Opens a SubscribeOccupancy stream of `name` whose messages are not
/// decoded.
pub(crate) async fn subscribe_raw(conn: Channel, name: String) -> anyhow::Result<RawStream> {
    let mut grpc = tonic::client::Grpc::new(conn);
    grpc.ready().await.context("connection not ready")?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/occupancy.v1.OccupancyService/SubscribeOccupancy");
    Ok(grpc
        .server_streaming(tonic::Request::new(request(name)), path, RawCodec)
        .await?
        .into_inner())
}

/// Opens a SubscribeOccupancy stream of `name`.
pub(crate) async fn subscribe(
    conn: Channel,
    name: String,
) -> anyhow::Result<tonic::Streaming<SubscribeOccupancyResponse>> {
    Ok(OccupancyServiceClient::new(conn)
        .subscribe_occupancy(request(name))
        .await?
        .into_inner())
}

/// Opens `count` SubscribeOccupancy streams on `url` with `open`, stream
/// `i` following `names[i % names.len()]`, 100 streams per HTTP/2
/// connection (hyper allows 200 concurrent streams per connection by
/// default), opened concurrently across connections. Returns the streams in
/// order, each with its first message (the snapshot) already read.
pub(crate) async fn open_streams<T, F, Fut>(
    url: &str,
    names: &[String],
    count: usize,
    open: F,
) -> anyhow::Result<Vec<tonic::Streaming<T>>>
where
    T: Send + 'static,
    F: Fn(Channel, String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<tonic::Streaming<T>>> + Send,
{
    const PER_CONN: usize = 100;
    let mut groups = Vec::new();
    for first in (0..count).step_by(PER_CONN) {
        let conn = channel(url).await?;
        let names: Vec<String> = (first..(first + PER_CONN).min(count))
            .map(|i| names[i % names.len()].clone())
            .collect();
        let open = open.clone();
        groups.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                let mut s = open(conn.clone(), name).await?;
                s.message().await?.context("stream ended before its snapshot")?;
                out.push(s);
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut streams = Vec::with_capacity(count);
    for g in groups {
        streams.extend(g.await??);
    }
    Ok(streams)
}
