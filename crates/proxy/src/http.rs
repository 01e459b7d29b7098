//! L7 HTTP faults (placeholder until the next commit).
