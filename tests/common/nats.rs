//! A real `nats-server` per test, on a free port, so a test can kill and
//! restart it where it was. Each server has a name of its own, checked in
//! the INFO line it greets clients with, so a test never takes another
//! test's server (running tests pick free ports concurrently) for its own.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::PATIENCE;

const NATS_SERVER: &str = "/usr/sbin/nats-server";

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    name: String,
}

impl NatsServer {
    /// Starts a server on a free port; returns once it accepts clients.
    pub fn start() -> NatsServer {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut server = NatsServer {
                child: None,
                port: free_port(),
                name: format!("ragctl-test-{}", uuid::Uuid::new_v4().simple()),
            };
            if server.spawn() {
                return server;
            }
            assert!(Instant::now() < deadline, "no nats-server would start");
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, and starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + PATIENCE;
        // A port just freed can be held a moment longer: tried again.
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "nats-server never came back on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Spawns the server; true once it greets clients with its name,
    /// false if it exited (the port was taken).
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let mut child = Command::new(NATS_SERVER)
            .args(["-a", "127.0.0.1", "-p", &port, "-n", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn /usr/sbin/nats-server");
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if self.greets() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Whether the server on the port is this one (its INFO names it).
    fn greets(&self) -> bool {
        let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut info = String::new();
        let _ = BufReader::new(stream).read_line(&mut info);
        info.contains(&format!("\"server_name\":\"{}\"", self.name))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
