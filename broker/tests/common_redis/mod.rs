//! A real `redis-server` for the Redis store's integration tests: started on an OS-assigned
//! loopback port with persistence off, ready once it answers PING, killed when dropped.
//!
//! A missing `redis-server` binary fails the test (it is installed by `.ci/run`); it is never a
//! reason to skip.

#![allow(dead_code)]

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a server may take to answer PING after it was started.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// How long [`eventually`] polls for something that should happen.
pub const POLL_WITHIN: Duration = Duration::from_secs(15);

/// Polls `check` (a look at Redis, typically) until it returns `Some`, for at most
/// [`POLL_WITHIN`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + POLL_WITHIN;
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {POLL_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `redis-server` process owned by a test.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Further `redis-server` arguments, kept for restarts.
    extra_args: Vec<String>,
}

/// A free loopback port: bind port 0, read what the OS chose, release it; never one handed
/// out before in this test process (the OS may offer a port it just released again, and two
/// servers of tests running side by side must not share one: the second would fail to bind
/// while the first answered its PING).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local address").port();
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub async fn start() -> Self {
        Self::start_with_args(&[]).await
    }

    /// Starts a server on `port` (from [`free_port`], handed to a broker before the server
    /// runs) and waits until it answers PING.
    pub async fn start_on(port: u16) -> Self {
        let mut server = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().expect("temporary directory"),
            extra_args: Vec::new(),
        };
        server.launch().await;
        server
    }

    /// [`Self::start`] with further `redis-server` arguments (`["--maxmemory", "10mb"]`).
    /// A port taken between [`free_port`] and the server's bind (by a test running beside, or
    /// as a connection's local port) makes the server exit at once: another port is tried.
    pub async fn start_with_args(args: &[&str]) -> Self {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("temporary directory"),
            extra_args: args.iter().map(|a| a.to_string()).collect(),
        };
        let mut tries = 1;
        while let Err(exited) = server.try_launch().await {
            assert!(tries < 5, "{exited} ({tries} ports tried)");
            tries += 1;
            server.port = free_port();
        }
        server
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its connection URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Its address, as the broker's store and relay take it.
    pub fn target(&self) -> starling_broker::store::redis::target::RedisTarget {
        starling_broker::store::redis::target::RedisTarget::address(&self.url())
            .expect("a loopback URL")
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the server on its port and waits until it answers PING; panics if it does not.
    async fn launch(&mut self) {
        if let Err(exited) = self.try_launch().await {
            panic!("{exited}");
        }
    }

    /// Starts the server and waits until it answers PING; `Err` when it exits first (its port
    /// taken, most likely). Not answering within the limit panics.
    async fn try_launch(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install it (apt-get install redis-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if self.answers_ping().await {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited: {status}",
                    self.port
                ));
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within {READY_WITHIN:?}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the server answers PING right now.
    pub async fn answers_ping(&self) -> bool {
        let attempt = async {
            let mut stream = TcpStream::connect(self.addr()).await.ok()?;
            stream.write_all(b"PING\r\n").await.ok()?;
            let mut reply = [0u8; 7];
            stream.read_exact(&mut reply).await.ok()?;
            Some(&reply == b"+PONG\r\n")
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), attempt).await,
            Ok(Some(true))
        )
    }

    /// Kills the server and waits for it to exit (its data is gone: persistence is off).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server (SIGSTOP) without closing its connections: what clients send waits in
    /// its sockets until [`Self::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let status = std::process::Command::new("kill")
            .arg(which)
            .arg(child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {which} redis-server");
    }

    /// Starts the server again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }

    /// A plain client connection for looking at keys directly.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
