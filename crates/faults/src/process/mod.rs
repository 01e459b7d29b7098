//! `process.*`: pausing (SIGSTOP/SIGCONT) and killing processes chosen by pid, command
//! name or cgroup. Targets are resolved once, at construction, and journaled as
//! `(pid, start time)` pairs so that a restarted agent continues exactly the
//! processes it stopped and never signals a recycled pid.

pub mod kill;
pub mod pause;
pub mod target;

pub use kill::ProcessKillFault;
pub use pause::ProcessPauseFault;
