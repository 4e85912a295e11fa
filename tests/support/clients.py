"""Client programs that ignore the proxy variables, run inside a fenced workload: what the
transparent path's tests (both runtimes) make them do, and print."""

from __future__ import annotations

# Node's own client prints what it got: the status, the server that answered (the address
# the fence dialed, from the fakenet's header) and the start of the body; or the error.
NODE_GET = r"""
const [kind, url, opts] = [process.argv[1], process.argv[2], JSON.parse(process.argv[3] || '{}')];
const show = (status, server, body) =>
  console.log(JSON.stringify({status, server, body: String(body).slice(0, 300)}));
const fail = (e) => console.log(JSON.stringify({error: (e.cause || e).code || String(e)}));
if (kind === 'fetch') {
  fetch(url, {signal: AbortSignal.timeout(10000)})
    .then(async (r) => show(r.status, r.headers.get('x-fakenet-server'), await r.text()))
    .catch(fail);
} else {
  const mod = require(kind);
  const req = mod.get(url, {timeout: 10000, ...opts}, (r) => {
    let body = '';
    r.on('data', (c) => body += c);
    r.on('end', () => show(r.statusCode, r.headers['x-fakenet-server'], body));
  });
  req.on('timeout', () => req.destroy(new Error('timeout')));
  req.on('error', fail);
}
"""

# A DNS question for an A record, sent over UDP or TCP to ADDRESS:53; prints the name, the
# transport, the rcode and the addresses answered (standard library only).
DNS_ASK = r"""
import socket, struct, sys
address = sys.argv[1]
def question(name):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack(">HHHHHH", 0x4E46, 0x0100, 1, 0, 0, 0) + labels + b"\0" + \
        struct.pack(">HH", 1, 1)
def answers(reply, asked):
    rcode, count = reply[3] & 0x0F, struct.unpack(">H", reply[6:8])[0]
    at, found = len(asked), []
    for _ in range(count):
        at += 2  # a compressed name pointer
        kind, _, _, size = struct.unpack(">HHIH", reply[at:at + 10])
        at += 10
        if kind == 1:
            found.append(socket.inet_ntoa(reply[at:at + size]))
        at += size
    return rcode, found
for name in sys.argv[2:]:
    for tcp in (False, True):
        q = question(name)
        if tcp:
            s = socket.create_connection((address, 53), 5)
            s.sendall(struct.pack(">H", len(q)) + q)
            size = struct.unpack(">H", s.recv(2))[0]
            reply = b""
            while len(reply) < size:
                reply += s.recv(size - len(reply))
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(5)
            s.sendto(q, (address, 53))
            reply = s.recv(512)
        print(name, "tcp" if tcp else "udp", *answers(reply, q))
"""
