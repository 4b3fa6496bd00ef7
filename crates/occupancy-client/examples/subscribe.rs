//! Follows a room's occupancy until Ctrl-C, across replica failures.
//!
//! cargo run -p occupancy-client --example subscribe -- rooms:lobby http://127.0.0.1:50051 http://127.0.0.1:50052

use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let room = args.next().unwrap_or_else(|| "rooms:lobby".into());
    let mut builder = occupancy_client::Client::builder();
    let mut any = false;
    for endpoint in args {
        builder = builder.endpoint(endpoint);
        any = true;
    }
    if !any {
        builder = builder.endpoint("http://127.0.0.1:50051");
    }
    let client = builder.connect()?;
    let occupancy = client.room(room.as_str()).occupancy();
    let mut updates = occupancy.stream();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            next = updates.next() => match next {
                Some(o) => println!("{room}: {} connections, {} in presence", o.connections, o.presence_members),
                None => break,
            },
        }
    }
    Ok(())
}
