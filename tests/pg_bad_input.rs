//! Bad input on the wire: each bad connection ends or gets an error, and the server and the
//! other sessions carry on.

mod common;

use std::time::Duration;

use common::{Server, sqlstate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A startup packet for protocol 3.0.
fn startup(user: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196608i32.to_be_bytes());
    for (key, value) in [("user", user), ("database", "c360")] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// Reads backend messages until one of type `wanted` (returned) or the end of the stream
/// (None), within a few seconds.
async fn read_until(stream: &mut TcpStream, wanted: &[u8]) -> Option<(u8, Vec<u8>)> {
    let read = async {
        loop {
            let mut header = [0u8; 5];
            stream.read_exact(&mut header).await.ok()?;
            let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let mut body = vec![0u8; len.saturating_sub(4)];
            stream.read_exact(&mut body).await.ok()?;
            if wanted.contains(&header[0]) {
                return Some((header[0], body));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the server answered or closed the connection in time")
}

async fn still_serves(client: &tokio_postgres::Client) {
    let stores: i64 = client
        .query_one("SELECT count(*) FROM stores", &[])
        .await
        .expect("the other session still works")
        .get(0);
    assert_eq!(stores, 40);
}

#[tokio::test]
async fn garbage_and_truncated_packets_end_only_their_connection() {
    let server = Server::start_demo();
    let bystander = server.connect().await;
    let addr = format!("{}:{}", server.pg_host, server.pg_port);

    // Garbage where a startup packet belongs, including a huge announced length.
    for garbage in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xff; 64],
        vec![0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef],
    ] {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(&garbage).await.unwrap();
        stream.shutdown().await.unwrap();
        // An ErrorResponse or the end of the stream: either way, not a hang.
        let _ = read_until(&mut stream, b"E").await;
    }

    // A startup packet cut short, then the connection closed.
    let packet = startup("analyst");
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream.write_all(&packet[..packet.len() / 2]).await.unwrap();
    drop(stream);

    still_serves(&bystander).await;
    server
        .connect()
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unknown_message_type_gets_an_error_or_a_close() {
    let server = Server::start_demo();
    let bystander = server.connect().await;
    let mut stream = TcpStream::connect(format!("{}:{}", server.pg_host, server.pg_port))
        .await
        .unwrap();
    stream.write_all(&startup("analyst")).await.unwrap();
    assert_eq!(read_until(&mut stream, b"Z").await.map(|m| m.0), Some(b'Z'));

    // 'y' is no frontend message type.
    stream
        .write_all(&[b'y', 0, 0, 0, 8, 1, 2, 3, 4])
        .await
        .unwrap();
    if let Some((kind, _)) = read_until(&mut stream, b"EZ").await {
        assert!(kind == b'E' || kind == b'Z', "{}", kind as char);
    }
    still_serves(&bystander).await;
}

#[tokio::test]
async fn a_100_mb_query_is_refused_and_the_session_goes_on() {
    let server = Server::start_demo();
    let client = server.connect().await;
    let bystander = server.connect().await;
    let huge = format!("SELECT '{}' AS x", "x".repeat(100 * 1024 * 1024));
    let err = client.simple_query(&huge).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("54000"), "{err:?}");
    let err = client.query(huge.as_str(), &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("54000"), "{err:?}");
    drop(huge);
    still_serves(&client).await;
    still_serves(&bystander).await;
}
