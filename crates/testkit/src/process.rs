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
