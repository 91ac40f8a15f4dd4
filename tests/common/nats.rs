//! A real `nats-server` for a test: on a free port of 127.0.0.1, no
//! monitoring port, killed on drop, and restartable on the same port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::PATIENCE;

pub struct NatsServer {
    pub port: u16,
    child: Option<Child>,
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

    /// Kills the server and starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self) {
        assert!(self.try_spawn(), "nats-server on port {} exited", self.port);
    }

    /// Starts the server; false if it exited before accepting.
    fn try_spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &port]);
        if let Some(f) = &self.config {
            cmd.arg("-c").arg(f.path());
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server (the Debian package nats-server)");
        self.child = Some(child);
        self.wait_accepting()
    }

    fn wait_accepting(&mut self) -> bool {
        let deadline = Instant::now() + PATIENCE;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            let child = self.child.as_mut().expect("spawned");
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return false;
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server never accepted on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
