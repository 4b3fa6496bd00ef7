//! A front end's side: one session for the process, writes batched, state
//! restored automatically if the service loses it.
//!
//! cargo run -p occupancy-client --example front_end -- http://127.0.0.1:50051

use std::time::Duration;

use occupancy_client::proto::Mode;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let client = occupancy_client::Client::new(endpoint)?;
    let session = client
        .session(format!("front-end-{}", std::process::id()), Duration::from_secs(15))
        .await?;
    // a user connects and joins a room with presence
    session.attach(
        "conn-1",
        "rooms:lobby",
        &[Mode::Subscribe, Mode::Publish, Mode::Presence],
    );
    session.enter("conn-1", "rooms:lobby", "alice");
    session.flush().await?;
    let o = client.room("rooms:lobby").occupancy().get().await?;
    println!("rooms:lobby now has {} connections", o.connections);
    // the user leaves; closing the session removes whatever is left
    session.detach("conn-1", "rooms:lobby");
    session.close().await?;
    Ok(())
}
