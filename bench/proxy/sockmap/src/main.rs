//! A kernel-side TCP forwarder for bench/proxy's echo experiment row: each
//! accepted connection and its upstream connection go into a BPF sockmap,
//! and an `SK_SKB` verdict program redirects every received skb to the
//! other socket's send side, so no byte crosses into user space.
//!
//! It answers one question the proxy's issue raised: would taking the second
//! hop's forwarding out of user space move the echo latency? It is not a
//! data path faultline could ship as it is: a FIN is seen by user space
//! while redirected bytes may still sit in the peer's psock backlog, there is
//! no way to apply a toxic, and it needs CAP_BPF (root here).
//!
//! The verdict program is sixteen instructions, assembled below rather than
//! compiled, so the benchmark needs no clang or BPF linker:
//!
//! ```text
//! r6 = r1                          ; the skb
//! r0 = bpf_get_socket_cookie(r1)   ; which of our sockets received it
//! *(u64 *)(r10 - 8) = r0
//! r0 = bpf_map_lookup_elem(&peer, r10 - 8)
//! if r0 == 0 goto pass             ; not one of ours: leave it
//! r0 = bpf_sk_redirect_map(r6, &socks, *(u32 *)r0, 0)   ; 0 = peer's egress
//! exit
//! pass: r0 = SK_PASS; exit
//! ```

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
const BPF_SK_SKB_VERDICT: u32 = 38;
const SO_COOKIE: libc::c_int = 57;
/// Sockmap slots: two per forwarded connection, never reused within a run.
const SLOTS: u32 = 8192;

/// `union bpf_attr` as the commands here use it: 128 zeroed bytes, written
/// field by field at the kernel ABI's offsets.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn u32(mut self, off: usize, v: u32) -> Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(mut self, off: usize, v: u64) -> Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live 128-byte buffer; every pointer written into it
    // by the callers refers to memory that outlives this call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd(r: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

fn map_create(ty: u32, key: u32, value: u32, max: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new()
        .u32(0, ty)
        .u32(4, key)
        .u32(8, value)
        .u32(12, max);
    bpf(BPF_MAP_CREATE, &mut a).map(fd)
}

fn map_update<K, V>(map: &OwnedFd, key: &K, value: &V) -> io::Result<()> {
    let mut a = Attr::new()
        .u32(0, map.as_raw_fd() as u32)
        .u64(8, key as *const K as u64)
        .u64(16, value as *const V as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}

fn map_delete<K>(map: &OwnedFd, key: &K) {
    let mut a = Attr::new()
        .u32(0, map.as_raw_fd() as u32)
        .u64(8, key as *const K as u64);
    // A missing key is the only failure, and then there is nothing to remove.
    let _ = bpf(BPF_MAP_DELETE_ELEM, &mut a);
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// `dst = map` (a 64-bit immediate load of a map fd: two instruction slots).
fn ld_map(dst: u8, map: &OwnedFd) -> [Insn; 2] {
    const BPF_PSEUDO_MAP_FD: u8 = 1;
    [
        insn(0x18, dst, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()),
        insn(0, 0, 0, 0, 0),
    ]
}

fn verdict_program(peer: &OwnedFd, socks: &OwnedFd) -> Vec<Insn> {
    const MOV_X: u8 = 0xbf;
    const MOV_K: u8 = 0xb7;
    const ADD_K: u8 = 0x07;
    const STX_DW: u8 = 0x7b;
    const LDX_W: u8 = 0x61;
    const JEQ_K: u8 = 0x15;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    const MAP_LOOKUP_ELEM: i32 = 1;
    const GET_SOCKET_COOKIE: i32 = 46;
    const SK_REDIRECT_MAP: i32 = 52;
    const SK_PASS: i32 = 1;
    let mut p = vec![
        insn(MOV_X, 6, 1, 0, 0),
        insn(CALL, 0, 0, 0, GET_SOCKET_COOKIE),
        insn(STX_DW, 10, 0, -8, 0),
        insn(MOV_X, 2, 10, 0, 0),
        insn(ADD_K, 2, 0, 0, -8),
    ];
    p.extend(ld_map(1, peer));
    p.extend([
        insn(CALL, 0, 0, 0, MAP_LOOKUP_ELEM),
        insn(JEQ_K, 0, 0, 7, 0), // to `pass`, 7 slots on
        insn(LDX_W, 3, 0, 0, 0),
        insn(MOV_X, 1, 6, 0, 0),
    ]);
    p.extend(ld_map(2, socks));
    p.extend([
        insn(MOV_K, 4, 0, 0, 0),
        insn(CALL, 0, 0, 0, SK_REDIRECT_MAP),
        insn(EXIT, 0, 0, 0, 0),
        insn(MOV_K, 0, 0, 0, SK_PASS), // pass:
        insn(EXIT, 0, 0, 0, 0),
    ]);
    p
}

fn prog_load(code: &[Insn]) -> io::Result<OwnedFd> {
    let license = b"Dual MIT/GPL\0";
    let mut log = vec![0u8; 1 << 16];
    let mut a = Attr::new()
        .u32(0, BPF_PROG_TYPE_SK_SKB)
        .u32(4, code.len() as u32)
        .u64(8, code.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1) // log_level
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64)
        .u32(68, BPF_SK_SKB_VERDICT); // expected_attach_type
    bpf(BPF_PROG_LOAD, &mut a).map(fd).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        io::Error::new(
            e.kind(),
            format!("{e}; verifier: {}", String::from_utf8_lossy(&log[..end])),
        )
    })
}

fn cookie(sock: &TcpStream) -> io::Result<u64> {
    let mut c: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `c` and `len` are valid for the getsockopt to write.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&mut c as *mut u64).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(c)
    } else {
        Err(io::Error::last_os_error())
    }
}

struct Maps {
    socks: OwnedFd,
    peer: OwnedFd,
    _prog: OwnedFd,
}

impl Maps {
    fn new() -> io::Result<Self> {
        let socks = map_create(BPF_MAP_TYPE_SOCKMAP, 4, 4, SLOTS)?;
        let peer = map_create(BPF_MAP_TYPE_HASH, 8, 4, SLOTS)?;
        let prog = prog_load(&verdict_program(&peer, &socks))?;
        let mut a = Attr::new()
            .u32(0, socks.as_raw_fd() as u32)
            .u32(4, prog.as_raw_fd() as u32)
            .u32(8, BPF_SK_SKB_VERDICT);
        bpf(BPF_PROG_ATTACH, &mut a)?;
        Ok(Maps {
            socks,
            peer,
            _prog: prog,
        })
    }

    /// Splices `a` and `b` in the kernel: from now on each one's received
    /// bytes leave through the other. Returns the cookies to unregister.
    fn pair(&self, slot: u32, a: &TcpStream, b: &TcpStream) -> io::Result<[u64; 2]> {
        let (ca, cb) = (cookie(a)?, cookie(b)?);
        map_update(&self.peer, &ca, &(slot + 1))?;
        map_update(&self.peer, &cb, &slot)?;
        map_update(&self.socks, &slot, &(a.as_raw_fd() as u32))?;
        map_update(&self.socks, &(slot + 1), &(b.as_raw_fd() as u32))?;
        Ok([ca, cb])
    }
}

/// One forwarded connection: [accepted, upstream], and which has sent FIN.
struct Pair {
    socks: [TcpStream; 2],
    cookies: [u64; 2],
    eof: [bool; 2],
}

type Pairs = Arc<Mutex<HashMap<u32, Pair>>>;

/// Watches every socket for its peer's FIN only: the epoll interest is
/// EPOLLRDHUP alone, so the wake-up the psock sends on each redirected skb
/// (keyed EPOLLIN) is filtered out in the kernel and no thread wakes per
/// message. A FIN is passed on as a FIN (shutdown of the other socket's
/// write side); a pair is closed, which takes it out of the sockmap, once
/// both sides have sent theirs.
fn reap(epoll: &OwnedFd, maps: &Maps, pairs: &Pairs) -> io::Result<()> {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
    loop {
        // SAFETY: `events` is writable for the 64 entries passed.
        let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), 64, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut pairs = pairs.lock().map_err(|_| io::Error::other("poisoned"))?;
        for ev in &events[..n as usize] {
            let slot = ev.u64 as u32;
            let (key, side) = (slot & !1, (slot & 1) as usize);
            let Some(pair) = pairs.get_mut(&key) else {
                continue;
            };
            // Level-triggered RDHUP stays set: stop watching this socket.
            // SAFETY: a null event is allowed for EPOLL_CTL_DEL.
            unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    pair.socks[side].as_raw_fd(),
                    std::ptr::null_mut(),
                )
            };
            pair.eof[side] = true;
            let _ = pair.socks[1 - side].shutdown(Shutdown::Write);
            if pair.eof == [true, true] {
                for c in &pair.cookies {
                    map_delete(&maps.peer, c);
                }
                pairs.remove(&key);
            }
        }
    }
}

fn watch(epoll: &OwnedFd, sock: &TcpStream, slot: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLRDHUP as u32,
        u64: u64::from(slot),
    };
    // SAFETY: `ev` is a valid epoll_event for the call.
    let r = unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            sock.as_raw_fd(),
            &mut ev,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes the client sent before `a` joined the sockmap sit in its receive
/// queue, where no verdict runs: copy them once by hand. Bytes arriving after
/// the insertion are redirected by the kernel and could overtake these, so
/// the forwarder keeps order only for a client that waits for its reply, as
/// the echo benchmark does (the upstream never speaks first there). Putting
/// the socket in the map at establishment (a sockops program) would close
/// that gap; an experiment does not need it.
fn forward_queued(a: &TcpStream, b: &TcpStream) -> io::Result<()> {
    a.set_nonblocking(true)?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match (&*a).read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => (&*b).write_all(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn serve(upstream: SocketAddr) -> io::Result<()> {
    let maps = Arc::new(Maps::new()?);
    // SAFETY: epoll_create1 has no memory preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    let epoll = Arc::new(fd(ep.into()));
    let pairs: Pairs = Arc::default();
    {
        let (epoll, maps, pairs) = (epoll.clone(), maps.clone(), pairs.clone());
        std::thread::spawn(move || {
            if let Err(e) = reap(&epoll, &maps, &pairs) {
                eprintln!("faultline-bench-sockmap: reaper: {e}");
                std::process::exit(1);
            }
        });
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?);
    io::stdout().flush()?;
    let mut slot = 0u32;
    for a in listener.incoming() {
        let a = a?;
        let b = TcpStream::connect(upstream)?;
        if slot + 2 > SLOTS {
            return Err(io::Error::other("out of sockmap slots"));
        }
        a.set_nodelay(true)?;
        b.set_nodelay(true)?;
        let cookies = maps.pair(slot, &a, &b)?;
        forward_queued(&a, &b)?;
        let mut pairs = pairs.lock().map_err(|_| io::Error::other("poisoned"))?;
        watch(&epoll, &a, slot)?;
        watch(&epoll, &b, slot + 1)?;
        pairs.insert(
            slot,
            Pair {
                socks: [a, b],
                cookies,
                eof: [false, false],
            },
        );
        slot += 2;
    }
    Ok(())
}

/// `faultline-bench-sockmap UPSTREAM`: prints its listen address, then
/// forwards every accepted connection to UPSTREAM in the kernel until killed.
fn main() -> ExitCode {
    let Some(Ok(upstream)) = std::env::args().nth(1).map(|a| a.parse::<SocketAddr>()) else {
        eprintln!("usage: faultline-bench-sockmap UPSTREAM_ADDR");
        return ExitCode::from(2);
    };
    match serve(upstream) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faultline-bench-sockmap: {e}");
            ExitCode::FAILURE
        }
    }
}
