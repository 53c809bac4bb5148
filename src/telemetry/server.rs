//! The operator's small HTTP endpoint: `/healthz`, `/readyz` and
//! `/metrics`, bounded in connections and time.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::metrics::Metrics;

/// Connections the metrics server serves at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 32;
/// The longest one connection may take, request and response.
pub const CONNECTION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until dropped.
/// Bounded: at most [`MAX_CONNECTIONS`] at once, each cut off after
/// [`CONNECTION_DEADLINE`], so idle or slow clients cannot pile up.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(_) => {
                // Out of file descriptors, usually: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, answer(stream, metrics)).await;
            drop(slot);
        });
    }
}

async fn answer(mut stream: tokio::net::TcpStream, metrics: Arc<Metrics>) {
    {
        let mut buf = vec![0u8; 4096];
        let mut len = 0;
        // Read the request head (bounded); the body, if any, is ignored.
        while len < buf.len() {
            match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stream.read(&mut buf[len..]),
            )
            .await
            {
                Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                Ok(Ok(n)) => len += n,
            }
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let head = String::from_utf8_lossy(&buf[..len]);
        let path = head.split_whitespace().nth(1).unwrap_or("/");
        let (status, content_type, body) = match path {
            "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
            "/readyz" if metrics.is_ready() => ("200 OK", "text/plain", "ok\n".to_string()),
            "/readyz" => (
                "503 Service Unavailable",
                "text/plain",
                "starting\n".to_string(),
            ),
            "/metrics" => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.encode(),
            ),
            _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
        };
        // The head apart from the body: no second copy of a large body.
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if stream.write_all(head.as_bytes()).await.is_ok() {
            let _ = stream.write_all(body.as_bytes()).await;
        }
    }
}
