//! Real child processes to pause and kill.

use std::process::{Command, Stdio};

/// A `sleep` child that is killed and reaped on drop, whatever the test did to it.
#[derive(Debug)]
pub struct Child {
    inner: std::process::Child,
}

impl Child {
    /// `sleep 600` under its own pid.
    pub fn sleep() -> Self {
        Self::spawn(Command::new("sleep").arg("600"))
    }

    pub fn spawn(cmd: &mut Command) -> Self {
        let inner = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn child process");
        Self { inner }
    }

    /// A real HTTP server in its own process (Python's `http.server` on an
    /// ephemeral loopback port), to be probed, paused and killed; returns once it
    /// accepts connections.
    pub fn http_server() -> (Self, std::net::SocketAddr) {
        Self::http_server_with(Command::new("python3"))
    }

    /// [`Child::http_server`] started by `python3`, a command that runs python3
    /// (inside a network namespace: `NetNs::command("python3")`).
    pub fn http_server_with(mut python3: Command) -> (Self, std::net::SocketAddr) {
        use std::io::BufRead as _;
        let mut inner = python3
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn python3 -m http.server (python3 is installed by scripts/setup.sh)");
        let stdout = inner.stdout.take().expect("piped stdout");
        let child = Self { inner };
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read http.server banner");
        let port: u16 = line
            .split(" port ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in http.server banner {line:?}"));
        (child, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// The state letter of /proc/<pid>/stat (`S`, `T`, `Z`, ...); `None` once reaped.
    pub fn state(&self) -> Option<char> {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        let rest = &text[text.rfind(')')? + 1..];
        rest.split_whitespace().next()?.chars().next()
    }

    pub fn is_stopped(&self) -> bool {
        self.state() == Some('T')
    }

    /// Whether it has exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.inner.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // SIGKILL works on stopped processes too.
        let _ = self.inner.kill();
        let _ = self.inner.wait();
    }
}
