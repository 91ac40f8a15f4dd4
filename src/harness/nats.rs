//! A real `nats-server` of one's own, for the tests and the benchmark: on a
//! free port of 127.0.0.1, no monitoring port, killed on drop, and
//! restartable on the same port. Each server has a name of its own, checked
//! in the INFO line it greets clients with, so that a caller never takes
//! another's server (concurrent tests pick free ports) for its own.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::hex::random_hex;

/// How long a start may take before it is an error.
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    #[error("cannot run nats-server (install Debian's package nats-server): {0}")]
    Spawn(std::io::Error),
    #[error("cannot write the nats-server configuration {0}: {1}")]
    Config(PathBuf, std::io::Error),
    #[error("nats-server did not greet on port {0} within {PATIENCE:?}")]
    Silent(u16),
    #[error("nats-server never started: every free port picked was taken first")]
    NoPort,
    #[error("cannot find a free port for nats-server: {0}")]
    Port(std::io::Error),
}

pub struct NatsServer {
    pub port: u16,
    child: Option<Child>,
    name: String,
    /// The configuration file (`max_payload` and the like), if any.
    config: Option<PathBuf>,
}

impl NatsServer {
    /// Starts one with no configuration.
    pub fn start() -> Result<NatsServer, NatsServerError> {
        Self::start_with_config("")
    }

    /// Starts one with `config` (nats-server configuration syntax, e.g.
    /// `max_payload: 2048`) in a file given with `-c`.
    pub fn start_with_config(config: &str) -> Result<NatsServer, NatsServerError> {
        let name = format!("ragctl-{}", random_hex(8));
        let config = match config {
            "" => None,
            text => {
                let path = std::env::temp_dir().join(format!("{name}.conf"));
                std::fs::write(&path, text)
                    .map_err(|e| NatsServerError::Config(path.clone(), e))?;
                Some(path)
            }
        };
        let mut server = NatsServer {
            port: free_port()?,
            child: None,
            name,
            config,
        };
        // The port was free when asked; another process may take it first.
        for _ in 0..5 {
            if server.try_spawn()? {
                return Ok(server);
            }
            server.port = free_port()?;
        }
        Err(NatsServerError::NoPort)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server and starts it again on the same port (a port just
    /// freed can be held a moment longer: tried again).
    pub fn restart(&mut self) -> Result<(), NatsServerError> {
        self.kill();
        let deadline = Instant::now() + PATIENCE;
        while !self.try_spawn()? {
            if Instant::now() >= deadline {
                return Err(NatsServerError::Silent(self.port));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server; true once it greets clients with its name, false
    /// if it exited before (the port was taken).
    fn try_spawn(&mut self) -> Result<bool, NatsServerError> {
        let port = self.port.to_string();
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &port, "-n", &self.name]);
        if let Some(f) = &self.config {
            cmd.arg("-c").arg(f);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(NatsServerError::Spawn)?;
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(false);
            }
            if self.greets() {
                self.child = Some(child);
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(NatsServerError::Silent(self.port))
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
        if let Some(f) = &self.config {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn free_port() -> Result<u16, NatsServerError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(NatsServerError::Port)
}
