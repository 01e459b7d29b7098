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

    /// A real OpenAI-style streaming completion server in its own process (Python,
    /// a thread per request): every `POST` is answered `text/event-stream` with
    /// `tokens` chat chunks, one per `pace`, then `finish_reason`, `usage` and
    /// `data: [DONE]` (the body ends with the connection, HTTP/1.0). To be probed
    /// by an llm probe and paused; returns once it accepts connections.
    pub fn sse_server(tokens: u32, pace: std::time::Duration) -> (Self, std::net::SocketAddr) {
        use std::io::BufRead as _;
        const SCRIPT: &str = r#"
import sys, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
TOKENS, PACE = int(sys.argv[1]), float(sys.argv[2])
TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":" w"},"finish_reason":null}]}\n\n'
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for i in range(TOKENS):
            if i:
                time.sleep(PACE)
            self.wfile.write(TOKEN)
            self.wfile.flush()
        self.wfile.write(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"completion_tokens":%d}}\n\ndata: [DONE]\n\n' % TOKENS)
        self.wfile.flush()
ThreadingHTTPServer.daemon_threads = True
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
        let mut inner = Command::new("python3")
            .args([
                "-u",
                "-c",
                SCRIPT,
                &tokens.to_string(),
                &pace.as_secs_f64().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn python3 (installed by scripts/setup.sh)");
        let stdout = inner.stdout.take().expect("piped stdout");
        let child = Self { inner };
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the server's port");
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no port from the sse server: {line:?}"));
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
