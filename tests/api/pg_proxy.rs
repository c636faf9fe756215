//! A TCP proxy between the service and PostgreSQL that can stop answering: the network
//! fault only a deadline can see (no error, no reset, just silence).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Which connections still forward.
#[derive(Default)]
struct Faults {
    /// Connections accepted so far (each one's number is its place in that count).
    accepted: AtomicU64,
    /// Connections numbered below this stop forwarding.
    silenced_below: AtomicU64,
    /// New connections are accepted but never forwarded.
    silence_new: AtomicBool,
}

impl Faults {
    fn silenced(&self, number: u64) -> bool {
        number < self.silenced_below.load(Ordering::SeqCst)
    }
}

/// Forwards 127.0.0.1:<port> to `upstream` until told to black-hole.
pub struct PgProxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl PgProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Faults::default());
        let accepting = faults.clone();
        let accept_loop = tokio::spawn(async move {
            // Dropped with the accept loop: every proxied connection ends with the proxy.
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let number = accepting.accepted.fetch_add(1, Ordering::SeqCst);
                connections.spawn(forward(client, upstream, number, accepting.clone()));
            }
        });
        PgProxy {
            addr,
            faults,
            accept_loop,
        }
    }

    /// `database_url` with its host and port replaced by the proxy's.
    pub fn url(&self, database_url: &str) -> String {
        let mut url = url::Url::parse(database_url).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.addr.port())).unwrap();
        url.to_string()
    }

    /// Connections open now stop forwarding both ways and stay open; new ones still work.
    pub fn black_hole_existing(&self) {
        let accepted = self.faults.accepted.load(Ordering::SeqCst);
        self.faults.silenced_below.store(accepted, Ordering::SeqCst);
    }

    /// New connections forward again (the silenced ones stay silent, as after a network
    /// fault their peers would have given up on them).
    pub fn restore(&self) {
        let accepted = self.faults.accepted.load(Ordering::SeqCst);
        self.faults.silenced_below.store(accepted, Ordering::SeqCst);
        self.faults.silence_new.store(false, Ordering::SeqCst);
    }

    /// No connection, open or new, forwards anything any more.
    pub fn black_hole_all(&self) {
        self.faults.silence_new.store(true, Ordering::SeqCst);
        self.faults.silenced_below.store(u64::MAX, Ordering::SeqCst);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, number: u64, faults: Arc<Faults>) {
    if faults.silence_new.load(Ordering::SeqCst) {
        // Accepted, never answered: the socket stays open until the proxy is dropped.
        let _held = client;
        return std::future::pending().await;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (from_client, to_client) = client.into_split();
    let (from_server, to_server) = server.into_split();
    tokio::join!(
        pump(from_client, to_server, number, &faults),
        pump(from_server, to_client, number, &faults),
    );
}

/// Copies `from` to `to` until either end closes; once the connection is silenced, what
/// arrives is dropped and both sockets are held open without another byte.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, number: u64, faults: &Faults) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if faults.silenced(number) {
            return std::future::pending().await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
