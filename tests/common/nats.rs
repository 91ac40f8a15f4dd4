//! A real `nats-server` for a test: on a free port of 127.0.0.1, no
//! monitoring port, killed on drop, and restartable on the same port. Each
//! server has a name of its own, checked in the INFO line it greets clients
//! with, so a test never takes another test's server (running tests pick
//! free ports concurrently) for its own.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::PATIENCE;

pub struct NatsServer {
    pub port: u16,
    child: Option<Child>,
    name: String,
    /// The configuration file (`max_payload` and the like), if any.
    config: Option<tempfile::NamedTempFile>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        Self::start_with_config("")
    }

    /// Starts one with `config` (nats-server configuration syntax, e.g.
    /// `max_payload: 2048`) in a file given with `-c`.
    pub fn start_with_config(config: &str) -> NatsServer {
        let config = (!config.is_empty()).then(|| {
            let f = tempfile::NamedTempFile::new().expect("a nats-server config file");
            std::fs::write(f.path(), config).expect("write the nats-server config");
            f
        });
        let mut server = NatsServer {
            port: free_port(),
            child: None,
            name: format!("ragctl-test-{}", uuid::Uuid::new_v4().simple()),
            config,
        };
        // The port was free when asked; another process may take it first.
        for _ in 0..5 {
            if server.try_spawn() {
                return server;
            }
            server.port = free_port();
        }
        panic!("nats-server never started (ports taken?)");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server and starts it again on the same port (a port just
    /// freed can be held a moment longer: tried again).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + PATIENCE;
        while !self.try_spawn() {
            assert!(
                Instant::now() < deadline,
                "nats-server never came back on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server; true once it greets clients with its name, false
    /// if it exited before (the port was taken).
    fn try_spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &port, "-n", &self.name]);
        if let Some(f) = &self.config {
            cmd.arg("-c").arg(f.path());
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server (the Debian package nats-server)");
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
        panic!("nats-server never greeted on {}", self.port);
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

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().unwrap().port()
}
