//! Socket binding helpers.

use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use super::IoError;

/// Socket buffer size we ask for (best effort; capped by `net.core.{r,w}mem_max` unless we
/// may use `SO_{RCV,SND}BUFFORCE`).
const SOCK_BUF: usize = 4 << 20;

/// Bind a non-blocking UDP socket.
///
/// Sets `SO_REUSEADDR`, `SO_REUSEPORT` if `reuse_port` (so several shards can bind the same
/// address and the kernel spreads 5-tuples over them), `IPV6_V6ONLY` for IPv6, and asks for
/// 4 MiB receive/send buffers (best effort; as root this uses `SO_RCVBUFFORCE`).
pub fn bind_udp(addr: SocketAddr, reuse_port: bool) -> Result<UdpSocket, IoError> {
    let bind_err = |source| IoError::Bind { addr, source };
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    sock.set_cloexec(true).map_err(bind_err)?;
    sock.set_nonblocking(true).map_err(bind_err)?;
    sock.set_reuse_address(true).map_err(bind_err)?;
    if reuse_port {
        sock.set_reuse_port(true).map_err(bind_err)?;
    }
    if addr.is_ipv6() {
        sock.set_only_v6(true).map_err(bind_err)?;
    }
    grow_buffers(&sock);
    sock.bind(&addr.into()).map_err(bind_err)?;
    Ok(sock.into())
}

fn grow_buffers(sock: &Socket) {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let val = SOCK_BUF as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // SAFETY: setsockopt with a valid c_int option value.
        let forced = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                force,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if !forced {
            // SAFETY: as above.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    plain,
                    (&val as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}

/// Bind a non-blocking TCP listener (`SO_REUSEADDR`, `SO_REUSEPORT` if `reuse_port` so each
/// shard can listen on the same address and the kernel spreads connections, `IPV6_V6ONLY`
/// for IPv6, `TCP_NODELAY` inherited by accepted streams).
pub fn bind_tcp_listener(
    addr: SocketAddr,
    reuse_port: bool,
) -> Result<std::net::TcpListener, IoError> {
    let bind_err = |source| IoError::Bind { addr, source };
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(bind_err)?;
    sock.set_cloexec(true).map_err(bind_err)?;
    sock.set_nonblocking(true).map_err(bind_err)?;
    sock.set_reuse_address(true).map_err(bind_err)?;
    if reuse_port {
        sock.set_reuse_port(true).map_err(bind_err)?;
    }
    if addr.is_ipv6() {
        sock.set_only_v6(true).map_err(bind_err)?;
    }
    sock.set_tcp_nodelay(true).map_err(bind_err)?;
    sock.bind(&addr.into()).map_err(bind_err)?;
    sock.listen(1024).map_err(bind_err)?;
    Ok(sock.into())
}
