#!/usr/bin/env python3
"""pion/ice examples/ping-pong HTTP signalling around an aioice Connection.

Peer for tests/ping_aioice.rs. Same endpoints and form fields as pion's example
(POST /remoteAuth ufrag,pwd; POST /remoteCandidate candidate) and the same port
convention (controlling serves 9000 and posts to 9001, controlled the reverse), with
--signal-listen/--signal-remote overrides.

Loopback only: host candidates are restricted to 127.0.0.1 (aioice normally gathers
every interface except 127.0.0.1), no STUN/TURN server, and only 127.0.0.1
candidates are signalled or accepted.

Exits 0 once --count messages were sent and received (after a short linger).
"""

import argparse
import asyncio
import sys
import urllib.parse
import urllib.request

import aioice
import aioice.ice

LOOPBACK = "127.0.0.1"

# Gather on loopback only.
aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=False: [LOOPBACK]


def log(*args):
    print(*args, flush=True)


def post_form(url, fields):
    data = urllib.parse.urlencode(fields).encode()
    req = urllib.request.Request(
        url,
        data=data,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status


class Signalling:
    def __init__(self):
        self.auth = asyncio.get_running_loop().create_future()
        self.candidates = asyncio.Queue()

    async def handle(self, reader, writer):
        status = 200
        try:
            line = await reader.readline()
            method, target, _ = line.decode().split(" ", 2)
            length = 0
            while True:
                h = await reader.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                name, _, value = h.decode().partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            form = urllib.parse.parse_qs(body.decode(), keep_blank_values=True)
            path = target.split("?")[0]
            if method != "POST":
                status = 405
            elif path == "/remoteAuth":
                if not self.auth.done():
                    self.auth.set_result((form["ufrag"][0], form["pwd"][0]))
            elif path == "/remoteCandidate":
                self.candidates.put_nowait(form["candidate"][0])
            else:
                status = 404
        except Exception as e:  # malformed request
            log("signalling error:", repr(e))
            status = 400
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        try:
            await writer.drain()
        finally:
            writer.close()


async def main():
    ap = argparse.ArgumentParser()
    role = ap.add_mutually_exclusive_group(required=True)
    role.add_argument("--controlling", action="store_true")
    role.add_argument("--controlled", action="store_true")
    ap.add_argument("--signal-listen")
    ap.add_argument("--signal-remote")
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()
    controlling = args.controlling
    lp, rp = (9000, 9001) if controlling else (9001, 9000)
    listen = args.signal_listen or f"{LOOPBACK}:{lp}"
    remote = (args.signal_remote or f"http://{LOOPBACK}:{rp}").rstrip("/")
    lhost, lport = listen.rsplit(":", 1)

    sig = Signalling()
    server = await asyncio.start_server(sig.handle, lhost, int(lport))

    conn = aioice.Connection(
        ice_controlling=controlling,
        components=1,
        use_ipv4=True,
        use_ipv6=False,
        stun_server=None,
        turn_server=None,
    )
    await conn.gather_candidates()
    local = [c for c in conn.local_candidates if c.host == LOOPBACK]
    for c in local:
        log("local candidate:", c.to_sdp())
    log("aioice", "controlling" if controlling else "controlled", "signalling on", listen, "->", remote)

    # Credentials at once, retried until the peer's server answers.
    while True:
        try:
            await asyncio.to_thread(
                post_form,
                remote + "/remoteAuth",
                {"ufrag": conn.local_username, "pwd": conn.local_password},
            )
            break
        except Exception:
            await asyncio.sleep(0.1)
    log("posted credentials")

    ufrag, pwd = await sig.auth
    conn.remote_username, conn.remote_password = ufrag, pwd
    log("remote credentials: ufrag", ufrag)
    for c in local:
        await asyncio.to_thread(post_form, remote + "/remoteCandidate", {"candidate": c.to_sdp()})

    async def feed_candidates():
        while True:
            line = await sig.candidates.get()
            if line.startswith("candidate:"):
                line = line[len("candidate:"):]
            cand = aioice.Candidate.from_sdp(line)
            log("remote candidate:", line)
            if cand.host != LOOPBACK:
                log("ignored non-loopback candidate")
                continue
            await conn.add_remote_candidate(cand)

    feeder = asyncio.create_task(feed_candidates())
    await conn.connect()
    log("connected")

    word, peer = ("ping", "pong") if controlling else ("pong", "ping")
    sent = received = 0
    done = asyncio.Event()

    async def receiver():
        nonlocal received
        while True:
            data = await conn.recv()
            received += 1
            text = data.decode(errors="replace")
            log("received:", text)
            if not text.startswith(peer):
                log("(unexpected message)")

    rx = asyncio.create_task(receiver())
    while not (sent >= args.count and received >= args.count):
        sent += 1
        msg = f"{word} {sent}"
        await conn.send(msg.encode())
        log("sent:", msg)
        await asyncio.sleep(args.interval)
    # Linger so the peer gets our last messages and its checks get answers.
    for _ in range(3):
        sent += 1
        await conn.send(f"{word} {sent}".encode())
        await asyncio.sleep(args.interval)
    log(f"done: sent {sent}, received {received}")
    rx.cancel()
    feeder.cancel()
    await conn.close()
    server.close()


if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(), timeout=float(
            next((sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "--timeout"), 30))))
    except asyncio.TimeoutError:
        log("aioice peer: timed out")
        sys.exit(1)
