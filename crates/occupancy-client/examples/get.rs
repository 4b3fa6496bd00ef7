//! Reads a room's occupancy once.
//!
//! cargo run -p occupancy-client --example get -- http://127.0.0.1:50051 rooms:lobby

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args.next().unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let room = args.next().unwrap_or_else(|| "rooms:lobby".into());
    let client = occupancy_client::Client::new(endpoint)?;
    let o = client.room(room.as_str()).occupancy().get().await?;
    println!(
        "{room}: {} connections, {} presence members ({} distinct clients)",
        o.connections, o.presence_members, o.metrics.presence_clients
    );
    Ok(())
}
